"""Host profiling, statistics, device profiles, the results database and the profile CLI."""

from __future__ import annotations

import json
import multiprocessing
import sqlite3
import subprocess
import sys

import numpy as np
import pytest
from click.testing import CliRunner

from edgeeff.cli.profile import profile_command, results_command
from edgeeff.profile import (Artifact, Measurement, ProfileSettings, ResultsDatabase, ResultsDatabaseError,
                             host_info, load_profile, open_device, parse_target_rse, resolve_profile, to_csv)
from edgeeff.profile.stats import relative_standard_error, summarize
from profile_helpers import ROOT, cached_exports, cached_onnx, python_env

RECIPES = ROOT / "recipes" / "devices"


@pytest.fixture(scope="module")
def b0_onnx():
    return cached_onnx("b0", 64)


def make_record(**overrides) -> Measurement:
    values = dict(artifact_name="b0.onnx", artifact_sha256="ab" * 32, artifact_bytes=1000, artifact_format="onnx",
                  runtime="onnxruntime", device_name="host", device_kind="host", device_fingerprint="f" * 16,
                  threads=2, median_ms=5.0, p90_ms=6.0, variant="b0", precision="fp32",
                  device_info={"cpu_model": "Test CPU", "cores": 2})
    values.update(overrides)
    return Measurement(**values)


# Statistics


def test_summarize_known_samples():
    samples = list(range(1, 101))
    summary = summarize(samples)
    assert summary["runs"] == 100
    assert summary["min_ms"] == 1
    assert summary["max_ms"] == 100
    assert summary["median_ms"] == pytest.approx(50.5)
    assert summary["p90_ms"] == pytest.approx(90.1)
    assert summary["p99_ms"] == pytest.approx(99.01)
    assert summary["mean_ms"] == pytest.approx(50.5)
    assert summary["std_ms"] == pytest.approx(np.std(samples, ddof=1))
    assert summary["median_ci_low_ms"] < summary["median_ms"] < summary["median_ci_high_ms"]


def test_rse_shrinks_with_more_samples():
    rng = np.random.default_rng(0)
    few = 5 + rng.gamma(2.0, 0.2, size=20)
    many = 5 + rng.gamma(2.0, 0.2, size=2000)
    assert relative_standard_error(many) < relative_standard_error(few)
    assert relative_standard_error(many) < 0.01


def test_rse_ignores_rare_outliers():
    samples = [5.0 + 0.01 * (i % 10) for i in range(200)] + [500.0] * 3
    assert relative_standard_error(samples) < 0.01


@pytest.mark.parametrize("text, expected", [("2%", 0.02), ("0.5%", 0.005), ("0.02", 0.02), (None, None)])
def test_parse_target_rse(text, expected):
    assert parse_target_rse(text) == pytest.approx(expected) if expected else parse_target_rse(text) is None


@pytest.mark.parametrize("text", ["2", "150%", "abc", "-1%", "0%"])
def test_parse_target_rse_rejects(text):
    with pytest.raises(ValueError, match="target RSE"):
        parse_target_rse(text)


def test_settings_reject_bad_values():
    with pytest.raises(ValueError, match="--runs"):
        ProfileSettings(runs=0)
    with pytest.raises(ValueError, match="--threads"):
        ProfileSettings(threads=0)


# Host description and device profiles


def test_host_info_fields():
    info = host_info()
    assert info["cores"] >= 1
    assert info["cpu_model"]
    assert len(info["fingerprint"]) == 16
    assert "onnxruntime" in info["runtime_versions"]
    assert host_info()["fingerprint"] == info["fingerprint"]


@pytest.mark.parametrize("name", ["host", "pi5", "pixel7", "jetson-orin-nano"])
def test_recipe_profiles_load(name):
    profile = load_profile(RECIPES / f"{name}.yaml")
    assert profile.name == name
    assert profile.budget_ms is not None
    assert profile.budget_ms > 0
    assert profile.kind in ("host", "agent", "adb")
    assert resolve_profile(name).source == RECIPES / f"{name}.yaml"


def test_pixel7_profile_binaries():
    profile = load_profile(RECIPES / "pixel7.yaml")
    assert profile.kind == "adb"
    assert set(profile.connection["benchmark_binaries"]) == {"litert", "executorch", "onnxruntime"}
    assert profile.threads == 2


