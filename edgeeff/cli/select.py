"""`edgeeff select`: the largest EfficientNet (or the most accurate) that meets a latency budget on a device."""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

import click
from rich.table import Table

from edgeeff.cli.common import StepFailed, print_json, stderr, stdout
from edgeeff.profile.devices import TOKEN_ENV

TARGET_ALIASES = {"pte": "executorch", "et": "executorch", "litert": "tflite"}
SOURCE_LABELS = {"measured": "measured", "stored": "stored", "predicted": "predicted"}


def parse_fraction(text: str, option: str) -> float:
    """Parse `0.15` or `15%` into 0.15."""
    raw = text.strip()
    try:
        value = float(raw[:-1]) / 100 if raw.endswith("%") else float(raw)
    except ValueError:
        raise ValueError(f"invalid {option} {raw!r}: write a fraction such as 0.15 or a percentage such as 15%") from None
    if not value > 0:
        raise ValueError(f"invalid {option} {raw}: use a value above 0, such as 0.15")
    return value


def parse_budget(value: float | None) -> float | None:
    if value is not None and not value > 0:
        raise ValueError(f"invalid --budget-ms {value:g}: the latency budget must be a positive number of "
                         "milliseconds, such as 25")
    return value


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def candidate_table(result) -> Table:
    """Build the table: one row per candidate, cheapest first, with measured or predicted latency."""
    selection = result.selection
    settings = selection.settings
    metric = settings.metric
    choice = selection.decision.choice
    title = (f"{result.device_name}: {result.target} {result.precision}, {metric} budget {settings.budget_ms:g} ms"
             + (" (untrained weights: latency only)" if result.untrained else ""))
    table = Table(title=title, title_justify="left")

    columns = ["φ", "Model", "Res (px)", "Params (M)", "MACs (G)"]
    if settings.by_accuracy:
        columns.append("Top-1")
    columns += [f"{metric} (ms)", "Source", "Predicted (ms)", "Pred. error", "Within budget", "Frontier"]
    for name in columns:
        table.add_column(name, justify="left" if name in ("Model", "Source", "Within budget") else "right")

    for candidate in selection.candidates:
        latency = candidate.latency(metric)
        source = candidate.measured.source if candidate.measured else "predicted"
        if latency is None:
            within = "-"
        else:
            within = "yes" if latency <= settings.budget_ms else "no"
            if source == "predicted":
                within += " (predicted)"
        error = candidate.prediction_error(metric)
        name = candidate.name + (" ← choice" if candidate is choice else "")
        row = [f"{candidate.variant.phi:g}", name, str(candidate.resolution), f"{candidate.params / 1e6:.1f}",
               f"{candidate.macs / 1e9:.2f}"]
        if settings.by_accuracy:
            row.append("-" if candidate.accuracy is None else f"{candidate.accuracy:.1%}")
        predicted = candidate.predicted_ms if candidate.measured else None
        row += [_ms(latency) if candidate.measured else f"~{_ms(latency)}", SOURCE_LABELS[source], _ms(predicted),
                "-" if error is None else f"{error:+.0%}", within, "✓" if candidate.on_frontier else ""]
        table.add_row(*row, style="bold" if candidate is choice else None)
    return table


def print_summary(result) -> None:
    selection = result.selection
    fit = selection.fit
    counts = selection.counts()
    if fit is not None:
        error = "unknown (fewer than 3 points)" if fit.error is None else f"{fit.error:.1%}"
        others = ", ".join(f"{kind} {'-' if value is None else f'{value:.1%}'}" for kind, value in fit.errors.items())
        stdout.print(f"fit ({fit.kind}, {fit.points} measured points): latency ≈ {fit.describe()}; "
                     f"leave-one-out error {error} (by form: {others})", highlight=False)
    stdout.print(f"measured {counts['measured_now']}, reused {counts['stored']} stored, predicted "
                 f"{counts['predicted']} of {counts['candidates']} candidates; exported {result.exports} artifact(s)",
                 highlight=False)
    decision = selection.decision
    if decision.status == "chosen":
        stdout.print(f"[bold green]choice:[/] {decision.choice.label} — {decision.reason}", highlight=False)


def _on_event(event: dict) -> None:
    kind = event["event"]
    if kind == "measure":
        predicted = "" if event["predicted_ms"] is None else f", predicted {event['predicted_ms']:.2f} ms"
        stderr.print(f"measure {event['candidate']} ({event['reason']}{predicted})", highlight=False)
    elif kind == "measured":
        stderr.print(f"  {event['candidate']}: {event['latency_ms']:.2f} ms", highlight=False)
    elif kind == "stored":
        stderr.print(f"stored measurement for {event['candidate']}: {event['latency_ms']:.2f} ms", highlight=False)


