"""Bad input, full disks and the results database, through the real CLI.

Each case checks the exit code, that the message is one line naming the value and the fix,
and what is left on disk. docs/reliability.md lists every case with its test. Interruption
and concurrent exports are in test_reliability_signals.py; the device agent's cases are in
test_profile_agent.py.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import resource
import shutil
import signal
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from PIL import Image

from edgeeff.checkpoints import save_checkpoint, untrained_model
from edgeeff.cli import cli
from edgeeff.data import LITE, load_calibration
from edgeeff.data.images import sample_images
from edgeeff.io import atomic_path, atomic_paths
from edgeeff.profile.database import ResultsDatabase
from edgeeff.profile.fingerprint import usable_cores

ROOT = Path(__file__).resolve().parents[1]
EDGEEFF = [sys.executable, "-m", "edgeeff"]
# Small enough that a B0 export finishes in well under a minute on a busy 2-core machine.
TINY_EXPORT = ["--resolution", "64", "--calib-size", "8", "--verify-size", "2"]


def invoke(*args):
    return CliRunner().invoke(cli, [str(arg) for arg in args])


def error_line(result) -> str:
    """Return the single 'error:' line of a result's stderr, failing if there is not exactly one."""
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.output
    return lines[0]


def files_under(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*"))


def sha256_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# Checkpoints


class _Payload:
    """Pickled code: unpickling it would create the marker file named in `path`."""

    def __init__(self, path: Path):
        self.path = str(path)

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """Broken and mismatched checkpoints made from an untrained 3-class B0."""
    folder = tmp_path_factory.mktemp("checkpoints")
    loaded = untrained_model("b0", num_classes=3)
    state = loaded.model.state_dict()
    paths = {name: folder / f"{name}.pt" for name in ("native", "plain", "empty", "truncated", "text", "pickled",
                                                       "nan", "inf", "lite0")}
    save_checkpoint(loaded, paths["native"])
    torch.save(state, paths["plain"])
    paths["empty"].write_bytes(b"")
    paths["truncated"].write_bytes(paths["plain"].read_bytes()[:200_000])
    paths["text"].write_text("hello, not a checkpoint")
    torch.save({"state_dict": state, "extra": _Payload(folder / "code-ran")}, paths["pickled"])
    for name, key, value in (("nan", "blocks.3.depthwise.conv.weight", float("nan")),
                             ("inf", "classifier.bias", float("inf"))):
        broken = {k: v.clone() for k, v in state.items()}
        broken[key].view(-1)[0] = value
        torch.save(broken, paths[name])
    torch.save(untrained_model("lite0", num_classes=3).model.state_dict(), paths["lite0"])
    labels = folder / "two-labels.txt"
    labels.write_text("cat\ncup\n")
    paths["two-labels"] = labels
    paths["missing"] = folder / "missing.pt"
    return paths


CHECKPOINT_CASES = {
    "missing": (["--checkpoint", "{missing}"], "checkpoint not found: {missing}"),
    "empty": (["--checkpoint", "{empty}"], "checkpoint is empty: {empty} has 0 bytes"),
    "truncated": (["--checkpoint", "{truncated}"], "the file is truncated or not a PyTorch checkpoint"),
    "not-a-checkpoint": (["--checkpoint", "{text}"], "the file is truncated or not a PyTorch checkpoint"),
    "pickled-code": (["--checkpoint", "{pickled}"], "pass --trust-checkpoint if you trust its source"),
    "wrong-variant": (["--checkpoint", "{lite0}", "--model", "b0"], "it looks like lite0: pass --model lite0"),
    "labels-mismatch": (["--checkpoint", "{plain}", "--labels", "{two-labels}"],
                        "labels file has 2 names but checkpoint {plain} has 3 classes"),
    "nan-weights": (["--checkpoint", "{nan}"], "1 NaN or Inf values in blocks.3.depthwise.conv.weight"),
    "inf-weights": (["--checkpoint", "{inf}"], "1 NaN or Inf values in classifier.bias"),
}


@pytest.mark.parametrize("case", list(CHECKPOINT_CASES))
def test_bad_checkpoint_rejected(case, checkpoints, tmp_path):
    args, message = CHECKPOINT_CASES[case]
    output = tmp_path / "out"
    result = invoke("export", *[arg.format(**checkpoints) for arg in args], "--target", "onnx", "--output", output)
    assert result.exit_code == 2, result.output
    assert message.format(**checkpoints) in error_line(result)
    assert not output.exists()


def test_pickled_checkpoint_code_not_run(checkpoints, tmp_path):
    result = invoke("export", "--checkpoint", checkpoints["pickled"], "--target", "onnx", "--output", tmp_path / "out")
    assert result.exit_code == 2
    assert not (checkpoints["pickled"].parent / "code-ran").exists()


# Calibration and evaluation images


def _photo(photos: Path, size: tuple[int, int] = (120, 90)) -> Image.Image:
    return Image.open(photos / "chelsea-full.jpg").convert("RGB").resize(size)


@pytest.fixture(scope="module")
def odd_images(tmp_path_factory, photos) -> Path:
    """Real photos plus one file per awkward image kind, two unreadable files and a text file."""
    folder = tmp_path_factory.mktemp("odd-images")
    for path in sorted(photos.glob("*-full.jpg"))[:4]:
        shutil.copy(path, folder / path.name)
    rgb = _photo(photos)
    rgb.convert("L").save(folder / "gray.png")
    rgb.convert("RGBA").save(folder / "rgba.png")
    rgb.convert("CMYK").save(folder / "cmyk.jpg")
    Image.fromarray(np.asarray(rgb.convert("L"), dtype=np.uint16) * 257).save(folder / "deep16.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # shown rotated 90° clockwise
    rgb.save(folder / "exif.jpg", exif=exif)
    _photo(photos, (20, 15)).save(folder / "tiny.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    (folder / "truncated.jpg").write_bytes((photos / "coffee-full.jpg").read_bytes()[:3000])
    (folder / "notes.txt").write_text("not an image")
    return folder


@pytest.fixture(scope="module")
def odd_calibration(odd_images):
    return load_calibration(odd_images, LITE, 64, calib_size=300, verify_size=2)


@pytest.mark.parametrize("name", ["gray.png", "rgba.png", "cmyk.jpg", "deep16.png", "exif.jpg", "tiny.png"])
def test_image_kind_used(name, odd_images, odd_calibration):
    used = odd_calibration.calibration_files + odd_calibration.holdout_files
    assert str(odd_images / name) in used
    assert np.isfinite(odd_calibration.calibration).all()


def test_corrupt_images_skipped_and_counted(odd_images, odd_calibration):
    skipped = sorted(Path(line.split(": ")[0]).name for line in odd_calibration.skipped)
    assert skipped == ["broken.jpg", "truncated.jpg"]
    assert len(odd_calibration.calibration_files) + len(odd_calibration.holdout_files) == 10


def test_small_images_upscaled_and_counted(odd_images, odd_calibration):
    assert odd_calibration.upscaled == [str(odd_images / "tiny.png")]
    assert odd_calibration.calibration.shape[1:] == (3, 64, 64)


@pytest.fixture
def bad_folders(tmp_path) -> dict[str, Path]:
    empty = tmp_path / "empty"
    empty.mkdir()
    unreadable = tmp_path / "unreadable"
    unreadable.mkdir()
    for i in range(3):
        (unreadable / f"bad{i}.png").write_bytes(b"garbage")
    (tmp_path / "notes.txt").write_text("not an image")
    return {"missing": tmp_path / "missing", "empty": empty, "unreadable": unreadable, "file": tmp_path / "notes.txt"}


@pytest.mark.parametrize("case,message", [
    ("missing", "image folder not found: {path}"),
    ("empty", "no images found in {path}"),
    ("unreadable", "no readable images in {path} (3 unreadable files)"),
    ("file", "not an image folder: {path}"),
])
def test_bad_calibration_folder(case, message, bad_folders, tmp_path):
    output = tmp_path / "out"
    result = invoke("export", "--model", "b0", "--resolution", "64", "--target", "onnx",
                    "--calib", bad_folders[case], "--output", output)
    assert result.exit_code == 2, result.output
    assert message.format(path=bad_folders[case]) in error_line(result)
    assert not output.exists()


def test_labelled_tree_empty_class_warns(tmp_path, photos, caplog):
    for name in ("cat", "cup", "dog"):
        (tmp_path / name).mkdir()
    shutil.copy(photos / "chelsea-full.jpg", tmp_path / "cat")
    shutil.copy(photos / "coffee-full.jpg", tmp_path / "dog")
    with caplog.at_level(logging.WARNING, logger="edgeeff.data.images"):
        samples = sample_images(tmp_path, None)
    assert [sample.label for sample in samples] == [0, 2]
    assert "class folders without images in" in caplog.text
    assert "(first: cup)" in caplog.text


# Options


@pytest.mark.parametrize("args,message", [
    (["--model", "efficientnet-b0x"], "unknown model 'efficientnet-b0x': did you mean 'b0'?"),
    (["--model", "lite9"], "unknown model 'lite9': did you mean"),
    (["--model", "b0", "--target", "coreml"], "unknown target 'coreml': use one of executorch, tflite, onnx or all"),
    (["--model", "b0", "--target", "onnx,foo"], "unknown target 'foo'"),
    (["--model", "b0", "--target", ","], "no target given"),
    (["--model", "b0", "--resolution", "0"], "invalid resolution 0: use an even size from 32 to 4096 px"),
    (["--model", "b0", "--resolution", "-64"], "invalid resolution -64"),
    (["--model", "b0", "--resolution", "30"], "invalid resolution 30"),
    (["--model", "b0", "--resolution", "63"], "invalid resolution 63"),
    (["--model", "b0", "--resolution", "100000"], "invalid resolution 100000"),
])
def test_bad_export_option(args, message, tmp_path):
    output = tmp_path / "out"
    result = invoke("export", *args, "--output", output)
    assert result.exit_code == 2, result.output
    assert message in error_line(result)
    assert not output.exists()


@pytest.mark.parametrize("value", ["0", "-3"])
def test_calib_size_rejected_before_loading(value, tmp_path):
    output = tmp_path / "out"
    result = invoke("export", "--model", "b0", "--calib-size", value, "--output", output)
    assert result.exit_code == 2
    assert "Invalid value for '--calib-size'" in result.stderr
    assert not output.exists()


@pytest.mark.parametrize("value", ["0", "-5", "nan"])
def test_select_budget_rejected(value, tmp_path):
    result = invoke("select", "--budget-ms", value, "--models", "b0", "--cache-dir", tmp_path / "cache",
                    "--db", tmp_path / "r.sqlite")
    assert result.exit_code == 2, result.output
    assert f"invalid --budget-ms {value}" in error_line(result)
    assert files_under(tmp_path) == []


@pytest.fixture
def dummy_onnx(tmp_path) -> Path:
    """A file that passes the suffix check; the runtime is never reached in these tests."""
    path = tmp_path / "model.onnx"
    path.write_bytes(b"not a model")
    return path


def test_profile_threads_beyond_cores(dummy_onnx):
    too_many = usable_cores() + 1
    result = invoke("profile", dummy_onnx, "--threads", too_many, "--no-save")
    assert result.exit_code == 2, result.output
    assert f"--threads {too_many} is more than the {usable_cores()} cores" in error_line(result)


def test_predict_threads_beyond_cores(dummy_onnx, cat_photo):
    too_many = usable_cores() + 1
    result = invoke("predict", dummy_onnx, cat_photo, "--threads", too_many)
    assert result.exit_code == 2, result.output
    assert f"pass --threads {usable_cores()} or fewer" in error_line(result)


def test_output_below_a_file(tmp_path):
    (tmp_path / "file.txt").write_text("x")
    output = tmp_path / "file.txt" / "out"
    result = invoke("export", "--model", "b0", "--resolution", "64", "--target", "onnx", "--output", output)
    assert result.exit_code == 2
    assert f"output directory not writable: {output} (Not a directory)" in error_line(result)
    assert files_under(tmp_path) == ["file.txt"]


@pytest.mark.skipif(os.geteuid() == 0, reason="root writes into read-only folders")
def test_output_read_only_folder(tmp_path):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    result = invoke("export", "--model", "b0", "--resolution", "64", "--target", "onnx", "--output", locked / "out")
    assert result.exit_code == 2
    assert "(Permission denied); pass --output with a writable folder" in error_line(result)
    assert files_under(locked) == []


def _mount_tmpfs(folder: Path, options: str) -> None:
    """Mount a tmpfs at `folder`, or skip the test where this user may not mount."""
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a tmpfs needs root")
    folder.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(folder)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"mount failed: {mounted.stderr.decode().strip()}")


@pytest.fixture
def read_only_mount(tmp_path):
    folder = tmp_path / "ro"
    _mount_tmpfs(folder, "ro,size=1m")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


def test_output_read_only_filesystem(read_only_mount):
    result = invoke("export", "--model", "b0", "--resolution", "64", "--target", "onnx",
                    "--output", read_only_mount / "out")
    assert result.exit_code == 2
    assert "(Read-only file system); pass --output with a writable folder" in error_line(result)
    assert files_under(read_only_mount) == []


# Full disk: the backend's write fails part-way through a real export.


def _export_subprocess(output: Path, photos: Path, limit_bytes: int | None = None) -> subprocess.CompletedProcess:
    def limit_file_size():
        # Python ignores SIGXFSZ, so a write past the limit fails with EFBIG instead of killing the process.
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit_bytes, limit_bytes))

    return subprocess.run([*EDGEEFF, "export", "--model", "b0", "--target", "onnx", *TINY_EXPORT,
                           "--calib", str(photos), "--output", str(output)],
                          capture_output=True, text=True, timeout=900, cwd=ROOT,
                          preexec_fn=limit_file_size if limit_bytes else None)


