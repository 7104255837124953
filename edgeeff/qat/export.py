"""`edgeeff export --from-qat RUN`: a finished QAT run's INT8 program into every target.

- ExecuTorch: the run's quantize/dequantize program (int8.pt2) is lowered to XNNPACK as it
  is, so the learned scales and zero points are the ones in the .pte.
- ONNX: the same program goes through `torch.onnx.export(dynamo=True)`, which writes
  QuantizeLinear/DequantizeLinear pairs with those scales (int8 activations).
- TFLite: ai-edge-quantizer cannot take given ranges, so the INT8 model is re-calibrated from
  the QAT-adapted float weights (qat-float.pt), and the sidecar records this.

FP32 artifacts of a QAT run come from qat-float.pt through the usual backends.
"""

from __future__ import annotations

import contextlib
import json
import sys
import tempfile
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from edgeeff.checkpoints import LoadedModel
from edgeeff.export.base import ExportDetails, ExportRequest, example_input
from edgeeff.qat.run import INT8_PROGRAM_FILE, QAT_FLOAT_FILE, SUMMARY_FILE, QATRunError, read_run


@dataclass
class QATRun:
    """A finished QAT run: its records, the QAT-adapted float model and the INT8 program's path."""

    folder: Path
    run: dict
    summary: dict
    loaded: LoadedModel
    program_path: Path

    @property
    def data_path(self) -> Path:
        return Path(self.run["data"]["path"])

    def load_program(self) -> torch.export.ExportedProgram:
        """Read int8.pt2 afresh; backends rewrite programs in place, so each gets its own copy."""
        import torchao.quantization.pt2e  # noqa: F401  (registers the quantized_decomposed ops)

        return torch.export.load(str(self.program_path))

    def quantization_record(self) -> dict:
        init = self.summary.get("initialization", {})
        recipe = self.summary.get("recipe", {})
        return {
            "scheme": "quantization-aware training",
            "qat_run": str(self.folder),
            "qat_best_epoch": self.summary.get("best_epoch"),
            "qat_mode": self.summary.get("mode"),
            "initialization": init.get("tool"),
            "activation_ranges": "learned (LSQ)" if recipe.get("learn_ranges") else "moving-average min/max",
            "per_channel": True,
            "weight_dtype": "int8",
            "weight_scheme": "per-channel symmetric",
            "activation_dtype": "int8",
            "activation_scheme": "per-tensor affine",
        }


def load_qat_run(folder: str | Path) -> QATRun:
    """Open a finished `edgeeff qat` run folder; raises QATRunError with the fix when it is not usable."""
    from edgeeff.checkpoints import load_checkpoint

    folder = Path(folder)
    run = read_run(folder)
    summary_path = folder / SUMMARY_FILE
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {}
    program_path, float_path = folder / INT8_PROGRAM_FILE, folder / QAT_FLOAT_FILE
    if summary.get("status") != "complete" or not program_path.is_file() or not float_path.is_file():
        raise QATRunError(f"the QAT run in {folder} has not finished: resume it with "
                          f"edgeeff qat --output {folder} --resume")
    loaded = load_checkpoint(float_path)
    loaded.notes.append(f"QAT-adapted weights from the edgeeff qat run in {folder} "
                        f"(best epoch {summary.get('best_epoch')})")
    return QATRun(folder=folder, run=run, summary=summary, loaded=loaded, program_path=program_path)


