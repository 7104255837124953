"""Images in, arrays out: decoding, preprocessing and calibration splits (no torch)."""

from edgeeff.data.calibration import CalibrationData, load_calibration
from edgeeff.data.images import DataError, open_rgb
from edgeeff.data.preprocess import IMAGENET, LITE, Preprocessing

__all__ = ["CalibrationData", "DataError", "IMAGENET", "LITE", "Preprocessing", "load_calibration", "open_rgb"]