def test_device_specs():
    assert resolve_profile("host").kind == "host"
    agent = resolve_profile("agent://10.0.0.2:8765")
    assert agent.kind == "agent"
    assert agent.connection["address"] == "agent://10.0.0.2:8765"
    assert resolve_profile("adb:R58M123").connection["serial"] == "R58M123"


def test_unknown_device_suggests():
    with pytest.raises(ValueError, match="did you mean pi5"):
        resolve_profile("pi6")


@pytest.mark.parametrize("text, message", [
    ("connection: {type: ssh}", "invalid connection type"),
    ("threads: -2", "invalid threads"),
    ("budget: {ms: 0}", "invalid budget"),
    ("colour: blue", "unknown keys"),
    ("connection: {type: agent}", "agent://HOST:PORT"),
    ("runtime: tensorrt", "invalid runtime"),
    ("- a list", "not a mapping"),
])
def test_invalid_profiles(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ValueError, match=message):
        load_profile(path)


def test_agent_device_needs_token(monkeypatch):
    monkeypatch.delenv("EDGEEFF_AGENT_TOKEN", raising=False)
    with pytest.raises(ValueError, match="--token"):
        open_device("agent://127.0.0.1:9")


def test_invalid_agent_address():
    with pytest.raises(ValueError, match="agent://HOST:PORT"):
        open_device("agent://nohost", token="t" * 20)


# Results database


def test_database_round_trip(tmp_path):
    database = ResultsDatabase(tmp_path / "r.sqlite")
    first = database.add(make_record())
    second = database.add(make_record(artifact_name="lite0.tflite", artifact_format="tflite", runtime="litert",
                                      artifact_sha256="cd" * 32, median_ms=3.0, variant="lite0", precision="int8"))
    assert second > first
    rows = database.query()
    assert [row_id for row_id, _ in rows] == [second, first]
    assert rows[1][1].to_dict() == make_record().to_dict() | {"created_at": rows[1][1].created_at}
    assert [r.artifact_name for _, r in database.query(artifact="lite0")] == ["lite0.tflite"]
    assert [r.artifact_name for _, r in database.query(artifact="abab")] == ["b0.onnx"]
    assert [r.variant for _, r in database.query(precision="int8")] == ["lite0"]
    assert database.query(device="nope") == []
    assert len(database.query(device="ffff")) == 2
    latest = database.latest("f" * 16, "cd" * 32)
    assert latest.median_ms == 3.0
    assert database.latest("f" * 16, "cd" * 32, threads=8) is None


def test_database_csv(tmp_path):
    database = ResultsDatabase(tmp_path / "r.sqlite")
    database.add(make_record())
    text = to_csv(database.query())
    header, row = text.strip().splitlines()
    assert header.split(",")[:3] == ["id", "created_at", "device_name"]
    assert "Test CPU" in row
    assert "b0.onnx" in row


def _write_records(path: str, writer: int, count: int) -> None:
    database = ResultsDatabase(path)
    for index in range(count):
        database.add(make_record(artifact_name=f"w{writer}-{index}.onnx", median_ms=float(index)))


def test_database_concurrent_writers(tmp_path):
    path = str(tmp_path / "r.sqlite")
    context = multiprocessing.get_context("spawn")
    workers = [context.Process(target=_write_records, args=(path, writer, 25)) for writer in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(timeout=120)
    assert [worker.exitcode for worker in workers] == [0, 0, 0, 0]
    rows = ResultsDatabase(path).query()
    assert len(rows) == 100
    assert len({record.artifact_name for _, record in rows}) == 100
    with sqlite3.connect(path) as connection:
        assert connection.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_database_corrupt_file(tmp_path):
    path = tmp_path / "r.sqlite"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(ResultsDatabaseError, match="corrupt.*move it aside"):
        ResultsDatabase(path).add(make_record())


def test_database_locked_file(tmp_path):
    path = tmp_path / "r.sqlite"
    ResultsDatabase(path).add(make_record())
    holder = sqlite3.connect(path)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(ResultsDatabaseError, match="locked by another process"):
            ResultsDatabase(path, busy_timeout_s=0.2).add(make_record())
    finally:
        holder.rollback()
        holder.close()


def test_database_path_is_directory(tmp_path):
    with pytest.raises(ResultsDatabaseError, match="is a directory"):
        ResultsDatabase(tmp_path).query()


# No torch on the device


def test_profile_imports_without_torch():
    code = ("import sys; sys.modules['torch'] = None\n"
            "import edgeeff.profile, edgeeff.profile.agent, edgeeff.profile.worker, edgeeff.profile.adb\n"
            "import edgeeff.profile.client, edgeeff.runtime, edgeeff.cli.profile\n"
            "from edgeeff.runtime import open_runner\n"
            "for name in ('onnxruntime', 'litert'):\n"
            "    try:\n"
            "        __import__('edgeeff.runtime.' + name)\n"
            "    except ModuleNotFoundError as exc:\n"
            "        if exc.name != 'edgeeff.runtime.' + name: raise\n"
            "assert 'torch' not in [m for m in sys.modules if sys.modules[m] is not None and m.split('.')[0] == 'torch']\n"
            "print('ok')\n")
    completed = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=python_env(),
                               timeout=120)
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.strip() == "ok"


