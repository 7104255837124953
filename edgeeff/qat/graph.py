"""The trainable QAT graph: torchao PT2E QAT with ExecuTorch's XNNPACKQuantizer, and its way back out.

`capture_training_graph` exports the float model in training mode with a dynamic batch
dimension. `prepare_qat_graph` annotates it with `XNNPACKQuantizer(is_qat=True)` (int8
per-channel symmetric weights, int8 per-tensor affine activations) and inserts fake-quantize
modules, with BatchNorm kept unfolded so its folding is simulated during training.
`QATModel` wraps the graph so `model.train()` and `model.eval()` switch dropout, stochastic
depth, BatchNorm and the observers. `convert_to_int8` turns the trained graph into the
quantize/dequantize graph that ExecuTorch lowers and torch.onnx exports.

Versions this was written against: torch 2.13.0, torchao 0.18.0, executorch 1.5.1.
"""

from __future__ import annotations

import copy
import dataclasses

import torch
import torch.nn.functional as F
from torch import nn

# torchao 0.18's QAT conv-BatchNorm fusion (qat_utils.py) writes eps=1e-5 into every fused
# BatchNorm, whatever the model's eps. Models are converted to this eps first, so the graph
# computes what the model computes.
QAT_BATCHNORM_EPS = 1e-5

_BATCH_NORM = torch.ops.aten.batch_norm.default
_DROPOUT = torch.ops.aten.dropout.default
_MUL = torch.ops.aten.mul.Tensor
_CONV_OPS = (torch.ops.aten.conv1d.default, torch.ops.aten.conv2d.default)
_HARDTANH = torch.ops.aten.hardtanh.default


class DropPathMask(nn.Module):
    """Stochastic depth written with `dropout`, so an exported graph can switch it off.

    `dropout` on a per-sample tensor of ones gives 0 or 1/(1 - rate), the mask that
    `StochasticDepth` draws with `bernoulli_`. torch.export bakes `bernoulli_` into the graph as a
    random op in both modes, while a dropout node carries a training flag that `QATModel`
    flips. `new_ones` keeps the mask on the input's device without slicing the input: the
    quantizer gives a slice of a quantized tensor a quantizer of its own.
    """

    def __init__(self, rate: float):
        super().__init__()
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = F.dropout(x.new_ones((x.shape[0], 1, 1, 1)), self.rate, self.training)
        return x * mask


def align_batchnorm_eps(model: nn.Module, eps: float = QAT_BATCHNORM_EPS) -> None:
    """Give every BatchNorm `eps`, keeping its eval-mode output: running_var absorbs the difference.

    In eval mode BatchNorm divides by sqrt(running_var + eps), so adding the old eps minus the
    new one to running_var leaves the output unchanged. The model's config records the new eps,
    so a checkpoint saved from it rebuilds the same network.
    """
    with torch.no_grad():
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d) and module.eps != eps:
                module.running_var.add_(module.eps - eps).clamp_(min=0.0)
                module.eps = eps
    config = getattr(model, "config", None)
    if config is not None and dataclasses.is_dataclass(config) and getattr(config, "bn_eps", eps) != eps:
        model.config = dataclasses.replace(config, bn_eps=eps)


def set_regularization(model: nn.Module, dropout: float, drop_path: float) -> None:
    """Set the classifier dropout and the stochastic depth of an EfficientNet in place.

    Stochastic depth grows linearly with block index from 0 toward `drop_path`, as in
    `edgeeff.models.variants.arch_config`.
    """
    from edgeeff.models.efficientnet import StochasticDepth

    model.dropout.p = dropout
    blocks = list(model.blocks)
    for index, block in enumerate(blocks):
        if isinstance(block.drop_path, StochasticDepth):
            block.drop_path.rate = drop_path * index / len(blocks)


def _example_batch(resolution: int) -> tuple[torch.Tensor]:
    # Two images, because training-mode BatchNorm rejects a batch of one 1x1 feature map.
    return (torch.zeros(2, 3, resolution, resolution),)


def _dynamic_batch() -> tuple[dict]:
    return ({0: torch.export.Dim("batch", min=1)},)


def capture_training_graph(model: nn.Module, resolution: int) -> torch.fx.GraphModule:
    """Export a copy of `model` in training mode with a dynamic batch size, stochastic depth as dropout."""
    from edgeeff.models.efficientnet import StochasticDepth

    model = copy.deepcopy(model)
    for module in model.modules():
        for name, child in list(module.named_children()):
            if isinstance(child, StochasticDepth):
                setattr(module, name, DropPathMask(child.rate) if child.rate > 0 else nn.Identity())
    model.train()
    return torch.export.export(model, _example_batch(resolution), dynamic_shapes=_dynamic_batch()).module()