def _assert_disk_full_failure(completed: subprocess.CompletedProcess, output: Path, reason: str) -> None:
    assert completed.returncode == 1, completed.stderr
    error_lines = [line for line in completed.stderr.splitlines() if line.startswith("Error:")]
    assert len(error_lines) == 1, completed.stderr
    assert f"onnx fp32 export failed: {reason} while writing to {output}; free space" in error_lines[0]
    assert files_under(output) == [".b0-64px-fp32-untrained.onnx.lock"]


@pytest.mark.slow
def test_disk_full_file_size_limit(tmp_path, small_photos):
    output = tmp_path / "out"
    completed = _export_subprocess(output, small_photos, limit_bytes=4 << 20)  # the artifact is about 21 MB
    _assert_disk_full_failure(completed, output, "File too large")


@pytest.fixture
def small_filesystem(tmp_path):
    folder = tmp_path / "small"
    _mount_tmpfs(folder, "size=1m")
    yield folder
    subprocess.run(["umount", str(folder)], check=True)


@pytest.mark.slow
def test_disk_full_small_filesystem(small_filesystem, small_photos):
    output = small_filesystem / "out"
    completed = _export_subprocess(output, small_photos)
    _assert_disk_full_failure(completed, output, "No space left on device")
    assert shutil.disk_usage(small_filesystem).used == 0


