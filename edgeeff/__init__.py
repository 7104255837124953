"""edgeeff: EfficientNet from a trained checkpoint to verified INT8 artifacts on a device."""

__version__ = "0.1.0"