def capture_eval_graph(model: nn.Module, resolution: int) -> torch.fx.GraphModule:
    """Export a copy of `model` in eval mode with a dynamic batch size, for NNCF's calibration."""
    model = copy.deepcopy(model).eval()
    return torch.export.export(model, _example_batch(resolution), dynamic_shapes=_dynamic_batch()).module()


# XNNPACKQuantizer's observer eps (executorch 1.5.1): the smallest scale a quantizer may choose.
_SCALE_EPS = 2 ** -12


def activation_qspec(learn_ranges: bool):
    """Return the int8 per-tensor affine activation spec: LSQ-learned ranges or moving-average min/max.

    Both compute the scale they train with exactly as `convert_pt2e` computes the one it writes.
    The stock QAT config's `FusedMovingAvgObsFakeQuantize` does not. Its fused kernel (torch 2.13)
    skips the observer's eps, and for a weight channel whose values share one sign it chose half
    the scale of the observer's `calculate_qparams`, so the converted model differed from the
    one trained.
    """
    from torchao.quantization.pt2e.fake_quantize import FakeQuantize
    from torchao.quantization.pt2e.learnable_fake_quantize import LearnableFakeQuantize
    from torchao.quantization.pt2e.observer import MovingAverageMinMaxObserver
    from torchao.quantization.pt2e.quantizer import QuantizationSpec

    if learn_ranges:
        # use_grad_scaling divides the scale gradient by sqrt(elements x quant_max), as the LSQ
        # paper (Esser et al., 2020) prescribes, so one learning rate suits weights and ranges.
        constructor = LearnableFakeQuantize.with_args(observer=MovingAverageMinMaxObserver, use_grad_scaling=True,
                                                      eps=_SCALE_EPS)
    else:
        constructor = FakeQuantize.with_args(observer=MovingAverageMinMaxObserver, eps=_SCALE_EPS)
    return QuantizationSpec(dtype=torch.int8, quant_min=-128, quant_max=127, qscheme=torch.per_tensor_affine,
                            observer_or_fake_quant_ctr=constructor)


def weight_qspec():
    """Return the int8 per-channel symmetric weight spec, with NNCF's range rule on the current weights.

    `averaging_constant=1` makes the moving average the latest min/max, the range NNCF's PTQ
    and `convert_pt2e` use, instead of a lagging average of past weights. The observer raises
    near-zero channels' ranges as NNCF does (see `edgeeff.qat.weight_range`), and the scale
    floor is float32's machine epsilon, so XNNPACKQuantizer's 2^-12 floor does not apply.
    """
    from torchao.quantization.pt2e.fake_quantize import FakeQuantize
    from torchao.quantization.pt2e.quantizer import QuantizationSpec

    from edgeeff.qat.weight_range import NNCFWeightRangeObserver

    constructor = FakeQuantize.with_args(observer=NNCFWeightRangeObserver, averaging_constant=1.0,
                                         eps=torch.finfo(torch.float32).eps)
    return QuantizationSpec(dtype=torch.int8, quant_min=-127, quant_max=127, qscheme=torch.per_channel_symmetric,
                            ch_axis=0, observer_or_fake_quant_ctr=constructor)


def build_qat_quantizer(learn_ranges: bool = True):
    """Build XNNPACKQuantizer for QAT: per-channel weights, conv+BN+ReLU6 as one op, stochastic depth left float.

    Stochastic depth's mask multiply is not quantized, and the residual add takes its output
    without a quantizer of its own. In eval mode the mask is 1, so the add then reads the
    project conv's quantized output, exactly as in the eval graph that NNCF calibrates and that
    `convert_to_int8` produces.
    """
    from executorch.backends.xnnpack.quantizer.xnnpack_quantizer import (XNNPACKQuantizer,
                                                                         get_symmetric_quantization_config)
    from torchao.quantization.pt2e.quantizer.quantizer import Q_ANNOTATION_KEY

    stock = get_symmetric_quantization_config(is_per_channel=True, is_qat=True)
    act = activation_qspec(learn_ranges)
    config = dataclasses.replace(stock, input_activation=act, output_activation=act, weight=weight_qspec())

    class QATXNNPACKQuantizer(XNNPACKQuantizer):
        def annotate(self, model: torch.fx.GraphModule) -> torch.fx.GraphModule:
            _annotate_conv_bn_hardtanh(model, self.global_config)
            super().annotate(model)
            for node in model.graph.nodes:
                if is_drop_path_multiply(node):
                    for user in node.users:
                        annotation = user.meta.get(Q_ANNOTATION_KEY)
                        if annotation is not None:
                            annotation.input_qspec_map.pop(node, None)
            return model

    return QATXNNPACKQuantizer().set_global(config).set_module_type(DropPathMask, None)


