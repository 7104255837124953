"""The adb path against a stand-in adb that runs the commands locally, and the tool output parsers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from edgeeff.cli.profile import profile_command
from edgeeff.profile import Artifact, ProfileSettings, ResultsDatabase, open_device
from edgeeff.profile.native import (benchmark_argv, parse_benchmark_model, parse_binary_options,
                                    parse_executor_runner, parse_perf_test)
from edgeeff.profile.record import ProfileError
from profile_helpers import cached_onnx, fake_pte, fake_tflite, install_fake_adb

SERIAL = "emulator-5554"

# Output of benchmark_model from a TFLite 2.1x build (seen in a user's log on an Android phone).
BENCHMARK_MODEL_OUTPUT = """\
INFO: STARTING!
INFO: Log parameter values verbosely: [0]
INFO: Min num runs: [1000]
INFO: Min warmup runs: [5]
INFO: Graph: [./models/tiny_float32.tflite]
INFO: Loaded model ./models/tiny_float32.tflite
INFO: Initialized TensorFlow Lite runtime.
INFO: Created TensorFlow Lite XNNPACK delegate for CPU.
INFO: The input model file size (MB): 24.6229
INFO: Initialized session in 119.515ms.
INFO: Running benchmark for at least 5 iterations and at least 0.5 seconds but terminate if exceeding 150 seconds.
INFO: count=9 first=87112 curr=51629 min=51629 max=87112 avg=58147.4 std=11478 p5=51629 median=51962 p95=87112

INFO: Running benchmark for at least 1000 iterations and at least 1 seconds but terminate if exceeding 150 seconds.
INFO: count=1000 first=52162 curr=49785 min=49088 max=686105 avg=63743.2 std=60716 p5=49620 median=51891 p95=68628

INFO: Inference timings in us: Init: 119515, First inference: 87112, Warmup (avg): 58147.4, Inference (avg): 63743.2
INFO: Note: as the benchmark tool itself affects memory footprint, the following is only APPROXIMATE to the actual memory footprint of the model at runtime. Take the information at your discretion.
INFO: Memory footprint delta from the start of the tool (MB): init=55.4961 overall=55.4961
"""

# Older benchmark_model builds print the count line without percentiles and without "INFO: ".
OLD_BENCHMARK_MODEL_OUTPUT = """\
Initialized session in 0.896ms
Running benchmark for at least 1 iterations and at least 0.5 seconds but terminate if exceeding 150 seconds.
count=215 first=12231 curr=2106 min=2065 max=12231 avg=2331.42 std=746

Running benchmark for at least 100 iterations and at least 1 seconds but terminate if exceeding 150 seconds.
count=459 first=2143 curr=2101 min=2056 max=2656 avg=2177.1 std=124

