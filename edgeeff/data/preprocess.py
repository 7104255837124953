"""Image preprocessing as data: the transform a checkpoint was trained with, applied in NumPy.

This module imports no torch, so the device agent and `predict` can use it with only the
runtimes installed.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from PIL import Image

IMAGENET_MEAN = (0.485 * 255, 0.456 * 255, 0.406 * 255)
IMAGENET_STD = (0.229 * 255, 0.224 * 255, 0.225 * 255)


@dataclass(frozen=True)
class Preprocessing:
    """Eval transform: resize the shorter side, center-crop, then (pixel - mean) / std.

    `mean` and `std` are on the 0–255 pixel scale. `crop_fraction` is crop size over resized
    shorter side (0.875 gives the classic 256 → 224).
    """

    name: str
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    crop_fraction: float = 0.875
    interpolation: str = "bicubic"

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "Preprocessing":
        return cls(name=data["name"], mean=tuple(data["mean"]), std=tuple(data["std"]),
                   crop_fraction=float(data["crop_fraction"]), interpolation=data["interpolation"])

    def __call__(self, image: Image.Image, resolution: int) -> np.ndarray:
        """Return a float32 CHW array for one RGB image at `resolution` px."""
        return normalize(center_crop(image, resolution, self.crop_fraction, self.interpolation),
                         self.mean, self.std)


# ImageNet mean/std, used by torchvision, timm and efficientnet-pytorch checkpoints.
IMAGENET = Preprocessing("imagenet", IMAGENET_MEAN, IMAGENET_STD)
# The Lite family was trained on (pixel - 127) / 128 and quantizes around that symmetric range.
LITE = Preprocessing("lite", (127.0, 127.0, 127.0), (128.0, 128.0, 128.0))
# Keras applications normalize inside the graph; the importer moves that step here instead,
# so exactly one normalization happens.
KERAS = Preprocessing("keras", IMAGENET_MEAN, IMAGENET_STD)

PRESETS = {p.name: p for p in (IMAGENET, LITE)}

_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


def center_crop(image: Image.Image, resolution: int, crop_fraction: float, interpolation: str) -> Image.Image:
    """Resize the shorter side to resolution / crop_fraction and cut the central square."""
    if interpolation not in _RESAMPLE:
        raise ValueError(f"invalid interpolation {interpolation!r}: use one of {', '.join(_RESAMPLE)}")
    width, height = image.size
    short = int(round(resolution / crop_fraction))
    scale = short / min(width, height)
    new_size = (max(resolution, round(width * scale)), max(resolution, round(height * scale)))
    image = image.resize(new_size, _RESAMPLE[interpolation])
    left = (new_size[0] - resolution) // 2
    top = (new_size[1] - resolution) // 2
    return image.crop((left, top, left + resolution, top + resolution))


def normalize(image: Image.Image, mean, std) -> np.ndarray:
    array = np.asarray(image, dtype=np.float32)  # HWC, 0–255
    array = (array - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(array.transpose(2, 0, 1))
