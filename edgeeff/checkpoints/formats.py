"""Checkpoint layouts that edgeeff reads, and how their keys map onto edgeeff's names.

Each format recognises its keys, renames them to edgeeff's module tree, and records the padding,
BatchNorm epsilon and preprocessing its models were trained with.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Mapping, NamedTuple

import torch

from edgeeff.checkpoints import keras, timm, torchvision
from edgeeff.data.preprocess import IMAGENET, LITE, Preprocessing
from edgeeff.models.variants import Variant


class Converted(NamedTuple):
    """A state dict in edgeeff's names, plus the preprocessing and caveats recorded in the source file."""

    state: dict[str, torch.Tensor]
    preprocessing: Preprocessing | None = None
    notes: list[str] = []


@dataclass(frozen=True)
class CheckpointFormat:
    """A source library's state-dict layout and the training conventions that come with it.

    A format renames keys one at a time (`rename`) or converts the whole state dict at once
    (`convert`), for layouts where a key's new name depends on its neighbours or tensors need
    transposing. `variant_*` mappings, keyed by released variant name, override the format-wide
    BatchNorm epsilon and preprocessing, and name the source's evaluation size where it differs
    from edgeeff's table.
    """

    name: str
    description: str
    detect: Callable[[list[str]], bool]
    padding: str
    bn_eps: float
    preprocessing: Callable[[bool], Preprocessing]  # argument: is the model a Lite variant
    rename: Callable[[str], str | None] | None = None  # source key → edgeeff key, None to drop
    convert: Callable[[dict[str, torch.Tensor]], Converted] | None = None
    variant_bn_eps: Mapping[str, float] = field(default_factory=dict)
    variant_preprocessing: Mapping[str, Preprocessing] = field(default_factory=dict)
    variant_resolution: Mapping[str, int] = field(default_factory=dict)
    note: str | None = None  # shown with every model loaded in this format

    def convert_state(self, raw: dict[str, torch.Tensor]) -> Converted:
        if self.convert is not None:
            return self.convert(raw)
        state = {}
        for key, tensor in raw.items():
            new_key = self.rename(key)
            if new_key is not None:
                state[new_key] = tensor
        return Converted(state)

    def bn_eps_for(self, variant: Variant) -> float:
        return self.variant_bn_eps.get(variant.name, self.bn_eps)

    def preprocessing_for(self, variant: Variant) -> Preprocessing:
        return self.variant_preprocessing.get(variant.name) or self.preprocessing(variant.lite)

    def notes_for(self, variant: Variant, guessed: bool = True) -> list[str]:
        """Return caveats for a model of `variant`; `guessed` adds the format's note on detection."""
        notes = [self.note] if self.note and guessed else []
        if variant.name in self.variant_resolution:
            size = self.variant_resolution[variant.name]
            notes.append(f"{self.name} evaluates {variant.name} at {size} px while edgeeff's default is "
                         f"{variant.resolution} px; --resolution sets the export size")
        return notes


# efficientnet-pytorch (lukemelas): `_blocks.N._depthwise_conv.weight`, TF SAME padding.
_LUKEMELAS_BLOCK = {
    "_expand_conv": "expand.conv", "_bn0": "expand.bn",
    "_depthwise_conv": "depthwise.conv", "_bn1": "depthwise.bn",
    "_se_reduce": "se.reduce", "_se_expand": "se.expand",
    "_project_conv": "project.conv", "_bn2": "project.bn",
}
_LUKEMELAS_TOP = {
    "_conv_stem": "stem.conv", "_bn0": "stem.bn", "_conv_head": "head.conv", "_bn1": "head.bn",
    "_fc": "classifier",
}


def _rename_lukemelas(key: str) -> str | None:
    match = re.fullmatch(r"_blocks\.(\d+)\.(\w+)\.(\w+)", key)
    if match:
        index, module, param = match.groups()
        return f"blocks.{index}.{_LUKEMELAS_BLOCK[module]}.{param}" if module in _LUKEMELAS_BLOCK else None
    module, _, param = key.partition(".")
    return f"{_LUKEMELAS_TOP[module]}.{param}" if module in _LUKEMELAS_TOP else None


