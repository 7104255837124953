"""The runner interface: one artifact loaded in its own runtime, fed NumPy arrays.

Nothing under edgeeff.runtime imports torch, so a device with only the runtimes installed can
run artifacts (`pip install edgeeff[agent]`).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from pathlib import Path

import numpy as np


class RuntimeUnavailable(RuntimeError):
    """The runtime for an artifact is not installed here."""


class Runner(ABC):
    """An artifact loaded for inference.

    `run` takes one float32 NCHW batch, already preprocessed as the artifact's sidecar says,
    and returns float32 logits of shape (batch, classes). Runners quantize and dequantize at
    the boundary themselves when the artifact has integer inputs or outputs.
    """

    runtime: str = ""  # "onnxruntime", "litert" or "executorch"

    def __init__(self, path: str | Path, threads: int | None = None):
        self.path = Path(path)
        self.threads = threads

    @abstractmethod
    def run(self, batch: np.ndarray) -> np.ndarray: ...

    @property
    @abstractmethod
    def input_shape(self) -> tuple[int, ...]: ...

    @staticmethod
    @abstractmethod
    def version() -> str: ...

    def run_many(self, batch: np.ndarray) -> np.ndarray:
        """Run a batch of any size through an artifact exported for batch 1, one image at a time."""
        fixed = self.input_shape[0]
        if fixed == batch.shape[0]:
            return self.run(batch)
        return np.concatenate([self.run(batch[i:i + 1]) for i in range(batch.shape[0])])
