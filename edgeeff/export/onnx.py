"""ONNX export: FP32 through torch.onnx (dynamo), INT8 as static QDQ for onnxruntime's CPU provider.

The artifact is one self-contained .onnx file (weights embedded, no .onnx.data sidecar) with a
static batch-1 NCHW float32 input named "input" and an output named "logits".

INT8 uses per-channel symmetric int8 weights and per-tensor activations, uint8 for x86 and
int8 for Arm. onnxruntime fuses a U8S8 graph fully on x86, and its quantize_static docstring
recommends int8 activations on Arm. Three quantizers are available (see QUANTIZERS). They were compared on the
EfficientNet-Lite0 ImageNet checkpoint in docs/export-routes.md.
"""

from __future__ import annotations

import collections
import contextlib
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from onnxruntime.quantization import CalibrationDataReader

from edgeeff.export.base import ARCHES, PRECISIONS, ExportDetails, ExportRequest, example_input

INPUT_NAME = "input"
OUTPUT_NAME = "logits"

# "ort-bc": NNCF computes bias correction on the float graph, then onnxruntime quantizes every op
#   (QDQ around each Conv, Add, Gemm, Sigmoid, Mul), so its CPU provider fuses the graph into
#   QLinearConv and related integer kernels. On Lite0 it was the fastest graph and agreed best.
# "ort": onnxruntime's static quantization alone, without bias correction.
# "nncf": NNCF's own QDQ placement (only the inputs of Conv and Gemm). onnxruntime leaves many of
#   its convs in float, so it ran no faster than FP32 on Lite0 and slower on B0.
QUANTIZERS = ("ort-bc", "ort", "nncf")
DEFAULT_QUANTIZER = "ort-bc"

# Ops that only move or reshape data, so leaving them in float costs little.
_DATA_MOVEMENT_OPS = {"Transpose", "Reshape", "Flatten", "Squeeze", "Unsqueeze", "Identity", "Shape",
                      "Concat", "Slice", "Gather", "Pad", "ReorderInput", "ReorderOutput"}
_QDQ_OPS = {"QuantizeLinear", "DequantizeLinear"}


def export_onnx(request: ExportRequest, quantizer: str = DEFAULT_QUANTIZER) -> ExportDetails:
    """Export `request.model` to one .onnx file at `request.path` and describe what was written.

    FP32 goes through `torch.onnx.export(dynamo=True)`. INT8 quantizes that FP32 graph with
    `request.calibration` using `quantizer` (one of QUANTIZERS).
    """
    _validate_request(request, quantizer)
    path = Path(request.path)
    with tempfile.TemporaryDirectory(prefix=".edgeeff-onnx-", dir=path.parent) as work:
        float_path = path if request.precision == "fp32" else Path(work) / "float.onnx"
        _export_float(request.model, request.resolution, float_path)
        if request.precision == "fp32":
            graph = summarize_graph(path, Path(work))
            del graph["activation_dtypes"]
            return ExportDetails(tool=f"torch.onnx (dynamo) {torch.__version__}", graph=graph)

        # Only the graph to be quantized gets the pools rewritten. The FP32 artifact stays as
        # torch.onnx wrote it: on untrained B1 at 64 px, whose logits reach 400, the two ops' float
        # sums differed by 7e-2, over FP32 verification's 1e-4 of the logit scale.
        float_model = onnx.load(str(float_path))
        if _spatial_means_to_global_pools(float_model):
            onnx.save(float_model, str(float_path))
        calibration = np.ascontiguousarray(request.calibration, dtype=np.float32)
        if quantizer == "nncf":
            quantization, warnings = _quantize_nncf(float_path, path, calibration, request.arch)
        else:
            quantization, warnings = _quantize_onnxruntime(float_path, path, calibration, request.arch,
                                                           bias_correction=quantizer == "ort-bc")
        graph = summarize_graph(path, Path(work))

    quantization["quantizer"] = quantizer
    quantization["calibration_count"] = int(calibration.shape[0])
    quantization["activation_dtypes_in_graph"] = graph.pop("activation_dtypes")
    if quantizer == "nncf" and graph["float_compute_ops"]:
        warnings.append(f"onnxruntime runs {graph['float_compute_ops']} compute ops of the NNCF graph in float "
                        f"({', '.join(f'{n} {op}' for op, n in graph['float_compute_op_types'].items())}); "
                        "the default quantizer 'ort-bc' fuses more of them")
    expected = quantization["activation_dtype"]
    if quantization["activation_dtypes_in_graph"] != [expected]:
        warnings.append(f"activations use {'/'.join(quantization['activation_dtypes_in_graph'])}, "
                        f"not only {expected}: onnxruntime may run some ops unfused")
    return ExportDetails(tool=quantization["tool"], quantization=quantization, graph=graph, warnings=warnings)


