"""Ctrl-C, SIGTERM and concurrent runs against real `python -m edgeeff export` processes.

Each signal is sent when the output folder shows which step is running. The folder appears just
before the calibration images are read. A `.partial` file appears when a backend starts writing,
and the ONNX INT8 backend's float.onnx appears when quantization starts. After each interrupt,
nothing may be left under a final name and no temporary file may remain, and a rerun must succeed.
"""

from __future__ import annotations

import hashlib
import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import pytest

ROOT = Path(__file__).resolve().parents[1]
EDGEEFF = [sys.executable, "-m", "edgeeff"]
TINY_EXPORT = ["--model", "b0", "--resolution", "64", "--calib-size", "8", "--verify-size", "2"]
INTERRUPTED = 130

pytestmark = pytest.mark.slow


def export_argv(output: Path, photos: Path, *extra: str) -> list[str]:
    return [*EDGEEFF, "export", *TINY_EXPORT, "--calib", str(photos), "--output", str(output), *extra]


def files_under(folder: Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*")) if folder.exists() else []


def interrupt_when(argv: list[str], ready: Callable[[], bool], signum: int,
                   timeout_s: float = 600) -> subprocess.CompletedProcess:
    """Start `argv`, send `signum` as soon as `ready()` is true, and wait for the process to end."""
    process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
    deadline = time.monotonic() + timeout_s
    try:
        while not ready():
            if process.poll() is not None:
                stdout, stderr = process.communicate()
                pytest.fail(f"export ended (exit {process.returncode}) before the step to interrupt:\n{stderr}")
            if time.monotonic() > deadline:
                pytest.fail(f"the step to interrupt did not start within {timeout_s:.0f} s")
            time.sleep(0.02)
        process.send_signal(signum)
        stdout, stderr = process.communicate(timeout=timeout_s)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return subprocess.CompletedProcess(argv, process.returncode, stdout, stderr)


def assert_interrupted_cleanly(completed: subprocess.CompletedProcess, output: Path, allowed: list[str]) -> None:
    assert completed.returncode == INTERRUPTED, completed.stderr
    assert completed.stderr.rstrip().splitlines()[-1] == "interrupted: no partial artifact was kept"
    assert files_under(output) == allowed


def assert_rerun_succeeds(output: Path, photos: Path, *extra: str) -> None:
    completed = subprocess.run(export_argv(output, photos, "--json", *extra), capture_output=True, text=True,
                               timeout=900, cwd=ROOT)
    assert completed.returncode == 0, completed.stderr
    for record in json.loads(completed.stdout):
        artifact = output / record["artifact"]
        assert hashlib.sha256(artifact.read_bytes()).hexdigest() == record["sha256"]
    assert not [name for name in files_under(output) if ".partial" in name or name.startswith(".edgeeff-")]


def started_calibration(output: Path) -> Callable[[], bool]:
    return output.exists


def started_writing(output: Path) -> Callable[[], bool]:
    return lambda: output.exists() and any(".partial" in path.name for path in output.iterdir())


def started_quantizing(output: Path) -> Callable[[], bool]:
    return lambda: output.exists() and any(output.glob(".edgeeff-onnx-*/float.onnx"))


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM], ids=["sigint", "sigterm"])
def test_interrupt_during_calibration(signum, tmp_path, small_photos):
    output = tmp_path / "out"
    completed = interrupt_when(export_argv(output, small_photos, "--target", "onnx"), started_calibration(output),
                               signum)
    assert_interrupted_cleanly(completed, output, [])
    assert not output.exists()  # the folder this run created is removed again


@pytest.mark.parametrize("signum,target", [(signal.SIGINT, "onnx"), (signal.SIGTERM, "tflite")],
                         ids=["sigint-onnx", "sigterm-tflite"])
def test_interrupt_during_export_then_rerun(signum, target, tmp_path, small_photos):
    output = tmp_path / "out"
    suffix = {"onnx": ".onnx", "tflite": ".tflite"}[target]
    completed = interrupt_when(export_argv(output, small_photos, "--target", target), started_writing(output), signum)
    # The per-artifact lock file stays; it is empty and only serializes writers.
    assert_interrupted_cleanly(completed, output, [f".b0-64px-fp32-untrained{suffix}.lock"])
    assert_rerun_succeeds(output, small_photos, "--target", target)


