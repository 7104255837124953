"""EfficientNet and EfficientNet-Lite in PyTorch, built from an `ArchConfig`.

The module tree is stem → blocks (a flat list of MBConv) → head → pool → dropout → classifier,
so state-dict keys read as `blocks.3.depthwise.conv.weight`. Importers in
`edgeeff.checkpoints` map other libraries' keys onto these names.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from edgeeff.models.variants import ArchConfig, BlockConfig


def _activation(name: str) -> nn.Module:
    if name == "silu":
        return nn.SiLU()
    if name == "relu6":
        return nn.ReLU6()
    raise ValueError(f"invalid activation {name!r}: use 'silu' or 'relu6'")


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """Return TensorFlow SAME padding (before, after) for one spatial dimension.

    TensorFlow pads so the output is ceil(size / stride) and puts the odd pixel after, which
    differs from PyTorch's symmetric kernel // 2 for stride-2 convs on even inputs.
    """
    out = math.ceil(size / stride)
    total = max((out - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


class ConvBNAct(nn.Module):
    """Conv2d without bias, BatchNorm and an optional activation.

    With `padding="same"` the padding is computed from the input size at trace time. A symmetric
    amount goes into the conv itself; only an asymmetric remainder adds an explicit pad, which
    export tools see as a static constant pad.
    """

    def __init__(self, in_ch: int, out_ch: int, kernel: int, stride: int = 1, groups: int = 1,
                 activation: str | None = None, padding: str = "symmetric", bn_eps: float = 1e-3):
        super().__init__()
        self.kernel, self.stride, self.padding_mode = kernel, stride, padding
        self.conv = nn.Conv2d(in_ch, out_ch, kernel, stride, padding=kernel // 2, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_ch, eps=bn_eps)
        self.act = _activation(activation) if activation else nn.Identity()

    def _same_conv(self, x: torch.Tensor) -> torch.Tensor:
        top, bottom = same_padding(x.shape[-2], self.kernel, self.stride)
        left, right = same_padding(x.shape[-1], self.kernel, self.stride)
        if top == bottom and left == right:
            return F.conv2d(x, self.conv.weight, None, self.stride, (top, left), 1, self.conv.groups)
        x = F.pad(x, (left, right, top, bottom))
        return F.conv2d(x, self.conv.weight, None, self.stride, 0, 1, self.conv.groups)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._same_conv(x) if self.padding_mode == "same" else self.conv(x)
        return self.act(self.bn(x))


class SqueezeExcite(nn.Module):
    """Channel attention: global pool → 1x1 reduce → activation → 1x1 expand → sigmoid gate."""

    def __init__(self, channels: int, squeeze: int, activation: str):
        super().__init__()
        self.reduce = nn.Conv2d(channels, squeeze, 1)
        self.act = _activation(activation)
        self.expand = nn.Conv2d(squeeze, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = x.mean((2, 3), keepdim=True)
        scale = self.expand(self.act(self.reduce(scale)))
        return x * torch.sigmoid(scale)


class StochasticDepth(nn.Module):
    """Drop the residual branch per sample with probability `rate` while training."""

    def __init__(self, rate: float):
        super().__init__()
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.rate == 0.0:
            return x
        keep = 1.0 - self.rate
        mask = torch.empty((x.shape[0], 1, 1, 1), dtype=x.dtype, device=x.device).bernoulli_(keep)
        return x * mask / keep


class MBConv(nn.Module):
    """Mobile inverted bottleneck: expand 1x1 → depthwise k×k → SE → project 1x1 (+ residual).

    The residual, with stochastic depth on the branch, exists only when the block keeps both
    the spatial size (stride 1) and the channel count.
    """

    def __init__(self, cfg: BlockConfig, activation: str, padding: str, bn_eps: float):
        super().__init__()
        mid = cfg.in_channels * cfg.expand_ratio
        self.expand = (ConvBNAct(cfg.in_channels, mid, 1, activation=activation, bn_eps=bn_eps)
                       if cfg.expand_ratio != 1 else nn.Identity())
        self.depthwise = ConvBNAct(mid, mid, cfg.kernel, cfg.stride, groups=mid, activation=activation,
                                   padding=padding, bn_eps=bn_eps)
        self.se = SqueezeExcite(mid, cfg.se_channels, activation) if cfg.se_channels else nn.Identity()
        self.project = ConvBNAct(mid, cfg.out_channels, 1, bn_eps=bn_eps)
        self.has_residual = cfg.stride == 1 and cfg.in_channels == cfg.out_channels
        self.drop_path = StochasticDepth(cfg.drop_path) if self.has_residual else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.se(self.depthwise(self.expand(x))))
        if self.has_residual:
            out = x + self.drop_path(out)
        return out


class EfficientNet(nn.Module):
    """An EfficientNet classifier that takes normalized NCHW float input and returns logits."""

    def __init__(self, cfg: ArchConfig):
        super().__init__()
        self.config = cfg
        act, pad, eps = cfg.activation, cfg.padding, cfg.bn_eps
        self.stem = ConvBNAct(3, cfg.stem_channels, 3, 2, activation=act, padding=pad, bn_eps=eps)
        self.blocks = nn.Sequential(*(MBConv(b, act, pad, eps) for b in cfg.blocks))
        self.head = ConvBNAct(cfg.blocks[-1].out_channels, cfg.head_channels, 1, activation=act, bn_eps=eps)
        self.dropout = nn.Dropout(cfg.variant.dropout)
        self.classifier = nn.Linear(cfg.head_channels, cfg.num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # The official builder's initialisers: fan-out normal for convs, uniform for the classifier.
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                bound = 1.0 / math.sqrt(m.out_features)
                nn.init.uniform_(m.weight, -bound, bound)
                nn.init.zeros_(m.bias)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks(self.stem(x)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.features(x).mean((2, 3))
        return self.classifier(self.dropout(x))
