"""`edgeeff check`: the accuracy gate for CI, float model against every exported artifact."""

from __future__ import annotations

from pathlib import Path

import click

from edgeeff.cli.common import StepFailed, model_options, print_json, resolve_from_options, stderr, stdout


def _percent(value: float | None) -> str:
    return "-" if value is None else f"{value:.2%}"


def _change(drop: float | None) -> str:
    """Format a drop in points as a signed change, so a loss reads -1.67 and no change 0.00."""
    if drop is None:
        return "-"
    change = round(-drop, 2) + 0.0  # + 0.0 turns -0.0 into 0.0
    return f"{change:+.2f}" if change else "0.00"


def _model_rows(report: dict) -> list[list[str]]:
    failed = {c["model"] for c in report["checks"] if not c["passed"]}
    rows = []
    for model in [report["float"], *report["artifacts"]]:
        baseline = model.get("baseline") or {}
        if baseline.get("missing"):
            versus_baseline = "new"
        else:
            versus_baseline = _change(baseline.get("drop_points"))
        if model.get("error"):
            result = "[red]error[/]"
        elif model["name"] in failed:
            result = "[red]FAIL[/]"
        else:
            result = "[green]pass[/]"
        cosine = "-" if model.get("mean_cosine") is None else f"{model['mean_cosine']:.4f}"
        rows.append([model["name"], model["runtime"], _percent(model.get("top1")), _percent(model.get("top5")),
                     _change(model.get("drop_points")), _percent(model.get("agreement")), cosine, versus_baseline,
                     result])
    return rows


def render_report(report: dict) -> None:
    """Print the gate's verdict, the per-model table and the worst cases, for a terminal or a CI log."""
    from rich.table import Table

    data = report["data"]
    if report["labelled"]:
        stdout.print(f"[bold]edgeeff check[/]: {data['images']} labelled images from {data['path']} "
                     f"({data['classes']} classes, mapped to the model's classes {data['class_mapping']})",
                     highlight=False)
    else:
        stdout.print(f"[bold]edgeeff check[/]: {data['images']} images from {data['path']}", highlight=False)
        stdout.print("[bold yellow]no labels[/] (no class sub-folders): checking agreement with the float model "
                     "and logit cosine only; top-1 and its drop cannot be measured", highlight=False)
    if data["skipped"]:
        stdout.print(f"skipped {len(data['skipped'])} unreadable files (first: {data['skipped'][0]})", highlight=False)

    table = Table(title="accuracy vs the float model (Δ in percentage points)")
    for column in ("model", "runtime", "top-1", "top-5", "Δ float", "agreement", "cosine", "Δ baseline", "result"):
        table.add_column(column, justify="left" if column in ("model", "runtime", "result") else "right")
    for row in _model_rows(report):
        table.add_row(*row)
    stdout.print(table)

    if report["worst_classes"]:
        worst = Table(title="classes with the most disagreement")
        for column in ("class", "images", "disagreement", "worst artifact", "its top-1", "float top-1"):
            worst.add_column(column)
        for row in report["worst_classes"][:5]:
            worst.add_row(row["name"], str(row["images"]), f"{row['disagreement_rate']:.1%}",
                          row.get("worst_artifact", "-"), _percent(row.get("worst_artifact_top1")),
                          _percent(row.get("float_top1")))
        stdout.print(worst)
    if report["worst_images"]:
        stdout.print("[bold]images whose top-1 changed[/] (most artifacts first):")
        for row in report["worst_images"][:5]:
            label = f" label {row['label']}," if "label" in row else ""
            changed = ", ".join(f"{name} → {prediction}" for name, prediction in row["artifacts"].items())
            stdout.print(f"  {row['image']}:{label} float {row['float_prediction']} ({row['float_probability']:.0%}); "
                         f"{changed}; min cosine {row['min_cosine']:.3f}", highlight=False)
    elif report["artifacts"]:
        stdout.print("no image changed its top-1 under any artifact", highlight=False)

    for name, layers in report["layers"].items():
        if "skipped" in layers:
            stdout.print(f"per-layer error of {name}: skipped, {layers['skipped']}", highlight=False)
            continue
        stdout.print(f"[bold]per-layer error of {name}[/] ({layers['runtime']}, {layers['images']} images, "
                     f"{layers['layers_compared']} tensors; SQNR vs float, higher is better; "
                     "added = SQNR lost in this op):", highlight=False)
        for layer in layers["largest_added_error"][:5]:
            stdout.print(f"  {layer['layer']:<32} {layer['op']:<18} SQNR {layer['sqnr_db']:6.1f} dB, "
                         f"added {layer['added_db']:5.1f} dB", highlight=False)

    baseline = report.get("baseline")
    if baseline:
        if baseline.get("updated"):
            stdout.print(f"baseline updated: {baseline['path']}", highlight=False)
        changes = baseline.get("tool_version_changes") or {}
        if changes:
            listed = ", ".join(f"{name} {old} → {new}" for name, (old, new) in changes.items())
            stdout.print(f"tool versions changed since the baseline ({baseline.get('created')}): {listed}",
                         highlight=False)
    for warning in report["warnings"]:
        stderr.print(f"[yellow]warning:[/] {warning}", highlight=False)
    for failure in report["failures"]:
        stdout.print(f"[bold red]FAILED[/] {failure}", highlight=False)
    total, failed = len(report["checks"]), len(report["failures"])
    verdict = "[bold green]PASSED[/]" if report["passed"] else "[bold red]FAILED[/]"
    stdout.print(f"{verdict}: {total - failed} of {total} checks passed", highlight=False)


