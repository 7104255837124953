"""`edgeeff predict`: top-k classes for images, from an artifact run in its own runtime."""

from __future__ import annotations

import click

from edgeeff.cli.common import print_json, stderr, stdout


@click.command("predict")
@click.argument("artifact", type=click.Path())
@click.argument("images", nargs=-1, required=True, type=click.Path())
@click.option("--top", "top_k", type=click.IntRange(min=1), default=5, show_default=True, help="Classes per image.")
@click.option("--threads", type=click.IntRange(min=1), help="Runtime threads (default: the runtime's).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def predict_command(artifact: str, images: tuple[str, ...], top_k: int, threads: int | None, as_json: bool) -> None:
    """Classify IMAGES with ARTIFACT (.pte, .tflite or .onnx) using its sidecar's preprocessing."""
    from edgeeff.predict import predict
    from edgeeff.profile.fingerprint import usable_cores
    from edgeeff.profile.local import check_threads

    # Rejected like `edgeeff profile` does: more threads than cores only oversubscribes them.
    check_threads(threads, usable_cores(), "this host")
    result = predict(artifact, list(images), top_k, threads)
    if as_json:
        print_json(result)
    else:
        for item in result["predictions"]:
            stdout.print(f"[bold]{item['image']}[/] ({result['runtime']})", highlight=False)
            for rank, top in enumerate(item["top"], 1):
                stdout.print(f"  {rank}. {top['label']:<30} {top['probability']:7.2%}  (class {top['class']})",
                             highlight=False)
    if not result["trained"]:
        stderr.print(f"[bold yellow on red] UNTRAINED WEIGHTS [/] {result.get('warning') or ''}", highlight=False)
