"""Export to an ExecuTorch program (.pte) with the whole graph delegated to XNNPACK.

FP32: `torch.export` → `to_edge_transform_and_lower` with `XnnpackPartitioner` → `to_executorch`.
INT8: the same after NNCF's PT2E post-training quantization with ExecuTorch's `XNNPACKQuantizer`
(int8 per-channel symmetric weights, int8 per-tensor affine activations with histogram ranges,
fast bias correction).

Versions this was written against: torch 2.13.0, executorch 1.5.1, nncf 3.4.0, torchao 0.18.0.
"""

from __future__ import annotations

import collections
import contextlib
from importlib.metadata import version

import numpy as np
import torch

from edgeeff.export.base import ExportDetails, ExportRequest, example_input

QUANTIZATION_TOOLS = ("nncf", "torchao")


def export_executorch(request: ExportRequest) -> ExportDetails:
    """Write `request.model` as an XNNPACK-delegated ExecuTorch program to `request.path`."""
    from executorch.exir import to_edge_transform_and_lower

    program = capture_program(request)
    with torch.no_grad():
        edge = to_edge_transform_and_lower(program, partitioner=[xnnpack_partitioner()])
        graph = describe_delegation(edge.exported_program())
        executorch_program = edge.to_executorch()

    warnings = []
    if not graph["fully_delegated"]:
        outside = ", ".join(f"{name} x{count}" for name, count in graph["ops_outside_delegate"].items())
        warnings.append(f"not fully delegated to XNNPACK: {outside} run on ExecuTorch portable kernels")
    with open(request.path, "wb") as f:
        executorch_program.write_to_file(f)

    quantization = _int8_scheme(len(request.calibration)) if request.precision == "int8" else {}
    return ExportDetails(tool=f"executorch {version('executorch')} (XNNPACK delegate)",
                         quantization=quantization, graph=graph, warnings=warnings)


def capture_program(request: ExportRequest) -> torch.export.ExportedProgram:
    """Capture the graph that `export_executorch` lowers: `torch.export`, then int8 quantization if requested.

    For int8 the program's `module()` runs the quantized model in PyTorch, with quantize and
    dequantize ops simulating int8, which is what the .pte should reproduce.
    """
    _check_request(request)
    example = example_input(request.resolution)
    with torch.no_grad():
        program = torch.export.export(request.model, (example,))
        _keep_global_pool_dims(program)
        if request.precision == "int8":
            # A model whose biases are already corrected must not be corrected a second time.
            module = quantize_for_xnnpack(program.module(), request.calibration,
                                          bias_correction=not request.bias_corrected)
            program = torch.export.export(module, (example,))
    return program


def _check_request(request: ExportRequest) -> None:
    if request.precision not in ("fp32", "int8"):
        raise ValueError(f"invalid precision {request.precision!r} for ExecuTorch: use 'fp32' or 'int8'")
    if request.model.training:
        raise ValueError("model is in training mode: call model.eval() before export, so dropout and "
                         "stochastic depth are not traced into the program")
    if request.resolution < 1:
        raise ValueError(f"invalid resolution {request.resolution}: use a positive number of pixels")
    if request.precision != "int8":
        return
    calibration = request.calibration
    expected = (3, request.resolution, request.resolution)
    if calibration is None or len(calibration) == 0:
        raise ValueError("int8 export needs calibration images: pass a float32 NCHW array of preprocessed images")
    if calibration.ndim != 4 or tuple(calibration.shape[1:]) != expected:
        raise ValueError(f"calibration array has shape {tuple(calibration.shape)}, expected "
                         f"(N, {', '.join(map(str, expected))}); preprocess the images at "
                         f"{request.resolution} px in NCHW order")
    if calibration.dtype != np.float32:
        raise ValueError(f"calibration array has dtype {calibration.dtype}, expected float32; "
                         "convert it with astype(np.float32)")


