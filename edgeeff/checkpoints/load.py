"""Load a trained checkpoint into an edgeeff model, or build an untrained one.

Steps: read the file safely (weights only unless trusted) and unwrap the state dict. Then detect
the source layout, rename keys, and infer or check the variant from tensor shapes. Last, reject
NaN or Inf weights and attach the preprocessing the source library trained with.
"""

from __future__ import annotations

import json
import pickle
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import torch

from edgeeff.checkpoints.formats import FORMATS, NATIVE, CheckpointFormat, detect_format
from edgeeff.checkpoints.keras import KERAS_SUFFIXES, KerasFileError, read_keras_file
from edgeeff.checkpoints.timm import preprocessing_from_config
from edgeeff.data.preprocess import IMAGENET, LITE, Preprocessing
from edgeeff.io import sha256_file
from edgeeff.models import EfficientNet, Variant, arch_config, get_variant
from edgeeff.models.variants import VARIANTS, with_resolution

NATIVE_META_KEY = "edgeeff"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, unreadable, unsafe, or of another shape."""


@dataclass
class LoadedModel:
    """A model ready for export, with where it came from and how its inputs must look."""

    model: EfficientNet
    variant: Variant
    preprocessing: Preprocessing
    source: str  # checkpoint format name, or "untrained"
    checkpoint: str | None = None
    checkpoint_sha256: str | None = None
    labels: list[str] | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def trained(self) -> bool:
        return self.checkpoint is not None

    @property
    def num_classes(self) -> int:
        return self.model.config.num_classes

    @property
    def resolution(self) -> int:
        return self.variant.resolution


def read_state_dict(path: str | Path, trust: bool = False) -> tuple[dict[str, torch.Tensor], dict]:
    """Read tensors and metadata from a checkpoint file.

    The metadata contains edgeeff's own keys for native checkpoints, and under "source" what the
    file says about another library's model: the architecture name a timm checkpoint or its
    Hugging Face config.json records, and a Keras model's BatchNorm epsilon and notes.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}; pass the path of a .pt/.pth/.safetensors file")
    if path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint is empty: {path} has 0 bytes; re-download or re-save it")
    if path.suffix.lower() in KERAS_SUFFIXES:
        try:
            return read_keras_file(path)
        except KerasFileError as exc:
            raise CheckpointError(str(exc)) from exc
    if path.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file
        try:
            return load_file(str(path)), {"source": _config_json_hints(path)}
        except (SafetensorError, OSError, ValueError) as exc:
            raise CheckpointError(f"invalid safetensors checkpoint {path}: {exc}; re-save the file") from exc
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not trust)
    except pickle.UnpicklingError as exc:
        if "weights_only" in str(exc) or "Unsupported global" in str(exc):
            raise CheckpointError(
                f"rejected {path}: it contains pickled Python objects that could run code; "
                "re-save it as a state dict, or pass --trust-checkpoint if you trust its source") from exc
        raise CheckpointError(f"not a PyTorch checkpoint: {path} ({exc}); pass a .pt/.pth state dict") from exc
    except Exception as exc:  # torch.load raises KeyError, EOFError, RuntimeError... on non-checkpoints
        # torch's zip reader appends several sentences of advice; its first sentence names the fault.
        first_sentence = (str(exc).splitlines() or [""])[0].split(". ")[0]
        raise CheckpointError(f"failed to read checkpoint {path} ({type(exc).__name__}: {first_sentence}); "
                              "the file is truncated or not a PyTorch checkpoint") from exc
    meta: dict = {}
    if isinstance(obj, torch.nn.Module):
        obj = obj.state_dict()
    if isinstance(obj, dict) and isinstance(obj.get(NATIVE_META_KEY), dict):
        meta = dict(obj[NATIVE_META_KEY])
    source = _config_json_hints(path)
    # timm's training checkpoints record the architecture name beside the state dict.
    if isinstance(obj, dict) and isinstance(obj.get("arch"), str):
        source["arch"] = obj["arch"]
    if source:
        meta["source"] = source
    if isinstance(obj, dict):
        for wrapper in ("state_dict", "model_state_dict", "model", "state_dict_ema", "model_ema"):
            if isinstance(obj.get(wrapper), dict):
                obj = obj[wrapper]
                break
    if not isinstance(obj, dict) or not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(f"no state dict found in {path}: expected a mapping of tensor names to tensors")
    # DataParallel / DDP checkpoints prefix every key with "module.".
    if all(k.startswith("module.") for k in obj):
        obj = {k[len("module."):]: v for k, v in obj.items()}
    return obj, meta


