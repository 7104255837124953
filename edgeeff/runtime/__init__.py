"""Run exported artifacts in their own runtimes (onnxruntime, LiteRT, ExecuTorch), without torch."""

from __future__ import annotations

from pathlib import Path

from edgeeff.runtime.base import Runner, RuntimeUnavailable

SUFFIX_RUNTIME = {".onnx": "onnxruntime", ".tflite": "litert", ".pte": "executorch"}


def runtime_for(path: str | Path) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in SUFFIX_RUNTIME:
        raise ValueError(f"unknown artifact type {suffix or '(no suffix)'} for {path}: use a .onnx, .tflite or .pte file")
    return SUFFIX_RUNTIME[suffix]


def open_runner(path: str | Path, threads: int | None = None) -> Runner:
    """Load an artifact in the runtime that its suffix names."""
    runtime = runtime_for(path)
    if not Path(path).is_file():
        raise FileNotFoundError(f"artifact not found: {path}")
    try:
        if runtime == "onnxruntime":
            from edgeeff.runtime.onnxruntime import OnnxRuntimeRunner as cls
        elif runtime == "litert":
            from edgeeff.runtime.litert import LiteRTRunner as cls
        else:
            from edgeeff.runtime.executorch import ExecuTorchRunner as cls
    except ImportError as exc:
        raise RuntimeUnavailable(f"{runtime} is not installed ({exc}); run pip install 'edgeeff[agent]'") from exc
    return cls(path, threads)


__all__ = ["Runner", "RuntimeUnavailable", "open_runner", "runtime_for"]