def _keep_global_pool_dims(program: torch.export.ExportedProgram) -> None:
    """Rewrite `x.mean((2, 3))` on NCHW tensors as `x.mean((2, 3), keepdim=True).view(N, C)`, in place.

    XnnpackPartitioner (executorch 1.5.1) delegates `mean.dim` only with keepdim=True, so the
    classifier's global pool would otherwise run outside the delegate and split it in two.
    keepdim changes only the output shape, so the values stay the same.
    """
    graph = program.graph
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target != torch.ops.aten.mean.dim:
            continue
        source, dims = node.args[0], node.args[1]
        keepdim = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
        pooled = node.meta.get("val")
        source_value = source.meta.get("val")
        if keepdim or node.kwargs.get("dtype") is not None or pooled is None:
            continue
        if source_value is None or source_value.dim() != 4:
            continue
        if sorted(d % 4 for d in dims) != [2, 3]:
            continue
        with graph.inserting_after(node):
            flat = graph.call_function(torch.ops.aten.view.default, (node, list(pooled.shape)))
        flat.meta = {key: value for key, value in node.meta.items() if key != "tensor_meta"}
        node.replace_all_uses_with(flat, delete_user_cb=lambda user: user is not flat)
        node.args = (source, dims, True)
        node.kwargs = {}
        node.meta["val"] = source_value.mean(list(dims), keepdim=True)
        node.meta.pop("tensor_meta", None)
    program.graph_module.recompile()


def quantize_for_xnnpack(module: torch.fx.GraphModule, calibration: np.ndarray, tool: str = "nncf",
                         bias_correction: bool = True, float_classifier: bool = True,
                         int8_silu_se: bool = True) -> torch.fx.GraphModule:
    """Quantize an exported module for XNNPACK: int8 per-channel symmetric weights, int8 activations.

    `module` comes from `torch.export.export(...).module()` and is changed in place. `calibration`
    is a float32 NCHW array, fed one image at a time because the graph has a static batch of 1.
    `tool="nncf"` runs NNCF's `quantize_pt2e` with histogram activation ranges, and with fast bias
    correction unless `bias_correction` is False. `float_classifier` keeps the logits' linear
    layer in float (see `_keep_classifier_float`). `int8_silu_se` quantizes SiLU, the
    squeeze-and-excitation sigmoid and the global average pools in int8 (see
    `_annotate_silu_se`), which the .pte runs in int8 only when lowered with
    `xnnpack_partitioner()`. `tool="torchao"` runs plain PT2E prepare, calibrate and convert,
    whose observers come from XNNPACKQuantizer's config (HistogramObserver), and is kept to
    compare the two.
    """
    quantizer = _xnnpack_quantizer(float_classifier, int8_silu_se)
    samples = [torch.from_numpy(np.ascontiguousarray(calibration[i:i + 1])) for i in range(len(calibration))]
    if tool == "nncf":
        import nncf
        from nncf.experimental.torch.fx import quantize_pt2e
        from nncf.quantization.range_estimator import RangeEstimatorParametersSet

        # NNCF's default activation ranges average each image's min and max, which clipped
        # outlier images: on a trained B0 the worst image's logit cosine was 0.90, against
        # 0.99 with histogram ranges.
        with _without_overflow_fix():
            quantized = quantize_pt2e(module, quantizer, nncf.Dataset(samples), subset_size=len(samples),
                                      fast_bias_correction=True if bias_correction else None, smooth_quant=False,
                                      activations_range_estimator_params=RangeEstimatorParametersSet.HISTOGRAM)
    elif tool == "torchao":
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

        prepared = prepare_pt2e(module, quantizer)
        for sample in samples:
            prepared(sample)
        quantized = convert_pt2e(prepared)
    else:
        raise ValueError(f"invalid quantization tool {tool!r}: use one of {', '.join(QUANTIZATION_TOOLS)}")
    return quantized


@contextlib.contextmanager
def _without_overflow_fix():
    """Give the first conv the full int8 weight range [-127, 127] in NNCF's `quantize_pt2e`.

    NNCF (3.4.0) quantizes the weights of the first conv after each input to [-64, 64], its
    overflow fix for x86 CPUs whose int8 multiply-add (`pmaddubsw`) saturates at 16 bits. The
    .pte runs in XNNPACK, whose int8 weights use the narrow range [-127, 127], so the fix would
    only cost the first conv one bit of precision. `quantize_pt2e` has no parameter for it, so
    the method that picks the layers to fix returns none while this context is active.
    """
    from nncf.quantization.algorithms.min_max.algorithm import MinMaxQuantization

    original = MinMaxQuantization._get_quantization_points_overflow_fix
    MinMaxQuantization._get_quantization_points_overflow_fix = lambda self, overflow_fix, points, graph: set()
    try:
        yield
    finally:
        MinMaxQuantization._get_quantization_points_overflow_fix = original


