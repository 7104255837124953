"""`edgeeff select`: latency fit, measuring plan, decision, accuracy ranking, cache, CLI.

Most tests drive the selection with synthetic latencies computed from the MAC counts of the
EfficientNet paper's Table 2 (Tan and Le, 2019), so they need no export. The end-to-end tests
export B0, Lite0 and B1 at 64 px to ONNX on this host, once per module, and reuse that cache
and results database.
"""

from __future__ import annotations

import json
import math

import pytest
from click.testing import CliRunner

from edgeeff.cli import cli
from edgeeff.models import VARIANTS
from edgeeff.select.accuracy import attach_accuracy, read_accuracy
from edgeeff.select.cache import ExportCache, export_key, key_digest
from edgeeff.select.candidates import (Candidate, MeasuredPoint, parse_resolutions, resolutions_for,
                                       scaled_resolution)
from edgeeff.select.decide import CHOSEN, NONE_FITS, REFUSED, mark_frontier
from edgeeff.select.latency_model import fit_latency
from edgeeff.select.search import DeviceContext, SelectionSettings, run_selection

B_MODELS = [f"b{i}" for i in range(8)]


def synthetic_candidates(names=B_MODELS) -> list[Candidate]:
    """Candidates at native resolution with the paper's Table 2 params and MACs (no model is built)."""
    return [Candidate(variant=VARIANTS[name], resolution=VARIANTS[name].resolution,
                      params=int(VARIANTS[name].paper_params), macs=int(VARIANTS[name].paper_macs))
            for name in names]


def linear_latency(t0_ms=0.5, gmacs_per_s=300.0):
    """A device whose latency is t0 + MACs / throughput, with p90 10 % above the median."""
    def latency(candidate: Candidate) -> float:
        return t0_ms + candidate.macs / (gmacs_per_s * 1e6)
    return latency


class Recorder:
    """A measure function over a latency law that records which candidates were measured."""

    def __init__(self, law):
        self.law = law
        self.measured: list[str] = []

    def __call__(self, candidate: Candidate) -> MeasuredPoint:
        self.measured.append(candidate.label)
        value = self.law(candidate)
        return MeasuredPoint(median_ms=value / 1.1, p90_ms=value, p99_ms=value * 1.2, source="measured")


def select_synthetic(budget_ms, law=None, names=B_MODELS, **settings):
    recorder = Recorder(law or linear_latency())
    candidates = synthetic_candidates(names)
    selection = run_selection(candidates, SelectionSettings(budget_ms=budget_ms, **settings), recorder,
                              device=DeviceContext(name="test device", precision="fp32", threads=1, cores=4))
    return selection, recorder


# Latency fit

def test_fit_linear_recovers_coefficients():
    macs = [0.39e9, 0.7e9, 1.0e9, 1.8e9]
    latency = [0.5 + m / 3e8 for m in macs]
    fit = fit_latency(macs, latency)
    assert fit.kind == "linear"
    assert fit.coefficients["t0_ms"] == pytest.approx(0.5, rel=1e-6)
    assert fit.coefficients["macs_per_ms"] == pytest.approx(3e8, rel=1e-6)
    assert fit.error == pytest.approx(0.0, abs=1e-9)


def test_fit_power_law_picks_loglog():
    macs = [0.39e9, 0.7e9, 1.0e9, 1.8e9, 4.2e9]
    latency = [2.0 * (m / 1e9) ** 1.3 for m in macs]
    fit = fit_latency(macs, latency)
    assert fit.kind == "loglog"
    assert fit.coefficients["b"] == pytest.approx(1.3, rel=1e-6)
    assert fit.predict(9.9e9) == pytest.approx(2.0 * 9.9 ** 1.3, rel=1e-6)


def test_fit_error_unknown_below_three_points():
    fit = fit_latency([1e9, 2e9], [1.0, 2.0])
    assert fit is not None
    assert fit.error is None


def test_fit_rejects_falling_latency():
    assert fit_latency([1e9, 2e9, 4e9], [3.0, 2.0, 1.0]) is None


def test_no_fit_measures_cheapest_first():
    # Without a fit nothing can be predicted, so points are added cheapest first, never B4 early.
    def falling(candidate: Candidate) -> float:
        return 10.0 - candidate.macs / 1e10

    selection, recorder = select_synthetic(9.95, law=falling, names=["b0", "b1", "b2", "b3", "b4"])
    assert selection.fit is None
    assert recorder.measured == ["b0@224", "b1@240", "b2@260", "b3@300", "b4@380"]
    assert selection.decision.choice.name == "b4"


