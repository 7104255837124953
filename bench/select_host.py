"""Benchmark `edgeeff select` on this host: how well the latency fit predicts B0–B7, per format.

For each format, every candidate is measured (INT8, untrained weights, few calibration
images: the numbers are latency only). From those measurements the script reports:
- the seed fit: a fit on the cheapest points (3 by default), and its error at every other point,
  which is the extrapolation a real run relies on;
- the leave-one-out error of the final fit at every measured point;
- the adaptive run replayed on the same numbers: which candidates it would measure, its
  prediction for each just before measuring it, and whether it reaches the same decision.

The results replace the "## φ selection on this host" section of docs/benchmarks.md (other
sections are left as they are) and, with --records, go into one JSON decision record per format.

    .venv/bin/python bench/select_host.py                            # B0–B7 native, tflite and onnx
    .venv/bin/python bench/select_host.py --resolutions 0.25x        # quick run at a quarter resolution

Exports at native resolution take minutes each from B5 upward, and B7's ONNX INT8 calibration
at 600 px needed 9.3 GB with 2 images in a probe on a 2-core x86 host. Expect an hour or more
and plenty of memory for the full run.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from edgeeff.cli import quiet_converters  # noqa: E402

from edgeeff.io import write_json_atomic  # noqa: E402
sys.path.insert(0, str(Path(__file__).resolve().parent))
from docpage import replace_section  # noqa: E402
from edgeeff.profile import host_info  # noqa: E402
from edgeeff.select.candidates import MeasuredPoint, parse_models, parse_resolutions  # noqa: E402
from edgeeff.select.latency_model import fit_latency  # noqa: E402
from edgeeff.select.measure import SelectStepError  # noqa: E402
from edgeeff.select.pipeline import SelectRequest, select_model  # noqa: E402
from edgeeff.select.search import SelectionSettings, run_selection  # noqa: E402

HEADING = "## φ selection on this host"


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--formats", default="tflite,onnx", help="Export targets, comma-separated (default tflite,onnx).")
    parser.add_argument("--models", default="b0,b1,b2,b3,b4,b5,b6,b7", help="Variants (default B0–B7).")
    parser.add_argument("--resolutions", default="native", help="As for edgeeff select, e.g. native or 0.25x.")
    parser.add_argument("--budget-ms", type=float, default=25.0,
                        help="Budget for the decision and the replayed adaptive run (default 25 ms).")
    parser.add_argument("--metric", default="p90", choices=["median", "p90", "p99"])
    parser.add_argument("--threads", type=int, default=None, help="Runtime threads (default: the runtime's).")
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--calib-size", type=int, default=8,
                        help="Calibration images per export (default 8: enough for latency, not for accuracy).")
    parser.add_argument("--fit-points", type=int, default=3)
    parser.add_argument("--max-fit-error", type=float, default=0.15)
    parser.add_argument("--cache-dir", type=Path, default=None, help="Export cache (default: as for select).")
    parser.add_argument("--db", type=Path, default=None, help="Results database (default: as for select).")
    parser.add_argument("--docs", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--records", type=Path, default=None, help="Folder for the JSON decision records.")
    parser.add_argument("--note", default="", help="A line about the run, e.g. that the machine was shared.")
    return parser.parse_args(argv)


def seed_errors(candidates, metric: str, fit_points: int) -> tuple[object, dict[str, float]]:
    """Fit the cheapest `fit_points` points; return the fit and its relative error at every measured point."""
    by_cost = sorted(candidates, key=lambda c: c.macs)
    seeds = by_cost[:fit_points]
    fit = fit_latency([c.macs for c in seeds], [c.measured.metric(metric) for c in seeds])
    errors = {}
    for candidate in by_cost:
        measured = candidate.measured.metric(metric)
        errors[candidate.label] = (fit.predict(candidate.macs) - measured) / measured if fit else None
    return fit, errors


def replay_adaptive(candidates, settings: SelectionSettings):
    """Run the adaptive selection on copies of the candidates, with the measured numbers as the device."""
    measured = {c.label: c.measured for c in candidates}
    fresh = []
    for candidate in candidates:
        clone = copy.copy(candidate)
        clone.measured = clone.predicted_ms = clone.predicted_before_ms = None
        fresh.append(clone)
    order: list[str] = []

    def measure(candidate) -> MeasuredPoint:
        order.append(candidate.label)
        return measured[candidate.label]

    adaptive_settings = SelectionSettings(budget_ms=settings.budget_ms, metric=settings.metric,
                                          max_fit_error=settings.max_fit_error, fit_points=settings.fit_points)
    return run_selection(fresh, adaptive_settings, measure), order


def _pct(value) -> str:
    return "-" if value is None else f"{value:+.1%}"


def _ms(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def format_section(results: list[dict], args: argparse.Namespace, info: dict, seconds: float,
                   load: tuple[float, float]) -> str:
    lines = [HEADING, ""]
    lines.append(f"Written by `bench/select_host.py` on {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC. "
                 f"Host: {info.get('cpu_model')}, {info.get('cores')} usable cores; runtimes "
                 + ", ".join(f"{k} {v}" for k, v in (info.get("runtime_versions") or {}).items()
                             if k in ("litert", "onnxruntime", "executorch")) + ".")
    lines.append("")
    lines.append(f"Command: `.venv/bin/python bench/select_host.py --formats {args.formats} --models {args.models} "
                 f"--resolutions {args.resolutions} --budget-ms {args.budget_ms:g} --runs {args.runs} "
                 f"--calib-size {args.calib_size}" + (f" --threads {args.threads}`" if args.threads else
                                                      "` (runtime's default threads)")
                 + f". This run took {seconds / 60:.1f} min.")
    measured_now = sum(r["selection"].counts()["measured_now"] for r in results if "selection" in r)
    if measured_now:
        lines[-1] += (f" Load average (1 min) {load[0]:.1f} at its start and {load[1]:.1f} at its end, on "
                      f"{info.get('cores')} cores: above the core count, other processes competed for the CPU and "
                      "the latencies are noisy.")
    lines.append("")
    lines.append("INT8, untrained weights with BatchNorm warmed on photos, "
                 f"{args.calib_size} calibration images per export: latency numbers only, never accuracy. "
                 f"Latency is {args.metric} over {args.runs} runs.")
    if args.note:
        lines += ["", args.note]
    lines += ["", "Prediction errors are (predicted − measured) / measured. *Seed fit*: fitted on the "
              f"{args.fit_points} cheapest models only, which is what a real run extrapolates from. "
              "*Leave-one-out*: the final fit's form refitted without that point. *Adaptive*: the default "
              "run replayed on these numbers; its prediction for a point just before measuring it.", ""]
    for result in results:
        if "error" in result:
            lines += [f"### {result['target']} INT8", "", f"Failed: {result['error']}", ""]
            continue
        selection = result["selection"]
        metric = args.metric
        fit = selection.fit
        seed_fit, seed = result["seed_fit"], result["seed_errors"]
        adaptive, order = result["adaptive"], result["adaptive_order"]
        adaptive_points = {c.label: c for c in adaptive.candidates}
        lines.append(f"### {result['target']} INT8")
        lines.append("")
        stamps = sorted(c.measured.created_at for c in selection.candidates if c.measured.created_at)
        counts = selection.counts()
        if stamps:
            lines.append(f"Measured {stamps[0][:16]} to {stamps[-1][:16]} UTC; {counts['stored']} of "
                         f"{counts['candidates']} points reused from the results database by this run.")
            lines.append("")
        lines.append("| model | res (px) | GMACs | measured (ms) | seed fit (ms) | seed error | leave-one-out error "
                     "| adaptive: predicted before measuring |")
        lines.append("|---|---|---|---|---|---|---|---|")
        for candidate in sorted(selection.candidates, key=lambda c: c.macs):
            measured = candidate.measured.metric(metric)
            seed_prediction = seed_fit.predict(candidate.macs) if seed_fit else None
            replayed = adaptive_points[candidate.label]
            if replayed.measured is None:
                before = "not measured"
            elif replayed.predicted_before_ms is None:
                before = "no prediction (seed point or no fit yet)"
            else:
                error = _pct(replayed.prediction_error_before(metric))
                before = f"{replayed.predicted_before_ms:.2f} ms ({error})"
            lines.append(f"| {candidate.name} | {candidate.resolution} | {candidate.macs / 1e9:.2f} | {measured:.2f} "
                         f"| {_ms(seed_prediction)} | {_pct(seed[candidate.label])} "
                         f"| {_pct(candidate.prediction_error(metric))} | {before} |")
        lines.append("")
        if fit is not None:
            loo = "unknown" if fit.error is None else f"{fit.error:.1%}"
            lines.append(f"Final fit over all {fit.points} points: {fit.kind}, latency ≈ {fit.describe()}; "
                         f"largest leave-one-out error {loo}.")
        if seed_fit is not None:
            beyond = [abs(v) for label, v in seed.items() if v is not None][args.fit_points:]
            worst = f"{max(beyond):.1%}" if beyond else "-"
            lines.append(f"Seed fit ({seed_fit.kind}, {seed_fit.describe()}): largest error beyond its points {worst}.")
        full = selection.decision
        lines.append(f"Budget {args.budget_ms:g} ms: measuring everything gives **{full.status}"
                     + (f" {full.choice.label}" if full.choice else "") + f"**; the adaptive run measures "
                     f"{len(order)} of {len(selection.candidates)} ({', '.join(order)}) and gives "
                     f"**{adaptive.decision.status}" + (f" {adaptive.decision.choice.label}" if adaptive.decision.choice
                                                         else "") + "**.")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def main(argv=None) -> int:
    args = parse_args(argv)
    quiet_converters()
    started = time.perf_counter()
    load_start = os.getloadavg()[0]
    variants = parse_models(args.models)
    resolutions = parse_resolutions(args.resolutions)
    results = []

    for target in [t.strip() for t in args.formats.split(",") if t.strip()]:
        print(f"== {target} INT8: measuring {len(variants)} models", flush=True)
        request = SelectRequest(device="host", budget_ms=args.budget_ms, metric=args.metric, target=target,
                                precision="int8", variants=variants, resolutions=resolutions,
                                max_fit_error=args.max_fit_error, fit_points=args.fit_points, measure_all=True,
                                threads=args.threads, warmup=args.warmup, runs=args.runs,
                                calib_size=args.calib_size, cache_dir=args.cache_dir, db_path=args.db,
                                command="bench/select_host.py")
        try:
            result = select_model(request, on_message=lambda message: print(f"  {message}", flush=True))
        except SelectStepError as exc:
            print(f"   failed: {exc}", flush=True)
            results.append({"target": target, "error": str(exc)})
            continue
        selection = result.selection
        seed_fit, seed = seed_errors(selection.candidates, args.metric, args.fit_points)
        adaptive, order = replay_adaptive(selection.candidates, selection.settings)
        results.append({"target": target, "selection": selection, "seed_fit": seed_fit, "seed_errors": seed,
                        "adaptive": adaptive, "adaptive_order": order})
        if args.records:
            write_json_atomic(args.records / f"select-host-{target}-int8.json", result.record)
        print(f"   decision: {selection.decision.status} {selection.decision.reason}", flush=True)

    section = format_section(results, args, host_info(), time.perf_counter() - started,
                             (load_start, os.getloadavg()[0]))
    replace_section(HEADING, section, args.docs)
    print(section)
    print(f"wrote the section {HEADING!r} of {args.docs}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
