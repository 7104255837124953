"""Pure helpers of bench/stock_routes.py: the photo split, ratios, formatting and the comparison table."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np
import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "bench" / "stock_routes.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("stock_routes", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_split_even_odd_disjoint(bench):
    files = [f"photo-{i}.jpg" for i in range(7)]
    even, odd = bench.split_even_odd(files)
    assert even == ["photo-0.jpg", "photo-2.jpg", "photo-4.jpg", "photo-6.jpg"]
    assert odd == ["photo-1.jpg", "photo-3.jpg", "photo-5.jpg"]
    assert not set(even) & set(odd)


def test_split_even_odd_bundled_photos(bench, photos):
    from edgeeff.data.images import list_images

    even, odd = bench.split_even_odd(list_images(photos))
    assert len(even) + len(odd) == len(list_images(photos))
    assert len(even) - len(odd) in (0, 1)


def test_ratio_cases(bench):
    assert bench.ratio(2.0, 4.0) == pytest.approx(0.5)
    assert bench.ratio(None, 4.0) is None
    assert bench.ratio(2.0, None) is None
    assert bench.ratio(2.0, 0.0) is None


def test_top1_agreement_counts_matches(bench):
    reference = np.array([[0.0, 1.0], [1.0, 0.0], [0.2, 0.1], [0.0, 3.0]])
    logits = np.array([[0.0, 2.0], [0.0, 1.0], [0.9, 0.1], [1.0, 0.0]])
    assert bench.top1_agreement(logits, reference) == pytest.approx(0.5)


def test_top1_agreement_rejects_shape_mismatch(bench):
    with pytest.raises(ValueError, match="shape"):
        bench.top1_agreement(np.zeros((2, 3)), np.zeros((3, 3)))


def test_fastest_pass_picks_lowest_median(bench):
    from types import SimpleNamespace

    slow = SimpleNamespace(status="ok", median_ms=11.0, p90_ms=12.0, error=None)
    fast = SimpleNamespace(status="ok", median_ms=6.0, p90_ms=6.5, error=None)
    failed = SimpleNamespace(status="failed", median_ms=None, p90_ms=None, error="worker exited with code 1")

    assert bench.fastest_pass([slow, fast]) == {"median_ms": 6.0, "p90_ms": 6.5, "pass_medians_ms": [11.0, 6.0]}
    assert bench.fastest_pass([failed, slow])["median_ms"] == 11.0
    assert bench.fastest_pass([failed, None]) == {"median_ms": None, "p90_ms": None, "pass_medians_ms": [],
                                                  "profile_error": "worker exited with code 1"}
    assert bench.fastest_pass([None])["median_ms"] is None


def test_pass_spread_lines_flag_slow_pass(bench):
    steady = {"model": "b0", "target": "onnx", "precision": "fp32",
              "edgeeff": {"pass_medians_ms": [6.2, 6.4]}, "stock": {"pass_medians_ms": [6.3]}}
    disturbed = {"model": "b0", "target": "tflite", "precision": "fp32",
                 "edgeeff": {"pass_medians_ms": [11.2, 6.1]}, "stock": {}}

    assert bench.pass_spread_lines([steady]) == []
    assert bench.pass_spread_lines([disturbed]) == [
        "- b0 tflite fp32 edgeeff: pass medians 11.2 / 6.1 ms; the table gives the fastest."]


def test_achieved_gmacs(bench):
    assert bench.achieved_gmacs(400_000_000, 10.0) == pytest.approx(40.0)
    assert bench.achieved_gmacs(None, 10.0) is None
    assert bench.achieved_gmacs(400_000_000, None) is None


def test_fmt_compact(bench):
    assert bench.fmt(None) == "-"
    assert bench.fmt(1.234) == "1.23"
    assert bench.fmt(12.34) == "12.3"
    assert bench.fmt(123.4) == "123"
    assert bench.fmt_percent(0.256) == "26%"
    assert bench.fmt_percent(None) == "-"


def test_parse_resolution_forms(bench):
    assert bench.parse_resolution(None, 224) == 224
    assert bench.parse_resolution("64", 224) == 64
    assert bench.parse_resolution("0.5x", 224) == 112
    assert bench.parse_resolution("0.1x", 224) == 32


@pytest.mark.parametrize("value", ["abc", "0x", "-3", "0"])
def test_parse_resolution_rejects(bench, value):
    with pytest.raises(ValueError, match="resolution"):
        bench.parse_resolution(value, 224)


def test_stock_name(bench):
    assert bench.stock_name("b0-64px-int8-untrained.onnx") == "b0-64px-int8-untrained-stock.onnx"


def test_markdown_table_rows(bench):
    lines = bench.markdown_table(["a", "b"], [["1", "2"]])
    assert lines == ["| a | b |", "|---|---|", "| 1 | 2 |"]
    with pytest.raises(ValueError, match="cells"):
        bench.markdown_table(["a", "b"], [["1"]])


def _row(target, precision, edgeeff_ms, stock_ms):
    return {"model": "b0", "resolution": 64, "trained": False, "macs": 100_000_000, "target": target,
            "precision": precision, "edgeeff": {"median_ms": edgeeff_ms, "p90_ms": edgeeff_ms, "agreement": 0.9,
                                                "export_s": 1.0, "peak_mb": 500.0},
            "stock": {"median_ms": stock_ms, "p90_ms": stock_ms, "agreement": 0.8, "export_s": 2.0, "peak_mb": 600.0}}


def test_add_derived_speedup_and_peak(bench):
    results = [_row("onnx", "fp32", 4.0, 4.0), _row("onnx", "int8", 2.0, 8.0)]
    bench.add_derived(results, {"fp32_peak": 50.0, "int8_peak": 100.0})
    fp32, int8 = results
    assert int8["ratio"] == pytest.approx(0.25)
    assert int8["edgeeff"]["speedup_over_fp32"] == pytest.approx(2.0)
    assert int8["stock"]["speedup_over_fp32"] == pytest.approx(0.5)
    assert fp32["edgeeff"]["speedup_over_fp32"] is None
    assert fp32["edgeeff"]["gmacs"] == pytest.approx(25.0)
    assert fp32["edgeeff"]["fraction_of_peak"] == pytest.approx(0.5)
    assert int8["edgeeff"]["fraction_of_peak"] == pytest.approx(0.5)


def test_comparison_rows_shape_and_failure(bench):
    results = [_row("tflite", "fp32", 4.0, 4.0), _row("tflite", "int8", 2.0, 8.0)]
    results[1]["stock"] = {"error": "RuntimeError: export failed"}
    bench.add_derived(results, {"fp32_peak": 50.0, "int8_peak": None})
    rows = bench.comparison_rows(results)
    assert all(len(row) == len(bench.COMPARISON_HEADER) for row in rows)
    assert rows[1][5] == "failed / failed"
    assert rows[1][6] == "-"
    assert bench.failure_lines(results) == ["- b0 tflite int8 stock failed: RuntimeError: export failed"]


def test_plot_scaling_writes_png(bench, tmp_path):
    results = [{"model": "b0", "resolution": 56, "macs": 30_000_000,
                "artifacts": {"onnx fp32": {"median_ms": 2.0}, "onnx int8": {"error": "failed"}}},
               {"model": "b1", "resolution": 64, "macs": 50_000_000,
                "artifacts": {"onnx fp32": {"median_ms": 4.0}, "onnx int8": {"median_ms": 3.0}}}]
    path = tmp_path / "scaling.png"
    bench.plot_scaling(results, ["onnx fp32", "onnx int8"], path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
