"""The EfficientNet family as data: the B0 stage table and one entry per released variant.

B1–B7 and Lite1–4 take their width, depth, resolution and dropout from the official builders'
tables (efficientnet_builder.py and efficientnet_lite_builder.py in tensorflow/tpu), so that
published checkpoints load. Custom φ goes through `scaling.compound` instead.
"""

from __future__ import annotations

import difflib
import math
from dataclasses import dataclass, replace

from edgeeff.models import scaling


@dataclass(frozen=True)
class StageConfig:
    """One stage of MBConv blocks in the B0 baseline, before scaling."""

    expand_ratio: int
    kernel: int
    stride: int
    in_channels: int
    out_channels: int
    repeats: int


# B0's seven stages. Stage 1 has no expansion (expand ratio 1), so its blocks skip the 1x1
# expand conv. The strides bring 224 px down to 7 px at the head: 2 (stem) x 2^4 = 32.
B0_STAGES: tuple[StageConfig, ...] = (
    StageConfig(expand_ratio=1, kernel=3, stride=1, in_channels=32, out_channels=16, repeats=1),
    StageConfig(expand_ratio=6, kernel=3, stride=2, in_channels=16, out_channels=24, repeats=2),
    StageConfig(expand_ratio=6, kernel=5, stride=2, in_channels=24, out_channels=40, repeats=2),
    StageConfig(expand_ratio=6, kernel=3, stride=2, in_channels=40, out_channels=80, repeats=3),
    StageConfig(expand_ratio=6, kernel=5, stride=1, in_channels=80, out_channels=112, repeats=3),
    StageConfig(expand_ratio=6, kernel=5, stride=2, in_channels=112, out_channels=192, repeats=4),
    StageConfig(expand_ratio=6, kernel=3, stride=1, in_channels=192, out_channels=320, repeats=1),
)
B0_STEM_CHANNELS = 32
B0_HEAD_CHANNELS = 1280
SE_RATIO = 0.25
DROP_PATH_RATE = 0.2


@dataclass(frozen=True)
class Variant:
    """A named member of the family with the metadata that travels with it.

    `paper_params` and `paper_macs` are the EfficientNet paper's Table 2 figures (rounded
    there), kept to check the builder against; Lite variants have none in that paper.
    """

    name: str
    family: str  # "efficientnet" or "efficientnet-lite"
    phi: float
    width: float
    depth: float
    resolution: int
    dropout: float
    paper_params: float | None = None
    paper_macs: float | None = None
    released: bool = True

    @property
    def lite(self) -> bool:
        return self.family == "efficientnet-lite"


def _b(name: str, phi: float, width: float, depth: float, res: int, dropout: float,
       params: float, macs: float) -> Variant:
    return Variant(name, "efficientnet", phi, width, depth, res, dropout, params, macs)


def _lite(name: str, phi: float, width: float, depth: float, res: int, dropout: float) -> Variant:
    return Variant(name, "efficientnet-lite", phi, width, depth, res, dropout)


VARIANTS: dict[str, Variant] = {
    v.name: v
    for v in (
        _b("b0", 0, 1.0, 1.0, 224, 0.2, 5.3e6, 0.39e9),
        _b("b1", 1, 1.0, 1.1, 240, 0.2, 7.8e6, 0.70e9),
        _b("b2", 2, 1.1, 1.2, 260, 0.3, 9.2e6, 1.0e9),
        _b("b3", 3, 1.2, 1.4, 300, 0.3, 12e6, 1.8e9),
        _b("b4", 4, 1.4, 1.8, 380, 0.4, 19e6, 4.2e9),
        _b("b5", 5, 1.6, 2.2, 456, 0.4, 30e6, 9.9e9),
        _b("b6", 6, 1.8, 2.6, 528, 0.5, 43e6, 19e9),
        _b("b7", 7, 2.0, 3.1, 600, 0.5, 66e6, 37e9),
        _lite("lite0", 0, 1.0, 1.0, 224, 0.2),
        _lite("lite1", 1, 1.0, 1.1, 240, 0.2),
        _lite("lite2", 2, 1.1, 1.2, 260, 0.3),
        _lite("lite3", 3, 1.2, 1.4, 280, 0.3),
        _lite("lite4", 4, 1.4, 1.8, 300, 0.3),
    )
}

# Accepted spellings of the released names, as other libraries write them.
_ALIASES = {
    **{f"efficientnet-b{i}": f"b{i}" for i in range(8)},
    **{f"efficientnet_b{i}": f"b{i}" for i in range(8)},
    **{f"efficientnet-lite{i}": f"lite{i}" for i in range(5)},
    **{f"efficientnet_lite{i}": f"lite{i}" for i in range(5)},
}


def get_variant(name: str) -> Variant:
    """Look up a released variant by name; an unknown name raises with the closest match."""
    key = name.strip().lower()
    key = _ALIASES.get(key, key)
    if key in VARIANTS:
        return VARIANTS[key]
    choices = list(VARIANTS)
    close = difflib.get_close_matches(key, choices + list(_ALIASES), n=1)
    hint = f"did you mean {_ALIASES.get(close[0], close[0])!r}? " if close else ""
    raise KeyError(f"unknown model {name!r}: {hint}choose one of {', '.join(choices)}, or use --phi")