def _annotate_conv_bn_hardtanh(model: torch.fx.GraphModule, config) -> None:
    """Annotate conv → BatchNorm → hardtanh (ReLU6) chains as one quantized op.

    The stock QAT annotators know conv-BN and conv-BN-ReLU only. Without this, Lite models
    would quantize the BatchNorm output and the clamp output separately, unlike the PTQ graph
    (BN folded, conv + hardtanh as one op) and unlike what XnnpackPartitioner fuses.
    """
    from torchao.quantization.pt2e.quantizer import (QuantizationAnnotation, get_bias_qspec,
                                                     get_input_act_qspec, get_output_act_qspec,
                                                     get_weight_qspec)
    from torchao.quantization.pt2e.quantizer.quantizer import Q_ANNOTATION_KEY

    for clamp in model.graph.nodes:
        if clamp.op != "call_function" or clamp.target != _HARDTANH:
            continue
        norm = clamp.args[0]
        if not isinstance(norm, torch.fx.Node) or norm.target != _BATCH_NORM or len(norm.users) != 1:
            continue
        conv = norm.args[0]
        if not isinstance(conv, torch.fx.Node) or conv.target not in _CONV_OPS or len(conv.users) != 1:
            continue
        nodes = [conv, norm, clamp, conv.args[1]]
        input_specs = {conv.args[0]: get_input_act_qspec(config), conv.args[1]: get_weight_qspec(config)}
        bias = conv.args[2] if len(conv.args) > 2 else None
        if isinstance(bias, torch.fx.Node):
            input_specs[bias] = get_bias_qspec(config)
            nodes.append(bias)
        if any(Q_ANNOTATION_KEY in node.meta and node.meta[Q_ANNOTATION_KEY]._annotated for node in nodes):
            continue
        conv.meta[Q_ANNOTATION_KEY] = QuantizationAnnotation(input_qspec_map=input_specs, _annotated=True)
        clamp.meta[Q_ANNOTATION_KEY] = QuantizationAnnotation(output_qspec=get_output_act_qspec(config),
                                                              _annotated=True)
        for node in (norm, *nodes[3:]):
            node.meta.setdefault(Q_ANNOTATION_KEY, QuantizationAnnotation())._annotated = True


def is_drop_path_multiply(node: torch.fx.Node) -> bool:
    """Tell whether `node` multiplies a branch by a `DropPathMask` mask (dropout of a ones tensor)."""
    if node.op != "call_function" or node.target != _MUL:
        return False
    return any(isinstance(arg, torch.fx.Node) and arg.target == _DROPOUT for arg in node.args)


def prepare_qat_graph(graph: torch.fx.GraphModule, learn_ranges: bool = True) -> torch.fx.GraphModule:
    """Insert fake-quantize modules with `prepare_qat_pt2e` and the QAT quantizer."""
    from torchao.quantization.pt2e.quantize_pt2e import prepare_qat_pt2e

    return prepare_qat_pt2e(graph, build_qat_quantizer(learn_ranges))


def fake_quantizers(module: nn.Module) -> list[nn.Module]:
    from torchao.quantization.pt2e.fake_quantize import FakeQuantizeBase

    return [m for m in module.modules() if isinstance(m, FakeQuantizeBase)]


def is_learned(quantizer: nn.Module) -> bool:
    from torchao.quantization.pt2e.learnable_fake_quantize import LearnableFakeQuantize

    return isinstance(quantizer, LearnableFakeQuantize)


