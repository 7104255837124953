"""QAT recipes: the fine-tuning hyperparameters, read from YAML, overridden from the CLI, saved with a run.

A recipe file contains any subset of `QATRecipe`'s fields; missing fields keep their defaults. The
values `dropout: auto` and `drop_path: auto` resolve per variant: the classifier dropout of the
released EfficientNet table (0.2 for B0 rising to 0.5 for B7, interpolated on φ for custom
variants), used for both dropout and stochastic depth.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "constant")
AUTO = "auto"


class RecipeError(ValueError):
    """A recipe file or override that cannot be used as given."""


@dataclass(frozen=True)
class QATRecipe:
    """Hyperparameters of one QAT fine-tuning run.

    `lr` is the peak learning rate after `warmup_epochs` of linear warm-up (fractions of an epoch
    allowed). `weight_decay` applies to conv and linear weights only, never to BatchNorm,
    biases or quantizer scales. `batch_size` is per process under torchrun. `freeze_bn_epoch`
    is the epoch (0-based) from which BatchNorm uses its running statistics instead of batch
    statistics; 0 freezes it for the whole run, which small batches need. `calibration_size`
    training images, drawn with `seed`, go to NNCF's range estimation and bias correction.
    `distill_temperature` softens teacher and student logits for the KL loss of label-free runs.
    `max_shift` is the random translation in px applied to training images.
    """

    epochs: int = 3
    batch_size: int = 32
    optimizer: str = "adamw"
    lr: float = 5e-5
    momentum: float = 0.9
    weight_decay: float = 1e-5
    schedule: str = "cosine"
    warmup_epochs: float = 0.5
    label_smoothing: float = 0.1
    dropout: float | str = AUTO
    drop_path: float | str = AUTO
    freeze_bn_epoch: int = 0
    learn_ranges: bool = True
    calibration_size: int = 300
    distill: bool = False
    distill_temperature: float = 1.0
    max_shift: int = 0
    max_grad_norm: float | None = None
    seed: int = 0

    def validate(self) -> None:
        """Raise RecipeError naming the first invalid field and its valid range."""
        if not isinstance(self.epochs, int) or self.epochs < 1:
            raise RecipeError(f"invalid epochs {self.epochs!r}: use a whole number of 1 or more")
        if not isinstance(self.batch_size, int) or self.batch_size < 2:
            raise RecipeError(f"invalid batch_size {self.batch_size!r}: use 2 or more images")

        if self.optimizer not in OPTIMIZERS:
            raise RecipeError(f"invalid optimizer {self.optimizer!r}: use one of {', '.join(OPTIMIZERS)}")
        if self.schedule not in SCHEDULES:
            raise RecipeError(f"invalid schedule {self.schedule!r}: use one of {', '.join(SCHEDULES)}")
        _check_range("lr", self.lr, 0.0, 1.0, low_open=True)
        _check_range("momentum", self.momentum, 0.0, 1.0)
        _check_range("weight_decay", self.weight_decay, 0.0, 1.0)
        _check_range("warmup_epochs", self.warmup_epochs, 0.0, float(self.epochs))
        _check_range("label_smoothing", self.label_smoothing, 0.0, 1.0, high_open=True)

        for name in ("dropout", "drop_path"):
            value = getattr(self, name)
            if value != AUTO:
                _check_range(name, value, 0.0, 1.0, high_open=True)

        if not isinstance(self.freeze_bn_epoch, int) or self.freeze_bn_epoch < 0:
            raise RecipeError(f"invalid freeze_bn_epoch {self.freeze_bn_epoch!r}: use 0 (frozen throughout) "
                              "or the epoch from which BatchNorm is frozen")
        if not isinstance(self.calibration_size, int) or self.calibration_size < 1:
            raise RecipeError(f"invalid calibration_size {self.calibration_size!r}: use 1 or more images")
        _check_range("distill_temperature", self.distill_temperature, 0.0, 100.0, low_open=True)
        if not isinstance(self.max_shift, int) or self.max_shift < 0:
            raise RecipeError(f"invalid max_shift {self.max_shift!r}: use 0 or more px")
        if self.max_grad_norm is not None:
            _check_range("max_grad_norm", self.max_grad_norm, 0.0, math.inf, low_open=True)
        if not isinstance(self.seed, int):
            raise RecipeError(f"invalid seed {self.seed!r}: use a whole number")

    def resolved(self, variant_dropout: float) -> QATRecipe:
        """Return a copy with `auto` dropout and stochastic depth replaced by the variant's rate."""
        return dataclasses.replace(
            self,
            dropout=variant_dropout if self.dropout == AUTO else float(self.dropout),
            drop_path=variant_dropout if self.drop_path == AUTO else float(self.drop_path),
        )

    def to_dict(self) -> dict:
        return asdict(self)