def _xnnpack_quantizer(float_classifier: bool = True, int8_silu_se: bool = True):
    """Build ExecuTorch's XNNPACKQuantizer with added patterns: conv followed by ReLU6, and SiLU and SE ops.

    The stock quantizer (executorch 1.5.1) fuses only ReLU into a conv. Before a ReLU6
    (`hardtanh(0, 6)`) it quantizes the raw conv output, whose range is far wider than [0, 6],
    and then quantizes again after the clamp. Annotating the pair as one op quantizes only the
    clamped output, and XnnpackPartitioner fuses the clamp into the int8 conv. On the released
    Lite0 checkpoint at 224 px this raised the logits' cosine to float from 0.87 to 0.99.
    With `float_classifier`, the classifier stays float (see `_keep_classifier_float`).
    With `int8_silu_se`, SiLU becomes `x * sigmoid(x)` before annotation, and each sigmoid and
    each global average pool gets int8 input and output (see `_annotate_silu_se`).
    """
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (XNNPACKQuantizer,
                                                                         get_symmetric_quantization_config)

    class ConvClampXNNPACKQuantizer(XNNPACKQuantizer):
        def transform_for_annotation(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
            if int8_silu_se:
                _decompose_silu(model)
            return super().transform_for_annotation(model)

        def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
            _annotate_conv_hardtanh(model, self.global_config)
            if int8_silu_se:
                _annotate_silu_se(model, self.global_config)
            _annotate_zero_pads(model, self.global_config)
            model = super().annotate(model)
            if float_classifier:
                _keep_classifier_float(model)
            return model

    return ConvClampXNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))


def _decompose_silu(model: torch.fx.GraphModule) -> None:
    """Replace each `silu(x)` with `x * sigmoid(x)`, in place, so that both ops can be annotated.

    `to_edge` decomposes SiLU the same way before XnnpackPartitioner runs, so an annotation
    on the `silu` node itself would quantize only its input and output and leave the sigmoid
    and the multiply between them in float.
    """
    graph = model.graph
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target not in (torch.ops.aten.silu.default, torch.ops.aten.silu_.default):
            continue
        source = node.args[0]
        with graph.inserting_before(node):
            gate = graph.call_function(torch.ops.aten.sigmoid.default, (source,))
            product = graph.call_function(torch.ops.aten.mul.Tensor, (source, gate))
        gate.meta = dict(node.meta)
        product.meta = dict(node.meta)
        node.replace_all_uses_with(product)
        graph.erase_node(node)
    model.recompile()


def _annotate_silu_se(model: torch.fx.GraphModule, config) -> None:
    """Annotate each sigmoid and each global average pool (`mean` over H and W) with int8 input and output.

    The stock quantizer annotates neither, so in the .pte they computed in fp32 with int8/fp32
    conversions around them: on B0, 65 sigmoids and the 49 SiLU multiplies that take their
    output, and 17 pools. The multiplies already have an int8 annotation, which takes effect
    once both of their inputs are int8. The outputs get the ordinary activation spec, whose
    range NNCF calibrates: NNCF's `quantize_pt2e` (nncf 3.4.0) raises on any spec other than
    `QuantizationSpec` and `SharedQuantizationSpec`, a fixed-range sigmoid spec included.
    """
    from torchao.quantization.pt2e.quantizer import (QuantizationAnnotation, get_input_act_qspec,
                                                     get_output_act_qspec)
    from torchao.quantization.pt2e.quantizer.quantizer import Q_ANNOTATION_KEY

    for node in model.graph.nodes:
        if node.op != "call_function" or not (node.target == torch.ops.aten.sigmoid.default or _is_global_pool(node)):
            continue
        source = node.args[0]
        if Q_ANNOTATION_KEY in node.meta and node.meta[Q_ANNOTATION_KEY]._annotated:
            continue
        value = source.meta.get("val") if isinstance(source, torch.fx.Node) else None
        if value is None or value.dtype != torch.float32:
            continue
        node.meta[Q_ANNOTATION_KEY] = QuantizationAnnotation(input_qspec_map={source: get_input_act_qspec(config)},
                                                             output_qspec=get_output_act_qspec(config),
                                                             _annotated=True)