def test_late_fit_resumes_boundary_search():
    # B0–B2 fall with MACs (noise); once B3 is measured, the fit rules out B6 and B7.
    def noisy(candidate: Candidate) -> float:
        return {"b0": 3.0, "b1": 2.6, "b2": 2.2}.get(candidate.name, linear_latency()(candidate))

    selection, recorder = select_synthetic(10.0, law=noisy, max_fit_error=10.0)
    assert selection.decision.choice.name == "b3"
    assert "b7@600" not in recorder.measured


def test_fit_inverse_gives_macs_for_latency():
    fit = fit_latency([1e9, 2e9, 4e9], [1.5, 2.5, 4.5])
    assert fit.macs_for(3.5) == pytest.approx(3e9, rel=1e-6)
    assert fit.macs_for(0.4) is None


# Decision on synthetic measurements

def _midpoint_budgets():
    law = linear_latency()
    latencies = [law(c) for c in synthetic_candidates()]
    return [(B_MODELS[i], (latencies[i] + latencies[i + 1]) / 2) for i in range(len(latencies) - 1)]


@pytest.mark.parametrize("expected,budget_ms", _midpoint_budgets())
def test_budget_between_two_phi_picks_smaller(expected, budget_ms):
    selection, _ = select_synthetic(budget_ms)
    assert selection.decision.status == CHOSEN
    assert selection.decision.choice.name == expected


def test_only_boundary_measured_beyond_seed():
    # Budget between B3 (6.6 ms) and B4 (14.5 ms): seed B0–B2, then B3 and B4 to confirm.
    selection, recorder = select_synthetic(10.0)
    assert selection.decision.choice.name == "b3"
    assert recorder.measured == ["b0@224", "b1@240", "b2@260", "b3@300", "b4@380"]
    assert selection.decision.relies_on == ["b5@456", "b6@528", "b7@600"]
    assert "b4@380, measured" in selection.decision.reason


def test_predictions_reported_for_measured_points():
    selection, _ = select_synthetic(10.0)
    b4 = next(c for c in selection.candidates if c.name == "b4")
    assert b4.predicted_before_ms == pytest.approx(b4.measured.p90_ms, rel=0.01)
    assert b4.prediction_error("p90") == pytest.approx(0.0, abs=0.01)
    b7 = next(c for c in selection.candidates if c.name == "b7")
    assert b7.measured is None
    assert b7.predicted_ms == pytest.approx(linear_latency()(b7), rel=0.01)


def test_budget_above_all_picks_b7():
    selection, _ = select_synthetic(1000.0)
    assert selection.decision.choice.name == "b7"
    assert selection.decision.exit_code == 0


def test_impossible_budget_none_fits_exit_3():
    selection, recorder = select_synthetic(0.1)
    decision = selection.decision
    assert decision.status == NONE_FITS
    assert decision.exit_code == 3
    assert "fastest measured is b0@224" in decision.reason
    assert "p90 1.80 ms" in decision.reason
    assert any(tip.startswith("lower resolution") for tip in decision.suggestions)
    assert any("--int8" in tip for tip in decision.suggestions)
    assert any("--threads 4" in tip for tip in decision.suggestions)
    assert recorder.measured == ["b0@224", "b1@240", "b2@260"]


def test_fixed_cost_above_budget_says_resolution_cannot_help():
    selection, _ = select_synthetic(0.4, law=linear_latency(t0_ms=0.5))
    tip = selection.decision.suggestions[0]
    assert "fixed cost" in tip


def _erratic(candidate: Candidate) -> float:
    """Latency that MACs do not explain: B1 slower than B2 and B3, as on a thermally throttled device."""
    return {"b0": 1.0, "b1": 6.0, "b2": 2.5, "b3": 3.0, "b4": 9.0, "b5": 20.0, "b6": 40.0, "b7": 80.0}[candidate.name]


def test_high_fit_error_refuses_exit_4():
    selection, recorder = select_synthetic(7.0, law=_erratic)
    decision = selection.decision
    assert selection.fit.error > 0.15
    assert decision.status == REFUSED
    assert decision.exit_code == 4
    assert "exceeds --max-fit-error 15%" in decision.reason
    assert "best measured candidate within budget is b3@300" in decision.reason
    assert "b7@600" not in recorder.measured