def _validate_request(request: ExportRequest, quantizer: str) -> None:
    if request.precision not in PRECISIONS:
        raise ValueError(f"invalid precision {request.precision!r}: use one of {', '.join(PRECISIONS)}")
    if request.arch not in ARCHES:
        raise ValueError(f"invalid arch {request.arch!r}: use one of {', '.join(ARCHES)}")
    if quantizer not in QUANTIZERS:
        raise ValueError(f"invalid ONNX quantizer {quantizer!r}: use one of {', '.join(QUANTIZERS)}")
    if not isinstance(request.resolution, int) or request.resolution < 1:
        raise ValueError(f"invalid resolution {request.resolution!r}: use a positive number of pixels")
    if request.model.training:
        raise ValueError("model is in training mode, which would export dropout and stochastic depth; "
                         "call model.eval() before exporting")
    if request.precision != "int8":
        return
    calibration = request.calibration
    expected = (3, request.resolution, request.resolution)
    if calibration is None:
        raise ValueError("int8 ONNX export needs calibration images: pass a float32 NCHW array")
    if not isinstance(calibration, np.ndarray) or calibration.ndim != 4 or calibration.shape[1:] != expected:
        shape = getattr(calibration, "shape", type(calibration).__name__)
        raise ValueError(f"invalid calibration array of shape {shape}: expected (N, {', '.join(map(str, expected))}) "
                         "preprocessed at the export resolution")
    if calibration.shape[0] < 1:
        raise ValueError("calibration array contains no images: pass at least one preprocessed image")
    if not np.isfinite(calibration).all():
        raise ValueError("calibration array contains NaN or Inf: check the preprocessing of the calibration images")


def _export_float(model: torch.nn.Module, resolution: int, path: Path) -> None:
    """Write the FP32 graph with static shape (1, 3, resolution, resolution), weights embedded."""
    with contextlib.redirect_stdout(sys.stderr):
        torch.onnx.export(model, (example_input(resolution),), str(path), input_names=[INPUT_NAME],
                          output_names=[OUTPUT_NAME], dynamo=True, external_data=False, verbose=False)
    if not path.is_file():
        raise RuntimeError(f"torch.onnx.export wrote no file at {path}")


def _spatial_means_to_global_pools(model: onnx.ModelProto) -> int:
    """Replace each ReduceMean over H and W of a 4-D tensor with GlobalAveragePool, and return the count.

    torch.onnx writes the squeeze-and-excitation and head pools as ReduceMean. onnxruntime has no
    integer ReduceMean, so in a QDQ graph each one runs in float between a DequantizeLinear and a
    QuantizeLinear. A QDQ GlobalAveragePool fuses into QLinearGlobalAveragePool instead. Both ops
    compute the same mean.
    """
    initializers = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    ranks = {v.name: len(v.type.tensor_type.shape.dim)
             for v in [*model.graph.input, *model.graph.value_info, *model.graph.output]}
    nodes = []
    replaced = 0
    for node in model.graph.node:
        attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        axes = attributes.get("axes")
        if axes is None and len(node.input) > 1 and node.input[1] in initializers:
            axes = initializers[node.input[1]].tolist()
        if (node.op_type != "ReduceMean" or ranks.get(node.input[0]) != 4 or axes is None
                or sorted(axis % 4 for axis in axes) != [2, 3]):
            nodes.append(node)
            continue
        if attributes.get("keepdims", 1):
            nodes.append(onnx.helper.make_node("GlobalAveragePool", [node.input[0]], list(node.output), name=node.name))
        else:
            # The head's pool drops H and W: pool to (N, C, 1, 1), then flatten to (N, C).
            pooled = f"{node.output[0]}_pooled"
            nodes.append(onnx.helper.make_node("GlobalAveragePool", [node.input[0]], [pooled], name=node.name))
            nodes.append(onnx.helper.make_node("Flatten", [pooled], list(node.output), name=f"{node.name}_flatten",
                                               axis=1))
        replaced += 1
    if replaced:
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        # The axes tensors of the removed ReduceMeans are now unused.
        used = {name for node in nodes for name in node.input}
        unused = [i for i in model.graph.initializer if i.name not in used]
        for initializer in unused:
            model.graph.initializer.remove(initializer)
    return replaced


class _CalibrationReader(CalibrationDataReader):
    """Feeds calibration images one at a time to onnxruntime's calibrator, as the batch-1 graph needs."""

    def __init__(self, calibration: np.ndarray):
        self._images = iter(calibration[i:i + 1] for i in range(calibration.shape[0]))

    def get_next(self) -> dict[str, np.ndarray] | None:
        image = next(self._images, None)
        return None if image is None else {INPUT_NAME: image}


