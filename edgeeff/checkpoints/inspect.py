"""Describe a checkpoint before exporting it, and compare edgeeff's model with the source library's.

`inspect_checkpoint` reports the detected format, variant, classes, resolution, size and
preprocessing, and whether the checkpoint loads (with the error when it does not).
`against_source` runs the checkpoint in the library that wrote it, when that library is
installed, and reports the max |Δlogit| of edgeeff's model against it on the same input.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from edgeeff.checkpoints.formats import FORMATS
from edgeeff.checkpoints.load import CheckpointError, LoadedModel, choose_format, load_checkpoint, read_state_dict
from edgeeff.models.counting import count_macs, count_params

# `edgeeff inspect --against-source` fails above this max |Δlogit|, relative to max(1, max |logit|).
# Float32 runs of one network in two libraries differed by 1e-7 to 1e-5 relative in this project's
# tests, while a wrong padding or epsilon changed calibrated logits by 1e-2 or more.
AGAINST_SOURCE_TOLERANCE = 1e-3


def inspect_checkpoint(path: str | Path, checkpoint_format: str | None = None, trust: bool = False,
                       model: str | None = None) -> dict:
    """Return what edgeeff reads from a checkpoint, with loads=False and the error when it fails.

    Raises CheckpointError only for invalid requests: a missing file or an unknown format name.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}; pass the path of a checkpoint file")
    if checkpoint_format and checkpoint_format not in FORMATS:
        raise CheckpointError(f"unknown checkpoint format {checkpoint_format!r}: use one of {', '.join(FORMATS)}")
    report: dict = {"path": str(path), "size_bytes": path.stat().st_size, "format": None,
                    "format_detected": checkpoint_format is None, "loads": False, "error": None}
    try:
        raw, meta = read_state_dict(path, trust)
        report["tensors"] = len(raw)
        arch = meta.get("source", {}).get("arch")
        if arch:
            report["source_architecture"] = arch
        fmt = choose_format(raw, checkpoint_format, arch, path)
        report["format"] = fmt.name
        report["format_description"] = fmt.description
        loaded = load_checkpoint(path, model, checkpoint_format, trust)
    except CheckpointError as exc:
        report["error"] = str(exc)
        return report

    config = loaded.model.config
    report.update({
        "loads": True,
        "variant": loaded.variant.name,
        "family": loaded.variant.family,
        "classes": loaded.num_classes,
        "labels": len(loaded.labels) if loaded.labels else None,
        "resolution": loaded.resolution,
        "params": count_params(loaded.model),
        "macs": count_macs(loaded.model, loaded.resolution),
        "padding": config.padding,
        "bn_eps": config.bn_eps,
        "preprocessing": loaded.preprocessing.to_dict(),
        "sha256": loaded.checkpoint_sha256,
        "notes": loaded.notes,
    })
    return report


def against_source(path: str | Path, loaded: LoadedModel | None = None, checkpoint_format: str | None = None,
                   trust: bool = False, resolution: int | None = None, seed: int = 0) -> dict:
    """Run the checkpoint in its own library and edgeeff on one input; return max |Δlogit|.

    "passed" is False when the difference exceeds AGAINST_SOURCE_TOLERANCE times the larger
    of 1 and the source's max |logit|, in "tolerance".

    The result names the library and its version. It has "skipped" with the reason instead of a
    difference when the library is not installed, cannot run this variant, or the checkpoint
    is edgeeff's own. Torch-based libraries get the same normalized NCHW input as edgeeff.
    Keras gets 0–255 pixels in NHWC and normalizes them in its graph, and edgeeff gets the
    same pixels after the imported preprocessing, so the comparison covers that step too.
    """
    path = Path(path)
    loaded = loaded or load_checkpoint(path, checkpoint_format=checkpoint_format, trust=trust)
    resolution = resolution or loaded.resolution
    runners = {"efficientnet-pytorch": _run_lukemelas, "timm": _run_timm, "timm-tf": _run_timm,
               "torchvision": _run_torchvision, "keras": _run_keras}
    if loaded.source not in runners:
        return {"library": loaded.source, "skipped": "the checkpoint is in edgeeff's own format; "
                "no other library wrote it"}
    try:
        result = runners[loaded.source](path, loaded, resolution, seed, trust)
    except ImportError as exc:
        return {"library": loaded.source, "skipped": f"{loaded.source} is not installed here or failed to import "
                f"({str(exc).splitlines()[0]}); install it to compare"}
    if "max_abs_logit_diff" in result:
        result["tolerance"] = AGAINST_SOURCE_TOLERANCE * max(1.0, result["max_abs_logit"])
        result["passed"] = bool(result["max_abs_logit_diff"] <= result["tolerance"])
    return result