def _flat_top(candidate: Candidate) -> float:
    """Noisy small models and a B6 faster than B5: predictions from MACs put B6 far over its real 8 ms."""
    return {"b0": 1.0, "b1": 4.0, "b2": 1.5, "b3": 3.0, "b4": 5.0, "b5": 9.0, "b6": 8.0, "b7": 10.0}[candidate.name]


def test_refusal_prevents_wrong_choice():
    # B6 (8 ms) meets 8.5 ms, but the fit predicts about 19 ms for it: choosing B4 would be wrong.
    selection, _ = select_synthetic(8.5, law=_flat_top)
    assert selection.decision.status == REFUSED
    assert "b6@528" in selection.decision.relies_on
    measured_all, _ = select_synthetic(8.5, law=_flat_top, measure_all=True)
    assert measured_all.decision.choice.name == "b6"


def test_none_fits_stands_despite_fit_error():
    def noisy(candidate: Candidate) -> float:
        return {"b0": 1.0, "b1": 1.1, "b2": 2.2}.get(candidate.name, linear_latency()(candidate))

    selection, recorder = select_synthetic(0.5, law=noisy)
    assert selection.fit.error > 0.15
    assert selection.decision.status == NONE_FITS
    assert recorder.measured == ["b0@224", "b1@240", "b2@260"]


def test_measure_all_decides_despite_fit_error():
    selection, recorder = select_synthetic(7.0, law=_erratic, measure_all=True)
    assert selection.decision.status == CHOSEN
    assert selection.decision.choice.name == "b3"
    assert len(recorder.measured) == 8


def test_loose_error_limit_accepts_fit():
    selection, _ = select_synthetic(7.0, law=_erratic, max_fit_error=10.0)
    assert selection.decision.status == CHOSEN


@pytest.mark.parametrize("budget", [0.0, -5.0, math.inf])
def test_settings_reject_bad_budget(budget):
    with pytest.raises(ValueError, match="invalid budget"):
        SelectionSettings(budget_ms=budget)


def test_stored_points_are_not_measured_again():
    law = linear_latency()
    recorder = Recorder(law)
    candidates = synthetic_candidates()

    def lookup(candidate):
        if candidate.name in ("b0", "b1", "b2", "b3", "b4"):
            return MeasuredPoint(median_ms=None, p90_ms=law(candidate), p99_ms=None, source="stored")
        return None

    selection = run_selection(candidates, SelectionSettings(budget_ms=10.0), recorder, lookup)
    assert recorder.measured == []
    assert selection.decision.choice.name == "b3"
    assert selection.counts()["stored"] == 5


def test_missing_metric_names_the_fix():
    def measure(candidate):
        return MeasuredPoint(median_ms=1.0, p90_ms=None, p99_ms=None, source="measured")

    with pytest.raises(ValueError, match="pass --metric median"):
        run_selection(synthetic_candidates(["b0", "b1"]), SelectionSettings(budget_ms=10.0), measure)


# Accuracy ranking and the frontier

def test_accuracy_ranking_picks_most_accurate_within_budget(tmp_path):
    table = tmp_path / "accuracy.csv"
    table.write_text("model,top1\nb0,77.1\nb1,79.1\nb2,82.0\nb3,81.6\nb4,82.9\n")
    candidates = synthetic_candidates()
    attach_accuracy(candidates, read_accuracy(table), "fp32", "tflite")
    recorder = Recorder(linear_latency())
    selection = run_selection(candidates, SelectionSettings(budget_ms=10.0, by_accuracy=True), recorder)
    assert selection.decision.choice.name == "b2"
    assert "highest accuracy (82.0%" in selection.decision.reason


def test_frontier_excludes_dominated():
    candidates = synthetic_candidates(["b0", "b1", "b2"])
    for candidate, value in zip(candidates, [1.0, 3.0, 2.0]):
        candidate.measured = MeasuredPoint(median_ms=value, p90_ms=value, p99_ms=value, source="measured")
    mark_frontier(candidates, "p90", by_accuracy=False)
    assert [c.on_frontier for c in candidates] == [True, False, True]