_PAD_OPS = (torch.ops.aten.pad.default, torch.ops.aten.constant_pad_nd.default)


def _annotate_zero_pads(model: torch.fx.GraphModule, config) -> None:
    """Annotate each zero pad (TensorFlow SAME padding before a strided conv) to run in int8.

    The pad's output shares its input's scale and zero point, so the pad only copies int8 values
    and writes the zero point. The stock quantizer leaves these pads unannotated: on Lite0 the five
    pads ran in fp32 inside the delegate between int8/fp32 conversions, on the largest feature
    maps. `xnnpack_partitioner()` accepts the int8 pad.
    """
    from torchao.quantization.pt2e.quantizer import (QuantizationAnnotation, SharedQuantizationSpec,
                                                     get_input_act_qspec)
    from torchao.quantization.pt2e.quantizer.quantizer import Q_ANNOTATION_KEY

    for node in model.graph.nodes:
        if node.op != "call_function" or node.target not in _PAD_OPS:
            continue
        if Q_ANNOTATION_KEY in node.meta and node.meta[Q_ANNOTATION_KEY]._annotated:
            continue
        if node.target == torch.ops.aten.pad.default:  # pad(input, pad, mode="constant", value=None)
            mode = node.args[2] if len(node.args) > 2 else node.kwargs.get("mode", "constant")
            value = node.args[3] if len(node.args) > 3 else node.kwargs.get("value")
        else:  # constant_pad_nd(input, pad, value=0)
            mode = "constant"
            value = node.args[2] if len(node.args) > 2 else node.kwargs.get("value", 0)
        if mode != "constant" or value not in (None, 0):
            continue
        source = node.args[0]
        source_value = source.meta.get("val") if isinstance(source, torch.fx.Node) else None
        if source_value is None or source_value.dtype != torch.float32:
            continue
        node.meta[Q_ANNOTATION_KEY] = QuantizationAnnotation(
            input_qspec_map={source: get_input_act_qspec(config)},
            output_qspec=SharedQuantizationSpec((source, node)), _annotated=True)


def _is_global_pool(node: torch.fx.Node) -> bool:
    """Check whether `node` is `mean` over H and W of an NCHW tensor with keepdim: an XNNPACK global pool."""
    if node.target != torch.ops.aten.mean.dim or node.kwargs.get("dtype") is not None:
        return False
    source = node.args[0]
    value = source.meta.get("val") if isinstance(source, torch.fx.Node) else None
    keepdim = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
    return value is not None and value.dim() == 4 and bool(keepdim) and sorted(d % 4 for d in node.args[1]) == [2, 3]


def xnnpack_partitioner():
    """Build XnnpackPartitioner with an int8 sigmoid and an int8 constant pad; the other configs are the defaults.

    ExecuTorch 1.5.1's SigmoidConfig allows only fp32, so a quantized sigmoid became an fp32
    XNNPACK sigmoid between two conversions. The replacement also takes the dequantize →
    sigmoid → quantize pattern as one int8 sigmoid. Older XNNPACK releases accepted only an
    output scale of 1/256 and zero point -128 for it, but the XNNPACK in executorch 1.5.1 ran
    calibrated output parameters (scale 0.01, zero point 20, for example) and matched the
    quantized PyTorch graph exactly. ConstantPadConfig allows only fp32 too; its replacement takes
    the int8 zero pads that `_annotate_zero_pads` writes. FP32 graphs lower as with the stock configs.
    """
    from executorch.backends.xnnpack.partition.config import ALL_PARTITIONER_CONFIGS
    from executorch.backends.xnnpack.partition.config.generic_node_configs import ConstantPadConfig, SigmoidConfig
    from executorch.backends.xnnpack.partition.config.xnnpack_config import ConfigPrecisionType
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner

    class Int8SigmoidConfig(SigmoidConfig):
        def supported_precision_types(self):
            return [ConfigPrecisionType.FP32, ConfigPrecisionType.STATIC_QUANT]

    class Int8ConstantPadConfig(ConstantPadConfig):
        def supported_precision_types(self):
            return [ConfigPrecisionType.FP32, ConfigPrecisionType.STATIC_QUANT]

    replaced = {SigmoidConfig: Int8SigmoidConfig, ConstantPadConfig: Int8ConstantPadConfig}
    configs = [replaced.get(config, config) for config in ALL_PARTITIONER_CONFIGS]
    return XnnpackPartitioner(configs=configs)


