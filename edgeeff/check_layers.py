"""Per-layer error of an INT8 artifact against its float twin, from the runtime's intermediate tensors.

The INT8 artifact runs beside an FP32 graph of the same model in the same runtime, and every
intermediate tensor that both graphs name alike is compared. The error is the signal-to-
quantization-noise ratio (SQNR, in dB: 10·log10(Σ float² / Σ (float − int8)²)) accumulated up to
that tensor. The layers to fix are those where the SQNR falls most between an op's inputs and
its output (`added_db`), not merely the deepest ones, where all earlier error has piled up.

Supported:
- .tflite: ai-edge-quantizer rewrites the FP32 flatbuffer in place, so the INT8 model keeps the
  FP32 model's tensor indices and names (checked before comparing). The FP32 twin is an FP32
  .tflite artifact of the same checkpoint when the gate has one, else a fresh conversion.
- .onnx: QDQ models keep the float tensor names at the inputs of QuantizeLinear nodes. The FP32
  twin is an FP32 .onnx artifact of the same checkpoint when the gate has one, else a fresh
  export.
- .pte: the XNNPACK delegate exposes no intermediate tensors, so there is no per-layer view.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

DEFAULT_TOP = 8


def sqnr_db(reference: np.ndarray, approximation: np.ndarray) -> float:
    """Return 10·log10(signal power / error power); inf when the two are identical."""
    reference = reference.astype(np.float64)
    noise = float(((reference - approximation.astype(np.float64)) ** 2).sum())
    signal = float((reference ** 2).sum())
    if noise == 0.0:
        return float("inf")
    if signal == 0.0:
        return float("-inf")
    return 10.0 * np.log10(signal / noise)


def module_path(tensor_name: str) -> str:
    """Shorten a converter's tensor name to the PyTorch module path it came from.

    litert-torch names tensors after the module stack, e.g.
    `...EfficientNet/torch.nn.modules.container.Sequential_blocks/...MBConv_15/...ConvBNAct_project/
    torch.nn.modules.batchnorm.BatchNorm2d_bn;;...`, which becomes `blocks.15.project.bn`.
    Names in another form are returned unchanged.
    """
    first = tensor_name.split(";;")[0]
    first = re.sub(r";\d*$", "", first)
    if "/" not in first and "." not in first:
        return tensor_name
    parts = []
    for segment in first.split("/"):
        class_and_attribute = segment.rsplit(".", 1)[-1]
        _, separator, attribute = class_and_attribute.partition("_")
        if separator:
            parts.append(attribute)
    return ".".join(parts) if parts else tensor_name


def _rank(layers: list[dict], top: int) -> dict:
    finite = [layer for layer in layers if np.isfinite(layer["sqnr_db"])]
    by_added = sorted((layer for layer in finite if layer.get("added_db") is not None),
                      key=lambda layer: -layer["added_db"])
    by_sqnr = sorted(finite, key=lambda layer: layer["sqnr_db"])
    return {"layers_compared": len(layers), "largest_added_error": by_added[:top], "lowest_sqnr": by_sqnr[:top]}


def tflite_layer_errors(int8_path: Path, float_model: bytes | Path, images: np.ndarray, top: int = DEFAULT_TOP) -> dict:
    """Compare every op output of an INT8 .tflite with the FP32 .tflite it was quantized from."""
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    def interpreter(source: bytes | Path):
        # Without the default XNNPACK delegate every op runs as a builtin kernel and keeps its
        # output tensor. A delegate computes a whole subgraph and leaves the tensors inside unset.
        options = {"experimental_preserve_all_tensors": True,
                   "experimental_op_resolver_type": OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES}
        if isinstance(source, (bytes, bytearray)):
            result = Interpreter(model_content=bytes(source), **options)
        else:
            result = Interpreter(model_path=str(source), **options)
        result.allocate_tensors()
        return result

    quantized, reference = interpreter(int8_path), interpreter(float_model)
    q_tensors, f_tensors = quantized.get_tensor_details(), reference.get_tensor_details()
    q_names = [t["name"] for t in q_tensors]
    if q_names != [t["name"] for t in f_tensors]:
        raise ValueError(f"{Path(int8_path).name} and its FP32 twin have different tensors "
                         f"({len(q_tensors)} vs {len(f_tensors)}); they came from different converter versions")
    ops = quantized._get_ops_details()  # the public API has no op list; this is the interpreter's own
    outputs = {int(index): op for op in ops for index in op["outputs"]}
    q_input, f_input = quantized.get_input_details()[0], reference.get_input_details()[0]

    sums: dict[int, list[float]] = {}
    for image in images:
        batch = image[None].astype(np.float32)
        if tuple(f_input["shape"])[1] != 3:  # an NHWC model
            batch = batch.transpose(0, 2, 3, 1)
        reference.set_tensor(f_input["index"], np.ascontiguousarray(batch))
        quantized.set_tensor(q_input["index"], _quantize(batch, q_input))
        reference.invoke()
        quantized.invoke()
        for index in list(outputs) + [int(q_input["index"])]:
            expected = reference.get_tensor(index).astype(np.float64)
            actual = _dequantize(quantized.get_tensor(index), q_tensors[index])
            if actual is None or actual.shape != expected.shape:
                continue
            signal, noise = sums.setdefault(index, [0.0, 0.0])
            sums[index] = [signal + float((expected ** 2).sum()), noise + float(((expected - actual) ** 2).sum())]

    def sqnr(index: int) -> float | None:
        if index not in sums:
            return None
        signal, noise = sums[index]
        if noise == 0.0:
            return float("inf")
        return float(10.0 * np.log10(signal / noise)) if signal > 0 else float("-inf")

    layers = []
    for index, op in outputs.items():
        value = sqnr(index)
        if value is None:
            continue
        inputs = [sqnr(int(i)) for i in op["inputs"] if int(i) in sums]
        inputs = [v for v in inputs if v is not None and np.isfinite(v)]
        layers.append({"tensor": q_names[index], "layer": module_path(q_names[index]), "op": op["op_name"],
                       "sqnr_db": value, "added_db": (min(inputs) - value) if inputs and np.isfinite(value) else None})
    return {"runtime": "litert", "images": int(len(images)), **_rank(layers, top)}


def _quantize(batch: np.ndarray, detail: dict) -> np.ndarray:
    dtype = np.dtype(detail["dtype"])
    if dtype == np.float32:
        return np.ascontiguousarray(batch)
    scale, zero_point = detail["quantization"]
    info = np.iinfo(dtype)
    return np.clip(np.round(batch / np.float32(scale)) + zero_point, info.min, info.max).astype(dtype)


def _dequantize(tensor: np.ndarray, detail: dict) -> np.ndarray | None:
    """Return a tensor in float, or None when its quantization is not per-tensor (weights, biases)."""
    if tensor.dtype == np.float32:
        return tensor.astype(np.float64)
    params = detail.get("quantization_parameters", {})
    scales, zero_points = params.get("scales", np.array([])), params.get("zero_points", np.array([]))
    if len(scales) != 1:
        return None
    return (tensor.astype(np.float64) - float(zero_points[0])) * float(scales[0])


def onnx_module_path(node) -> str | None:
    """Return the PyTorch module path that torch.onnx's dynamo exporter records on a node, if any.

    The exporter stores the module stack as the node's "pkg.torch.onnx.name_scopes" metadata,
    e.g. "['', 'blocks', 'blocks.0', 'blocks.0.se', 'blocks.0.se.reduce', 'conv2d_2']", whose
    last entry is the op and the one before it the innermost module.
    """
    import ast

    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            try:
                scopes = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                return None
            modules = [scope for scope in scopes[:-1] if scope]
            return modules[-1] if modules else None
    return None


def onnx_layer_errors(int8_path: Path, float_path: Path, images: np.ndarray, top: int = DEFAULT_TOP) -> dict:
    """Compare the float tensors that enter QuantizeLinear nodes of a QDQ .onnx with the FP32 .onnx.

    Both graphs get every shared tensor name added as an output, so onnxruntime returns them.
    The INT8 graph's values are those computed from dequantized inputs, i.e. with all upstream
    quantization error.
    """
    import onnx
    import onnxruntime as ort

    quantized_model = onnx.load(str(int8_path))
    float_model = onnx.load(str(float_path))
    float_names = {name for node in float_model.graph.node for name in node.output}
    producers = {}
    for node in quantized_model.graph.node:
        for name in node.output:
            producers[name] = node
    consumers_of: dict[str, list] = {}
    for node in quantized_model.graph.node:
        for name in node.input:
            consumers_of.setdefault(name, []).append(node)
    # Float tensors that get quantized, produced by a compute op, and present in the FP32 graph.
    watched = []
    for node in quantized_model.graph.node:
        if node.op_type == "QuantizeLinear" and node.input[0] in float_names and node.input[0] in producers:
            watched.append(node.input[0])
    watched = list(dict.fromkeys(watched))
    if not watched:
        raise ValueError(f"{Path(int8_path).name} shares no quantized tensor names with {Path(float_path).name}; "
                         "it was not quantized from this FP32 graph")

    def session(model, names: list[str]):
        existing = {output.name for output in model.graph.output}
        for name in names:
            if name not in existing:
                model.graph.output.append(onnx.ValueInfoProto(name=name))
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        return ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])

    q_session, f_session = session(quantized_model, watched), session(float_model, watched)
    q_input, f_input = q_session.get_inputs()[0].name, f_session.get_inputs()[0].name
    sums = {name: [0.0, 0.0] for name in watched}
    for image in images:
        batch = image[None].astype(np.float32)
        q_values = dict(zip([o.name for o in q_session.get_outputs()], q_session.run(None, {q_input: batch})))
        f_values = dict(zip([o.name for o in f_session.get_outputs()], f_session.run(None, {f_input: batch})))
        for name in watched:
            expected, actual = f_values[name].astype(np.float64), q_values[name].astype(np.float64)
            if expected.shape != actual.shape:
                continue
            sums[name][0] += float((expected ** 2).sum())
            sums[name][1] += float(((expected - actual) ** 2).sum())

    def sqnr(name: str) -> float:
        signal, noise = sums[name]
        if noise == 0.0:
            return float("inf")
        return float(10.0 * np.log10(signal / noise)) if signal > 0 else float("-inf")

    def upstream(name: str) -> list[str]:
        """Return the watched tensors that feed the op producing `name`, through DequantizeLinear."""
        found = []
        for tensor in producers[name].input:
            source = producers.get(tensor)
            if source is not None and source.op_type == "DequantizeLinear":
                quantize = producers.get(source.input[0])
                if quantize is not None and quantize.op_type == "QuantizeLinear" and quantize.input[0] in sums:
                    found.append(quantize.input[0])
        return found

    scopes = {name: onnx_module_path(node) for node in float_model.graph.node for name in node.output}
    layers = []
    for name in watched:
        value = sqnr(name)
        inputs = [sqnr(source) for source in upstream(name)]
        inputs = [v for v in inputs if np.isfinite(v)]
        layer = scopes.get(name) or module_path(name)
        layers.append({"tensor": name, "layer": layer, "op": producers[name].op_type, "sqnr_db": value,
                       "added_db": (min(inputs) - value) if inputs and np.isfinite(value) else None})
    return {"runtime": "onnxruntime", "images": int(len(images)), **_rank(layers, top)}