def test_read_accuracy_check_report(tmp_path):
    report = tmp_path / "check.json"
    report.write_text(json.dumps({
        "float": {"name": "float", "variant": "b0", "top1": 0.78},
        "artifacts": [{"name": "b0-224px-int8.tflite", "target": "tflite", "top1": 0.76},
                      {"name": "b0-160px-int8.tflite", "target": "tflite", "top1": 0.70}],
    }))
    candidates = synthetic_candidates(["b0"]) + [Candidate(VARIANTS["b0"], 160, 1, 1)]
    assert attach_accuracy(candidates, read_accuracy(report), "int8", "tflite") == 2
    assert candidates[0].accuracy == pytest.approx(0.76)
    assert candidates[1].accuracy == pytest.approx(0.70)
    fp32 = synthetic_candidates(["b0"])
    attach_accuracy(fp32, read_accuracy(report), "fp32", "tflite")
    assert fp32[0].accuracy == pytest.approx(0.78)


def test_read_accuracy_json_object_with_resolution(tmp_path):
    table = tmp_path / "accuracy.json"
    table.write_text(json.dumps({"b4": 82.9, "b4@320": 81.0}))
    candidates = synthetic_candidates(["b4"]) + [Candidate(VARIANTS["b4"], 320, 1, 1), Candidate(VARIANTS["b4"], 256, 1, 1)]
    attach_accuracy(candidates, read_accuracy(table), "fp32", "onnx")
    assert [c.accuracy for c in candidates] == [pytest.approx(0.829), pytest.approx(0.81), None]


def test_read_accuracy_rejects_bad_value(tmp_path):
    table = tmp_path / "accuracy.csv"
    table.write_text("model,top1\nb0,high\n")
    with pytest.raises(ValueError, match="invalid accuracy 'high'"):
        read_accuracy(table)


# Resolutions

def test_parse_resolutions_items():
    assert parse_resolutions(None) == ["native"]
    assert parse_resolutions("native, 192,0.5x") == ["native", 192, 0.5]


@pytest.mark.parametrize("text,message", [("191", "even size"), ("1.5x", "factor in"), ("big", "invalid resolution")])
def test_parse_resolutions_rejects(text, message):
    with pytest.raises(ValueError, match=message):
        parse_resolutions(text)


def test_resolutions_skip_above_native():
    sizes = resolutions_for(VARIANTS["b0"], ["native", 256, 192, 0.5])
    assert sizes == {224: "native", 192: "192 px", 112: "0.5x"}
    assert scaled_resolution(260, 0.25) == 64


# Export cache

def test_cache_key_changes_with_tool_versions():
    common = dict(variant=VARIANTS["b0"], resolution=224, num_classes=1000, precision="int8", target="tflite",
                  arch="x86", checkpoint_sha256=None, calibration={"source": "bundled", "size": 32, "seed": 0})
    first = export_key(**common, tool_versions={"litert-torch": "0.10.0"})
    second = export_key(**common, tool_versions={"litert-torch": "0.11.0"})
    assert key_digest(first) != key_digest(second)


def test_cache_rejects_changed_artifact(tmp_path):
    import hashlib

    cache = ExportCache(tmp_path)
    key = export_key(variant=VARIANTS["b0"], resolution=64, num_classes=1000, precision="fp32", target="onnx",
                     arch="x86", checkpoint_sha256=None, calibration={}, tool_versions={})
    folder = cache.entry_dir(key)
    folder.mkdir(parents=True)
    artifact = folder / "b0-64px-fp32-untrained.onnx"
    artifact.write_bytes(b"model bytes")
    sidecar = {"schema": 1, "sha256": hashlib.sha256(b"model bytes").hexdigest()}
    (folder / (artifact.name + ".json")).write_text(json.dumps(sidecar))
    cache.store(key, artifact, sidecar)
    assert cache.lookup(key).path == artifact
    artifact.write_bytes(b"other bytes")
    assert cache.lookup(key) is None


# CLI input errors (no export, no device)