def test_sigterm_during_int8_quantization_then_rerun(tmp_path, small_photos):
    output = tmp_path / "out"
    argv = export_argv(output, small_photos, "--target", "onnx", "--int8")
    completed = interrupt_when(argv, started_quantizing(output), signal.SIGTERM)
    assert_interrupted_cleanly(completed, output, [".b0-64px-int8-untrained.onnx.lock"])
    assert_rerun_succeeds(output, small_photos, "--target", "onnx", "--int8")


def test_interrupt_keeps_earlier_artifacts(tmp_path, small_photos):
    """An interrupt during the second target keeps the first target's finished, verified artifact."""
    output = tmp_path / "out"
    argv = export_argv(output, small_photos, "--target", "onnx,tflite")
    completed = interrupt_when(argv, lambda: (output / "b0-64px-fp32-untrained.onnx.json").exists()
                               and started_writing(output)(), signal.SIGTERM)
    assert_interrupted_cleanly(completed, output, [".b0-64px-fp32-untrained.onnx.lock",
                                                   ".b0-64px-fp32-untrained.tflite.lock",
                                                   "b0-64px-fp32-untrained.onnx", "b0-64px-fp32-untrained.onnx.json"])
    sidecar = json.loads((output / "b0-64px-fp32-untrained.onnx.json").read_text())
    artifact = (output / "b0-64px-fp32-untrained.onnx").read_bytes()
    assert hashlib.sha256(artifact).hexdigest() == sidecar["sha256"]


def test_two_exports_same_output(tmp_path, small_photos):
    output = tmp_path / "out"
    argv = export_argv(output, small_photos, "--target", "onnx", "--json")
    processes = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT)
                 for _ in range(2)]
    results = [process.communicate(timeout=900) for process in processes]
    for process, (stdout, stderr) in zip(processes, results):
        assert process.returncode == 0, stderr
    sidecar = json.loads((output / "b0-64px-fp32-untrained.onnx.json").read_text())
    artifact = (output / "b0-64px-fp32-untrained.onnx").read_bytes()
    assert hashlib.sha256(artifact).hexdigest() == sidecar["sha256"]
    assert files_under(output) == [".b0-64px-fp32-untrained.onnx.lock", "b0-64px-fp32-untrained.onnx",
                                   "b0-64px-fp32-untrained.onnx.json"]


def qat_argv(digits_fixture, data: Path, output: Path, *extra: str) -> list[str]:
    return [*EDGEEFF, "qat", "--checkpoint", str(digits_fixture.checkpoint), "--data", str(data),
            "--output", str(output), *extra]


def test_interrupt_during_qat_then_resume(digits_fixture, digits_slice, tmp_path):
    """An interrupt in the second epoch keeps the first epoch's checkpoint, and --resume finishes the run."""
    import torch

    output = tmp_path / "run"
    recipe = ["--recipe", str(ROOT / "recipes" / "qat" / "digits.yaml"), "--epochs", "3", "--batch-size", "32",
              "--set", "calibration_size=16"]
    completed = interrupt_when(qat_argv(digits_fixture, digits_slice, output, *recipe), (output / "last.pt").exists,
                               signal.SIGINT)
    assert completed.returncode == INTERRUPTED, completed.stderr
    assert completed.stderr.rstrip().splitlines()[-1] == "interrupted: no partial artifact was kept"
    assert not [name for name in files_under(output) if ".partial" in name]
    assert not (output / "summary.json").exists()
    last = torch.load(output / "last.pt", map_location="cpu", weights_only=True)
    assert 1 <= last["epoch"] < 3
    assert len(json.loads((output / "history.json").read_text())) == last["epoch"]

    resumed = subprocess.run(qat_argv(digits_fixture, digits_slice, output, "--resume", "--json"),
                             capture_output=True, text=True, timeout=900, cwd=ROOT)
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout)
    assert summary["status"] == "complete"
    assert [entry["epoch"] for entry in summary["history"]] == [1, 2, 3]
