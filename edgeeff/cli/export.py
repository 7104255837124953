"""`edgeeff export`: checkpoint → verified ExecuTorch, TFLite and ONNX artifacts."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click

from edgeeff.cli.common import StepFailed, model_options, print_json, resolve_from_options, stderr, stdout, warn_untrained


def _precisions(precision: str, int8: bool) -> list[str]:
    if int8:
        return ["int8"]
    return ["fp32", "int8"] if precision == "both" else [precision]


def _verification_summary(sidecar: dict) -> str:
    v = sidecar["verification"]
    if sidecar["precision"] == "fp32":
        return f"max|Δ| {v['max_abs_logit_diff']:.1e}"
    return f"top-1 agree {v['top1_agreement']:.0%}, cos {v['mean_cosine']:.4f}"


def _graph_summary(sidecar: dict) -> str:
    graph = sidecar.get("graph", {})
    parts = []
    if "fully_delegated" in graph:
        parts.append("fully delegated" if graph["fully_delegated"] else f"{graph.get('non_delegated_ops', '?')} ops outside delegate")
    if "float_compute_ops" in graph and sidecar["precision"] == "int8":
        ops = graph["float_compute_ops"]  # a list of op names (TFLite) or a count (ONNX)
        if not ops:
            parts.append("no float ops")
        elif isinstance(ops, int):
            parts.append(f"{ops} float ops")
        else:
            parts.append(f"float ops: {', '.join(map(str, ops))[:40]}")
    if "quantize_linear" in graph:
        parts.append(f"{graph['quantize_linear']} Q / {graph.get('dequantize_linear', '?')} DQ")
    return "; ".join(parts)


def _table(records, output):
    from rich.table import Table

    table = Table(title=f"edgeeff export → {output}")
    for column in ("target", "precision", "status", "artifact", "size", "verification", "graph", "time"):
        table.add_column(column)
    for r in records:
        if r.ok:
            s = r.sidecar
            table.add_row(r.target, r.precision, "[green]ok[/]", r.path.name, f"{s['size_bytes'] / 1e6:.1f} MB",
                          _verification_summary(s), _graph_summary(s), f"{r.seconds:.0f} s")
        else:
            table.add_row(r.target, r.precision, "[red]failed[/]", "-", "-", r.error, "", f"{r.seconds:.0f} s")
    return table


@click.command("export")
@model_options
@click.option("--target", "-t", default="all", show_default=True,
              help="executorch, tflite, onnx, a comma list, or all.")
@click.option("--int8", is_flag=True, help="Export INT8 only (same as --precision int8).")
@click.option("--precision", type=click.Choice(["fp32", "int8", "both"]), default="fp32", show_default=True,
              help="Precision of the artifacts.")
@click.option("--calib", type=click.Path(), help="Folder of photos (or an ImageFolder tree) for calibration and "
              "verification. Default: the bundled photos in calib/photos.")
@click.option("--calib-size", type=click.IntRange(min=1), default=300, show_default=True,
              help="Images used for INT8 calibration.")
@click.option("--verify-size", type=click.IntRange(min=1), default=16, show_default=True,
              help="Held-out images used to verify each artifact against the float model; at most a fifth "
                   "of the calibration folder, so that most of it stays for calibration.")
@click.option("--arch", type=click.Choice(["x86", "arm"]), help="Target CPU family for ONNX INT8 activations "
              "(uint8 on x86, int8 on Arm). Default: this host.")
@click.option("--output", "-o", type=click.Path(file_okay=False), default="artifacts", show_default=True,
              help="Output folder.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for choosing calibration images.")
@click.option("--json", "as_json", is_flag=True, help="Print the sidecar records as JSON.")
@click.option("--from-qat", "from_qat", type=click.Path(file_okay=False), metavar="RUN",
              help="Export a finished `edgeeff qat` run folder: INT8 ExecuTorch and ONNX keep its learned "
              "quantization parameters, TFLite INT8 re-calibrates its weights. Replaces the model options.")
def export_command(model, phi, alpha, beta, gamma, lite, checkpoint, checkpoint_format, trust_checkpoint,
                   labels_file, num_classes, resolution, target, int8, precision, calib, calib_size, verify_size,
                   arch, output, seed, as_json, from_qat) -> None:
    """Export a model to verified .pte, .tflite and .onnx artifacts, in FP32 and/or INT8."""
    from rich.progress import Progress

    from edgeeff.export.pipeline import ExportOptions, export_model, parse_targets

    targets = parse_targets(target)
    qat_source = None
    if from_qat:
        from edgeeff.qat.export import QATExportSource, load_qat_run

        if any(value not in (None, False) for value in (model, phi, alpha, beta, gamma, lite, checkpoint,
                                                        checkpoint_format, labels_file, num_classes, resolution)):
            raise click.UsageError("--from-qat takes the model, weights and resolution from the QAT run: "
                                   "drop the model options")
        qat_run = load_qat_run(from_qat)
        loaded, qat_source = qat_run.loaded, QATExportSource(qat_run)
        if calib is None:
            train_dir = qat_run.data_path / "train"
            calib = str(train_dir if train_dir.is_dir() else qat_run.data_path)
            stderr.print(f"calibration: no --calib given, using the QAT run's training images in {calib}",
                         highlight=False)
    else:
        loaded = resolve_from_options(model, phi, alpha, beta, gamma, lite, checkpoint, checkpoint_format,
                                      trust_checkpoint, labels_file, num_classes, resolution)
    warn_untrained(loaded.trained)
    options = ExportOptions(targets=targets, precisions=_precisions(precision, int8), output=Path(output),
                            calib=Path(calib) if calib else None, calib_size=calib_size, verify_size=verify_size,
                            arch=arch, seed=seed, command=shlex.join(["edgeeff", *sys.argv[1:]]), qat=qat_source)
    if options.calib is None:
        stderr.print("calibration: no --calib given, using the bundled photos in calib/photos "
                     "(real photos, see calib/PROVENANCE.md)", highlight=False)

    with Progress(console=stderr, transient=True, disable=as_json) as progress:
        task = progress.add_task("reading images", total=None)

        def on_image(done: int, total: int) -> None:
            progress.update(task, completed=done, total=total)

        def on_record(record) -> None:
            status = "ok" if record.ok else "FAILED"
            progress.console.print(f"{record.target} {record.precision}: {status} ({record.seconds:.0f} s)",
                                   highlight=False)

        records = export_model(loaded, options, progress=on_image, on_record=on_record)

    if as_json:
        print_json([r.sidecar if r.ok else {"target": r.target, "precision": r.precision, "error": r.error}
                    for r in records])
    else:
        stdout.print(_table(records, options.output))
        if not loaded.trained:
            stdout.print("[bold red]UNTRAINED WEIGHTS[/]: verification numbers compare with an untrained float model; "
                         "they say nothing about accuracy.")
    warn_untrained(loaded.trained)
    failed = [r for r in records if not r.ok]
    if failed:
        raise StepFailed(f"{len(failed)} of {len(records)} exports failed: " + "; ".join(r.error for r in failed))