def _quantize_onnxruntime(float_path: Path, path: Path, calibration: np.ndarray, arch: str,
                          bias_correction: bool) -> tuple[dict, list[str]]:
    import onnxruntime
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quant_pre_process, quantize_static

    warnings: list[str] = []
    source = float_path
    corrected = 0
    tool = f"onnxruntime.quantization {onnxruntime.__version__}"
    if bias_correction:
        import nncf

        corrected_model, corrected = nncf_bias_correction(onnx.load(str(float_path)), calibration)
        source = float_path.with_name("float-bias-corrected.onnx")
        onnx.save(corrected_model, str(source))
        tool += f" + nncf {nncf.__version__} bias correction"
        if corrected == 0:
            warnings.append("NNCF bias correction changed no bias; the model is quantized without it")

    # onnxruntime's pre-processing (symbolic shape inference, basic graph optimizations) changed
    # neither the graph nor the numbers of Lite0, but quantize_static recommends it and warns without it.
    preprocessed = float_path.with_name("float-preprocessed.onnx")
    quant_pre_process(str(source), str(preprocessed))
    activation_type = QuantType.QUInt8 if arch == "x86" else QuantType.QInt8
    # NOTE: onnxruntime 1.32's quantize_static docstring advises reduce_range=True (7-bit weights)
    # on x86 CPUs without VNNI, where U8S8 products can saturate. It cut the logit cosine to float
    # from 0.98 to 0.93 on Lite0 at 224 px, so it is off. Agreement was measured on a VNNI CPU only.
    # The same docstring notes that Arm kernels often prefer symmetric int8 activations. These are
    # asymmetric, which keeps all 256 levels for ReLU6 outputs, and no Arm device has timed them.
    with contextlib.redirect_stdout(sys.stderr):
        quantize_static(str(preprocessed), str(path), _CalibrationReader(calibration), quant_format=QuantFormat.QDQ,
                        per_channel=True, reduce_range=False, activation_type=activation_type,
                        weight_type=QuantType.QInt8, calibrate_method=CalibrationMethod.MinMax,
                        use_external_data_format=False)
    method = "static min/max calibration, QDQ on every op"
    if bias_correction:
        method += ", after NNCF bias correction of the float graph"
    quantization = {
        "tool": tool,
        "method": method,
        "format": "QDQ",
        "per_channel": True,
        "weight_dtype": "int8",
        "weight_scheme": "symmetric",
        "activation_dtype": "uint8" if arch == "x86" else "int8",
        "activation_scheme": "asymmetric",
        "calibration_method": "minmax",
        "biases_corrected": corrected,
    }
    return quantization, warnings


def _nncf_quantize(model: onnx.ModelProto, calibration: np.ndarray, scheme: str,
                   overflow_fix: bool = True) -> onnx.ModelProto:
    """Run nncf.quantize with per-tensor activations in `scheme` and full bias correction.

    `scheme` is "asymmetric" or "symmetric". NNCF picks each activation's signedness itself
    (unsigned after ReLU6, signed elsewhere), because its CPU hardware config rejects forcing
    signed activations. So an Arm graph from NNCF still has some uint8 activations.
    """
    import nncf
    from nncf.common.quantization.structs import QuantizationScheme
    from nncf.quantization.advanced_parameters import (AdvancedQuantizationParameters, OverflowFix,
                                                       QuantizationParameters)

    activations = QuantizationParameters(per_channel=False, mode=QuantizationScheme(scheme))
    advanced = AdvancedQuantizationParameters(activations_quantization_params=activations)
    if not overflow_fix:
        advanced.overflow_fix = OverflowFix.DISABLE
    dataset = nncf.Dataset([calibration[i:i + 1] for i in range(calibration.shape[0])],
                           lambda image: {INPUT_NAME: image})
    with contextlib.redirect_stdout(sys.stderr):
        return nncf.quantize(model, dataset, target_device=nncf.TargetDevice.CPU,
                             subset_size=calibration.shape[0], fast_bias_correction=False,
                             advanced_parameters=advanced)


