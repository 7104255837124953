"""EfficientNet B0–B7, EfficientNet-Lite0–4 and custom-φ models: specs, builder and counts."""

from edgeeff.models.efficientnet import EfficientNet
from edgeeff.models.variants import (VARIANTS, ArchConfig, Variant, arch_config, custom_variant,
                                     get_variant, with_resolution)


def build_model(variant: Variant | str, num_classes: int = 1000, padding: str = "symmetric",
                bn_eps: float = 1e-3) -> EfficientNet:
    """Build an untrained model of a variant (by spec or name) in eval mode."""
    if isinstance(variant, str):
        variant = get_variant(variant)
    return EfficientNet(arch_config(variant, num_classes, padding, bn_eps)).eval()


__all__ = ["VARIANTS", "ArchConfig", "EfficientNet", "Variant", "arch_config", "build_model",
           "custom_variant", "get_variant", "with_resolution"]