EXIT_HELP = """
\b
Exit codes:
  0  a candidate was chosen
  1  an export or profile run failed, or the device could not be reached
  2  invalid input (for example a budget of 0 or below)
  3  no candidate meets the budget; the message names the fastest measured one and what would fit
  4  refused: the fit error exceeds --max-fit-error, so candidates that were only predicted over
     budget cannot be ruled out; rerun with --measure-all
"""


@click.command("select", epilog=EXIT_HELP)
@click.option("--device", "-d", "device_spec", default="host", show_default=True,
              help="Where to measure: host, agent://HOST:PORT, adb:SERIAL, a profile name (pi5, pixel7, ...) or a "
                   "profile .yaml file.")
@click.option("--budget-ms", type=float, help="Latency budget in ms (default: the device profile's budget).")
@click.option("--metric", type=click.Choice(["median", "p90", "p99"]),
              help="Latency statistic held to the budget (default: the device profile's, else p90).")
@click.option("--target", "-t", help="Export format: tflite, onnx or executorch (default: the device profile's "
              "runtime, else tflite).")
@click.option("--int8", is_flag=True, help="Select among INT8 models (same as --precision int8).")
@click.option("--precision", type=click.Choice(["fp32", "int8"]), default="fp32", show_default=True,
              help="Precision of the exported candidates.")
@click.option("--models", help="Released variants to choose from, comma-separated (default b0,b1,...,b7; "
              "lite0…lite4 also work).")
@click.option("--phi", "phi_range", help="Custom φ values instead of --models: START:STOP:STEP or a comma list, "
              "e.g. 0:3:0.5.")
@click.option("--lite", is_flag=True, help="With --phi: scale the Lite family.")
@click.option("--resolutions", help="Input sizes per model, comma-separated: native, a size in px (192) or a "
              "scale of native (0.75x). Sizes above a model's native resolution are skipped. Default: native.")
@click.option("--checkpoint", "-c", "checkpoints", multiple=True,
              help="Trained weights for the variant they load as; other candidates use untrained weights. "
                   "Repeatable.")
@click.option("--trust-checkpoint", is_flag=True, help="Allow pickled checkpoints, which can run code.")
@click.option("--num-classes", type=click.IntRange(min=1),
              help="Classifier size of untrained candidates (default: the checkpoint's, else 1000).")
@click.option("--accuracy", "accuracy_files", multiple=True, type=click.Path(dir_okay=False),
              help="Rank by accuracy instead of φ: an edgeeff check --json report, or a JSON/CSV table of "
                   "model[,resolution],top1. Repeatable.")
@click.option("--max-fit-error", default="0.15", show_default=True,
              help="Largest leave-one-out error of the latency fit (0.15 or 15%) for a prediction to rule a "
                   "candidate out without measuring it.")
@click.option("--fit-points", type=click.IntRange(min=2), default=3, show_default=True,
              help="Cheapest candidates measured first, before the fit.")
@click.option("--measure-all", is_flag=True, help="Measure every candidate instead of predicting.")
@click.option("--threads", type=click.IntRange(min=1), help="Runtime threads (default: the device profile's, else "
              "the runtime's default).")
@click.option("--warmup", type=click.IntRange(min=0), help="Untimed runs per candidate (default: profile's, else 10).")
@click.option("--runs", type=click.IntRange(min=1), help="Timed runs per candidate (default: profile's, else 50).")
@click.option("--calib", type=click.Path(file_okay=False), help="Photos for calibration and verification "
              "(default: the bundled photos).")
@click.option("--calib-size", type=click.IntRange(min=1), default=32, show_default=True,
              help="Calibration images per export; enough for latency, not for shipping INT8 ranges.")
@click.option("--verify-size", type=click.IntRange(min=1), default=4, show_default=True,
              help="Held-out images that verify each export against the float model; at most a fifth of "
                   "the calibration folder.")
@click.option("--arch", type=click.Choice(["x86", "arm"]), help="CPU family for ONNX INT8 activations "
              "(default: the device's).")
@click.option("--cache-dir", type=click.Path(file_okay=False),
              help="Export cache folder (default: $EDGEEFF_CACHE/select, else the user cache folder).")
@click.option("--db", "db_path", type=click.Path(dir_okay=False),
              help="Results database (default: $EDGEEFF_RESULTS_DB, else the user data folder).")
@click.option("--no-save", is_flag=True, help="Neither reuse nor store measurements in the results database.")
@click.option("--remeasure", is_flag=True, help="Profile again instead of reusing stored measurements.")
@click.option("--token", help=f"Device agent token (default: ${TOKEN_ENV}).")
@click.option("--benchmark-binary", "benchmark_binaries", multiple=True, metavar="RUNTIME=PATH",
              help="Native benchmark tool per runtime, as for edgeeff profile. Repeatable.")
