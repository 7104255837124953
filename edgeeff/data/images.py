"""Reading image folders: decoding, orientation and colour conversion, and sampling.

No torch here: the same reader serves calibration, `predict` and the device agent.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".webp", ".bmp")

log = logging.getLogger(__name__)


class DataError(ValueError):
    """Invalid image input: a missing or empty folder, or no readable image in it."""


def open_rgb(path: str | Path) -> Image.Image:
    """Open an image as 8-bit RGB, with EXIF orientation applied.

    Grayscale, palette and CMYK images are converted; 16-bit images are scaled to 8 bits;
    transparent images are composited on white so transparent pixels do not turn black.
    """
    with Image.open(path) as image:
        image.load()
        image = ImageOps.exif_transpose(image)
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        array = np.asarray(image, dtype=np.float64)
        peak = 65535.0 if image.mode.startswith("I;16") or array.max() > 255 else 255.0
        image = Image.fromarray(np.clip(array / peak * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    if image.mode == "P":
        image = image.convert("RGBA")
    if image.mode in ("RGBA", "LA"):
        background = Image.new("RGBA", image.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, image.convert("RGBA"))
    return image.convert("RGB")


def list_images(folder: str | Path) -> list[Path]:
    """List image files under `folder`, recursively, in a stable sorted order."""
    root = Path(folder)
    if not root.exists():
        raise DataError(f"image folder not found: {root}; pass an existing folder of jpg/png/webp/bmp files")
    if root.is_file():
        if root.suffix.lower() in IMAGE_SUFFIXES:
            return [root]
        raise DataError(f"not an image folder: {root}; pass a folder of jpg/png/webp/bmp files")
    files = sorted(p for p in root.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DataError(f"no images found in {root}: add jpg/png/webp/bmp files (searched recursively)")
    return files


def image_folder_classes(root: str | Path) -> list[str] | None:
    """Return the class names of an ImageFolder tree (one sub-folder per class), or None.

    A tree counts as labelled when every top-level entry with images is a directory and there
    are at least two of them.
    """
    root = Path(root)
    if not root.is_dir():
        return None
    loose = [p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
    dirs = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if loose or len(dirs) < 2:
        return None
    return dirs


@dataclass
class Sample:
    """A chosen image file, with its class index when the folder is labelled."""

    path: Path
    label: int | None = None


@dataclass
class LoadReport:
    """Counts from reading a folder: images used, unreadable files skipped, small images upscaled."""

    used: int = 0
    skipped: list[str] = field(default_factory=list)
    # Images whose shorter side is below the model's resolution: used, but upscaled.
    upscaled: list[str] = field(default_factory=list)


def sample_images(folder: str | Path, count: int | None, seed: int = 0) -> list[Sample]:
    """Choose up to `count` images deterministically: the same folder and seed give the same set."""
    if count is not None and count < 1:
        raise DataError(f"invalid sample size {count}: use a positive number of images")
    root = Path(folder)
    classes = image_folder_classes(root)
    files = list_images(root)
    if classes:
        index = {name: i for i, name in enumerate(classes)}
        samples = [Sample(p, index[p.relative_to(root).parts[0]]) for p in files]
        found = {s.label for s in samples}
        empty = [name for name in classes if index[name] not in found]
        if empty:
            log.warning("class folders without images in %s: %d (first: %s); they still count as classes, so the "
                        "other classes keep their indices", root, len(empty), empty[0])
    else:
        samples = [Sample(p) for p in files]
    if count is not None and count < len(samples):
        rng = random.Random(seed)
        samples = sorted(rng.sample(samples, count), key=lambda s: str(s.path))
    return samples


def load_batch(samples: list[Sample], transform, resolution: int,
               report: LoadReport | None = None) -> tuple[np.ndarray, list[Sample]]:
    """Decode and transform samples into an NCHW float32 array, skipping unreadable files.

    Returns the array and the samples that were kept. Raises DataError when none was readable.
    """
    arrays, kept = [], []
    for s in samples:
        try:
            image = open_rgb(s.path)
            arrays.append(transform(image, resolution))
            kept.append(s)
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
            if report is not None:
                report.skipped.append(f"{s.path}: {exc}")
            continue
        if report is not None and min(image.size) < resolution:
            report.upscaled.append(str(s.path))
    if report is not None:
        report.used += len(kept)
    if not arrays:
        raise DataError(f"no readable images among {len(samples)} files (first: {samples[0].path if samples else '-'}); "
                        "check that the files are valid images")
    return np.stack(arrays), kept
