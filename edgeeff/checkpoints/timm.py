"""timm's EfficientNet layout: `efficientnet_b*`, `efficientnet_lite*` and the TF ports `tf_*`.

timm nests blocks by stage (`blocks.S.B`) and names a block's layers by role, and the roles
depend on the block type. A depthwise-separable block (stage 0) has conv_dw, bn1, se, conv_pw,
bn2. An inverted-residual block has conv_pw, bn1, conv_dw, bn2, se, conv_pwl, bn3. So a key's
edgeeff name depends on its neighbours, and the whole state dict is converted at once.

timm's own architectures and the TF ports share this layout exactly, so keys cannot tell them
apart: `efficientnet_*` uses PyTorch symmetric padding and BatchNorm eps 1e-5, and `tf_*` uses
TF SAME padding and eps 1e-3. Preprocessing below is each architecture's default pretrained
config in timm 1.0.31.
"""

from __future__ import annotations

import re
from dataclasses import replace

import torch

from edgeeff.data.preprocess import IMAGENET, Preprocessing

# timm's IMAGENET_INCEPTION_MEAN/STD: (pixel / 255 - 0.5) / 0.5.
INCEPTION = Preprocessing("inception", (127.5, 127.5, 127.5), (127.5, 127.5, 127.5))

_TOP = {"conv_stem": "stem.conv", "bn1": "stem.bn", "conv_head": "head.conv", "bn2": "head.bn",
        "classifier": "classifier"}
_INVERTED_RESIDUAL = {"conv_pw": "expand.conv", "bn1": "expand.bn", "conv_dw": "depthwise.conv",
                      "bn2": "depthwise.bn", "se.conv_reduce": "se.reduce", "se.conv_expand": "se.expand",
                      "conv_pwl": "project.conv", "bn3": "project.bn"}
_DEPTHWISE_SEPARABLE = {"conv_dw": "depthwise.conv", "bn1": "depthwise.bn", "se.conv_reduce": "se.reduce",
                        "se.conv_expand": "se.expand", "conv_pw": "project.conv", "bn2": "project.bn"}
_BLOCK_KEY = re.compile(r"blocks\.(\d+)\.(\d+)\.(.+)\.(\w+)")


def detect(keys: list[str]) -> bool:
    return "conv_stem.weight" in keys and any(k.startswith("blocks.0.0.") for k in keys)


def convert(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a timm state dict to edgeeff keys; unknown keys keep their name under `unmapped.`."""
    blocks = sorted({(int(m[1]), int(m[2])) for k in state if (m := _BLOCK_KEY.fullmatch(k))})
    flat_index = {stage_block: i for i, stage_block in enumerate(blocks)}
    inverted = {(int(m[1]), int(m[2])) for k in state if (m := _BLOCK_KEY.fullmatch(k)) and m[3] == "conv_pwl"}
    out = {}
    for key, tensor in state.items():
        out[_rename(key, flat_index, inverted)] = tensor
    return out


def _rename(key: str, flat_index: dict, inverted: set) -> str:
    match = _BLOCK_KEY.fullmatch(key)
    if match:
        stage_block = (int(match[1]), int(match[2]))
        table = _INVERTED_RESIDUAL if stage_block in inverted else _DEPTHWISE_SEPARABLE
        module = table.get(match[3])
        if module:
            return f"blocks.{flat_index[stage_block]}.{module}.{match[4]}"
        return f"unmapped.{key}"
    module, _, param = key.rpartition(".")
    return f"{_TOP[module]}.{param}" if module in _TOP else f"unmapped.{key}"


def _preset(base: Preprocessing, crop: float, interpolation: str = "bicubic") -> Preprocessing:
    return replace(base, crop_fraction=crop, interpolation=interpolation)


# Default pretrained config per architecture in timm 1.0.31 (mean/std, crop_pct, interpolation).
# timm's own B1 default (ra4_e3600_r240_in1k) was trained with Inception mean/std, the others
# with ImageNet's.
TIMM_PREPROCESSING = {
    "b0": _preset(IMAGENET, 0.875), "b1": _preset(INCEPTION, 0.9), "b2": _preset(IMAGENET, 0.875),
    "b3": _preset(IMAGENET, 0.875), "b4": _preset(IMAGENET, 0.875), "b5": _preset(IMAGENET, 1.0),
    "b6": _preset(IMAGENET, 0.942), "b7": _preset(IMAGENET, 0.949),
    "lite0": _preset(IMAGENET, 0.875), "lite1": _preset(IMAGENET, 0.882), "lite2": _preset(IMAGENET, 0.89),
    "lite3": _preset(IMAGENET, 0.904), "lite4": _preset(IMAGENET, 0.922),
}
TIMM_TF_PREPROCESSING = {
    "b0": _preset(IMAGENET, 0.875), "b1": _preset(IMAGENET, 0.882), "b2": _preset(IMAGENET, 0.89),
    "b3": _preset(IMAGENET, 0.904), "b4": _preset(IMAGENET, 0.922), "b5": _preset(IMAGENET, 0.934),
    "b6": _preset(IMAGENET, 0.942), "b7": _preset(IMAGENET, 0.949),
    "lite0": _preset(INCEPTION, 0.875), "lite1": _preset(INCEPTION, 0.882), "lite2": _preset(INCEPTION, 0.89),
    "lite3": _preset(INCEPTION, 0.904, "bilinear"), "lite4": _preset(INCEPTION, 0.92, "bilinear"),
}
# Evaluation sizes where timm's default config differs from the official builder's table.
TIMM_RESOLUTION = {"b2": 256, "b3": 288, "b4": 320, "b5": 448, "lite3": 300, "lite4": 380}
TIMM_TF_RESOLUTION = {"lite3": 300, "lite4": 380}


def preprocessing_from_config(config: dict) -> Preprocessing | None:
    """Read mean, std, crop_pct and interpolation from a timm `pretrained_cfg` mapping."""
    try:
        mean = tuple(float(m) * 255 for m in config["mean"])
        std = tuple(float(s) * 255 for s in config["std"])
    except (KeyError, TypeError, ValueError):
        return None
    if len(mean) != 3 or len(std) != 3:
        return None
    name = "imagenet" if (mean, std) == (IMAGENET.mean, IMAGENET.std) else "timm"
    interpolation = config.get("interpolation", "bicubic")
    return Preprocessing(name, mean, std, float(config.get("crop_pct", 0.875)),
                         interpolation if interpolation in ("bicubic", "bilinear") else "bicubic")