def _check_range(name: str, value: Any, low: float, high: float, low_open: bool = False,
                 high_open: bool = False) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or math.isnan(value):
        raise RecipeError(f"invalid {name} {value!r}: use a number")
    too_low = value <= low if low_open else value < low
    too_high = value >= high if high_open else value > high
    if too_low or too_high:
        left = "(" if low_open else "["
        right = ")" if high_open else "]"
        raise RecipeError(f"invalid {name} {value!r}: use a value in {left}{low:g}, {high:g}{right}")


FIELDS = {f.name: f for f in dataclasses.fields(QATRecipe)}


def _parse_scalar(text: str) -> Any:
    """Parse command-line text as int, float ("3e-5" too, which YAML 1.1 reads as text) or bool."""
    for parse in (int, float):
        try:
            return parse(text)
        except ValueError:
            pass
    booleans = {"true": True, "yes": True, "on": True, "false": False, "no": False, "off": False}
    return booleans.get(text.lower(), text)


def _coerce(name: str, value: Any) -> Any:
    """Convert a YAML or command-line value to the field's type (ints stay ints, 'auto' stays text)."""
    if name not in FIELDS:
        close = [f for f in FIELDS if f.startswith(name[:3])]
        hint = f" (did you mean {close[0]}?)" if close else ""
        raise RecipeError(f"unknown recipe field {name!r}{hint}: use one of {', '.join(FIELDS)}")
    default = FIELDS[name].default
    if isinstance(value, str):
        text = value.strip()
        if name in ("dropout", "drop_path") and text.lower() == AUTO:
            return AUTO
        if name == "max_grad_norm" and text.lower() in ("none", "null", ""):
            return None
        value = _parse_scalar(text)
    if isinstance(default, bool):
        if not isinstance(value, bool):
            raise RecipeError(f"invalid {name} {value!r}: use true or false")
        return value
    if isinstance(default, int) and isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(default, float) and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def load_recipe(path: str | Path | None = None, overrides: dict[str, Any] | None = None) -> QATRecipe:
    """Read a recipe YAML (or start from the defaults), apply `overrides`, and validate the result.

    Override values may be typed or text from the command line ("3e-5", "true", "auto").
    """
    values: dict[str, Any] = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise RecipeError(f"recipe not found: {path}; pass a YAML file such as recipes/qat/default.yaml")
        try:
            data = yaml.safe_load(path.read_text())
        except yaml.YAMLError as exc:
            raise RecipeError(f"invalid recipe YAML {path}: {exc}") from exc
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise RecipeError(f"invalid recipe {path}: expected a mapping of field names to values")
        data.pop("name", None)
        data.pop("description", None)
        try:
            values.update({key: _coerce(key, value) for key, value in data.items()})
        except RecipeError as exc:
            raise RecipeError(f"{path}: {exc}") from exc
    for key, value in (overrides or {}).items():
        if value is not None:
            values[key] = _coerce(key, value)
    recipe = QATRecipe(**values)
    recipe.validate()
    return recipe


def parse_assignments(assignments: tuple[str, ...] | list[str]) -> dict[str, str]:
    """Parse `--set KEY=VALUE` strings into a dict, rejecting entries without '='."""
    result = {}
    for item in assignments:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise RecipeError(f"invalid --set {item!r}: use KEY=VALUE, for example --set lr=3e-5")
        result[key.strip().replace("-", "_")] = value
    return result


def save_recipe(recipe: QATRecipe, path: str | Path) -> None:
    """Write the resolved recipe as YAML, atomically."""
    from edgeeff.io import atomic_path

    with atomic_path(path) as tmp:
        tmp.write_text("# Resolved QAT recipe of this run: every field, after overrides.\n"
                       + yaml.safe_dump(recipe.to_dict(), sort_keys=False))