def _rename_native(key: str) -> str | None:
    return key


LUKEMELAS = CheckpointFormat(
    name="efficientnet-pytorch",
    description="efficientnet-pytorch (lukemelas) state dict",
    detect=lambda keys: any(k.startswith("_conv_stem.") for k in keys),
    rename=_rename_lukemelas,
    padding="same",
    bn_eps=1e-3,
    # The Lite checkpoints in this layout were ported from TensorFlow with Lite's (x - 127) / 128.
    preprocessing=lambda lite: LITE if lite else IMAGENET,
)

NATIVE = CheckpointFormat(
    name="edgeeff",
    description="edgeeff state dict",
    detect=lambda keys: any(k.startswith("stem.conv.") for k in keys),
    rename=_rename_native,
    padding="symmetric",
    bn_eps=1e-3,
    preprocessing=lambda lite: LITE if lite else IMAGENET,
)

TIMM = CheckpointFormat(
    name="timm",
    description="timm efficientnet_b*/efficientnet_lite* state dict (symmetric padding, BatchNorm eps 1e-5)",
    detect=timm.detect,
    convert=lambda raw: Converted(timm.convert(raw)),
    padding="symmetric",
    bn_eps=1e-5,
    preprocessing=lambda lite: IMAGENET,
    variant_preprocessing=timm.TIMM_PREPROCESSING,
    variant_resolution=timm.TIMM_RESOLUTION,
    note="timm layout read as timm's own efficientnet_* (symmetric padding); for tf_efficientnet_* "
         "weights pass --checkpoint-format timm-tf",
)

TIMM_TF = CheckpointFormat(
    name="timm-tf",
    description="timm tf_efficientnet_b*/tf_efficientnet_lite* state dict (TF SAME padding, BatchNorm eps 1e-3)",
    detect=timm.detect,
    convert=lambda raw: Converted(timm.convert(raw)),
    padding="same",
    bn_eps=1e-3,
    preprocessing=lambda lite: timm.INCEPTION if lite else IMAGENET,
    variant_preprocessing=timm.TIMM_TF_PREPROCESSING,
    variant_resolution=timm.TIMM_TF_RESOLUTION,
)

TORCHVISION = CheckpointFormat(
    name="torchvision",
    description="torchvision efficientnet_b* state dict (symmetric padding, BatchNorm eps 1e-5, 1e-3 for B5-B7)",
    detect=torchvision.detect,
    convert=lambda raw: Converted(torchvision.convert(raw)),
    padding="symmetric",
    bn_eps=1e-5,
    preprocessing=lambda lite: IMAGENET,
    variant_bn_eps=torchvision.BN_EPS,
    variant_preprocessing=torchvision.PREPROCESSING,
    variant_resolution=torchvision.RESOLUTION,
)

KERAS = CheckpointFormat(
    name="keras",
    description="keras.applications EfficientNetB0-B7 (.keras or .h5; TF SAME padding, BatchNorm eps 1e-3)",
    detect=keras.detect,
    convert=lambda raw: Converted(*keras.convert(raw)),
    padding="same",
    bn_eps=1e-3,
    preprocessing=lambda lite: IMAGENET,
)

# Detection tries these in order; timm-tf shares timm's keys, so only --checkpoint-format or a
# recorded architecture name (see load.py) selects it.
FORMATS: dict[str, CheckpointFormat] = {f.name: f for f in (LUKEMELAS, NATIVE, TIMM, TIMM_TF, TORCHVISION, KERAS)}


def detect_format(keys: list[str], arch: str | None = None) -> CheckpointFormat | None:
    """Return the first format whose keys match, or None.

    `arch` is the architecture name a checkpoint recorded (timm's training checkpoints and
    Hugging Face configs do): a `tf_` name turns a timm match into timm-tf.
    """
    for fmt in FORMATS.values():
        if fmt.detect(keys):
            if fmt is TIMM and arch and arch.startswith("tf_"):
                return TIMM_TF
            return fmt
    return None