def _keep_classifier_float(model: torch.fx.GraphModule) -> None:
    """Remove the quantization annotations of the linear layer that writes the model's logits.

    Int8 logits have 256 levels, which flip top-1 on images whose two best classes are close.
    The classifier then runs as one fp32 fully connected node inside the XNNPACK delegate, on
    the dequantized pooled features: 1.3M of Lite0's 0.4G multiply-adds. On the released Lite0
    checkpoint it raised top-1 agreement with float on the 78 bundled photos from 70 to 71.
    """
    from torchao.quantization.pt2e.quantizer.quantizer import Q_ANNOTATION_KEY

    output = next(node for node in model.graph.nodes if node.op == "output")
    logits = output.args[0]
    if isinstance(logits, (tuple, list)):
        logits = logits[0] if len(logits) == 1 else None
    if not isinstance(logits, torch.fx.Node) or logits.target != torch.ops.aten.linear.default:
        return
    logits.meta.pop(Q_ANNOTATION_KEY, None)
    for weight_or_bias in logits.args[1:]:
        if isinstance(weight_or_bias, torch.fx.Node):
            weight_or_bias.meta.pop(Q_ANNOTATION_KEY, None)


def _annotate_conv_hardtanh(model: torch.fx.GraphModule, config) -> None:
    """Annotate each conv whose only user is a hardtanh as one quantized op, like conv + ReLU.

    The stock conv annotator skips nodes that are already annotated, so it leaves these alone.
    """
    from torchao.quantization.pt2e.quantizer import (QuantizationAnnotation, get_bias_qspec,
                                                     get_input_act_qspec, get_output_act_qspec,
                                                     get_weight_qspec)
    from torchao.quantization.pt2e.quantizer.quantizer import Q_ANNOTATION_KEY

    conv_ops = (torch.ops.aten.conv1d.default, torch.ops.aten.conv2d.default)
    for clamp in model.graph.nodes:
        if clamp.op != "call_function" or clamp.target != torch.ops.aten.hardtanh.default:
            continue
        conv = clamp.args[0]
        if not isinstance(conv, torch.fx.Node) or conv.target not in conv_ops or len(conv.users) != 1:
            continue
        pattern = [conv, clamp, conv.args[1]]
        input_specs = {conv.args[0]: get_input_act_qspec(config), conv.args[1]: get_weight_qspec(config)}
        bias = conv.args[2] if len(conv.args) > 2 else None
        if isinstance(bias, torch.fx.Node):
            input_specs[bias] = get_bias_qspec(config)
            pattern.append(bias)
        if any(Q_ANNOTATION_KEY in node.meta and node.meta[Q_ANNOTATION_KEY]._annotated for node in pattern):
            continue
        conv.meta[Q_ANNOTATION_KEY] = QuantizationAnnotation(input_qspec_map=input_specs, _annotated=True)
        clamp.meta[Q_ANNOTATION_KEY] = QuantizationAnnotation(output_qspec=get_output_act_qspec(config),
                                                              _annotated=True)
        for node in pattern[2:]:
            node.meta.setdefault(Q_ANNOTATION_KEY, QuantizationAnnotation())._annotated = True


def _int8_scheme(calibration_count: int) -> dict:
    return {
        "tool": f"nncf {version('nncf')} quantize_pt2e + XNNPACKQuantizer (executorch {version('executorch')})",
        "scheme": "static post-training",
        "per_channel": True,
        "weight_dtype": "int8",
        "weight_scheme": "per-channel symmetric",
        "activation_dtype": "int8",
        "activation_scheme": "per-tensor affine",
        "extra_patterns": ["conv + hardtanh (ReLU6) quantized as one op",
                           "SiLU as x * sigmoid(x), with the sigmoid and its multiply in int8",
                           "squeeze-and-excitation sigmoid and global average pools in int8"],
        "float_ops": ["the classifier (linear layer writing the logits)"],
        "activation_ranges": "histogram",
        "bias_correction": "fast",
        "smooth_quant": False,
        "calibration_count": calibration_count,
    }