def nncf_bias_correction(model: onnx.ModelProto, calibration: np.ndarray) -> tuple[onnx.ModelProto, int]:
    """Return a copy of the float `model` with the Conv and Gemm biases that NNCF's bias correction
    computes, and the number of biases changed.

    NNCF corrects each bias so that the per-channel mean of the quantized layer output matches
    float on the calibration images. Its quantizer placement differs from onnxruntime's, so the
    correction is an approximation for the graph that onnxruntime then quantizes. It raised
    logit cosine on held-out photos from 0.982 to 0.993 on Lite0 (docs/export-routes.md).
    """
    # Asymmetric activations and no weight overflow fix, because onnxruntime quantizes
    # activations asymmetrically (uint8 or int8, 256 levels either way) and weights to the full
    # int8 range, and the correction should see that error.
    quantized = _nncf_quantize(model, calibration, "asymmetric", overflow_fix=False)
    quantized_initializers = {i.name: i for i in quantized.graph.initializer}
    biases = {}
    for node in quantized.graph.node:
        if node.op_type in ("Conv", "Gemm") and len(node.input) > 2 and node.input[2] in quantized_initializers:
            biases[node.input[2]] = numpy_helper.to_array(quantized_initializers[node.input[2]])

    corrected = onnx.ModelProto()
    corrected.CopyFrom(model)
    changed = 0
    for initializer in corrected.graph.initializer:
        bias = biases.get(initializer.name)
        if bias is None:
            continue
        original = numpy_helper.to_array(initializer)
        if bias.shape == original.shape and bias.dtype == original.dtype and not np.array_equal(bias, original):
            initializer.CopyFrom(numpy_helper.from_array(bias, initializer.name))
            changed += 1
    return corrected, changed


def _quantize_nncf(float_path: Path, path: Path, calibration: np.ndarray, arch: str) -> tuple[dict, list[str]]:
    import nncf

    scheme = "asymmetric" if arch == "x86" else "symmetric"
    quantized = _nncf_quantize(onnx.load(str(float_path)), calibration, scheme)
    onnx.save(quantized, str(path))
    quantization = {
        "tool": f"nncf {nncf.__version__}",
        "method": "static, NNCF placement (inputs of Conv and Gemm only), full bias correction",
        "format": "QDQ",
        "per_channel": True,
        "weight_dtype": "int8",
        "weight_scheme": "symmetric",
        "activation_dtype": "uint8" if arch == "x86" else "int8",
        "activation_scheme": scheme,
        "calibration_method": "nncf default range estimators",
    }
    return quantization, []


def summarize_graph(path: Path, work: Path) -> dict:
    """Count nodes and QDQ pairs, and the compute ops that onnxruntime's CPU provider still runs in float.

    The float count comes from the graph that onnxruntime writes after its extended optimizations
    (QDQ fusion into QLinearConv and similar) on this machine's CPU provider.
    """
    model = onnx.load(str(path), load_external_data=False)
    external = [i.name for i in model.graph.initializer if i.data_location == onnx.TensorProto.EXTERNAL]
    if external:
        raise RuntimeError(f"{path} stores {len(external)} tensors in external data (first: {external[0]}); "
                           "the exporter must embed all weights")
    op_types = collections.Counter(node.op_type for node in model.graph.node)
    fused = _fused_op_types(path, work)
    float_ops = {op: n for op, n in fused.items()
                 if op not in _QDQ_OPS and op not in _DATA_MOVEMENT_OPS and not _is_integer_op(op)}
    return {
        "nodes": len(model.graph.node),
        "quantize_linear": op_types.get("QuantizeLinear", 0),
        "dequantize_linear": op_types.get("DequantizeLinear", 0),
        "float_compute_ops": sum(float_ops.values()),
        "float_compute_op_types": dict(sorted(float_ops.items())),
        "integer_ops": sum(n for op, n in fused.items() if _is_integer_op(op)),
        "op_types": dict(sorted(op_types.items())),
        # Fusion depends on the CPU: on x86, onnxruntime fuses fewer ops of an int8-activation (Arm) graph.
        "fused_on": platform.machine(),
        "opset": next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None),
        "activation_dtypes": _activation_dtypes(model),
    }


def _is_integer_op(op_type: str) -> bool:
    return op_type.startswith("QLinear") or op_type in {"QGemm", "ConvInteger", "MatMulInteger"}


def _fused_op_types(path: Path, work: Path) -> collections.Counter:
    import onnxruntime

    options = onnxruntime.SessionOptions()
    # EXTENDED runs the QDQ fusions but not the NCHWc layout rewrites, which only add reorder nodes.
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
    optimized = work / "optimized.onnx"
    options.optimized_model_filepath = str(optimized)
    onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return collections.Counter(node.op_type for node in onnx.load(str(optimized)).graph.node)


def _activation_dtypes(model: onnx.ModelProto) -> list[str]:
    """Return the dtypes that QuantizeLinear nodes give activations (weights are stored pre-quantized)."""
    initializers = {i.name: i for i in model.graph.initializer}
    dtypes = set()
    for node in model.graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] in initializers:
            continue
        if len(node.input) > 2 and node.input[2] in initializers:
            dtypes.add(str(numpy_helper.to_array(initializers[node.input[2]]).dtype))
        else:
            dtypes.add("uint8")  # ONNX default when the zero point is omitted
    return sorted(dtypes)