def _normalized_input(resolution: int, seed: int) -> torch.Tensor:
    rng = np.random.RandomState(seed)
    return torch.from_numpy(rng.normal(0.0, 1.0, (1, 3, resolution, resolution)).astype(np.float32))


def _compare_torch(library: str, version: str, reference: torch.nn.Module, path: Path, loaded: LoadedModel,
                   resolution: int, seed: int, trust: bool) -> dict:
    raw, _ = read_state_dict(path, trust)
    reference.load_state_dict(raw, strict=True)
    reference.eval()
    x = _normalized_input(resolution, seed)
    with torch.no_grad():
        expected = reference(x)
        diff = (expected - loaded.model(x)).abs().max().item()
    return {"library": library, "version": version, "resolution": resolution, "max_abs_logit_diff": diff,
            "max_abs_logit": expected.abs().max().item()}


def _skip_custom(library: str, loaded: LoadedModel) -> dict | None:
    if not loaded.variant.released:
        return {"library": library, "skipped": f"{library} has no model for the custom variant {loaded.variant.name}"}
    return None


def _run_lukemelas(path: Path, loaded: LoadedModel, resolution: int, seed: int, trust: bool) -> dict:
    import efficientnet_pytorch

    if skip := _skip_custom("efficientnet-pytorch", loaded):
        return skip
    if loaded.variant.lite:
        return {"library": "efficientnet-pytorch", "skipped": "efficientnet-pytorch 0.7.1 has no Lite models"}
    # image_size makes the library pad as TF SAME for exactly this input size.
    reference = efficientnet_pytorch.EfficientNet.from_name(
        f"efficientnet-{loaded.variant.name}", num_classes=loaded.num_classes, image_size=resolution)
    return _compare_torch("efficientnet-pytorch", efficientnet_pytorch.__version__, reference, path, loaded,
                          resolution, seed, trust)


def _run_timm(path: Path, loaded: LoadedModel, resolution: int, seed: int, trust: bool) -> dict:
    import timm

    if skip := _skip_custom("timm", loaded):
        return skip
    prefix = "tf_" if loaded.source == "timm-tf" else ""
    arch = f"{prefix}efficientnet_{loaded.variant.name}"
    reference = timm.create_model(arch, pretrained=False, num_classes=loaded.num_classes)
    result = _compare_torch("timm", timm.__version__, reference, path, loaded, resolution, seed, trust)
    return {**result, "architecture": arch}


def _run_torchvision(path: Path, loaded: LoadedModel, resolution: int, seed: int, trust: bool) -> dict:
    import torchvision

    if skip := _skip_custom("torchvision", loaded):
        return skip
    builder = getattr(torchvision.models, f"efficientnet_{loaded.variant.name}", None)
    if builder is None:
        return {"library": "torchvision", "skipped": f"torchvision has no efficientnet_{loaded.variant.name}"}
    reference = builder(weights=None, num_classes=loaded.num_classes)
    return _compare_torch("torchvision", torchvision.__version__, reference, path, loaded, resolution, seed, trust)


def _run_keras(path: Path, loaded: LoadedModel, resolution: int, seed: int, trust: bool) -> dict:
    import keras

    if path.suffix.lower() not in (".keras", ".h5", ".hdf5"):
        return {"library": "keras", "skipped": "Keras can only run the .keras or .h5 file the model was saved as"}
    reference = keras.saving.load_model(path, compile=False)
    # The exported model returns logits, so compare before the last Dense layer's activation.
    dense = [layer for layer in _keras_layers(reference) if isinstance(layer, keras.layers.Dense)]
    if dense:
        dense[-1].activation = keras.activations.linear
    size = reference.input_shape[1] if reference.input_shape[1] else resolution
    pixels = np.random.RandomState(seed).uniform(0, 255, (1, size, size, 3)).astype(np.float32)
    expected = np.asarray(reference.predict(pixels, verbose=0))
    p = loaded.preprocessing
    x = (pixels - np.asarray(p.mean, np.float32)) / np.asarray(p.std, np.float32)
    with torch.no_grad():
        actual = loaded.model(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))).numpy()
    return {"library": "keras", "version": keras.__version__, "resolution": size,
            "max_abs_logit_diff": float(np.abs(actual - expected).max()), "max_abs_logit": float(np.abs(expected).max())}


def _keras_layers(model) -> list:
    layers = []
    for layer in model.layers:
        layers.extend(_keras_layers(layer) if hasattr(layer, "layers") else [layer])
    return layers
