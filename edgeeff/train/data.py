"""In-memory training data: an ImageFolder split read once into arrays, then batched as tensors."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch

from edgeeff.data.images import DataError, LoadReport, image_folder_classes, load_batch, sample_images
from edgeeff.data.preprocess import Preprocessing


@dataclass
class ArrayDataset:
    """Preprocessed images (float32 NCHW) with integer labels and the class names they index."""

    images: np.ndarray
    labels: np.ndarray  # int64, one per image
    classes: list[str]
    files: list[str]

    def __len__(self) -> int:
        return len(self.labels)


def load_image_folder(root: str | Path, preprocessing: Preprocessing, resolution: int) -> ArrayDataset:
    """Read a labelled ImageFolder tree (one sub-folder per class) into memory."""
    classes = image_folder_classes(root)
    if classes is None:
        raise DataError(f"{root} is not a labelled ImageFolder tree: put each class's images in its own "
                        "sub-folder (at least two classes)")
    samples = sample_images(root, None)
    report = LoadReport()
    images, kept = load_batch(samples, preprocessing, resolution, report)
    labels = np.array([s.label for s in kept], dtype=np.int64)
    return ArrayDataset(images=images, labels=labels, classes=classes, files=[str(s.path) for s in kept])


def random_shift(images: torch.Tensor, max_shift: int, fill: float, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by up to `max_shift` px in x and y, filling the border with `fill`."""
    if max_shift <= 0:
        return images
    n, _, height, width = images.shape
    padded = torch.nn.functional.pad(images, (max_shift,) * 4, value=fill)
    offsets = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=generator)
    return torch.stack([padded[i, :, y:y + height, x:x + width] for i, (y, x) in enumerate(offsets.tolist())])


def array_batches(dataset: ArrayDataset, batch_size: int, shuffle: bool = False, seed: int = 0,
                  max_shift: int = 0, fill: float = 0.0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield (images, labels) tensor batches; with `shuffle`, the order depends only on `seed`.

    `max_shift` > 0 adds random translation, drawn from a generator seeded with `seed`, so one
    seed gives the same augmented epoch every time.
    """
    if batch_size < 1:
        raise ValueError(f"invalid batch size {batch_size}: use 1 or more")
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(dataset), generator=generator) if shuffle else torch.arange(len(dataset))
    for start in range(0, len(dataset), batch_size):
        index = order[start:start + batch_size].numpy()
        images = torch.from_numpy(dataset.images[index])
        images = random_shift(images, max_shift, fill, generator)
        yield images, torch.from_numpy(dataset.labels[index])
