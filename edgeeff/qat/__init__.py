"""Quantization-aware fine-tuning: NNCF's INT8 model as the start, torchao PT2E QAT, export to every target."""

from edgeeff.qat.recipe import QATRecipe, RecipeError, load_recipe
from edgeeff.qat.run import QATRunError, QATRunRequest, run_qat

__all__ = ["QATRecipe", "QATRunError", "QATRunRequest", "RecipeError", "load_recipe", "run_qat"]
