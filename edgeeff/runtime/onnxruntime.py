"""Run .onnx artifacts in onnxruntime on the CPU execution provider."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime
from onnxruntime.capi.onnxruntime_pybind11_state import (Fail, InvalidArgument, InvalidGraph, InvalidProtobuf,
                                                         NoSuchFile, NotImplemented as OrtNotImplemented)

from edgeeff.runtime.base import Runner

_LOAD_ERRORS = (Fail, InvalidArgument, InvalidGraph, InvalidProtobuf, NoSuchFile, OrtNotImplemented)


class OnnxRuntimeRunner(Runner):
    """An .onnx artifact in an onnxruntime session: CPU provider, all graph optimizations.

    `threads` sets intra_op_num_threads, and onnxruntime picks its default when it is None.
    inter_op_num_threads is 1 because the session runs nodes one after another (onnxruntime's default
    sequential execution mode), so a larger inter-op pool would only hold idle threads.
    """

    runtime = "onnxruntime"

    def __init__(self, path: str | Path, threads: int | None = None):
        super().__init__(path, threads)
        if threads is not None and (not isinstance(threads, int) or threads < 1):
            raise ValueError(f"invalid thread count {threads!r}: use a positive integer, or None for onnxruntime's default")
        if not self.path.is_file():
            raise FileNotFoundError(f"artifact not found: {self.path}; pass the path of an exported .onnx file")

        options = onnxruntime.SessionOptions()
        if threads is not None:
            options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = onnxruntime.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except _LOAD_ERRORS as exc:
            reason = str(exc).split(" failed:", 1)[-1].strip()
            raise ValueError(f"invalid ONNX artifact {self.path}: {reason}; re-export it or pass another .onnx file") from exc

        inputs = self.session.get_inputs()
        if len(inputs) != 1:
            raise ValueError(f"ONNX artifact {self.path} has {len(inputs)} inputs; edgeeff runs models with one image input")
        self._input = inputs[0]
        self._output_name = self.session.get_outputs()[0].name

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The input shape, with -1 for a dimension the artifact leaves dynamic."""
        return tuple(dim if isinstance(dim, int) else -1 for dim in self._input.shape)

    @property
    def intra_op_threads(self) -> int:
        """The intra-op thread count the session was created with (0 means onnxruntime's default)."""
        return self.session.get_session_options().intra_op_num_threads

    def run(self, batch: np.ndarray) -> np.ndarray:
        batch = np.asarray(batch)
        expected = self.input_shape
        if batch.ndim != len(expected) or any(want not in (-1, got) for want, got in zip(expected, batch.shape)):
            raise ValueError(f"input of shape {batch.shape} does not fit {self.path.name}, which expects {expected} "
                             "(-1: any size); use run_many for other batch sizes, or re-export at this resolution")
        if batch.dtype != np.float32:
            if not np.issubdtype(batch.dtype, np.floating):
                raise ValueError(f"input has dtype {batch.dtype}; pass float32 images preprocessed as the artifact's sidecar describes")
            batch = batch.astype(np.float32)
        logits = self.session.run([self._output_name], {self._input.name: np.ascontiguousarray(batch)})[0]
        return np.asarray(logits, dtype=np.float32)

    @staticmethod
    def version() -> str:
        return onnxruntime.__version__