def custom_variant(phi: float, alpha: float = scaling.ALPHA, beta: float = scaling.BETA,
                   gamma: float = scaling.GAMMA, lite: bool = False) -> Variant:
    """Build the variant that the compound scaling rule gives for any φ >= 0."""
    coeffs = scaling.compound(phi, alpha, beta, gamma)
    # Dropout rises from B0's 0.2 to B7's 0.5 in the released table; interpolate on φ.
    dropout = round(min(0.5, 0.2 + 0.3 * phi / 7), 3)
    family = "efficientnet-lite" if lite else "efficientnet"
    name = f"{'lite' if lite else 'b'}-phi{phi:g}"
    if (alpha, beta, gamma) != (scaling.ALPHA, scaling.BETA, scaling.GAMMA):
        name += f"-a{alpha:g}-b{beta:g}-g{gamma:g}"
    return Variant(name, family, phi, coeffs.width, coeffs.depth, coeffs.resolution, dropout,
                   released=False)


def formula_difference(variant: Variant) -> dict[str, tuple[float, float]]:
    """Compare a released variant with the pure compound formula at its φ.

    Returns {field: (table value, formula value)} for the fields that differ, so the CLI can
    show where the official table departs from α^φ, β^φ, γ^φ.
    """
    coeffs = scaling.compound(variant.phi)
    pairs = {
        "width": (variant.width, round(coeffs.width, 3)),
        "depth": (variant.depth, round(coeffs.depth, 3)),
        "resolution": (variant.resolution, coeffs.resolution),
    }
    return {k: v for k, v in pairs.items() if not math.isclose(v[0], v[1], rel_tol=0.02)}


@dataclass(frozen=True)
class BlockConfig:
    """One MBConv block after scaling, as the builder instantiates it."""

    expand_ratio: int
    kernel: int
    stride: int
    in_channels: int
    out_channels: int
    se_channels: int  # 0 means no squeeze-and-excitation
    drop_path: float


@dataclass(frozen=True)
class ArchConfig:
    """Everything needed to build the network: scaled blocks plus stem, head and options."""

    variant: Variant
    blocks: tuple[BlockConfig, ...]
    stem_channels: int
    head_channels: int
    activation: str  # "silu" or "relu6"
    num_classes: int = 1000
    padding: str = "symmetric"  # "symmetric" (PyTorch k//2) or "same" (TensorFlow SAME)
    bn_eps: float = 1e-3


def arch_config(variant: Variant, num_classes: int = 1000, padding: str = "symmetric",
                bn_eps: float = 1e-3, drop_path_rate: float = DROP_PATH_RATE) -> ArchConfig:
    """Scale the B0 stage table by a variant's width and depth into a flat block list.

    Lite variants keep the stem at 32 and the head at 1280 channels, keep the first and last
    stages' repeats unscaled, drop squeeze-and-excitation and use ReLU6, as the official Lite
    builder does so that the model quantizes well.
    """
    if padding not in ("symmetric", "same"):
        raise ValueError(f"invalid padding {padding!r}: use 'symmetric' or 'same'")
    if num_classes < 1:
        raise ValueError(f"invalid num_classes {num_classes}: use a positive class count")
    lite = variant.lite
    specs: list[tuple[StageConfig, int]] = []
    for i, stage in enumerate(B0_STAGES):
        fixed = lite and i in (0, len(B0_STAGES) - 1)
        repeats = stage.repeats if fixed else scaling.round_repeats(stage.repeats, variant.depth)
        specs.append((stage, repeats))
    total = sum(r for _, r in specs)

    blocks: list[BlockConfig] = []
    for stage, repeats in specs:
        in_ch = scaling.round_channels(stage.in_channels, variant.width)
        out_ch = scaling.round_channels(stage.out_channels, variant.width)
        if lite and stage is B0_STAGES[0]:
            in_ch = B0_STEM_CHANNELS
        for r in range(repeats):
            block_in = in_ch if r == 0 else out_ch
            # The SE bottleneck is sized from the block's input channels, not the expanded ones.
            se = 0 if lite else max(1, int(block_in * SE_RATIO))
            # Stochastic depth grows linearly with block index, from 0 at the first block toward the rate.
            rate = drop_path_rate * len(blocks) / total
            blocks.append(BlockConfig(stage.expand_ratio, stage.kernel, stage.stride if r == 0 else 1,
                                      block_in, out_ch, se, rate))
    stem = B0_STEM_CHANNELS if lite else scaling.round_channels(B0_STEM_CHANNELS, variant.width)
    head = B0_HEAD_CHANNELS if lite else scaling.round_channels(B0_HEAD_CHANNELS, variant.width)
    return ArchConfig(variant=variant, blocks=tuple(blocks), stem_channels=stem, head_channels=head,
                      activation="relu6" if lite else "silu", num_classes=num_classes,
                      padding=padding, bn_eps=bn_eps)


# An estimate of where export stops being practical, not a limit of the network: at 4096 px
# B0's stem output alone is 32 x 2048 x 2048 float32 values (512 MiB) per image, about 7x B7's 600 px.
MAX_RESOLUTION = 4096


def with_resolution(variant: Variant, resolution: int) -> Variant:
    """Return the variant exported at another input size; the network is fully convolutional."""
    if resolution < 32 or resolution % 2 or resolution > MAX_RESOLUTION:
        raise ValueError(f"invalid resolution {resolution}: use an even size from 32 to {MAX_RESOLUTION} px")
    return replace(variant, resolution=resolution)
