"""torchvision's EfficientNet v1 layout (`torchvision.models.efficientnet_b0` … `b7`).

`features.0` is the stem (conv `.0`, BatchNorm `.1`), `features.1`–`features.7` the stages of
MBConv blocks, `features.8` the head, and `classifier.1` the linear layer. Inside a block,
`block.N` counts only the sub-modules present: with an expand conv they are expand, depthwise,
SE, project, and without one (expand ratio 1) depthwise, SE, project. So each block is renamed
knowing its sub-module count.

Checked against torchvision 0.29.1: B0–B4 use nn.BatchNorm2d's default eps 1e-5, and B5–B7,
whose weights were ported from TensorFlow, use eps 1e-3. Padding is symmetric (k - 1) // 2.
"""

from __future__ import annotations

import re
from dataclasses import replace

import torch

from edgeeff.data.preprocess import IMAGENET

BN_EPS = {"b5": 1e-3, "b6": 1e-3, "b7": 1e-3}

_FEATURE_KEY = re.compile(r"features\.(\d+)\.(.+)")
_BLOCK_KEY = re.compile(r"features\.(\d+)\.(\d+)\.block\.(\d+)\.(.+)")
_CONV_BN = {"0": "conv", "1": "bn"}


def detect(keys: list[str]) -> bool:
    return "features.0.0.weight" in keys and "classifier.1.weight" in keys


def convert(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a torchvision state dict to edgeeff keys; unknown keys keep their name under `unmapped.`."""
    stages = {int(m[1]) for k in state if (m := _FEATURE_KEY.fullmatch(k))}
    head_stage = max(stages, default=8)
    blocks = sorted({(int(m[1]), int(m[2])) for k in state if (m := _BLOCK_KEY.fullmatch(k))})
    flat_index = {stage_block: i for i, stage_block in enumerate(blocks)}
    sub_modules: dict[tuple[int, int], set[int]] = {}
    for key in state:
        if match := _BLOCK_KEY.fullmatch(key):
            sub_modules.setdefault((int(match[1]), int(match[2])), set()).add(int(match[3]))
    roles = {block: (["expand", "depthwise", "se", "project"] if len(subs) == 4 else ["depthwise", "se", "project"])
             for block, subs in sub_modules.items()}
    return {_rename(key, head_stage, flat_index, roles): tensor for key, tensor in state.items()}


def _rename(key: str, head_stage: int, flat_index: dict, roles: dict) -> str:
    if key.startswith("classifier.1."):
        return "classifier." + key[len("classifier.1."):]
    match = _BLOCK_KEY.fullmatch(key)
    if match:
        block = (int(match[1]), int(match[2]))
        position, rest = int(match[3]), match[4]
        if position >= len(roles[block]):
            return f"unmapped.{key}"
        role = roles[block][position]
        sub, _, param = rest.partition(".")
        if role == "se":
            module = {"fc1": "reduce", "fc2": "expand"}.get(sub)
        else:
            module = _CONV_BN.get(sub)
        return f"blocks.{flat_index[block]}.{role}.{module}.{param}" if module else f"unmapped.{key}"
    match = _FEATURE_KEY.fullmatch(key)
    if match and int(match[1]) in (0, head_stage):
        sub, _, param = match[2].partition(".")
        part = "stem" if int(match[1]) == 0 else "head"
        if sub in _CONV_BN:
            return f"{part}.{_CONV_BN[sub]}.{param}"
    return f"unmapped.{key}"


def _preset(crop: int, resize: int, interpolation: str = "bicubic"):
    return replace(IMAGENET, crop_fraction=round(crop / resize, 4), interpolation=interpolation)


# The DEFAULT weights' eval transform per variant in torchvision 0.29.1: resize the shorter side
# to `resize`, center-crop `crop`, ImageNet mean/std.
PREPROCESSING = {
    "b0": _preset(224, 256), "b1": _preset(240, 255, "bilinear"), "b2": _preset(288, 288),
    "b3": _preset(300, 320), "b4": _preset(380, 384), "b5": _preset(456, 456),
    "b6": _preset(528, 528), "b7": _preset(600, 600),
}
# Crop sizes where torchvision's eval size differs from the official builder's table.
RESOLUTION = {"b2": 288}
