"""The digits fixture: ImageFolder splits, training steps, and the cached trained checkpoint."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgeeff.data.images import image_folder_classes
from edgeeff.datasets.digits import CLASSES, DIGITS_PREPROCESSING, DigitsSettings, split_indices, write_digits
from edgeeff.train import ArrayDataset, array_batches, load_image_folder, random_shift, train_one_epoch, validate


def test_split_is_stratified_and_deterministic():
    labels = np.repeat(np.arange(10), 20)
    train, val = split_indices(labels, 0.2, seed=3)
    again_train, again_val = split_indices(labels, 0.2, seed=3)
    assert np.array_equal(train, again_train)
    assert np.array_equal(val, again_val)
    assert np.bincount(labels[val]).tolist() == [4] * 10
    assert set(train).isdisjoint(val)
    assert len(train) + len(val) == 200


def test_split_rejects_invalid_fraction():
    with pytest.raises(ValueError, match="invalid validation fraction 1.5"):
        split_indices(np.arange(10), 1.5, seed=0)


def test_write_digits_image_folder(tmp_path):
    root = tmp_path / "digits"
    counts = write_digits(root, DigitsSettings(resolution=32))
    assert counts == {"train": 1438, "val": 359}
    assert image_folder_classes(root / "train") == CLASSES
    assert image_folder_classes(root / "val") == CLASSES
    val = load_image_folder(root / "val", DIGITS_PREPROCESSING, 32)
    assert val.images.shape == (359, 3, 32, 32)
    assert val.images.min() >= -1.0
    assert val.images.max() <= 1.0
    assert [p.name for p in tmp_path.iterdir()] == ["digits"]
    with pytest.raises(FileExistsError, match="digits folder already exists"):
        write_digits(root)


def test_random_shift_keeps_shape_and_fill():
    images = torch.ones(4, 3, 8, 8)
    shifted = random_shift(images, 2, fill=-1.0, generator=torch.Generator().manual_seed(0))
    assert shifted.shape == images.shape
    assert set(shifted.unique().tolist()) <= {-1.0, 1.0}


def test_train_step_and_validate_on_tiny_set():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3 * 8 * 8, 3))
    images = np.random.default_rng(0).normal(size=(12, 3, 8, 8)).astype(np.float32)
    data = ArrayDataset(images=images, labels=np.arange(12) % 3, classes=["a", "b", "c"], files=[])
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    first = train_one_epoch(model, array_batches(data, 4, shuffle=True), optimizer)
    for _ in range(20):
        last = train_one_epoch(model, array_batches(data, 4, shuffle=True), optimizer)
    assert first["images"] == 12
    assert last["loss"] < first["loss"]
    scores = validate(model, array_batches(data, 5))
    assert scores["images"] == 12
    assert scores["top1"] == pytest.approx(1.0)
    assert scores["top5"] == pytest.approx(1.0)


@pytest.mark.slow
def test_cached_fixture_loads_and_scores(digits_fixture):
    from edgeeff.checkpoints import load_checkpoint

    loaded = load_checkpoint(digits_fixture.checkpoint)
    assert loaded.variant.name == "b0"
    assert loaded.resolution == 32
    assert loaded.preprocessing == DIGITS_PREPROCESSING
    assert loaded.labels == CLASSES
    val = load_image_folder(digits_fixture.val_dir, loaded.preprocessing, loaded.resolution)
    scores = validate(loaded.model, array_batches(val, 128))
    assert scores["top1"] >= 0.9
    assert scores["top1"] == pytest.approx(digits_fixture.val_top1, abs=1e-6)