def _config_json_hints(path: Path) -> dict:
    """Return the architecture and timm preprocessing from a Hugging Face config.json beside `path`.

    timm models on the Hugging Face Hub ship `config.json` with "architecture" and
    "pretrained_cfg" next to the weights; a missing or unrelated file gives {}.
    """
    config_path = path.with_name("config.json")
    try:
        config = json.loads(config_path.read_text()) if config_path.is_file() else None
    except (OSError, ValueError):
        return {}
    if not isinstance(config, dict) or "efficientnet" not in str(config.get("architecture", "")):
        return {}
    hints = {"arch": str(config["architecture"])}
    if isinstance(config.get("pretrained_cfg"), dict):
        hints["timm_pretrained_cfg"] = config["pretrained_cfg"]
    return hints


@lru_cache(maxsize=64)
def _expected_shapes(variant_name: str, num_classes: int) -> dict[str, tuple[int, ...]]:
    variant = get_variant(variant_name)
    with torch.device("meta"):
        model = EfficientNet(arch_config(variant, num_classes))
    return {k: tuple(v.shape) for k, v in model.state_dict().items()}


def _mismatches(state: dict[str, torch.Tensor], expected: dict[str, tuple[int, ...]]) -> list[str]:
    problems = []
    for key, shape in expected.items():
        if key.endswith("num_batches_tracked"):
            continue
        if key not in state:
            problems.append(f"{key} missing")
        elif tuple(state[key].shape) != shape:
            problems.append(f"{key} has shape {tuple(state[key].shape)}, expected {shape}")
    extra = [k for k in state if k not in expected and not k.endswith("num_batches_tracked")]
    problems += [f"{k} unexpected" for k in extra]
    return problems


def infer_variant(state: dict[str, torch.Tensor], num_classes: int) -> tuple[str | None, int]:
    """Return the released variant whose tensor shapes fit best, and its mismatch count."""
    best, best_count = None, None
    for name in VARIANTS:
        count = len(_mismatches(state, _expected_shapes(name, num_classes)))
        if best_count is None or count < best_count:
            best, best_count = name, count
    return best, best_count or 0


def _check_finite(state: dict[str, torch.Tensor], path: Path) -> None:
    for key, tensor in state.items():
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            bad = int((~torch.isfinite(tensor)).sum())
            raise CheckpointError(f"checkpoint {path} has {bad} NaN or Inf values in {key}; "
                                  "the training run diverged: use an earlier checkpoint")


def load_checkpoint(path: str | Path, model: str | Variant | None = None, checkpoint_format: str | None = None,
                    trust: bool = False, labels: list[str] | None = None) -> LoadedModel:
    """Load a checkpoint into an edgeeff model.

    `model` may be omitted, and the variant is then inferred from tensor shapes. When it is
    given and the shapes disagree, the error names the first mismatching tensors and the
    variant the checkpoint most likely is.
    """
    path = Path(path)
    raw, meta = read_state_dict(path, trust)
    source = meta.get("source", {})
    fmt = choose_format(raw, checkpoint_format, source.get("arch"), path)
    converted = fmt.convert_state(raw)
    state = converted.state
    if "classifier.weight" not in state:
        raise CheckpointError(f"checkpoint {path} has no classifier weight; it is not an EfficientNet classifier")
    num_classes = int(state["classifier.weight"].shape[0])
    if labels is not None and len(labels) != num_classes:
        raise CheckpointError(f"labels file has {len(labels)} names but checkpoint {path} has {num_classes} classes; "
                              "pass the labels file that matches this checkpoint")

    padding, bn_eps = fmt.padding, source.get("bn_eps")
    if fmt is NATIVE and meta:
        padding, bn_eps = meta.get("padding", padding), meta.get("bn_eps", bn_eps)
        labels = labels or meta.get("labels")
    if model is None:
        if fmt is NATIVE and meta.get("variant") in VARIANTS:
            variant = get_variant(meta["variant"])
        else:
            name, count = infer_variant(state, num_classes)
            if count:
                raise CheckpointError(f"checkpoint {path} matches no released variant (closest: {name}, "
                                      f"{count} tensors differ); pass --model")
            variant = get_variant(name)
    else:
        variant = get_variant(model) if isinstance(model, str) else model
    # edgeeff checkpoints record the resolution they were trained at; it becomes the default export size.
    if fmt is NATIVE and meta.get("resolution") and int(meta["resolution"]) != variant.resolution:
        variant = with_resolution(variant, int(meta["resolution"]))

    if variant.released:
        expected = _expected_shapes(variant.name, num_classes)
    else:
        with torch.device("meta"):
            expected = {k: tuple(v.shape) for k, v in EfficientNet(arch_config(variant, num_classes)).state_dict().items()}
    problems = _mismatches(state, expected)
    if problems:
        likely, count = infer_variant(state, num_classes)
        hint = f"it looks like {likely}: pass --model {likely}" if count == 0 else f"closest released variant: {likely}"
        raise CheckpointError(f"checkpoint {path} does not fit {variant.name}: {'; '.join(problems[:3])}"
                              f"{' ...' if len(problems) > 3 else ''}; {hint}")
    _check_finite(state, path)

    if bn_eps is None:
        bn_eps = fmt.bn_eps_for(variant)
    net = EfficientNet(arch_config(variant, num_classes, padding=padding, bn_eps=bn_eps))
    net.load_state_dict(state, strict=False)
    net.eval()
    timm_config = source.get("timm_pretrained_cfg")
    if fmt is NATIVE and meta.get("preprocessing"):
        preprocessing = Preprocessing.from_dict(meta["preprocessing"])
    elif timm_config and fmt.name in ("timm", "timm-tf") and preprocessing_from_config(timm_config):
        preprocessing = preprocessing_from_config(timm_config)
    else:
        preprocessing = converted.preprocessing or fmt.preprocessing_for(variant)
    # The format's own caveat (timm's padding guess) matters only when nothing chose the format.
    guessed = not checkpoint_format and not source.get("arch")
    notes = [*fmt.notes_for(variant, guessed), *converted.notes, *source.get("notes", [])]
    input_size = source.get("input_size")
    if input_size and input_size != variant.resolution:
        notes.append(f"the source model was built for {input_size} px input while edgeeff's default for "
                     f"{variant.name} is {variant.resolution} px; --resolution sets the export size")
    return LoadedModel(model=net, variant=variant, preprocessing=preprocessing, source=fmt.name,
                       checkpoint=str(path), checkpoint_sha256=sha256_file(path), labels=labels, notes=notes)


