"""Training loops for float models and quantized fine-tuning, over in-memory or streamed batches."""

from edgeeff.train.data import ArrayDataset, array_batches, load_image_folder, random_shift
from edgeeff.train.loop import FitSettings, fit_float, topk_correct, train_one_epoch, validate, warmup_cosine

__all__ = ["ArrayDataset", "FitSettings", "array_batches", "fit_float", "load_image_folder", "random_shift",
           "topk_correct", "train_one_epoch", "validate", "warmup_cosine"]