def _set_graph_flags(graph: torch.fx.GraphModule, dropout_training: bool, batchnorm_training: bool) -> bool:
    """Rewrite the training flags of dropout and BatchNorm nodes; return whether any changed.

    torchao's `move_exported_model_to_eval` does this by pattern replacement, which resets
    BatchNorm's eps and momentum to PyTorch's defaults (torchao 0.18), so the flags are set here
    directly and every other argument is kept.
    """
    changed = False
    for node in graph.graph.nodes:
        if node.op != "call_function":
            continue
        if node.target == _BATCH_NORM and node.args[5] != batchnorm_training:
            node.args = (*node.args[:5], batchnorm_training, *node.args[6:])
            changed = True
        elif node.target == _DROPOUT and node.args[2] != dropout_training:
            node.args = (*node.args[:2], dropout_training, *node.args[3:])
            changed = True
    if changed:
        graph.recompile()
    return changed


class QATModel(nn.Module):
    """A prepared QAT graph that honours `train()` and `eval()`.

    Training mode turns on dropout and stochastic depth, BatchNorm batch statistics unless
    `freeze_bn` is set, and the moving-average observers of weights (and of activations when
    their ranges are not learned). Eval mode turns all of them off, so validation neither draws
    random masks nor moves a range. Learned (LSQ) ranges change only through the optimizer.
    """

    def __init__(self, graph: torch.fx.GraphModule, freeze_bn: bool = True):
        super().__init__()
        self.graph = graph
        self.freeze_bn = freeze_bn
        self.train(False)

    def train(self, mode: bool = True) -> QATModel:
        self.training = mode
        _set_graph_flags(self.graph, dropout_training=mode, batchnorm_training=mode and not self.freeze_bn)
        for quantizer in fake_quantizers(self.graph):
            if not is_learned(quantizer):
                quantizer.enable_observer(mode)
        return self

    def set_freeze_bn(self, freeze: bool) -> None:
        self.freeze_bn = freeze
        self.train(self.training)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.graph(x)

    @torch.no_grad()
    def calibrate_observers(self, images: torch.Tensor) -> None:
        """Run `images` once in eval mode with every observer on, so each quantizer has a range.

        Learned quantizers take their first scale and zero point from this pass and then stop
        observing; NNCF's ranges replace them afterwards where a match exists.
        """
        self.train(False)
        for quantizer in fake_quantizers(self.graph):
            quantizer.enable_observer(True)
        self.graph(images)
        for quantizer in fake_quantizers(self.graph):
            if is_learned(quantizer):
                quantizer.enable_range_learning()
            else:
                quantizer.enable_observer(False)


def strip_drop_path(graph: torch.fx.GraphModule) -> None:
    """Remove stochastic depth's mask multiplies from `graph` in place (they are identity in eval mode)."""
    for node in list(graph.graph.nodes):
        if is_drop_path_multiply(node):
            branch = next(arg for arg in node.args if not (isinstance(arg, torch.fx.Node) and arg.target == _DROPOUT))
            node.replace_all_uses_with(branch)
    graph.graph.eliminate_dead_code()
    graph.recompile()


def convert_to_int8(model: QATModel) -> torch.fx.GraphModule:
    """Return the quantize/dequantize graph of a trained QATModel, learned ranges included.

    The model is copied, so training can go on. BatchNorm is folded into the convs with the
    running statistics, stochastic depth and dropout are removed, and each fake quantizer
    becomes a quantize/dequantize pair with its current scale and zero point.
    """
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    graph = copy.deepcopy(model.graph)
    _set_graph_flags(graph, dropout_training=False, batchnorm_training=False)
    for quantizer in fake_quantizers(graph):
        quantizer.disable_observer()
    strip_drop_path(graph)
    return convert_pt2e(graph)


def export_int8_program(converted: torch.fx.GraphModule, resolution: int) -> torch.export.ExportedProgram:
    """Export the converted graph with a static batch of 1, the input that every backend expects."""
    from edgeeff.export.base import example_input

    with torch.no_grad():
        return torch.export.export(converted, (example_input(resolution),))


def float_state_dict(model: QATModel, float_model: nn.Module) -> dict[str, torch.Tensor]:
    """Return `float_model`'s state dict filled with the QAT graph's current weights and BatchNorm state.

    The exported graph keeps the eager module names (`blocks.3.expand.conv.weight`), so the
    QAT-adapted weights load back into the eager model. Raises KeyError naming a missing tensor.
    """
    trained = model.graph.state_dict()
    state = {}
    for name, tensor in float_model.state_dict().items():
        if name not in trained:
            raise KeyError(f"QAT graph has no tensor {name!r}; it was not captured from this model")
        state[name] = trained[name].detach().clone().to(tensor.device)
    return state
