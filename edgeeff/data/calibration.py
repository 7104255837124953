"""Calibration and verification inputs: a deterministic split of an image folder.

Calibration images set the INT8 activation ranges; a disjoint held-out set verifies every
artifact against the float model, so verification never scores images the quantizer has seen.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgeeff.data.images import DataError, LoadReport, Sample, list_images, load_batch
from edgeeff.data.preprocess import Preprocessing

# calib/photos at the repository root: real photos shipped with their provenance.
BUNDLED_CALIB = Path(__file__).resolve().parents[2] / "calib" / "photos"
DEFAULT_CALIB_SIZE = 300  # NNCF's default subset_size
DEFAULT_VERIFY_SIZE = 16


@dataclass
class CalibrationData:
    """Preprocessed calibration and held-out arrays, with where they came from."""

    calibration: np.ndarray  # float32 NCHW
    holdout: np.ndarray  # float32 NCHW, disjoint from calibration
    source: str
    bundled: bool
    calibration_files: list[str] = field(default_factory=list)
    holdout_files: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    upscaled: list[str] = field(default_factory=list)


def bundled_calibration_folder() -> Path:
    if not BUNDLED_CALIB.is_dir():
        raise DataError(f"bundled calibration photos not found at {BUNDLED_CALIB}; pass --calib with a folder of photos")
    return BUNDLED_CALIB


def split_files(files: list[Path], calib_size: int, verify_size: int, seed: int = 0) -> tuple[list[Path], list[Path]]:
    """Shuffle deterministically, hold out up to `verify_size` files, calibrate on up to `calib_size`.

    The held-out share is at most a fifth of the folder, and at least one file when the
    folder has two or more. A single-image folder is used for both, which the caller reports.
    """
    order = list(files)
    random.Random(seed).shuffle(order)
    if len(order) == 1:
        return order, order
    holdout_count = max(1, min(verify_size, len(order) // 5))
    holdout = sorted(order[:holdout_count])
    calibration = sorted(order[holdout_count:holdout_count + calib_size])
    return calibration, holdout


def load_calibration(folder: str | Path | None, preprocessing: Preprocessing, resolution: int,
                     calib_size: int = DEFAULT_CALIB_SIZE, verify_size: int = DEFAULT_VERIFY_SIZE,
                     seed: int = 0, progress=None) -> CalibrationData:
    """Read, split and preprocess a folder of images (the bundled photos when `folder` is None).

    `progress`, when given, is called with (done, total) after each image so the CLI can draw
    a progress bar. Unreadable files are skipped and listed in `skipped`. Images smaller than
    `resolution` are upscaled and listed in `upscaled`.
    """
    if calib_size < 1:
        raise DataError(f"invalid --calib-size {calib_size}: use a positive number of images")
    bundled = folder is None
    root = bundled_calibration_folder() if bundled else Path(folder)
    files = list_images(root)
    calib_files, holdout_files = split_files(files, calib_size, verify_size, seed)
    report = LoadReport()
    total = len(calib_files) + len(holdout_files)
    done = 0

    def load(paths: list[Path]) -> tuple[np.ndarray, list[str]]:
        nonlocal done
        arrays, kept = [], []
        for path in paths:
            try:
                batch, samples = load_batch([Sample(path)], preprocessing, resolution, report)
                arrays.append(batch[0])
                kept.append(str(samples[0].path))
            except DataError:
                pass
            done += 1
            if progress:
                progress(done, total)
        return (np.stack(arrays) if arrays else np.empty((0, 3, resolution, resolution), np.float32)), kept

    calibration, calib_kept = load(calib_files)
    holdout, holdout_kept = load(holdout_files)
    if len(calibration) == 0 and len(holdout) == 0:
        raise DataError(f"no readable images in {root} ({len(report.skipped)} unreadable files); "
                        "pass --calib with a folder of valid jpg/png/webp/bmp photos")
    if len(calibration) == 0:
        calibration, calib_kept = holdout, holdout_kept
    if len(holdout) == 0:
        holdout, holdout_kept = calibration[:1], calib_kept[:1]
    return CalibrationData(calibration=calibration, holdout=holdout, source=str(root), bundled=bundled,
                           calibration_files=calib_kept, holdout_files=holdout_kept, skipped=report.skipped,
                           upscaled=report.upscaled)
