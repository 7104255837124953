"""Checkpoint layouts that edgeeff reads, and how their keys map onto edgeeff's names.

Each format recognises its keys, renames them to edgeeff's module tree, and records the padding,
BatchNorm epsilon and preprocessing its models were trained with.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from edgeeff.data.preprocess import IMAGENET, LITE, Preprocessing


@dataclass(frozen=True)
class CheckpointFormat:
    """A source library's state-dict layout and the training conventions that come with it."""

    name: str
    description: str
    detect: Callable[[list[str]], bool]
    rename: Callable[[str], str | None]  # source key → edgeeff key, None to drop
    padding: str
    bn_eps: float
    preprocessing: Callable[[bool], Preprocessing]  # argument: is the model a Lite variant


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

FORMATS: dict[str, CheckpointFormat] = {f.name: f for f in (LUKEMELAS, NATIVE)}


def detect_format(keys: list[str]) -> CheckpointFormat | None:
    for fmt in FORMATS.values():
        if fmt.detect(keys):
            return fmt
    return None