@click.command("check")
@model_options
@click.option("--artifact", "-a", "artifacts", multiple=True, required=True, type=click.Path(),
              help="An exported .pte/.tflite/.onnx file with its sidecar; repeat for several.")
@click.option("--data", "-d", required=True, type=click.Path(),
              help="Validation images: an ImageFolder tree (one sub-folder per class) or a folder without labels.")
@click.option("--max-drop", type=click.FloatRange(min=0), default=1.0, show_default=True,
              help="Maximum top-1 drop of each artifact vs the float model, in percentage points.")
@click.option("--min-agreement", type=click.FloatRange(0, 1),
              help="Minimum fraction of images where an artifact's top-1 equals the float model's, e.g. 0.99.")
@click.option("--min-cosine", type=click.FloatRange(0, 1),
              help="Minimum mean cosine between an artifact's and the float model's logits, e.g. 0.99.")
@click.option("--baseline", type=click.Path(dir_okay=False),
              help="JSON file of the last accepted run; each model must not drop more than --max-baseline-drop below it.")
@click.option("--max-baseline-drop", type=click.FloatRange(min=0),
              help="Maximum drop vs the baseline in percentage points (top-1, or agreement without labels). "
                   "Default: --max-drop.")
@click.option("--update-baseline", is_flag=True,
              help="Write this run's numbers and tool versions to --baseline when the thresholds vs float pass.")
@click.option("--junit", type=click.Path(dir_okay=False), help="Write a JUnit XML report: one test case per "
              "artifact and threshold.")
@click.option("--db", type=click.Path(dir_okay=False), help="Results database to record the run in "
              "(default: $EDGEEFF_RESULTS_DB, else the user data folder's edgeeff/results.sqlite).")
@click.option("--no-db", is_flag=True, help="Do not record the run in the results database.")
@click.option("--limit", type=click.IntRange(min=1), help="Score a deterministic sample of this many images.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed for --limit sampling.")
@click.option("--threads", type=click.IntRange(min=1), help="Threads for each runtime and for PyTorch.")
@click.option("--layer-images", type=click.IntRange(min=0), default=8, show_default=True,
              help="Images for the per-layer error of INT8 artifacts; 0 skips it.")
@click.option("--json", "as_json", is_flag=True, help="Print the full report as JSON.")
def check_command(model, phi, alpha, beta, gamma, lite, checkpoint, checkpoint_format, trust_checkpoint, labels_file,
                  num_classes, resolution, artifacts, data, max_drop, min_agreement, min_cosine, baseline,
                  max_baseline_drop, update_baseline, junit, db, no_db, limit, seed, threads, layer_images,
                  as_json) -> None:
    """Gate exported artifacts on accuracy: each must stay within the thresholds of the float model.

    Exit 0 when every check passes, 1 when a threshold fails or an artifact fails to run, 2 on
    invalid input.
    """
    from rich.progress import Progress

    from edgeeff.check import CheckRequest, Thresholds, run_check
    from edgeeff.check_output import AccuracyResults, default_results_db, write_junit

    if checkpoint is None:
        raise click.UsageError("--checkpoint is required: the trained float model the artifacts were exported from")
    if update_baseline and baseline is None:
        raise click.UsageError("--update-baseline needs --baseline FILE")
    loaded = resolve_from_options(model, phi, alpha, beta, gamma, lite, checkpoint, checkpoint_format,
                                  trust_checkpoint, labels_file, num_classes, resolution)
    request = CheckRequest(loaded=loaded, artifacts=[Path(a) for a in artifacts], data=Path(data),
                           thresholds=Thresholds(max_drop, min_agreement, min_cosine, max_baseline_drop),
                           baseline=Path(baseline) if baseline else None, update_baseline=update_baseline,
                           limit=limit, seed=seed, threads=threads, layer_images=layer_images)
    with Progress(console=stderr, transient=True, disable=as_json) as progress:
        task = progress.add_task("scoring images", total=None)
        report = run_check(request, lambda done, total: progress.update(task, completed=done, total=total))

    if junit:
        write_junit(report, junit)
    if no_db:
        db_path = None
    elif db:
        db_path = Path(db)
    else:
        db_path = default_results_db()
    if db_path is not None:
        AccuracyResults(db_path).add_report(report)
        report["results_db"] = str(db_path)
    if as_json:
        print_json(report)
    else:
        render_report(report)
    if not report["passed"]:
        raise StepFailed(f"accuracy gate failed: {len(report['failures'])} of {len(report['checks'])} checks failed")