# Odd images end to end, and the labelled-tree cases of the accuracy gate


@pytest.fixture(scope="module")
def three_class_export(tmp_path_factory, checkpoints, odd_images):
    """The 3-class checkpoint exported to ONNX at 64 px, calibrated on the odd images."""
    output = tmp_path_factory.mktemp("three-class")
    # --calib-size above the file count, so that every file is read.
    completed = subprocess.run([*EDGEEFF, "export", "--checkpoint", str(checkpoints["native"]), "--target", "onnx",
                                "--resolution", "64", "--calib-size", "20", "--verify-size", "2",
                                "--calib", str(odd_images), "--output", str(output), "--json"],
                               capture_output=True, text=True, timeout=900, cwd=ROOT)
    return output, completed


@pytest.mark.slow
def test_odd_images_export_warns_and_counts(three_class_export):
    output, completed = three_class_export
    assert completed.returncode == 0, completed.stderr
    assert "skipped 2 unreadable image files in" in completed.stderr
    assert "1 of 10 images in" in completed.stderr
    assert "smaller than 64 px and were upscaled" in completed.stderr
    verification = json.loads(completed.stdout)[0]["verification"]
    assert verification["skipped_images"] == 2
    assert verification["upscaled_images"] == 1
    assert files_under(output) == [".b0-64px-fp32.onnx.lock", "b0-64px-fp32.onnx", "b0-64px-fp32.onnx.json"]


