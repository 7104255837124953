"""Compound scaling of EfficientNet: how φ turns into width, depth and resolution.

EfficientNet scales the B0 baseline by one coefficient φ:

    depth      d = α^φ    (α = 1.2)
    width      w = β^φ    (β = 1.1)
    resolution r = γ^φ    (γ = 1.15)

with α·β²·γ² ≈ 2, so the multiply-adds roughly double per step of φ. The released B1–B7 do not
follow this formula exactly: the official builder hard-codes a table of (width, depth,
resolution, dropout) per variant, which `variants.py` carries. The rounding below is the
official builder's and applies to both.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

ALPHA = 1.2
BETA = 1.1
GAMMA = 1.15
BASE_RESOLUTION = 224
CHANNEL_DIVISOR = 8


def round_channels(channels: int, width: float, divisor: int = CHANNEL_DIVISOR) -> int:
    """Scale a channel count by `width` and round it to a multiple of `divisor`.

    The official builder rounds to the nearest multiple, but never down by more than 10%,
    because a large loss of channels would shrink the model below the intended scale.
    """
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * scaled:
        rounded += divisor
    return int(rounded)


def round_repeats(repeats: int, depth: float) -> int:
    """Scale a stage's block count by `depth`, rounding up so no stage loses a block."""
    return int(math.ceil(depth * repeats))


@dataclass(frozen=True)
class Coefficients:
    """Width, depth and resolution multipliers that compound scaling gives for one φ."""

    phi: float
    width: float
    depth: float
    resolution: int


def compound(phi: float, alpha: float = ALPHA, beta: float = BETA, gamma: float = GAMMA) -> Coefficients:
    """Apply the compound scaling rule to φ and return the multipliers.

    The resolution is rounded to a multiple of 8, which keeps feature maps even through the
    first three stride-2 layers.
    """
    if phi < 0 or not math.isfinite(phi):
        raise ValueError(f"invalid phi {phi!r}: use a finite value >= 0, for example --phi 2.5")
    for name, value in (("alpha", alpha), ("beta", beta), ("gamma", gamma)):
        if value < 1 or not math.isfinite(value):
            raise ValueError(f"invalid {name} {value!r}: use a finite value >= 1")
    resolution = int(round(BASE_RESOLUTION * gamma**phi / 8) * 8)
    return Coefficients(phi=phi, width=beta**phi, depth=alpha**phi, resolution=resolution)
