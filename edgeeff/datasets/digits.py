"""A real labelled fixture: scikit-learn's handwritten digits as an ImageFolder, and B0 trained on it.

The digits set (1797 grayscale 8x8 images of 0–9, shipped inside scikit-learn, so nothing is
downloaded) is upscaled to RGB PNGs with deterministic, class-stratified `train/` and `val/`
splits. `trained_fixture` trains EfficientNet-B0 (10 classes) from scratch on it once and caches
the data and the checkpoint under a folder named by a hash of the settings, so tests and
benchmarks reuse them.

    python -m edgeeff.datasets.digits [--cache-dir DIR] [--threads N]

builds (or finds) the cached fixture and prints its paths and accuracy as JSON.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np

from edgeeff.data.preprocess import Preprocessing
from edgeeff.io import file_lock, write_json_atomic
from edgeeff.train.loop import FitSettings

CLASSES = [str(digit) for digit in range(10)]
CACHE_ENV = "EDGEEFF_CACHE"
# Bump when the rendering, split or training code changes in a way that changes the result.
FIXTURE_VERSION = 1

# Pixels map to [-1, 1]. The PNGs are written at the model's resolution, so the crop is the whole
# image and no resampling happens at load time.
DIGITS_PREPROCESSING = Preprocessing("digits", (127.5, 127.5, 127.5), (127.5, 127.5, 127.5),
                                     crop_fraction=1.0, interpolation="bilinear")


@dataclass(frozen=True)
class DigitsSettings:
    """Rendering and split settings of the ImageFolder tree."""

    resolution: int = 32
    val_fraction: float = 0.2
    split_seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class FixtureSettings:
    """Everything that determines the trained fixture; its hash names the cache folder."""

    model: str = "b0"
    drop_path_rate: float = 0.1
    data: DigitsSettings = field(default_factory=DigitsSettings)
    fit: FitSettings = field(default_factory=FitSettings)

    def to_dict(self) -> dict:
        return {"version": FIXTURE_VERSION, "model": self.model, "drop_path_rate": self.drop_path_rate,
                "data": self.data.to_dict(),
                "fit": self.fit.to_dict()}

    def key(self) -> str:
        text = json.dumps(self.to_dict(), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


@dataclass
class DigitsFixture:
    """A cached fixture: the ImageFolder splits, the trained checkpoint and its measured accuracy."""

    root: Path
    train_dir: Path
    val_dir: Path
    checkpoint: Path
    resolution: int
    summary: dict

    @property
    def val_top1(self) -> float:
        return float(self.summary["val"]["top1"])


def default_cache_dir() -> Path:
    """Return $EDGEEFF_CACHE/fixtures, else the user cache folder's edgeeff/fixtures."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser() / "fixtures"
    import platformdirs

    return Path(platformdirs.user_cache_dir("edgeeff", appauthor=False)) / "fixtures"


def _load_digits() -> tuple[np.ndarray, np.ndarray]:
    try:
        from sklearn.datasets import load_digits
    except ImportError as exc:
        raise ImportError("the digits fixture needs scikit-learn: pip install 'edgeeff[dev]'") from exc
    digits = load_digits()
    return digits.images, digits.target.astype(np.int64)