Inference timings in us: Init: 896, First inference: 12231, Warmup (avg): 2331.42, Inference (avg): 2177.1
"""

PERF_TEST_OUTPUT = """\
Session creation time cost: 0.0374 s
First inference time cost: 3 ms
Total inference time cost: 2.81 s
Total inference requests: 1000
Average inference time cost: 2.81 ms
Total inference run time: 2.82 s
Number of inferences per second: 354.6
Avg CPU usage: 48 %
Peak working set size: 37629952 bytes
Avg CPU usage:48
Peak working set size:37629952
Runs:1000
Min Latency: 0.00263 s
Max Latency: 0.00633 s
P50 Latency: 0.00278 s
P90 Latency: 0.00292 s
P95 Latency: 0.00302 s
P99 Latency: 0.00366 s
P999 Latency: 0.00633 s
"""

OLD_PERF_TEST_OUTPUT = """\
Total time cost:58.8053
Total iterations:1000
Average inference time cost: 58.8053 ms
Min Latency is 0.0559777sec
Max Latency is 0.0623472sec
P50 Latency is 0.0587108sec
P90 Latency is 0.0599845sec
P95 Latency is 0.0605676sec
P99 Latency is 0.0619517sec
"""

EXECUTOR_RUNNER_OUTPUT = """\
I 00:00:00.000512 executorch:executor_runner.cpp:181] Resetting threadpool with num threads = 2
I 00:00:00.003001 executorch:executor_runner.cpp:220] Model file b0.pte is loaded.
I 00:00:00.009400 executorch:executor_runner.cpp:319] Model loaded in 6.250000 ms.
I 00:00:00.020000 executorch:executor_runner.cpp:560] Iteration 1 of 4: 9.500000 ms
I 00:00:00.030000 executorch:executor_runner.cpp:560] Iteration 2 of 4: 5.000000 ms
I 00:00:00.040000 executorch:executor_runner.cpp:560] Iteration 3 of 4: 4.000000 ms
I 00:00:00.050000 executorch:executor_runner.cpp:560] Iteration 4 of 4: 4.200000 ms
I 00:00:00.050100 executorch:executor_runner.cpp:570] Model executed successfully 4 time(s) in 22.700000 ms.
"""

OLD_EXECUTOR_RUNNER_OUTPUT = """\
I 00:00:00.003001 executorch:executor_runner.cpp:120] Model file b0.pte is loaded.
I 00:00:00.050100 executorch:executor_runner.cpp:200] Model executed successfully 10 time(s) in 42.000000 ms.
"""


def test_benchmark_model_parser():
    parsed = parse_benchmark_model(BENCHMARK_MODEL_OUTPUT)
    assert parsed["load_ms"] == pytest.approx(119.515)
    assert parsed["first_ms"] == pytest.approx(87.112)
    assert parsed["runs"] == 1000
    assert parsed["median_ms"] == pytest.approx(51.891)
    assert parsed["min_ms"] == pytest.approx(49.088)
    assert parsed["p95_ms"] == pytest.approx(68.628)
    assert parsed["mean_ms"] == pytest.approx(63.7432)
    assert parsed["std_ms"] == pytest.approx(60.716)
    assert "p90_ms" not in parsed
    assert parsed["extra"]["memory_delta_mb"]["overall"] == pytest.approx(55.4961)


def test_benchmark_model_parser_old_format():
    parsed = parse_benchmark_model(OLD_BENCHMARK_MODEL_OUTPUT)
    assert parsed["runs"] == 459
    assert parsed["min_ms"] == pytest.approx(2.056)
    assert "median_ms" not in parsed
    assert parsed["mean_ms"] == pytest.approx(2.1771)


def test_perf_test_parser():
    parsed = parse_perf_test(PERF_TEST_OUTPUT)
    assert parsed["load_ms"] == pytest.approx(37.4)
    assert parsed["first_ms"] == 3
    assert parsed["runs"] == 1000
    assert parsed["median_ms"] == pytest.approx(2.78)
    assert parsed["p90_ms"] == pytest.approx(2.92)
    assert parsed["p99_ms"] == pytest.approx(3.66)
    assert parsed["peak_rss_mb"] == pytest.approx(37629952 / 2**20)


def test_perf_test_parser_old_format():
    parsed = parse_perf_test(OLD_PERF_TEST_OUTPUT)
    assert parsed["median_ms"] == pytest.approx(58.7108)
    assert parsed["p90_ms"] == pytest.approx(59.9845)


def test_executor_runner_parser_drops_warmup():
    parsed = parse_executor_runner(EXECUTOR_RUNNER_OUTPUT, warmup=1)
    assert parsed["load_ms"] == pytest.approx(6.25)
    assert parsed["first_ms"] == pytest.approx(9.5)
    assert parsed["runs"] == 2
    assert parsed["min_ms"] == pytest.approx(4.0)
    assert parsed["max_ms"] == pytest.approx(4.2)


def test_executor_runner_parser_total_only():
    parsed = parse_executor_runner(OLD_EXECUTOR_RUNNER_OUTPUT, warmup=0)
    assert parsed["mean_ms"] == pytest.approx(4.2)
    assert "median_ms" not in parsed
    assert "warm-up" in parsed["extra"]["note"]


@pytest.mark.parametrize("parser", [parse_benchmark_model, parse_perf_test,
                                    lambda text: parse_executor_runner(text, 0)])
def test_parsers_reject_tool_errors(parser):
    with pytest.raises(ProfileError, match="printed no"):
        parser("ERROR: Could not build model from 'missing.tflite'\nAborted\n")


def test_benchmark_argv_flags():
    settings = ProfileSettings(threads=4, warmup=3, runs=20)
    litert = benchmark_argv("litert", "/data/local/tmp/benchmark_model", "/d/m.tflite", settings)
    assert "--graph=/d/m.tflite" in litert
    assert "--num_threads=4" in litert
    assert "--num_runs=20" in litert
    assert "--warmup_runs=3" in litert
    executorch = benchmark_argv("executorch", "er", "/d/m.pte", settings)
    assert "--num_executions=24" in executorch
    assert "--cpu_threads=4" in executorch
    ort = benchmark_argv("onnxruntime", "pt", "/d/m.onnx", settings)
    assert ort[-1] == "/d/m.onnx"
    assert ort[ort.index("-r") + 1] == "20"
    assert ort[ort.index("-x") + 1] == "4"


def test_binary_options():
    assert parse_binary_options(["litert=/x/bm", "/y/executor_runner"]) == {"litert": "/x/bm",
                                                                            "executorch": "/y/executor_runner"}
    assert parse_binary_options(["tflite=/x/bm"]) == {"litert": "/x/bm"}
    with pytest.raises(ValueError, match="RUNTIME=PATH"):
        parse_binary_options(["/x/mystery_tool"])
    with pytest.raises(ValueError, match="unknown runtime"):
        parse_binary_options(["tensorrt=/x/trtexec"])


# The stand-in adb end to end


@pytest.fixture
def fake_adb(tmp_path, monkeypatch):
    env = install_fake_adb(tmp_path)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return tmp_path


@pytest.fixture(scope="module")
def small_onnx():
    return cached_onnx("b0", 64)


def _binaries(folder: Path) -> dict[str, str]:
    tools = folder / "tools"
    return {"litert": str(tools / "benchmark_model"), "executorch": str(tools / "executor_runner"),
            "onnxruntime": str(tools / "onnxruntime_perf_test")}


def test_adb_device_info(fake_adb):
    device = open_device(f"adb:{SERIAL}")
    info = device.info()
    assert info["system"] == "Android"
    assert info["cpu_model"] == "GS201"
    assert info["board"] == "Google Pixel 7"
    assert info["cores"] >= 1
    assert len(info["fingerprint"]) == 16


def test_adb_unknown_serial(fake_adb):
    from edgeeff.profile import DeviceError

    with pytest.raises(DeviceError, match="not ready"):
        open_device("adb:no-such-phone").info()


def test_adb_profiles_three_tools(fake_adb, small_onnx, tmp_path):
    device = open_device(f"adb:{SERIAL}", benchmark_binaries=_binaries(fake_adb))
    settings = ProfileSettings(threads=1, warmup=2, runs=5)
    tflite = Artifact.open(fake_tflite(tmp_path / "b0.tflite"))
    pte = Artifact.open(fake_pte(tmp_path / "b0.pte"))
    onnx = Artifact.open(small_onnx)

    litert_record = device.profile(tflite, settings)
    assert litert_record.ok, litert_record.error
    assert litert_record.method == "benchmark_model"
    assert litert_record.median_ms == pytest.approx(4.482)
    assert litert_record.peak_rss_mb == pytest.approx(21.25)
    assert litert_record.runs == 5
    assert "--num_threads=1" in litert_record.extra["command"]

    et_record = device.profile(pte, settings)
    assert et_record.ok, et_record.error
    assert et_record.method == "executor_runner"
    assert et_record.runs == 5
    assert et_record.first_ms == pytest.approx(6.25)
    assert et_record.load_ms == pytest.approx(4.812)

    ort_record = device.profile(onnx, settings)
    assert ort_record.ok, ort_record.error
    assert ort_record.method == "onnxruntime_perf_test"
    assert ort_record.runs == 5
    assert 0 < ort_record.min_ms <= ort_record.median_ms <= ort_record.p90_ms
    assert ort_record.warmup == 1

    pushed = sorted(p.name for p in (fake_adb / "device" / "data/local/tmp/edgeeff").iterdir())
    assert f"{tflite.sha256[:16]}-b0.tflite" in pushed
    assert "benchmark_model" in pushed
    for record in (litert_record, et_record, ort_record):
        assert record.device_kind == "adb"
        assert record.device_fingerprint == device.info()["fingerprint"]


def test_adb_missing_tool_fails_record(fake_adb, tmp_path):
    device = open_device(f"adb:{SERIAL}", benchmark_binaries={"litert": "/data/local/tmp/not-there/benchmark_model"})
    record = device.profile(Artifact.open(fake_tflite(tmp_path / "m.tflite")), ProfileSettings(runs=3, warmup=0))
    assert record.status == "failed"
    assert "benchmark_model printed no" in record.error

    record = device.profile(Artifact.open(fake_pte(tmp_path / "m.pte")), ProfileSettings(runs=3, warmup=0))
    assert record.status == "failed"
    assert "--benchmark-binary executorch=" in record.error


def test_adb_threads_beyond_cores(fake_adb, tmp_path):
    device = open_device(f"adb:{SERIAL}", benchmark_binaries=_binaries(fake_adb))
    with pytest.raises(ValueError, match="more than the"):
        device.profile(Artifact.open(fake_tflite(tmp_path / "m.tflite")), ProfileSettings(threads=4096))


def test_adb_cli_saves_results(fake_adb, tmp_path):
    db = tmp_path / "results.sqlite"
    artifact = fake_tflite(tmp_path / "b0-64px-fp32.tflite")
    result = CliRunner().invoke(profile_command, [
        str(artifact), "--device", f"adb:{SERIAL}", "--benchmark-binary", f"litert={fake_adb / 'tools/benchmark_model'}",
        "--warmup", "1", "--runs", "4", "--db", str(db), "--json"])
    assert result.exit_code == 0, result.output
    records = json.loads(result.stdout)
    assert records[0]["method"] == "benchmark_model"
    stored = ResultsDatabase(db).query()
    assert [record.artifact_name for _, record in stored] == ["b0-64px-fp32.tflite"]
    assert stored[0][1].device_kind == "adb"


def test_host_native_tool(fake_adb, small_onnx, tmp_path):
    """On the host (and in the agent), --benchmark-binary times a runtime with its native tool."""
    device = open_device("host", benchmark_binaries={"onnxruntime": str(fake_adb / "tools/onnxruntime_perf_test"),
                                                     "litert": str(fake_adb / "tools/benchmark_model")})
    settings = ProfileSettings(threads=1, warmup=0, runs=4)
    ort_record = device.profile(Artifact.open(small_onnx), settings)
    assert ort_record.ok, ort_record.error
    assert ort_record.method == "onnxruntime_perf_test"
    assert ort_record.device_kind == "host"
    assert ort_record.runs == 4

    missing = open_device("host", benchmark_binaries={"litert": str(tmp_path / "no-such-tool")})
    record = missing.profile(Artifact.open(fake_tflite(tmp_path / "m.tflite")), settings)
    assert record.status == "failed"
    assert "benchmark tool not found" in record.error