def test_agent_command_starts_without_torch(tmp_path):
    blocker = tmp_path / "no-torch" / "torch"
    blocker.mkdir(parents=True)
    (blocker / "__init__.py").write_text("raise ImportError('torch is blocked in this test')\n")
    for command in (["agent", "serve", "--help"], ["profile", "--help"], ["results", "--help"]):
        completed = subprocess.run([sys.executable, "-m", "edgeeff", *command], capture_output=True, text=True,
                                   env=python_env(blocker.parent), timeout=120)
        assert completed.returncode == 0, completed.stderr
        assert "Usage:" in completed.stdout


# Profiling on this host


def test_host_profile_onnx(b0_onnx):
    device = open_device("host")
    record = device.profile(Artifact.open(b0_onnx), ProfileSettings(threads=1, warmup=2, runs=10))
    assert record.ok, record.error
    assert record.runtime == "onnxruntime"
    assert record.runtime_version == record.runtime_versions["onnxruntime"]
    assert record.runs == 10
    assert record.warmup == 2
    assert record.threads == 1
    assert record.input_shape == [1, 3, 64, 64]
    assert record.load_ms > 0
    assert record.first_ms > 0
    assert 0 < record.min_ms <= record.median_ms <= record.p90_ms <= record.p99_ms <= record.max_ms
    assert record.std_ms >= 0
    assert record.rse is not None
    assert record.peak_rss_mb > record.baseline_rss_mb > 0
    assert record.artifact_bytes == b0_onnx.stat().st_size
    assert record.stop_reason == "runs"
    assert record.device_fingerprint == host_info()["fingerprint"]


def test_host_profile_target_rse(b0_onnx):
    device = open_device("host")
    record = device.profile(Artifact.open(b0_onnx),
                            ProfileSettings(threads=1, warmup=2, runs=5, target_rse=0.5, time_cap_s=20))
    assert record.ok, record.error
    assert record.stop_reason == "target reached"
    assert record.rse <= 0.5

    capped = device.profile(Artifact.open(b0_onnx),
                            ProfileSettings(threads=1, warmup=0, runs=5, target_rse=1e-6, time_cap_s=1.0))
    assert capped.ok, capped.error
    assert capped.stop_reason == "time cap"
    assert capped.runs > 5
    assert capped.time_cap_s == 1.0


def test_host_profile_broken_artifact(tmp_path):
    path = tmp_path / "broken.onnx"
    path.write_bytes(b"not a model at all")
    record = open_device("host").profile(Artifact.open(path), ProfileSettings(warmup=0, runs=1))
    assert record.status == "failed"
    assert record.error


def test_host_threads_beyond_cores(b0_onnx):
    with pytest.raises(ValueError, match="more than the"):
        open_device("host").profile(Artifact.open(b0_onnx), ProfileSettings(threads=4096))


def test_missing_artifact():
    with pytest.raises(FileNotFoundError, match="artifact not found"):
        Artifact.open("/nonexistent/model.onnx")
    with pytest.raises(ValueError, match="unknown artifact type"):
        Artifact.open("/nonexistent/model.bin")


def _disagreeing_pairs(records) -> list[tuple[float, float, float]]:
    """Return (median, median, spread) for each pair of profiles whose medians differ by more than the spread.

    A profile's spread is p99 - min, and a pair is compared with the wider of its two spreads.
    """
    pairs = []
    for i, a in enumerate(records):
        for b in records[i + 1:]:
            spread = max(a.p99_ms - a.min_ms, b.p99_ms - b.min_ms)
            if abs(a.median_ms - b.median_ms) > spread:
                pairs.append((a.median_ms, b.median_ms, spread))
    return pairs


