"""Quantization steps shared by the exporters."""