def choose_format(raw: dict[str, torch.Tensor], checkpoint_format: str | None = None, arch: str | None = None,
                  path: str | Path = "checkpoint") -> CheckpointFormat:
    """Return the named format, or the one detected from the keys (and a recorded architecture name).

    A named format whose keys do not match raises, naming the detected one, because renaming
    another library's keys would fail later with a less useful shape error.
    """
    keys = list(raw)
    detected = detect_format(keys, arch)
    if checkpoint_format:
        if checkpoint_format not in FORMATS:
            raise CheckpointError(f"unknown checkpoint format {checkpoint_format!r}: use one of {', '.join(FORMATS)}")
        fmt = FORMATS[checkpoint_format]
        if not fmt.detect(keys):
            found = f"its keys look like {detected.name}" if detected else "its keys match no known format"
            raise CheckpointError(f"checkpoint {path} is not in the {fmt.name} layout ({found}); "
                                  "drop --checkpoint-format or pass the matching one")
        return fmt
    if detected is None:
        sample = ", ".join(keys[:3])
        raise CheckpointError(f"unrecognised checkpoint layout in {path} (first keys: {sample}); "
                              f"pass --checkpoint-format with one of {', '.join(FORMATS)}")
    return detected


def untrained_model(model: str | Variant, num_classes: int = 1000, labels: list[str] | None = None) -> LoadedModel:
    """Build a model with random weights: fine for latency work, never for accuracy."""
    variant = get_variant(model) if isinstance(model, str) else model
    torch.manual_seed(0)
    net = EfficientNet(arch_config(variant, num_classes)).eval()
    return LoadedModel(model=net, variant=variant, preprocessing=LITE if variant.lite else IMAGENET,
                       source="untrained", labels=labels,
                       notes=["UNTRAINED WEIGHTS: outputs are meaningless; use for latency only"])


def save_checkpoint(loaded: LoadedModel, path: str | Path) -> None:
    """Save an edgeeff checkpoint: the state dict plus the metadata needed to rebuild it."""
    from edgeeff.io import atomic_path

    cfg = loaded.model.config
    meta = {"variant": loaded.variant.name, "resolution": loaded.variant.resolution, "padding": cfg.padding,
            "bn_eps": cfg.bn_eps,
            "preprocessing": loaded.preprocessing.to_dict(), "labels": loaded.labels}
    with atomic_path(path) as tmp:
        torch.save({NATIVE_META_KEY: meta, "state_dict": loaded.model.state_dict()}, tmp)


def with_export_resolution(loaded: LoadedModel, resolution: int | None) -> LoadedModel:
    if resolution is None or resolution == loaded.variant.resolution:
        return loaded
    loaded.variant = with_resolution(loaded.variant, resolution)
    return loaded