def split_indices(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Split indices per class, so both splits keep the class balance; the same seed gives the same split."""
    if not 0 < val_fraction < 1:
        raise ValueError(f"invalid validation fraction {val_fraction}: use a value between 0 and 1")
    rng = np.random.default_rng(seed)
    train, val = [], []
    for label in np.unique(labels):
        members = np.flatnonzero(labels == label)
        rng.shuffle(members)
        count = max(1, round(len(members) * val_fraction))
        val.extend(members[:count])
        train.extend(members[count:])
    return np.sort(np.array(train)), np.sort(np.array(val))


def render_digit(image: np.ndarray, resolution: int):
    """Turn one 8x8 digit (values 0–16, ink high) into an RGB PIL image at `resolution` px."""
    from PIL import Image

    pixels = np.clip(np.rint(image * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    gray = Image.fromarray(pixels, "L").resize((resolution, resolution), Image.Resampling.BILINEAR)
    return gray.convert("RGB")


def write_digits(root: str | Path, settings: DigitsSettings = DigitsSettings()) -> dict:
    """Write the digits as root/train/<digit>/<index>.png and root/val/<digit>/<index>.png.

    The tree is built in a temporary folder beside `root` and renamed into place, so `root`
    either contains a complete tree or does not exist. `<index>` is the image's position in
    scikit-learn's array. Returns the image counts per split.
    """
    root = Path(root)
    if root.exists():
        raise FileExistsError(f"digits folder already exists: {root}; remove it or pass another folder")
    images, labels = _load_digits()
    train, val = split_indices(labels, settings.val_fraction, settings.split_seed)
    root.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{root.name}.", suffix=".partial", dir=root.parent))
    try:
        for split, indices in (("train", train), ("val", val)):
            for name in CLASSES:
                (staging / split / name).mkdir(parents=True)
            for index in indices:
                path = staging / split / CLASSES[labels[index]] / f"{index:04d}.png"
                render_digit(images[index], settings.resolution).save(path)
        os.replace(staging, root)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return {"train": int(len(train)), "val": int(len(val))}


def train_digits_model(train_dir: Path, val_dir: Path, settings: FixtureSettings,
                       on_epoch: Callable[[dict], None] | None = None):
    """Train the fixture's model from scratch; return the LoadedModel and the fit summary."""
    import torch

    from edgeeff.checkpoints import LoadedModel
    from edgeeff.models import EfficientNet, arch_config, get_variant, with_resolution
    from edgeeff.train.data import load_image_folder
    from edgeeff.train.loop import fit_float

    resolution = settings.data.resolution
    train = load_image_folder(train_dir, DIGITS_PREPROCESSING, resolution)
    val = load_image_folder(val_dir, DIGITS_PREPROCESSING, resolution)
    variant = with_resolution(get_variant(settings.model), resolution)
    torch.manual_seed(settings.fit.seed)
    model = EfficientNet(arch_config(variant, num_classes=len(CLASSES), drop_path_rate=settings.drop_path_rate))
    # The default classifier init (uniform, bound 1/sqrt(classes)) gives logits with a standard
    # deviation near 4 for 10 classes, so training from scratch stalls for epochs. Zero weights
    # start every class at equal probability.
    torch.nn.init.zeros_(model.classifier.weight)
    summary = fit_float(model, train, val, settings.fit, on_epoch)
    loaded = LoadedModel(model=model, variant=variant, preprocessing=DIGITS_PREPROCESSING, source="edgeeff",
                         labels=list(CLASSES))
    summary["train_images"], summary["val_images"] = len(train), len(val)
    return loaded, summary


def trained_fixture(cache_dir: str | Path | None = None, settings: FixtureSettings = FixtureSettings(),
                    threads: int | None = None, on_epoch: Callable[[dict], None] | None = None) -> DigitsFixture:
    """Return the cached digits fixture, building and training it first when it is missing.

    The cache folder is `<cache_dir>/digits-<hash of settings>`; a file lock makes concurrent
    callers wait for one training run instead of each training. `threads` sets torch's intra-op
    thread count for the training run only.
    """
    import torch

    from edgeeff.checkpoints import save_checkpoint

    root = Path(cache_dir) if cache_dir else default_cache_dir()
    folder = root / f"digits-{settings.key()}"
    summary_path = folder / "fixture.json"
    folder.mkdir(parents=True, exist_ok=True)
    with file_lock(summary_path):
        if not summary_path.is_file():
            data_dir = folder / "data"
            if not data_dir.exists():
                write_digits(data_dir, settings.data)
            previous_threads = torch.get_num_threads()
            if threads:
                torch.set_num_threads(threads)
            started = time.perf_counter()
            try:
                loaded, fit = train_digits_model(data_dir / "train", data_dir / "val", settings, on_epoch)
            finally:
                torch.set_num_threads(previous_threads)
            save_checkpoint(loaded, folder / "b0-digits.pt")
            summary = {"settings": settings.to_dict(), "key": settings.key(), **fit,
                       "wall_seconds": round(time.perf_counter() - started, 1),
                       "threads": threads or previous_threads, "torch": torch.__version__,
                       "created": datetime.now(timezone.utc).isoformat(timespec="seconds")}
            write_json_atomic(summary_path, summary)
    summary = json.loads(summary_path.read_text())
    return DigitsFixture(root=folder, train_dir=folder / "data" / "train", val_dir=folder / "data" / "val",
                         checkpoint=folder / "b0-digits.pt", resolution=settings.data.resolution, summary=summary)


def main(argv: list[str] | None = None) -> None:
    import argparse

    parser = argparse.ArgumentParser(description="Build or find the cached digits fixture and print it as JSON.")
    parser.add_argument("--cache-dir", help="Cache folder (default: $EDGEEFF_CACHE/fixtures or the user cache).")
    parser.add_argument("--threads", type=int, help="torch threads for training (default: torch's).")
    args = parser.parse_args(argv)

    def report(entry: dict) -> None:
        print(f"epoch {entry['epoch']}: train loss {entry['train_loss']:.3f}, val top-1 {entry['val_top1']:.2%}, "
              f"{entry['seconds']:.0f} s", flush=True)

    fixture = trained_fixture(args.cache_dir, threads=args.threads, on_epoch=report)
    print(json.dumps({"root": str(fixture.root), "checkpoint": str(fixture.checkpoint),
                      "train_dir": str(fixture.train_dir), "val_dir": str(fixture.val_dir),
                      "resolution": fixture.resolution, "val": fixture.summary["val"], "wall_seconds": fixture.summary["wall_seconds"]}, indent=2))


if __name__ == "__main__":
    main()