@click.option("--adb", "adb_path", help="adb executable for adb devices.")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True),
              help="Seconds to wait for an agent's next message or an adb command.")
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), help="Write a PNG of latency vs φ here.")
@click.option("--record", "record_path", type=click.Path(dir_okay=False),
              help="Write the JSON decision record to this file.")
@click.option("--json", "as_json", is_flag=True, help="Print the JSON decision record instead of the table.")
def select_command(device_spec, budget_ms, metric, target, int8, precision, models, phi_range, lite, resolutions,
                   checkpoints, trust_checkpoint, num_classes, accuracy_files, max_fit_error, fit_points,
                   measure_all, threads, warmup, runs, calib, calib_size, verify_size, arch, cache_dir, db_path,
                   no_save, remeasure, token, benchmark_binaries, adb_path, timeout, plot_path, record_path,
                   as_json) -> None:
    """Choose the largest φ whose latency on a device is within a budget.

    Candidates are exported on demand (cached by weights, variant, resolution, precision,
    target and tool versions) and profiled on the device (stored measurements are reused). The
    cheapest candidates are measured first; a latency-vs-MACs fit predicts the rest, and only
    the candidates around the budget boundary are measured to confirm. With --accuracy, the
    most accurate candidate within budget is chosen instead of the largest.
    """
    from edgeeff.cli.models import parse_phi_range
    from edgeeff.io import write_json_atomic
    from edgeeff.profile import ProfileError, ResultsDatabaseError
    from edgeeff.profile.native import parse_binary_options
    from edgeeff.select.candidates import parse_models, parse_resolutions, phi_variants
    from edgeeff.select.measure import SelectStepError
    from edgeeff.select.pipeline import SelectRequest, select_model

    budget_ms = parse_budget(budget_ms)
    if models and phi_range:
        raise ValueError("--models and --phi both given: use one of them")
    if lite and not phi_range:
        raise ValueError("--lite needs --phi: for released Lite models pass --models lite0,lite1,...")
    variants = phi_variants(parse_phi_range(phi_range), lite) if phi_range else parse_models(models)
    if target is not None:
        target = TARGET_ALIASES.get(target.strip().lower(), target.strip().lower())
    request = SelectRequest(
        device=device_spec, budget_ms=budget_ms, metric=metric, target=target,
        precision="int8" if int8 else precision, variants=variants, resolutions=parse_resolutions(resolutions),
        checkpoints=list(checkpoints), trust_checkpoint=trust_checkpoint, num_classes=num_classes,
        accuracy_files=list(accuracy_files), max_fit_error=parse_fraction(max_fit_error, "--max-fit-error"),
        fit_points=fit_points, measure_all=measure_all, threads=threads, warmup=warmup, runs=runs,
        calib=Path(calib) if calib else None, calib_size=calib_size, verify_size=verify_size, arch=arch,
        cache_dir=Path(cache_dir) if cache_dir else None, db_path=Path(db_path) if db_path else None,
        save=not no_save, remeasure=remeasure, token=token,
        benchmark_binaries=parse_binary_options(benchmark_binaries), adb=adb_path, timeout_s=timeout,
        command=shlex.join(["edgeeff", *sys.argv[1:]]))

    def on_message(message: str) -> None:
        stderr.print(message, highlight=False)

    try:
        result = select_model(request, on_message=on_message, on_event=_on_event)
    except (ProfileError, SelectStepError, ResultsDatabaseError) as exc:
        raise StepFailed(str(exc)) from exc

    if result.untrained:
        stderr.print(f"untrained weights: latency-only selection; each INT8 export calibrated on {calib_size} "
                     "images, which sets ranges well enough for timing but not for shipping", highlight=False)
    if record_path:
        write_json_atomic(record_path, result.record)
    if plot_path:
        from edgeeff.select.plot import plot_selection

        title = (f"{result.device_name}: {result.target} {result.precision}, {result.selection.settings.metric} "
                 f"latency vs φ")
        plot_selection(result.selection, plot_path, title)

    decision = result.selection.decision
    if as_json:
        print_json(result.record)
    else:
        stdout.print(candidate_table(result))
        print_summary(result)
    if decision.status == "none_fits":
        stderr.print(f"[bold red]no fit:[/] {decision.reason}", highlight=False)
        for tip in decision.suggestions:
            stderr.print(f"  what would fit: {tip}", highlight=False)
    elif decision.status == "refused":
        stderr.print(f"[bold red]refused:[/] {decision.reason}", highlight=False)
    if decision.exit_code:
        sys.exit(decision.exit_code)
