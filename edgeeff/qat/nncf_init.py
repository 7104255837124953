"""NNCF's post-training INT8 model as the starting point of QAT.

NNCF's `quantize_pt2e` quantizes the eval-mode graph exactly as the ExecuTorch INT8 export does
(XNNPACKQuantizer placement, histogram activation ranges, fast bias correction), folding
BatchNorm on the way. Its results move onto the QAT graph:

- every activation quantizer of the QAT graph takes the scale and zero point that NNCF chose
  for the same tensor. Tensors are matched by the module that produced them and the op. A conv
  and the BatchNorm after it count as one producer, because NNCF folds them;
- each corrected bias goes into the float model before the QAT graph is captured: into the
  BatchNorm shift for convs followed by BatchNorm, into the bias itself elsewhere.

So the QAT graph in eval mode starts where NNCF's PTQ model is, and fine-tuning starts from there.
"""

from __future__ import annotations

import contextlib
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from torch import nn

from edgeeff.qat.graph import QATModel, is_learned

_CONV_OPS = (torch.ops.aten.conv1d.default, torch.ops.aten.conv2d.default, torch.ops.aten.convolution.default)
_LINEAR = torch.ops.aten.linear.default
_BATCH_NORM = torch.ops.aten.batch_norm.default


@dataclass
class NNCFInitialization:
    """NNCF's PTQ result: activation scale and zero point per producer key, corrected bias per module.

    Keys read "blocks.3.expand:conv", the module path of the producer and the op kind. The
    model input is ":input".
    """

    activations: dict[str, tuple[float, int]]
    biases: dict[str, torch.Tensor]
    calibration_images: int
    nncf_version: str
    notes: list[str] = field(default_factory=list)

    def to_state(self) -> dict:
        return {"activations": {k: [float(s), int(z)] for k, (s, z) in self.activations.items()},
                "biases": self.biases, "calibration_images": self.calibration_images,
                "nncf_version": self.nncf_version,
                "notes": list(self.notes)}

    @classmethod
    def from_state(cls, state: dict) -> NNCFInitialization:
        return cls(activations={k: (float(s), int(z)) for k, (s, z) in state["activations"].items()},
                   biases=dict(state["biases"]), calibration_images=int(state["calibration_images"]),
                   nncf_version=str(state["nncf_version"]), notes=list(state.get("notes", [])))

    def save(self, path: str | Path) -> None:
        from edgeeff.io import atomic_path

        with atomic_path(path) as tmp:
            torch.save(self.to_state(), tmp)

    @classmethod
    def load(cls, path: str | Path) -> NNCFInitialization:
        return cls.from_state(torch.load(path, map_location="cpu", weights_only=True))


def _module_path(node: torch.fx.Node) -> str:
    stack = node.meta.get("nn_module_stack")
    if not stack:
        return ""
    return list(stack.values())[-1][0]


def producer_key(node: torch.fx.Node) -> str:
    """Name the tensor a node produces by module path and op kind, the same in the eval and QAT graphs."""
    if node.op == "placeholder":
        return ":input"
    path = _module_path(node)
    if node.target in _CONV_OPS or node.target == _BATCH_NORM:
        for suffix in (".conv", ".bn"):
            if path.endswith(suffix):
                path = path[: -len(suffix)]
        return f"{path}:conv"
    kind = getattr(node.target, "__name__", str(node.target)).split(".")[0]
    return f"{path}:{kind}"


def _bias_path(node: torch.fx.Node) -> str:
    path = _module_path(node)
    if node.target in _CONV_OPS and path.endswith(".conv"):
        return path[: -len(".conv")]
    return path


def _attribute(module: torch.fx.GraphModule, target: str) -> torch.Tensor:
    value = module
    for part in target.split("."):
        value = getattr(value, part)
    return value


def read_nncf_model(quantized: torch.fx.GraphModule) -> tuple[dict[str, tuple[float, int]], dict[str, torch.Tensor]]:
    """Read activation quantization parameters and conv/linear biases from NNCF's quantized graph."""
    import torchao.quantization.pt2e  # noqa: F401  (registers the quantized_decomposed ops)

    quantize_ops = (torch.ops.quantized_decomposed.quantize_per_tensor.default,
                    torch.ops.quantized_decomposed.quantize_per_tensor.tensor)
    activations: dict[str, tuple[float, int]] = {}
    for node in quantized.graph.nodes:
        if node.op != "call_function" or node.target not in quantize_ops:
            continue
        source = node.args[0]
        if isinstance(source, torch.fx.Node) and source.op == "get_attr":
            continue  # a weight or bias, not an activation
        scale, zero_point = node.args[1], node.args[2]
        if isinstance(scale, torch.fx.Node) or isinstance(zero_point, torch.fx.Node):
            scale, zero_point = _attribute(quantized, scale.target), _attribute(quantized, zero_point.target)
        activations.setdefault(producer_key(source), (float(scale), int(zero_point)))
    biases: dict[str, torch.Tensor] = {}
    for node in quantized.graph.nodes:
        if node.op != "call_function" or node.target not in (*_CONV_OPS, _LINEAR) or len(node.args) < 3:
            continue
        bias = node.args[2]
        if isinstance(bias, torch.fx.Node) and bias.op == "get_attr":
            biases[_bias_path(node)] = _attribute(quantized, bias.target).detach().clone().float()
    return activations, biases


