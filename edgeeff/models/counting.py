"""Parameter and multiply-add (MAC) counts, computed on the meta device without real tensors."""

from __future__ import annotations

import torch
from torch import nn


def count_params(model: nn.Module) -> int:
    """Return the number of trainable parameters (BatchNorm buffers excluded, as papers count)."""
    return sum(p.numel() for p in model.parameters())


def count_macs(model: nn.Module, resolution: int) -> int:
    """Count the multiply-adds of one forward pass at `resolution` px, batch 1.

    Convs and linear layers are counted, which is what the EfficientNet paper reports as FLOPs;
    BatchNorm, activations, pooling and the SE gate multiply are left out. The model is copied
    to the meta device, so B7 at 600 px costs no compute.
    """
    import copy

    meta = copy.deepcopy(model).to("meta").eval()
    total = 0

    def on_conv(module: nn.Conv2d, _inputs, output: torch.Tensor) -> None:
        nonlocal total
        k = module.kernel_size[0] * module.kernel_size[1]
        total += output.numel() * (module.in_channels // module.groups) * k

    def on_same_conv(module: nn.Module, _inputs, output: torch.Tensor) -> None:
        # TensorFlow "same" padding runs the conv's weight through F.conv2d, so the conv module's
        # own hook never fires. BatchNorm and the activation keep the shape, so the block's
        # output has the conv's output shape.
        on_conv(module.conv, _inputs, output)

    def on_linear(module: nn.Linear, _inputs, output: torch.Tensor) -> None:
        nonlocal total
        total += output.numel() * module.in_features

    hooks = []
    for m in meta.modules():
        if getattr(m, "padding_mode", None) == "same" and isinstance(getattr(m, "conv", None), nn.Conv2d):
            hooks.append(m.register_forward_hook(on_same_conv))
        elif isinstance(m, nn.Conv2d):
            hooks.append(m.register_forward_hook(on_conv))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(on_linear))
    try:
        with torch.no_grad():
            meta(torch.empty(1, 3, resolution, resolution, device="meta"))
    finally:
        for h in hooks:
            h.remove()
    return total
