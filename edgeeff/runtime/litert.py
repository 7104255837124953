"""Run .tflite artifacts in the LiteRT interpreter (ai-edge-litert) with its default XNNPACK delegate."""

from __future__ import annotations

import os
from importlib import metadata
from pathlib import Path

import numpy as np

from edgeeff.runtime.base import Runner, RuntimeUnavailable

INTEGER_DTYPES = (np.int8, np.uint8, np.int16)


def default_threads() -> int:
    """Return the number of CPUs this process may run on.

    The interpreter of ai-edge-litert 2.3.0 runs on one thread when it is given none.
    """
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


class LiteRTRunner(Runner):
    """A .tflite model in `ai_edge_litert.interpreter.Interpreter`.

    Accepts float32 NCHW batches. The model's own input may be NCHW or NHWC, and the runner
    reads which from the input shape, taking the dimension of size 3 as channels. Integer
    inputs are quantized with the input tensor's scale and zero point and integer outputs are
    dequantized, so `run` always returns float32 logits. `threads=None` uses every CPU this
    process may run on.
    """

    runtime = "litert"

    def __init__(self, path: str | Path, threads: int | None = None):
        super().__init__(path, threads)
        try:
            from ai_edge_litert.interpreter import Interpreter
        except ImportError as exc:
            raise RuntimeUnavailable(f"ai-edge-litert is not installed ({exc}); "
                                     "run pip install 'edgeeff[litert-runtime]'") from exc
        if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
            raise ValueError(f"invalid thread count {threads!r}: use a positive integer, or None for all CPUs")
        if not self.path.is_file():
            raise FileNotFoundError(f"TFLite model not found: {self.path}; pass the path of an exported .tflite file")
        self.num_threads = threads if threads is not None else default_threads()
        try:
            self._interpreter = Interpreter(model_path=str(self.path), num_threads=self.num_threads)
            self._interpreter.allocate_tensors()
        except (ValueError, RuntimeError) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ValueError(f"invalid TFLite model {self.path}: {reason}; re-export it with edgeeff export") from exc

        inputs = self._interpreter.get_input_details()
        outputs = self._interpreter.get_output_details()
        if len(inputs) != 1 or len(outputs) != 1:
            raise ValueError(f"unsupported TFLite model {self.path}: {len(inputs)} inputs and {len(outputs)} outputs, "
                             "expected one image input and one logits output")
        self._input, self._output = inputs[0], outputs[0]
        shape = tuple(int(d) for d in self._input["shape"])
        if len(shape) != 4 or 3 not in (shape[1], shape[3]):
            raise ValueError(f"unsupported TFLite input shape {shape} in {self.path}: expected 1×3×H×W or 1×H×W×3")
        self.layout = "NCHW" if shape[1] == 3 else "NHWC"
        self._shape_nchw = shape if self.layout == "NCHW" else (shape[0], shape[3], shape[1], shape[2])

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The model's input shape in NCHW order, whatever layout the model itself uses."""
        return self._shape_nchw

    @property
    def input_dtype(self) -> np.dtype:
        return np.dtype(self._input["dtype"])

    @staticmethod
    def version() -> str:
        return metadata.version("ai-edge-litert")

    def run(self, batch: np.ndarray) -> np.ndarray:
        batch = np.asarray(batch)
        if batch.shape != self._shape_nchw:
            raise ValueError(f"input shape {batch.shape} does not match the model's {self._shape_nchw} (NCHW); "
                             "resize to the exported resolution, and use run_many for other batch sizes")
        batch = batch.astype(np.float32, copy=False)
        if self.layout == "NHWC":
            batch = batch.transpose(0, 2, 3, 1)
        self._interpreter.set_tensor(self._input["index"], self._to_model_input(batch))
        self._interpreter.invoke()
        return self._from_model_output(self._interpreter.get_tensor(self._output["index"]))

    def _to_model_input(self, batch: np.ndarray) -> np.ndarray:
        return to_input_tensor(batch, self._input, self.path)

    def _from_model_output(self, logits: np.ndarray) -> np.ndarray:
        if logits.dtype == np.float32:
            return logits.reshape(logits.shape[0], -1)
        scale, zero_point = self._output["quantization"]
        if scale == 0:
            raise ValueError(f"TFLite output of {self.path} is {logits.dtype} without a quantization scale; re-export it")
        dequantized = (logits.astype(np.float32) - np.float32(zero_point)) * np.float32(scale)
        return dequantized.reshape(logits.shape[0], -1)


def to_input_tensor(batch: np.ndarray, detail: dict, source: str | Path) -> np.ndarray:
    """Convert a float32 batch to the input tensor's type, quantizing with its scale and zero point.

    `detail` is the interpreter's input detail, and `source` names the model in error messages.
    """
    dtype = np.dtype(detail["dtype"])
    if dtype == np.float32:
        return np.ascontiguousarray(batch)
    if dtype not in INTEGER_DTYPES:
        raise ValueError(f"unsupported TFLite input type {dtype} in {source}: expected float32, int8, uint8 or int16")
    scale, zero_point = detail["quantization"]
    if scale == 0:
        raise ValueError(f"TFLite input of {source} is {dtype} without a quantization scale; re-export it")
    info = np.iinfo(dtype)
    # np.round rounds half to even, but TFLite's QUANTIZE kernel rounds half away from zero.
    # The two differ only on exact .5 values, by one quantization step.
    quantized = np.round(batch / np.float32(scale)) + zero_point
    return np.clip(quantized, info.min, info.max).astype(dtype)


__all__ = ["LiteRTRunner", "default_threads", "to_input_tensor"]