@pytest.mark.parametrize("args,message", [
    (["--budget-ms", "0"], "invalid --budget-ms 0"),
    (["--budget-ms", "-5"], "invalid --budget-ms -5"),
    (["--budget-ms", "25", "--models", "b0", "--phi", "0:1:1"], "--models and --phi both given"),
    (["--budget-ms", "25", "--models", "b9"], "unknown model 'b9'"),
    (["--budget-ms", "25", "--resolutions", "33"], "invalid resolution 33"),
    (["--budget-ms", "25", "--max-fit-error", "-1"], "invalid --max-fit-error"),
])
def test_cli_bad_input_one_line_exit_2(args, message):
    result = CliRunner().invoke(cli, ["select", *args])
    assert result.exit_code == 2, result.output
    assert message in result.output
    assert len([line for line in result.output.splitlines() if line.strip()]) == 1


def test_cli_accuracy_without_match_exit_2(tmp_path):
    table = tmp_path / "accuracy.csv"
    table.write_text("model,top1\nb5,83.6\n")
    result = CliRunner().invoke(cli, ["select", "--budget-ms", "25", "--models", "b0,b1", "--accuracy", str(table),
                                      "--cache-dir", str(tmp_path / "cache"), "--db", str(tmp_path / "r.sqlite")])
    assert result.exit_code == 2, result.output
    assert "no accuracy entry matches a candidate" in result.output


def test_cli_checkpoint_of_other_variant_exit_2(tmp_path, lite0_checkpoint):
    result = CliRunner().invoke(cli, ["select", "--budget-ms", "25", "--models", "b0,b1",
                                      "--checkpoint", str(lite0_checkpoint), "--db", str(tmp_path / "r.sqlite")])
    assert result.exit_code == 2, result.output
    assert "is lite0, which is not among the candidates" in result.output


def test_cli_help_documents_exit_codes():
    result = CliRunner().invoke(cli, ["select", "--help"])
    assert result.exit_code == 0
    assert "3  no candidate meets the budget" in result.output
    assert "4  refused" in result.output


# End to end on this host: B0, Lite0 and B1 at 64 px, ONNX FP32

E2E_ARGS = ["--device", "host", "--target", "onnx", "--models", "b0,lite0,b1", "--resolutions", "64",
            "--threads", "1", "--warmup", "2", "--runs", "5", "--calib-size", "16", "--verify-size", "2"]


@pytest.fixture(scope="module")
def e2e(tmp_path_factory):
    """Run select once on host, filling a module-wide cache and results database."""
    root = tmp_path_factory.mktemp("select-e2e")
    paths = ["--cache-dir", str(root / "cache"), "--db", str(root / "results.sqlite")]
    result = CliRunner().invoke(cli, ["select", *E2E_ARGS, *paths, "--budget-ms", "10000", "--json",
                                      "--plot", str(root / "plot.png"), "--record", str(root / "record.json")])
    return root, paths, result


@pytest.mark.slow
def test_e2e_chooses_and_writes_outputs(e2e):
    root, _, result = e2e
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["decision"]["status"] == "chosen"
    assert record["decision"]["choice"]["name"] == "b1"
    assert record["cache"]["exports"] == 3
    assert all(c["latency_source"] == "measured" for c in record["candidates"])
    assert record["fit"]["points"] == 3
    assert json.loads((root / "record.json").read_text())["decision"] == record["decision"]
    assert (root / "plot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_e2e_second_run_exports_nothing(e2e):
    _, paths, first = e2e
    assert first.exit_code == 0, first.output
    result = CliRunner().invoke(cli, ["select", *E2E_ARGS, *paths, "--budget-ms", "10000", "--json"])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["cache"]["exports"] == 0
    assert record["profiles"] == 0
    assert record["counts"]["stored"] == 3


@pytest.mark.slow
def test_e2e_impossible_budget_exit_3(e2e):
    _, paths, first = e2e
    assert first.exit_code == 0, first.output
    result = CliRunner().invoke(cli, ["select", *E2E_ARGS, *paths, "--budget-ms", "0.001"])
    assert result.exit_code == 3, result.output
    output = " ".join(result.output.split())
    assert "no candidate meets p90 <= 0.001 ms on host: the fastest measured is" in output
    assert "what would fit:" in output


def test_cli_threads_beyond_cores_before_export(tmp_path):
    cache = tmp_path / "cache"
    result = CliRunner().invoke(cli, ["select", "--budget-ms", "25", "--models", "b0,b1", "--threads", "999",
                                      "--cache-dir", str(cache), "--db", str(tmp_path / "r.sqlite")])
    assert result.exit_code == 2, result.output
    assert "--threads 999 is more than the" in result.output
    assert not cache.exists() or not any(cache.rglob("*.tflite"))