@pytest.mark.slow
def test_repeated_profiles_agree(b0_onnx):
    """Three fresh-process profiles of one artifact: their medians differ by less than the reported spread.

    On a shared CI machine, a burst of load from another job can slow one whole profile by 15-20 %
    (seen once in CI: medians 1.55 and 1.81 ms). A burst passes and a fault in the profiler does not,
    so a round of three that disagrees is measured again once, and a second disagreeing round fails.
    """
    device = open_device("host")
    settings = ProfileSettings(threads=1, warmup=5, runs=40)
    rounds = []
    for _ in range(2):
        records = [device.profile(Artifact.open(b0_onnx), settings) for _ in range(3)]
        for record in records:
            assert record.ok, record.error
        rounds.append(_disagreeing_pairs(records))
        if not rounds[-1]:
            break
    assert not rounds[-1], rounds


@pytest.mark.slow
def test_host_profiles_all_formats():
    """B0 and Lite0 exported by the pipeline to ExecuTorch, TFLite and ONNX all profile on this host."""
    exports = cached_exports()
    assert [(r.target, r.error) for r in exports if not r.ok] == []
    device = open_device("host")
    for export in exports:
        record = device.profile(Artifact.open(export.path), ProfileSettings(threads=1, warmup=2, runs=10))
        assert record.ok, (export.path.name, record.error)
        assert record.variant == export.sidecar["model"]["name"]
        assert record.precision == "fp32"
        assert record.resolution == 64
        assert record.runtime == export.sidecar["runtime"]
        assert record.median_ms > 0
        assert record.peak_rss_mb > 0
    formats = {Artifact.open(export.path).format for export in exports}
    assert formats == {"onnx", "tflite", "pte"}


# The CLI


def test_cli_profile_and_results(b0_onnx, tmp_path):
    db = tmp_path / "results.sqlite"
    runner = CliRunner()
    result = runner.invoke(profile_command, [str(b0_onnx), "--threads", "1", "--warmup", "1", "--runs", "5",
                                             "--db", str(db), "--json"])
    assert result.exit_code == 0, result.output
    records = json.loads(result.stdout)
    assert records[0]["status"] == "ok"
    assert records[0]["artifact_sha256"] == Artifact.open(b0_onnx).sha256

    table = runner.invoke(profile_command, [str(b0_onnx), "--threads", "1", "--warmup", "0", "--runs", "3",
                                            "--db", str(db)])
    assert table.exit_code == 0, table.output
    assert "ONNX" in table.stdout
    assert "Median" in table.stdout

    listed = runner.invoke(results_command, ["--db", str(db), "--json"])
    assert listed.exit_code == 0, listed.output
    rows = json.loads(listed.stdout)
    assert len(rows) == 2
    assert {row["artifact_name"] for row in rows} == {"b0-64.onnx"}

    csv_path = tmp_path / "out.csv"
    exported = runner.invoke(results_command, ["--db", str(db), "--csv", str(csv_path), "--format", "onnx"])
    assert exported.exit_code == 0, exported.output
    assert len(csv_path.read_text().strip().splitlines()) == 3

    filtered = runner.invoke(results_command, ["--db", str(db), "--device", "host", "--threads", "1"])
    assert filtered.exit_code == 0
    assert "b0-64.onnx" in filtered.stdout


def test_cli_profile_failure_exit_code(tmp_path):
    path = tmp_path / "broken.onnx"
    path.write_bytes(b"not a model")
    result = CliRunner().invoke(profile_command, [str(path), "--runs", "1", "--warmup", "0", "--no-save"])
    assert result.exit_code == 1
    assert "failed to profile" in result.output


def test_cli_results_missing_db(tmp_path):
    result = CliRunner().invoke(results_command, ["--db", str(tmp_path / "none.sqlite")])
    assert result.exit_code == 1
    assert "no results database" in result.output


def test_cli_results_corrupt_db(tmp_path):
    path = tmp_path / "r.sqlite"
    path.write_bytes(b"garbage" * 200)
    result = CliRunner().invoke(results_command, ["--db", str(path)])
    assert result.exit_code == 1
    assert "corrupt" in result.output