def _labelled_tree(root: Path, photos: Path, classes: dict[str, int]) -> Path:
    sources = sorted(photos.glob("*-full.jpg"))
    for name, count in classes.items():
        (root / name).mkdir(parents=True)
        for _ in range(count):
            shutil.copy(sources.pop(0), root / name)
    return root


def _check(three_class_export, checkpoints, data: Path) -> subprocess.CompletedProcess:
    output, _ = three_class_export
    return subprocess.run([*EDGEEFF, "check", "--checkpoint", str(checkpoints["native"]), "--resolution", "64",
                           "--artifact", str(output / "b0-64px-fp32.onnx"), "--data", str(data), "--max-drop", "1",
                           "--no-db", "--layer-images", "0"],
                          capture_output=True, text=True, timeout=900, cwd=ROOT)


@pytest.mark.slow
def test_check_mismatched_classes(three_class_export, checkpoints, tmp_path, photos):
    data = _labelled_tree(tmp_path / "data", photos, {"cat": 2, "cup": 2})
    completed = _check(three_class_export, checkpoints, data)
    assert completed.returncode == 2, completed.stderr
    error_lines = [line for line in completed.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1, completed.stderr
    assert "the data folder has 2 classes (cat, cup, ...) but the model has 3" in error_lines[0]


@pytest.mark.slow
def test_check_empty_class_warns(three_class_export, checkpoints, tmp_path, photos):
    data = _labelled_tree(tmp_path / "data", photos, {"cat": 2, "cup": 0, "dog": 2})
    completed = _check(three_class_export, checkpoints, data)
    assert completed.returncode == 0, completed.stderr
    assert f"class folders without images in {data}: 1 (first: cup)" in completed.stderr
    assert "4 labelled images" in completed.stdout
    assert "(3 classes" in completed.stdout


# Results database: the CLI's view. Concurrent writers and the writer-side lock timeout are
# tested on ResultsDatabase in test_profile.py.


def test_profile_corrupt_database_fails_first(dummy_onnx, tmp_path):
    database = tmp_path / "results.sqlite"
    database.write_bytes(b"this is not sqlite" * 100)
    result = invoke("profile", dummy_onnx, "--db", database, "--runs", "1", "--warmup", "0")
    assert result.exit_code == 1, result.output
    assert "is corrupt" in result.stderr
    assert "move it aside and rerun" in result.stderr
    assert "failed to profile" not in result.output  # stopped before any artifact ran
    assert database.read_bytes() == b"this is not sqlite" * 100


def test_results_read_while_database_locked(tmp_path):
    path = tmp_path / "results.sqlite"
    ResultsDatabase(path).query()
    holder = sqlite3.connect(path)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        result = invoke("results", "--db", path, "--json")
    finally:
        holder.rollback()
        holder.close()
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == []


# Atomic writes


def test_atomic_path_default_permissions(tmp_path):
    previous = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "a.bin") as tmp:
            tmp.write_bytes(b"x")
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "a.bin").stat().st_mode) == 0o644


def test_atomic_paths_error_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_paths(tmp_path / "m.onnx", tmp_path / "m.onnx.json") as (artifact, sidecar):
            artifact.write_bytes(b"model")
            sidecar.write_text("{}")
            raise RuntimeError("verification failed")
    assert files_under(tmp_path) == []


def test_atomic_paths_signal_while_publishing(tmp_path, monkeypatch):
    """SIGINT between the two renames is held until both files are in place."""
    renamed = []
    real_replace = os.replace

    def replace_then_interrupt(source, target):
        real_replace(source, target)
        renamed.append(Path(target).name)
        if len(renamed) == 1:
            signal.raise_signal(signal.SIGINT)

    monkeypatch.setattr(os, "replace", replace_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        with atomic_paths(tmp_path / "m.onnx", tmp_path / "m.onnx.json") as (artifact, sidecar):
            artifact.write_bytes(b"model")
            sidecar.write_text("{}")
    assert renamed == ["m.onnx", "m.onnx.json"]
    assert files_under(tmp_path) == ["m.onnx", "m.onnx.json"]
