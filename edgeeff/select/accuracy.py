"""Accuracy sources for ranking candidates: `edgeeff check --json` reports and user tables.

Accepted files:
- a report from `edgeeff check --json`: each artifact's top-1, keyed by the variant,
  resolution and precision in its name (b0-224px-int8.tflite), plus the float model's top-1;
- a JSON object {"b0": 77.1, "b4@320": 81.0} (model, optionally @resolution, to top-1);
- a JSON list or a CSV file of rows with `model` (or `name`, `variant`), `top1` (or
  `accuracy`), and optional `resolution`, `precision` and `target` columns.

Values above 1 are read as percentages. An entry without a resolution applies to the
model's native resolution only, because accuracy drops at lower input sizes.
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path

from edgeeff.select.candidates import Candidate

ARTIFACT_NAME = re.compile(r"^(?P<model>.+?)-(?P<resolution>\d+)px-(?P<precision>fp32|int8)")
MODEL_KEYS = ("model", "name", "variant")
VALUE_KEYS = ("top1", "accuracy", "top1_accuracy")


@dataclass
class AccuracyEntry:
    """One accuracy figure (a fraction) and what it applies to; None fields match any value."""

    model: str
    value: float
    source: str
    resolution: int | None = None
    precision: str | None = None
    target: str | None = None

    def specificity(self) -> tuple[bool, bool, bool]:
        return (self.resolution is not None, self.precision is not None, self.target is not None)


def _fraction(value, where: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"invalid accuracy {value!r} in {where}: write a number such as 77.1 or 0.771") from None
    if number > 1:
        number /= 100
    if not 0 <= number <= 1:
        raise ValueError(f"invalid accuracy {value!r} in {where}: use a fraction in [0, 1] or a percentage")
    return number


def _model_key(text: str) -> tuple[str, int | None]:
    """Split `b4@320` into ("b4", 320); a plain name has no resolution."""
    name, _, size = text.strip().partition("@")
    if size and not size.strip().isdigit():
        raise ValueError(f"invalid model key {text!r}: write NAME or NAME@RESOLUTION, such as b4@320")
    return name.strip().lower(), int(size) if size else None


def _from_check_report(report: dict, source: str) -> list[AccuracyEntry]:
    entries = []
    for artifact in report.get("artifacts") or []:
        match = ARTIFACT_NAME.match(str(artifact.get("name", "")))
        if match and artifact.get("top1") is not None:
            entries.append(AccuracyEntry(model=match["model"], value=float(artifact["top1"]),
                                         source=f"{source}: {artifact['name']}", resolution=int(match["resolution"]),
                                         precision=match["precision"], target=artifact.get("target")))
    float_model = report.get("float") or {}
    if float_model.get("variant") and float_model.get("top1") is not None:
        entries.append(AccuracyEntry(model=str(float_model["variant"]), value=float(float_model["top1"]),
                                     source=f"{source}: float model"))
    if not entries:
        raise ValueError(f"check report {source} has no top-1 accuracy (it was run without labelled data); "
                         "run edgeeff check --data with class sub-folders, or pass a table")
    return entries


def _from_row(row: dict, source: str, line: int) -> AccuracyEntry:
    where = f"{source} row {line}"
    model = next((row[key] for key in MODEL_KEYS if row.get(key) not in (None, "")), None)
    value = next((row[key] for key in VALUE_KEYS if row.get(key) not in (None, "")), None)
    if model is None or value is None:
        raise ValueError(f"{where} needs a model ({'/'.join(MODEL_KEYS)}) and a top1 ({'/'.join(VALUE_KEYS)}) value")
    name, resolution = _model_key(str(model))
    if row.get("resolution") not in (None, ""):
        try:
            resolution = int(row["resolution"])
        except (TypeError, ValueError):
            raise ValueError(f"invalid resolution {row['resolution']!r} in {where}: write a size in px") from None
    return AccuracyEntry(model=name, value=_fraction(value, where), source=source, resolution=resolution,
                         precision=(row.get("precision") or None), target=(row.get("target") or None))


def read_accuracy(path: str | Path) -> list[AccuracyEntry]:
    """Read one accuracy file (see the module docstring for the formats)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"accuracy file not found: {path}; pass an edgeeff check --json report, "
                                "a JSON table or a CSV file")
    source = path.name
    if path.suffix.lower() == ".csv":
        with open(path, newline="") as handle:
            rows = list(csv.DictReader(handle))
        if not rows:
            raise ValueError(f"accuracy file {path} has no rows; write a header such as model,resolution,top1")
        return [_from_row({k.strip().lower(): (v or "").strip() for k, v in row.items() if k}, source, index + 2)
                for index, row in enumerate(rows)]
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON in accuracy file {path}: {exc}") from exc
    if isinstance(data, dict) and ("artifacts" in data or "float" in data):
        return _from_check_report(data, source)
    if isinstance(data, dict):
        entries = []
        for key, value in data.items():
            name, resolution = _model_key(key)
            entries.append(AccuracyEntry(model=name, value=_fraction(value, f"{source} key {key!r}"), source=source,
                                         resolution=resolution))
        return entries
    if isinstance(data, list) and all(isinstance(row, dict) for row in data):
        return [_from_row({str(k).lower(): v for k, v in row.items()}, source, index + 1)
                for index, row in enumerate(data)]
    raise ValueError(f"accuracy file {path} is neither a check report, an object of model: top1, nor a list of rows")


def attach_accuracy(candidates: list[Candidate], entries: list[AccuracyEntry], precision: str, target: str) -> int:
    """Give each candidate the most specific matching accuracy entry; return how many got one."""
    matched = 0
    for candidate in candidates:
        matches = [entry for entry in entries
                   if entry.model == candidate.name
                   and (entry.resolution == candidate.resolution
                        or (entry.resolution is None and candidate.native))
                   and entry.precision in (None, precision)
                   and entry.target in (None, target)]
        if matches:
            best = max(matches, key=AccuracyEntry.specificity)
            candidate.accuracy, candidate.accuracy_source = best.value, best.source
            matched += 1
    return matched
