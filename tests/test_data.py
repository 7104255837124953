"""Image reading and calibration splits: formats, orientation and bad folders."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from edgeeff.data import LITE, DataError, load_calibration, open_rgb
from edgeeff.data.calibration import split_files
from edgeeff.data.images import list_images, sample_images


def _save(image: Image.Image, path, **kwargs):
    image.save(path, **kwargs)
    return path


def test_modes_convert_to_rgb(tmp_path, cat_photo):
    rgb = Image.open(cat_photo).convert("RGB")
    cases = {
        "gray.png": rgb.convert("L"),
        "rgba.png": rgb.convert("RGBA"),
        "cmyk.jpg": rgb.convert("CMYK"),
        "palette.png": rgb.convert("P"),
    }
    for name, image in cases.items():
        out = open_rgb(_save(image, tmp_path / name))
        assert out.mode == "RGB", name
        assert out.size == rgb.size, name


def test_sixteen_bit_scaled(tmp_path):
    array = (np.linspace(0, 65535, 64 * 64).reshape(64, 64)).astype(np.uint16)
    path = _save(Image.fromarray(array), tmp_path / "deep.png")
    out = np.asarray(open_rgb(path))
    assert out.max() == 255
    assert out.min() == 0


def test_exif_orientation_applied(tmp_path):
    image = Image.new("RGB", (40, 20), (200, 10, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise when shown
    path = _save(image, tmp_path / "rotated.jpg", exif=exif)
    assert open_rgb(path).size == (20, 40)


def test_missing_folder(tmp_path):
    with pytest.raises(DataError, match="image folder not found"):
        list_images(tmp_path / "nope")


def test_empty_folder(tmp_path):
    with pytest.raises(DataError, match="no images found"):
        list_images(tmp_path)


def test_corrupt_images_skipped_and_counted(small_photos):
    (small_photos / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    data = load_calibration(small_photos, LITE, 64, calib_size=300, verify_size=2)
    assert len(data.skipped) == 1
    assert "broken.jpg" in data.skipped[0]
    assert len(data.calibration) + len(data.holdout) == 10


def test_no_readable_images(tmp_path):
    for i in range(3):
        (tmp_path / f"bad{i}.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match="no readable images"):
        load_calibration(tmp_path, LITE, 64)


def test_split_is_disjoint_and_deterministic(photos):
    files = list_images(photos)
    calib, holdout = split_files(files, 300, 16)
    assert not set(calib) & set(holdout)
    assert len(holdout) == 15  # a fifth of 78, at most 16
    assert split_files(files, 300, 16) == (calib, holdout)


def test_small_images_upscaled(tmp_path):
    _save(Image.new("RGB", (20, 12), (0, 128, 255)), tmp_path / "tiny.png")
    _save(Image.new("RGB", (30, 30), (0, 0, 0)), tmp_path / "tiny2.png")
    data = load_calibration(tmp_path, LITE, 96)
    assert data.calibration.shape[1:] == (3, 96, 96)


def test_image_folder_labels(tmp_path, photos):
    for cls in ("cat", "cup"):
        (tmp_path / cls).mkdir()
    source = sorted(photos.glob("chelsea-*.jpg"))[:2] + sorted(photos.glob("coffee-*.jpg"))[:2]
    for i, path in enumerate(source):
        (tmp_path / ("cat" if i < 2 else "cup") / path.name).write_bytes(path.read_bytes())
    samples = sample_images(tmp_path, None)
    assert [s.label for s in samples] == [0, 0, 1, 1]


def test_invalid_calib_size(small_photos):
    with pytest.raises(DataError, match="invalid --calib-size 0"):
        load_calibration(small_photos, LITE, 64, calib_size=0)
