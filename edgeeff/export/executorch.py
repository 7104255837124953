"""Export to an ExecuTorch program (.pte) with the whole graph delegated to XNNPACK.

FP32: `torch.export` → `to_edge_transform_and_lower` with `XnnpackPartitioner` → `to_executorch`.
INT8: the same after NNCF's PT2E post-training quantization with ExecuTorch's `XNNPACKQuantizer`
(int8 per-channel symmetric weights, int8 per-tensor affine activations, fast bias correction).

Versions this was written against: torch 2.13.0, executorch 1.5.1, nncf 3.4.0, torchao 0.18.0.
"""

from __future__ import annotations

import collections
from importlib.metadata import version

import numpy as np
import torch

from edgeeff.export.base import ExportDetails, ExportRequest, example_input

QUANTIZATION_TOOLS = ("nncf", "torchao")

_QUANTIZE_OPS = frozenset({
    "quantized_decomposed.quantize_per_tensor.default",
    "quantized_decomposed.quantize_per_tensor.tensor",
    "quantized_decomposed.quantize_per_channel.default",
})
_DEQUANTIZE_OPS = frozenset({
    "quantized_decomposed.dequantize_per_tensor.default",
    "quantized_decomposed.dequantize_per_tensor.tensor",
    "quantized_decomposed.dequantize_per_channel.default",
})


def export_executorch(request: ExportRequest) -> ExportDetails:
    """Write `request.model` as an XNNPACK-delegated ExecuTorch program to `request.path`."""
    from executorch.backends.xnnpack.partition.xnnpack_partitioner import XnnpackPartitioner
    from executorch.exir import to_edge_transform_and_lower

    program = capture_program(request)
    with torch.no_grad():
        edge = to_edge_transform_and_lower(program, partitioner=[XnnpackPartitioner()])
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
            module = quantize_for_xnnpack(program.module(), request.calibration)
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
        raise ValueError(f"calibration array has shape {tuple(calibration.shape)}, expected (N, {', '.join(map(str, expected))}); "
                         f"preprocess the images at {request.resolution} px in NCHW order")
    if calibration.dtype != np.float32:
        raise ValueError(f"calibration array has dtype {calibration.dtype}, expected float32; convert it with astype(np.float32)")


def _keep_global_pool_dims(program: torch.export.ExportedProgram) -> None:
    """Rewrite `x.mean((2, 3))` on NCHW tensors as `x.mean((2, 3), keepdim=True).view(N, C)`, in place.

    XnnpackPartitioner (executorch 1.5.1) delegates `mean.dim` only with keepdim=True, so the
    classifier's global pool would otherwise run outside the delegate and split it in two. The
    rewrite computes the same values in the same order.
    """
    graph = program.graph
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target != torch.ops.aten.mean.dim:
            continue
        source, dims = node.args[0], node.args[1]
        keepdim = node.args[2] if len(node.args) > 2 else node.kwargs.get("keepdim", False)
        pooled = node.meta.get("val")
        source_value = source.meta.get("val")
        if keepdim or node.kwargs.get("dtype") is not None or source_value is None or source_value.dim() != 4:
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


def quantize_for_xnnpack(module: torch.fx.GraphModule, calibration: np.ndarray,
                         tool: str = "nncf") -> torch.fx.GraphModule:
    """Quantize an exported module for XNNPACK: int8 per-channel symmetric weights, int8 activations.

    `module` comes from `torch.export.export(...).module()` and is changed in place. `calibration`
    is a float32 NCHW array, fed one image at a time because the graph has a static batch of 1.
    `tool="nncf"` runs NNCF's `quantize_pt2e` with fast bias correction; `tool="torchao"` runs
    plain PT2E prepare, calibrate and convert, kept to compare the two.
    """
    quantizer = _xnnpack_quantizer()
    samples = [torch.from_numpy(np.ascontiguousarray(calibration[i:i + 1])) for i in range(len(calibration))]
    if tool == "nncf":
        import nncf
        from nncf.experimental.torch.fx import quantize_pt2e

        return quantize_pt2e(module, quantizer, nncf.Dataset(samples), subset_size=len(samples),
                             fast_bias_correction=True, smooth_quant=False)
    if tool == "torchao":
        from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

        prepared = prepare_pt2e(module, quantizer)
        for sample in samples:
            prepared(sample)
        return convert_pt2e(prepared)
    raise ValueError(f"invalid quantization tool {tool!r}: use one of {', '.join(QUANTIZATION_TOOLS)}")


