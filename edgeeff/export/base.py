"""The exporter interface shared by the ExecuTorch, TFLite and ONNX backends."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

PRECISIONS = ("fp32", "int8")
ARCHES = ("x86", "arm")


@dataclass
class ExportRequest:
    """What a backend needs to write one artifact.

    `model` is the float model in eval mode. `calibration` is a float32 NCHW array of
    preprocessed images, required for int8. `arch` selects the target CPU family where a format
    quantizes differently per CPU (ONNX activation type). `path` is where the backend writes:
    a temporary file that the pipeline renames into place after verification.
    """

    model: torch.nn.Module
    resolution: int
    precision: str
    path: Path
    calibration: np.ndarray | None = None
    arch: str = "x86"
    bias_corrected: bool = False  # `model` already carries NNCF's corrected biases
    # Calibration images for a backend's own bias correction on its int8 model (TFLite); 0 turns it off.
    bias_correction_images: int = 0


@dataclass
class ExportDetails:
    """What a backend reports about the artifact it wrote, for the sidecar and the table.

    `quantization` describes the scheme (per-channel, activation dtype, tool). `graph` counts
    ops: delegated vs not for ExecuTorch, float compute ops left for TFLite INT8, QDQ pairs for
    ONNX.
    """

    tool: str
    quantization: dict = field(default_factory=dict)
    graph: dict = field(default_factory=dict)
    input_layout: str = "NCHW"
    input_dtype: str = "float32"
    warnings: list[str] = field(default_factory=list)


def example_input(resolution: int) -> torch.Tensor:
    return torch.zeros(1, 3, resolution, resolution)