def describe_delegation(program: torch.export.ExportedProgram) -> dict:
    """Count delegate calls, the ops inside XNNPACK delegates and the ops left outside them.

    `ops_in_delegate` and `ops_outside_delegate` count edge-dialect ops by name.
    `xnnpack_nodes` counts the nodes of the serialized XNNPACK graphs by node type and output
    datatype. For a quantized program, `float_ops_in_delegate` lists the XNNPACK nodes that
    compute in float (the classifier that `_keep_classifier_float` keeps, or ops without int8
    annotations) and `converts_in_delegate` counts the int8/float conversions around them.
    Both are empty for FP32 programs.
    """
    delegate_calls = 0
    outside: collections.Counter[str] = collections.Counter()
    inside: collections.Counter[str] = collections.Counter()
    xnnpack_nodes: collections.Counter[tuple[str, str]] = collections.Counter()

    for node in program.graph.nodes:
        if node.op != "call_function":
            continue
        name = _op_name(node)
        if name == "executorch_call_delegate":
            delegate_calls += 1
        elif name != "getitem":
            outside[name] += 1

    for _, lowered in program.graph_module.named_children():
        original = getattr(lowered, "original_module", None)
        if original is None:
            continue
        for node in original.graph.nodes:
            name = _op_name(node)
            if node.op == "call_function" and name != "getitem":
                inside[name] += 1
        if lowered.backend_id == "XnnpackBackend":
            xnnpack_nodes.update(_xnnpack_graph_nodes(bytes(lowered.processed_bytes)))

    quantized = any(dtype != "fp32" for _, dtype in xnnpack_nodes)
    float_ops: collections.Counter[str] = collections.Counter()
    converts = 0
    for (node_type, dtype), count in xnnpack_nodes.items():
        if node_type == "XNNConvert":
            converts += count
        elif dtype in ("fp32", "fp16"):
            float_ops[node_type] += count

    return {
        "delegate_calls": delegate_calls,
        "fully_delegated": delegate_calls >= 1 and not outside,
        "ops_in_delegate": dict(sorted(inside.items())),
        "ops_outside_delegate": dict(sorted(outside.items())),
        "xnnpack_nodes": {f"{node_type} {dtype}": count for (node_type, dtype), count in sorted(xnnpack_nodes.items())},
        "float_ops_in_delegate": dict(sorted(float_ops.items())) if quantized else {},
        "converts_in_delegate": converts if quantized else 0,
    }


def _op_name(node: torch.fx.Node) -> str:
    return getattr(node.target, "__name__", str(node.target))


def _xnnpack_graph_nodes(payload: bytes) -> collections.Counter[tuple[str, str]]:
    """Count the nodes of one serialized XNNPACK delegate by node type and output datatype.

    The payload is an XNNPACK header, an XNNGraph FlatBuffer and constant data. flatc, which
    ExecuTorch ships, turns the FlatBuffer into JSON with the schema in the XNNPACK backend.
    """
    import importlib.resources
    import json
    import tempfile
    from pathlib import Path

    from executorch.backends.xnnpack.serialization.xnnpack_graph_serialize import XNNHeader
    from executorch.exir._serialize._flatbuffer import _run_flatc

    header = XNNHeader.from_bytes(payload[:XNNHeader.EXPECTED_LENGTH])
    graph_bytes = payload[header.flatbuffer_offset:header.flatbuffer_offset + header.flatbuffer_size]
    schema = importlib.resources.files("executorch.backends.xnnpack.serialization") / "schema.fbs"
    with tempfile.TemporaryDirectory() as folder, importlib.resources.as_file(schema) as schema_path:
        binary = Path(folder) / "graph.bin"
        binary.write_bytes(graph_bytes)
        _run_flatc(["--json", "--raw-binary", "--strict-json", "--defaults-json", "-o", folder,
                    str(schema_path), "--", str(binary)])
        graph = json.loads((Path(folder) / "graph.json").read_text())

    datatypes = {}
    for value in graph["xvalues"]:
        union = value["xvalue_union"]
        tensor = union.get("tensor_value", union)
        datatypes[tensor["id_out"]] = tensor["datatype"].removeprefix("xnn_datatype_")
    counts: collections.Counter[tuple[str, str]] = collections.Counter()
    for node in graph["xnodes"]:
        output = node["xnode_union"].get("output_id")
        counts[node["xnode_union_type"], datatypes.get(output, "unknown")] += 1
    return counts
