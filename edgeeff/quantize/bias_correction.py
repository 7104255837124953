"""NNCF bias correction, computed once on ONNX and carried into the PyTorch model.

NNCF corrects each Conv and Gemm bias so that the per-channel mean of the INT8 layer output
matches float on the calibration images. NNCF computes this on an ONNX graph with BatchNorm
folded into the convs. This module maps each corrected bias back onto edgeeff's modules (the
BatchNorm shift for conv + BatchNorm, the bias itself for SE convs and the classifier), so the
TFLite quantizer, which has no bias correction of its own, starts from the corrected model.
"""

from __future__ import annotations

import copy
import logging
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgeeff.models.efficientnet import ConvBNAct

log = logging.getLogger(__name__)


def _layers_in_execution_order(model: nn.Module, resolution: int) -> list[nn.Module]:
    """Return the conv-like layers (ConvBNAct, plain Conv2d, Linear) in the order forward runs them."""
    order: list[nn.Module] = []
    inside_conv_bn = {id(m.conv) for m in model.modules() if isinstance(m, ConvBNAct)}
    hooks = []
    for module in model.modules():
        if isinstance(module, ConvBNAct) or isinstance(module, nn.Linear) or (
                isinstance(module, nn.Conv2d) and id(module) not in inside_conv_bn):
            hooks.append(module.register_forward_pre_hook(lambda m, _args: order.append(m)))
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, resolution, resolution))
    finally:
        for hook in hooks:
            hook.remove()
    return order


def _onnx_biases(model) -> list[np.ndarray | None]:
    from onnx import numpy_helper

    initializers = {i.name: i for i in model.graph.initializer}
    biases = []
    for node in model.graph.node:
        if node.op_type in ("Conv", "Gemm"):
            name = node.input[2] if len(node.input) > 2 else None
            biases.append(numpy_helper.to_array(initializers[name]) if name in initializers else None)
    return biases


def bias_corrected_model(model: nn.Module, resolution: int, calibration: np.ndarray) -> tuple[nn.Module, int]:
    """Return a copy of `model` with NNCF's corrected biases, and the number of layers changed.

    When the ONNX graph's conv layers do not line up one to one with the model's, the model is
    returned unchanged with 0, and a warning is logged.
    """
    import onnx

    from edgeeff.export.onnx import _export_float, nncf_bias_correction

    with tempfile.TemporaryDirectory(prefix="edgeeff-bias-") as work:
        float_path = Path(work) / "float.onnx"
        _export_float(model, resolution, float_path)
        original = onnx.load(str(float_path))
        corrected, _ = nncf_bias_correction(original, calibration)
    before, after = _onnx_biases(original), _onnx_biases(corrected)
    layers = _layers_in_execution_order(model, resolution)
    if len(layers) != len(before):
        log.warning("bias correction skipped: %d ONNX Conv/Gemm nodes for %d model layers", len(before), len(layers))
        return model, 0

    result = copy.deepcopy(model)
    result_layers = _layers_in_execution_order(result, resolution)
    applied = 0
    for layer, old, new in zip(result_layers, before, after):
        if old is None or new is None or np.array_equal(old, new):
            continue
        delta = torch.from_numpy((new - old).astype(np.float32))
        # A folded conv + BatchNorm has bias beta - gamma * mean / sqrt(var + eps): a shift of the
        # folded bias is the same shift of beta.
        target = layer.bn.bias if isinstance(layer, ConvBNAct) else layer.bias
        if target is None or target.shape != delta.shape:
            log.warning("bias correction skipped: layer %s does not match its ONNX node", layer)
            return model, 0
        with torch.no_grad():
            target.add_(delta)
        applied += 1
    return result.eval(), applied