class QATExportSource:
    """Give the export pipeline a QAT run's INT8 backends and the QAT model's logits as INT8 reference."""

    def __init__(self, run: QATRun):
        self.run = run

    def backend_for(self, target: str, precision: str) -> Callable[[ExportRequest], ExportDetails] | None:
        """Return the QAT backend for an INT8 target; None means the pipeline's usual backend (FP32)."""
        if precision != "int8":
            return None
        if target == "executorch":
            return self.export_executorch
        if target == "onnx":
            return self.export_onnx
        if target == "tflite":
            return self.export_tflite
        return None

    @torch.no_grad()
    def int8_logits(self, images: np.ndarray) -> np.ndarray:
        """Run the QAT INT8 program (quantize/dequantize in eager PyTorch) one image at a time."""
        module = self.run.load_program().module()
        outputs = [module(torch.from_numpy(np.ascontiguousarray(images[i:i + 1]))).numpy()
                   for i in range(len(images))]
        return np.concatenate(outputs).astype(np.float32)

    def export_executorch(self, request: ExportRequest) -> ExportDetails:
        """Lower the QAT program to an XNNPACK-delegated .pte with the learned quantization parameters."""
        from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
        from executorch.exir import to_edge_transform_and_lower

        from edgeeff.export.executorch import _keep_global_pool_dims, describe_delegation

        self._check_resolution(request)
        program = self.run.load_program()
        with torch.no_grad():
            _keep_global_pool_dims(program)
            edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
            graph = describe_delegation(edge.exported_program())
            executorch_program = edge.to_executorch()
        warnings = []
        if not graph["fully_delegated"]:
            outside = ", ".join(f"{name} x{count}" for name, count in graph["ops_outside_delegate"].items())
            warnings.append(f"not fully delegated to XNNPACK: {outside} run on ExecuTorch portable kernels")
        with open(request.path, "wb") as f:
            executorch_program.write_to_file(f)
        quantization = {**self.run.quantization_record(),
                        "tool": f"torchao {version('torchao')} PT2E QAT + XNNPACKQuantizer "
                                f"(executorch {version('executorch')})"}
        return ExportDetails(tool=f"executorch {version('executorch')} (XNNPACK delegate)",
                             quantization=quantization, graph=graph, warnings=warnings)

    def export_onnx(self, request: ExportRequest) -> ExportDetails:
        """Export the QAT program to ONNX QDQ; the QuantizeLinear nodes carry the learned scales."""
        from edgeeff.export.onnx import INPUT_NAME, OUTPUT_NAME, summarize_graph

        self._check_resolution(request)
        program = self.run.load_program()
        path = Path(request.path)
        with contextlib.redirect_stdout(sys.stderr):
            torch.onnx.export(program, (example_input(request.resolution),), str(path), input_names=[INPUT_NAME],
                              output_names=[OUTPUT_NAME], dynamo=True, external_data=False, verbose=False)
        with tempfile.TemporaryDirectory(prefix=".edgeeff-onnx-", dir=path.parent) as work:
            graph = summarize_graph(path, Path(work))
        quantization = {**self.run.quantization_record(),
                        "tool": f"torchao {version('torchao')} PT2E QAT, torch.onnx (dynamo) {torch.__version__}",
                        "format": "QDQ",
                        "activation_dtypes_in_graph": graph.pop("activation_dtypes")}
        warnings = []
        if request.arch == "x86":
            # NOTE: the program quantizes activations to int8, XNNPACK's scheme. onnxruntime's x86
            # kernels run uint8 activations faster, so this graph may run slower than a PTQ export.
            warnings.append("activations are int8 (the QAT scheme for XNNPACK); onnxruntime on x86 runs "
                            "uint8 activations faster")
        return ExportDetails(tool=quantization["tool"], quantization=quantization, graph=graph, warnings=warnings)

    def export_tflite(self, request: ExportRequest) -> ExportDetails:
        """Re-calibrate TFLite INT8 from the QAT-adapted float weights (ai-edge-quantizer takes no given ranges)."""
        from edgeeff.export.tflite import export_tflite

        details = export_tflite(request)
        details.quantization.update({"scheme": "static post-training on QAT-adapted weights",
                                     "qat_run": str(self.run.folder)})
        details.warnings.append("TFLite INT8 was re-calibrated with ai-edge-quantizer: it uses the QAT-adapted "
                                "weights but not the learned activation ranges")
        return details

    def _check_resolution(self, request: ExportRequest) -> None:
        expected = int(self.run.run["model"]["resolution"])
        if request.resolution != expected:
            raise ValueError(f"the QAT run was trained at {expected} px but the export asks for "
                             f"{request.resolution} px: drop --resolution when exporting --from-qat")