def nncf_initialization(model: nn.Module, resolution: int,
                        calibration: np.ndarray) -> tuple[NNCFInitialization, torch.fx.GraphModule]:
    """Run NNCF's PTQ on `model` (eval mode, unchanged) and return its ranges, biases and INT8 graph.

    The quantization is the ExecuTorch INT8 export's (`quantize_for_xnnpack` with NNCF), so QAT
    starts from the model that `edgeeff export --int8` would ship, except that SiLU, the
    squeeze-and-excitation sigmoid and the global pools stay float as in the QAT graph.
    `calibration` is a float32 NCHW array. The returned graph takes any batch size, for
    measuring PTQ accuracy.
    """
    import nncf

    from edgeeff.export.executorch import quantize_for_xnnpack
    from edgeeff.qat.graph import capture_eval_graph

    if not logging.getLogger("edgeeff").isEnabledFor(logging.DEBUG):
        nncf.set_log_level(logging.ERROR)  # its import resets the level the CLI set; keep --verbose output
    graph = capture_eval_graph(model, resolution)
    with contextlib.redirect_stdout(sys.stderr):
        # The QAT graph quantizes the logits, so NNCF must choose their range too. Its quantizer
        # leaves SiLU, the sigmoid and the pools float, so NNCF must not add quantizers there.
        quantized = quantize_for_xnnpack(graph, np.ascontiguousarray(calibration, dtype=np.float32), tool="nncf",
                                         float_classifier=False, int8_silu_se=False)
    activations, biases = read_nncf_model(quantized)
    init = NNCFInitialization(activations=activations, biases=biases, calibration_images=len(calibration),
                              nncf_version=nncf.__version__)
    return init, quantized


@torch.no_grad()
def apply_biases(model: nn.Module, biases: dict[str, torch.Tensor]) -> int:
    """Write NNCF's corrected biases into the float model in place; return how many modules changed.

    For a conv followed by BatchNorm (the `ConvBNAct` module at the key's path), NNCF corrected
    the folded bias beta - gamma * mean / sqrt(var + eps), so the difference goes into beta.
    Modules with their own bias (squeeze-and-excitation convs, the classifier) take it as is.
    """
    modules = dict(model.named_modules())
    changed = 0
    for path, bias in biases.items():
        module = modules.get(path)
        if module is None:
            raise KeyError(f"NNCF corrected a bias of {path!r}, which the model does not have")
        norm = getattr(module, "bn", None)
        if isinstance(norm, nn.BatchNorm2d):
            folded = norm.bias - norm.weight * norm.running_mean / torch.sqrt(norm.running_var + norm.eps)
            delta = bias.to(folded) - folded
            norm.bias.add_(delta)
        elif getattr(module, "bias", None) is not None:
            delta = bias.to(module.bias) - module.bias
            module.bias.copy_(bias.to(module.bias))
        else:
            raise KeyError(f"NNCF corrected a bias of {path!r}, which has neither a bias nor a BatchNorm")
        changed += int(bool(delta.abs().max() > 0))
    return changed


def _range(scale: float, zero_point: int, quant_min: int, quant_max: int) -> tuple[float, float]:
    return (quant_min - zero_point) * scale, (quant_max - zero_point) * scale


@torch.no_grad()
def initialize_quantizers(model: QATModel, init: NNCFInitialization) -> dict:
    """Give each activation quantizer of the QAT graph NNCF's scale and zero point for its tensor.

    Returns counts: `matched`, `activation_quantizers`, and `unmatched` (keys of quantizers
    that kept the range from `QATModel.calibrate_observers`). Weight quantizers keep their
    per-channel min/max of the current weights, the range NNCF's PTQ uses too.
    """
    from torchao.quantization.pt2e.fake_quantize import FakeQuantizeBase

    graph = model.graph
    matched, unmatched, total = 0, [], 0
    for node in graph.graph.nodes:
        if node.op != "call_module":
            continue
        quantizer = graph.get_submodule(node.target)
        if not isinstance(quantizer, FakeQuantizeBase):
            continue
        if _is_weight_quantizer(node):
            continue
        total += 1
        key = producer_key(node.args[0])
        if key not in init.activations:
            unmatched.append(key)
            continue
        scale, zero_point = init.activations[key]
        _set_qparams(quantizer, scale, zero_point)
        matched += 1
    return {"matched": matched, "activation_quantizers": total, "unmatched": unmatched}


def _is_weight_quantizer(node: torch.fx.Node) -> bool:
    """Tell whether a fake-quantize node feeds a conv or linear as its weight (argument 1)."""
    return any(user.op == "call_function" and user.target in (*_CONV_OPS, _LINEAR)
               and len(user.args) > 1 and user.args[1] is node for user in node.users)


def _set_qparams(quantizer: nn.Module, scale: float, zero_point: int) -> None:
    if is_learned(quantizer):
        quantizer.scale.data.fill_(scale)
        quantizer.zero_point.data.fill_(float(zero_point))
        return
    observer = quantizer.activation_post_process
    low, high = _range(scale, zero_point, observer.quant_min, observer.quant_max)
    observer.min_val.fill_(low)
    observer.max_val.fill_(high)
    quantizer.scale.data.fill_(scale)
    quantizer.zero_point.data.fill_(zero_point)