def _xnnpack_quantizer():
    """Build ExecuTorch's XNNPACKQuantizer with one added pattern: conv followed by ReLU6.

    The stock quantizer (executorch 1.5.1) fuses only ReLU into a conv. Before a ReLU6
    (`hardtanh(0, 6)`) it quantizes the raw conv output, whose range is far wider than [0, 6],
    and then quantizes again after the clamp, which cost EfficientNet-Lite most of its int8
    accuracy. Annotating the pair as one op quantizes only the clamped output, and
    XnnpackPartitioner fuses the clamp into the int8 conv.
    """
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (XNNPACKQuantizer,
                                                                         get_symmetric_quantization_config)

    class ConvClampXNNPACKQuantizer(XNNPACKQuantizer):
        def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
            _annotate_conv_hardtanh(model, self.global_config)
            return super().annotate(model)

    return ConvClampXNNPACKQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True))


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
        "extra_patterns": ["conv + hardtanh (ReLU6) quantized as one op"],
        "bias_correction": "fast",
        "smooth_quant": False,
        "calibration_count": calibration_count,
    }


def describe_delegation(program: torch.export.ExportedProgram) -> dict:
    """Count delegate calls, the ops inside XNNPACK delegates and the ops left outside them.

    `float_ops_in_delegate` lists, for a quantized program, the ops inside a delegate that
    XNNPACK runs in float: ops it has no int8 kernel for (sigmoid, for example), and ops the
    quantizer left without quantize/dequantize nodes around them. It is empty for FP32 programs.
    """
    delegate_calls = 0
    outside: collections.Counter[str] = collections.Counter()
    inside: collections.Counter[str] = collections.Counter()
    float_inside: collections.Counter[str] = collections.Counter()
    quantized = False
    int8_kernels = _xnnpack_int8_kernels()

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
        user_inputs = set(original.graph_signature.user_inputs)
        for node in original.graph.nodes:
            if node.op != "call_function":
                continue
            name = _op_name(node)
            if name in _QUANTIZE_OPS or name in _DEQUANTIZE_OPS:
                quantized = True
                continue
            if name == "getitem":
                continue
            inside[name] += 1
            if not _runs_int8(node, user_inputs, int8_kernels):
                float_inside[name] += 1

    return {
        "delegate_calls": delegate_calls,
        "fully_delegated": delegate_calls >= 1 and not outside,
        "ops_in_delegate": dict(sorted(inside.items())),
        "ops_outside_delegate": dict(sorted(outside.items())),
        "float_ops_in_delegate": dict(sorted(float_inside.items())) if quantized else {},
    }


def _op_name(node: torch.fx.Node) -> str:
    return getattr(node.target, "__name__", str(node.target))


def _xnnpack_int8_kernels() -> dict[str, list[str]]:
    """Map each op that XnnpackPartitioner lowers as static int8 to the activations it fuses.

    Keys drop the namespace ("convolution.default"), as the partitioner configs name them.
    """
    from executorch.backends.xnnpack.partition.config import ALL_PARTITIONER_CONFIGS
    from executorch.backends.xnnpack.partition.config.xnnpack_config import ConfigPrecisionType

    kernels = {}
    for config_class in ALL_PARTITIONER_CONFIGS:
        config = config_class()
        if ConfigPrecisionType.STATIC_QUANT in config.supported_precision_types():
            kernels[config.target_name] = list(getattr(config, "fused_acts", None) or [])
    return kernels


def _runs_int8(node: torch.fx.Node, user_inputs: set[str], int8_kernels: dict[str, list[str]]) -> bool:
    """Tell whether XNNPACK runs a delegated node as an int8 op.

    That takes an int8 kernel for the op, dequantized activations in, and quantize nodes out,
    or one activation that XNNPACK fuses into the op (a conv followed by ReLU6, for example)
    and that feeds quantize nodes. Such a fused activation counts as int8 too.
    """
    short_name = _op_name(node).split(".", 1)[-1]
    activations = [arg for arg in node.all_input_nodes if arg.op != "placeholder" or arg.name in user_inputs]
    if len(activations) == 1 and activations[0].op == "call_function":
        producer = activations[0]
        producer_name = _op_name(producer).split(".", 1)[-1]
        if short_name in int8_kernels.get(producer_name, []) and _feeds_quantize(node):
            return _runs_int8(producer, user_inputs, int8_kernels)
    if short_name not in int8_kernels or not activations:
        return False
    if not all(_op_name(arg) in _DEQUANTIZE_OPS for arg in activations):
        return False
    if _feeds_quantize(node):
        return True
    users = list(node.users)
    return (len(users) == 1 and _op_name(users[0]).split(".", 1)[-1] in int8_kernels[short_name]
            and _feeds_quantize(users[0]))


def _feeds_quantize(node: torch.fx.Node) -> bool:
    return bool(node.users) and all(_op_name(user) in _QUANTIZE_OPS for user in node.users)
