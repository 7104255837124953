"""The accuracy gate: the float model and every exported artifact scored on the same images.

Each artifact runs in its own runtime (onnxruntime, LiteRT, ExecuTorch) with the preprocessing
and resolution from its sidecar. The float model runs in eager PyTorch on the same arrays. On a
labelled ImageFolder tree the gate measures top-1 and top-5 and the drop in top-1 against the
float model. On any folder it measures agreement with the float model's top-1 and the cosine
between logits. Thresholds turn these numbers into pass or fail, and an optional baseline file
(the last accepted run, with tool versions) catches regressions between runs.
"""

from __future__ import annotations

import hashlib
import json
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np

from edgeeff.data.images import LoadReport, Sample, image_folder_classes, load_batch, sample_images
from edgeeff.data.preprocess import Preprocessing
from edgeeff.export.verify import compare_logits
from edgeeff.io import sha256_file, write_json_atomic
from edgeeff.profile.fingerprint import usable_cores
from edgeeff.profile.local import check_threads
from edgeeff.runtime import RuntimeUnavailable, open_runner, runtime_for
from edgeeff.sidecar import load_labels, read_sidecar, tool_versions

BASELINE_SCHEMA = 1
DEFAULT_MAX_DROP = 1.0  # top-1 points
DEFAULT_CHUNK = 64  # images decoded and run per step, which bounds memory on large folders
FLOAT_NAME = "float"


class CheckInputError(ValueError):
    """Invalid gate input: thresholds, artifacts, data or baseline that cannot be used as given."""


@dataclass
class Thresholds:
    """Limits that every artifact must meet.

    `max_drop` and `max_baseline_drop` are in percentage points of top-1 (of agreement without
    labels, for the baseline). `min_agreement` and `min_cosine` are fractions in [0, 1]. None
    disables a check. `max_baseline_drop` None means the `max_drop` value.
    """

    max_drop: float | None = DEFAULT_MAX_DROP
    min_agreement: float | None = None
    min_cosine: float | None = None
    max_baseline_drop: float | None = None

    def validate(self) -> None:
        for name in ("max_drop", "max_baseline_drop"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise CheckInputError(f"invalid --{name.replace('_', '-')} {value}: use 0 or more percentage points")
        for name in ("min_agreement", "min_cosine"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= 1:
                raise CheckInputError(f"invalid --{name.replace('_', '-')} {value}: use a fraction between 0 and 1, "
                                      "for example 0.99")

    @property
    def baseline_limit(self) -> float | None:
        return self.max_baseline_drop if self.max_baseline_drop is not None else self.max_drop


@dataclass
class CheckRequest:
    """One gate run: the float model, the artifacts, the images and what to compare against.

    `loaded` is the float model (a `LoadedModel`). `limit` samples that many images
    deterministically with `seed`. `layer_images` images (0 to skip) feed the per-layer error
    analysis of INT8 artifacts.
    """

    loaded: object
    artifacts: list[Path]
    data: Path
    thresholds: Thresholds = field(default_factory=Thresholds)
    baseline: Path | None = None
    update_baseline: bool = False
    limit: int | None = None
    seed: int = 0
    threads: int | None = None
    layer_images: int = 8
    worst_count: int = 10


@dataclass
class CheckResult:
    """One threshold applied to one model: a JUnit test case."""

    model: str
    name: str
    passed: bool
    value: float | None
    limit: float | None
    message: str
    skipped: bool = False


@dataclass
class ModelScores:
    """Numbers for the float model or one artifact on the gate's images."""

    name: str
    runtime: str
    target: str | None = None
    precision: str | None = None
    path: str | None = None
    sha256: str | None = None
    images: int = 0
    top1: float | None = None
    top5: float | None = None
    drop_points: float | None = None  # float top-1 minus this top-1, in percentage points
    lost: int | None = None  # images the float model classifies right and this model wrong
    gained: int | None = None  # the reverse
    agreement: float | None = None  # fraction of images with the float model's top-1
    top1_in_float_top5: float | None = None
    mean_cosine: float | None = None
    min_cosine: float | None = None
    max_abs_logit_diff: float | None = None
    seconds: float = 0.0
    baseline: dict | None = None
    error: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class InputConfig:
    """Input settings shared by a group of artifacts: preprocessing and square resolution."""

    preprocessing: Preprocessing
    resolution: int

    def key(self) -> str:
        return json.dumps([self.preprocessing.to_dict(), self.resolution], sort_keys=True)


@dataclass
class Evaluation:
    """Logits of the float model and each artifact on the same kept images, per input config."""

    samples: list[Sample]
    labels: np.ndarray | None  # model class index per image, None without labels
    float_logits: dict[str, np.ndarray]  # input-config key → (N, classes)
    artifact_logits: dict[str, np.ndarray]  # artifact name → (N, classes)
    artifact_config: dict[str, str]  # artifact name → input-config key
    errors: dict[str, str]
    seconds: dict[str, float]
    skipped: list[str]


@dataclass
class ArtifactInfo:
    """An artifact to score, with its sidecar and the input it expects."""

    path: Path
    name: str
    sidecar: dict
    config: InputConfig

    @property
    def precision(self) -> str:
        return str(self.sidecar.get("precision"))

    @property
    def target(self) -> str:
        return str(self.sidecar.get("target"))


def read_artifacts(paths: list[Path]) -> list[ArtifactInfo]:
    """Read each artifact's sidecar and check that the file is the one the sidecar describes."""
    if not paths:
        raise CheckInputError("no artifact given: pass --artifact with a .pte, .tflite or .onnx file from edgeeff export")
    infos, names = [], set()
    for path in paths:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"artifact not found: {path}; pass a file written by edgeeff export")
        runtime_for(path)
        sidecar = read_sidecar(path)
        if sidecar.get("sha256") and sha256_file(path) != sidecar["sha256"]:
            raise CheckInputError(f"{path} does not match its sidecar's sha256; the file was replaced: re-export it")
        try:
            preprocessing = Preprocessing.from_dict(sidecar["preprocessing"])
            resolution = int(sidecar["model"]["resolution"])
        except (KeyError, TypeError) as exc:
            raise CheckInputError(f"sidecar of {path} has no preprocessing or resolution ({exc}); re-export it") from exc
        name = path.name
        if name in names:
            raise CheckInputError(f"two artifacts are named {name}: pass each artifact once, or rename one")
        names.add(name)
        infos.append(ArtifactInfo(path=path, name=name, sidecar=sidecar, config=InputConfig(preprocessing, resolution)))
    return infos


def class_mapping(folder_classes: list[str], model_labels: list[str] | None, num_classes: int) -> tuple[list[int], str]:
    """Map each ImageFolder class (sorted sub-folder names) to a model class index.

    Folder names that all appear among the model's label names map by name. Otherwise, a
    folder with exactly as many classes as the model maps in sorted order, the ImageFolder
    convention (ImageNet's sorted WordNet ids give the standard class indices). Returns the
    mapping and how it was made.
    """
    if model_labels:
        index = {name: i for i, name in enumerate(model_labels)}
        if all(name in index for name in folder_classes):
            return [index[name] for name in folder_classes], "by name"
    if len(folder_classes) == num_classes:
        return list(range(num_classes)), "by sorted folder order"
    known = f" and its class names ({', '.join(model_labels[:3])}, ...) do not match" if model_labels else ""
    raise CheckInputError(f"the data folder has {len(folder_classes)} classes ({', '.join(folder_classes[:3])}, ...) "
                          f"but the model has {num_classes}{known}; name the sub-folders after the model's labels, "
                          "or use a folder with one sub-folder per model class")


def data_fingerprint(root: Path, samples: list[Sample]) -> str:
    """Hash the relative paths, labels and bytes of the images, so a baseline names its exact data."""
    digest = hashlib.sha256()
    for sample in samples:
        digest.update(f"{sample.path.relative_to(root)}\0{sample.label}\0".encode())
        digest.update(hashlib.sha256(sample.path.read_bytes()).digest())
    return digest.hexdigest()


def float_logits(model, images: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.from_numpy(np.ascontiguousarray(images))).numpy().astype(np.float32)


def evaluate(loaded, artifacts: list[ArtifactInfo], samples: list[Sample], class_map: list[int] | None,
             threads: int | None, progress: Callable[[int, int], None] | None = None) -> Evaluation:
    """Run the float model and every artifact over `samples`, `DEFAULT_CHUNK` images at a time.

    `class_map` turns a sample's folder class into the model's class index; None means the
    folder is unlabelled.

    An artifact that fails while running is recorded in `errors` and left out of the rest of
    the run; the others continue. Unreadable images are skipped for every model alike.
    """
    import torch

    configs: dict[str, InputConfig] = {}
    for info in artifacts:
        configs.setdefault(info.config.key(), info.config)
    runners, errors, seconds = {}, {}, {info.name: 0.0 for info in artifacts}
    for info in artifacts:
        try:
            runners[info.name] = open_runner(info.path, threads)
        except RuntimeUnavailable as exc:
            raise CheckInputError(str(exc)) from exc
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    model = loaded.model.eval()
    kept_samples: list[Sample] = []
    kept_labels: list[int] = []
    float_parts: dict[str, list[np.ndarray]] = {key: [] for key in configs}
    artifact_parts: dict[str, list[np.ndarray]] = {info.name: [] for info in artifacts}
    report = LoadReport()
    seconds[FLOAT_NAME] = 0.0
    try:
        for start in range(0, len(samples), DEFAULT_CHUNK):
            chunk = samples[start:start + DEFAULT_CHUNK]
            arrays: dict[str, np.ndarray] = {}
            kept: list[Sample] | None = None
            for key, config in configs.items():
                batch, chunk_kept = load_batch(chunk, config.preprocessing, config.resolution,
                                               report if kept is None else None)
                if kept is not None and len(chunk_kept) != len(kept):
                    raise CheckInputError("an image decoded for one preprocessing but not another; "
                                          "remove the unreadable files from the data folder")
                kept = chunk_kept
                arrays[key] = batch
                started = time.perf_counter()
                float_parts[key].append(float_logits(model, batch))
                seconds[FLOAT_NAME] += time.perf_counter() - started
            for info in artifacts:
                if info.name in errors:
                    continue
                started = time.perf_counter()
                try:
                    logits = runners[info.name].run_many(arrays[info.config.key()].astype(np.float32))
                except Exception as exc:  # runtimes raise many types; one broken artifact must not stop the rest
                    first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                    errors[info.name] = f"{runtime_for(info.path)} failed: {type(exc).__name__}: {first_line}"
                    continue
                seconds[info.name] += time.perf_counter() - started
                artifact_parts[info.name].append(np.asarray(logits, dtype=np.float32))
            kept_samples.extend(kept or [])
            if class_map is not None:
                kept_labels.extend(class_map[s.label] for s in kept or [])
            if progress:
                progress(min(start + DEFAULT_CHUNK, len(samples)), len(samples))
    finally:
        torch.set_num_threads(previous_threads)
    float_logits_by_config = {key: np.concatenate(parts) for key, parts in float_parts.items()}
    artifact_logits = {name: np.concatenate(parts) for name, parts in artifact_parts.items() if name not in errors}
    labels = np.array(kept_labels, dtype=np.int64) if class_map is not None else None
    return Evaluation(samples=kept_samples, labels=labels,
                      float_logits=float_logits_by_config, artifact_logits=artifact_logits,
                      artifact_config={info.name: info.config.key() for info in artifacts}, errors=errors,
                      seconds=seconds, skipped=report.skipped)


def topk_accuracy(logits: np.ndarray, labels: np.ndarray, k: int) -> float:
    k = min(k, logits.shape[1])
    top = np.argsort(-logits, axis=1)[:, :k]
    return float((top == labels[:, None]).any(axis=1).mean())


def score_float(logits: np.ndarray, labels: np.ndarray | None, seconds: float) -> ModelScores:
    scores = ModelScores(name=FLOAT_NAME, runtime="pytorch", precision="fp32", images=len(logits), seconds=seconds)
    if labels is not None:
        scores.top1 = topk_accuracy(logits, labels, 1)
        scores.top5 = topk_accuracy(logits, labels, 5)
    return scores


def score_artifact(info: ArtifactInfo, logits: np.ndarray, reference: np.ndarray, labels: np.ndarray | None,
                   seconds: float) -> ModelScores:
    """Score one artifact against the labels and against the float model's logits on the same images."""
    scores = ModelScores(name=info.name, runtime=runtime_for(info.path), target=info.target,
                         precision=info.precision, path=str(info.path), sha256=info.sidecar.get("sha256"),
                         images=len(logits), seconds=seconds)
    if logits.shape != reference.shape:
        scores.error = f"output shape {logits.shape} differs from the float model's {reference.shape}"
        return scores
    if not np.isfinite(logits).all():
        scores.error = f"{int((~np.isfinite(logits)).any(axis=1).sum())} images gave NaN or Inf logits"
        return scores
    agreement = compare_logits(logits, reference)
    scores.agreement = agreement["top1_agreement"]
    scores.top1_in_float_top5 = agreement["top1_in_float_top5"]
    scores.mean_cosine = agreement["mean_cosine"]
    scores.min_cosine = agreement["min_cosine"]
    scores.max_abs_logit_diff = agreement["max_abs_logit_diff"]
    if labels is not None:
        scores.top1 = topk_accuracy(logits, labels, 1)
        scores.top5 = topk_accuracy(logits, labels, 5)
        float_right = reference.argmax(1) == labels
        right = logits.argmax(1) == labels
        scores.lost = int((float_right & ~right).sum())
        scores.gained = int((~float_right & right).sum())
        scores.drop_points = (float_right.mean() - right.mean()) * 100.0 + 0.0  # + 0.0 turns -0.0 into 0.0
    return scores


# Comparisons allow this much rounding slack, so a drop of exactly the limit passes.
EPSILON = 1e-9


def apply_thresholds(scores: ModelScores, thresholds: Thresholds, labelled: bool) -> list[CheckResult]:
    """Apply the float-relative thresholds to one artifact's scores."""
    if scores.error:
        return [CheckResult(scores.name, "runs", False, None, None, f"{scores.name}: {scores.error}")]
    results = [CheckResult(scores.name, "runs", True, None, None, f"{scores.name} ran on {scores.images} images")]
    if labelled and thresholds.max_drop is not None:
        passed = scores.drop_points <= thresholds.max_drop + EPSILON
        results.append(CheckResult(
            scores.name, "top-1 drop vs float", passed, scores.drop_points, thresholds.max_drop,
            f"{scores.name}: top-1 {scores.top1:.2%}, a drop of {scores.drop_points:.2f} points from float "
            f"(limit {thresholds.max_drop:g}; {scores.lost} images lost, {scores.gained} gained)"))
    if thresholds.min_agreement is not None:
        passed = scores.agreement >= thresholds.min_agreement - EPSILON
        results.append(CheckResult(
            scores.name, "agreement with float", passed, scores.agreement, thresholds.min_agreement,
            f"{scores.name}: top-1 agrees with float on {scores.agreement:.2%} of images "
            f"(minimum {thresholds.min_agreement:.2%})"))
    if thresholds.min_cosine is not None:
        passed = scores.mean_cosine >= thresholds.min_cosine - EPSILON
        results.append(CheckResult(
            scores.name, "logit cosine vs float", passed, scores.mean_cosine, thresholds.min_cosine,
            f"{scores.name}: mean logit cosine {scores.mean_cosine:.4f} (minimum {thresholds.min_cosine:.4f})"))
    return results


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(-1, keepdims=True)


def _class_name(index: int, labels: list[str] | None) -> str:
    return labels[index] if labels and index < len(labels) else str(index)


def worst_classes(evaluation: Evaluation, scores: list[ModelScores], model_labels: list[str] | None,
                  count: int) -> list[dict]:
    """Rank classes by how often the artifacts' top-1 differs from the float model's.

    Classes are the true labels on a labelled folder and the float model's predictions on an
    unlabelled one. Each entry names the artifact whose top-1 in that class fell the most.
    """
    names = [s.name for s in scores if s.name in evaluation.artifact_logits]
    if not names or not evaluation.samples:
        return []
    reference_by_name = {n: evaluation.float_logits[evaluation.artifact_config[n]] for n in names}
    first = reference_by_name[names[0]]
    classes = evaluation.labels if evaluation.labels is not None else first.argmax(1)
    rows = []
    for cls in np.unique(classes):
        members = classes == cls
        disagreements, worst, worst_key = 0, None, None
        for name in names:
            reference = reference_by_name[name][members]
            predicted = evaluation.artifact_logits[name][members].argmax(1)
            changed = int((predicted != reference.argmax(1)).sum())
            disagreements += changed
            if evaluation.labels is not None and changed:
                drop = ((reference.argmax(1) == cls).mean() - (predicted == cls).mean()) * 100.0
                # The worst artifact loses the most accuracy in the class, then changes the most predictions.
                if worst_key is None or (drop, changed) > worst_key:
                    worst_key = (drop, changed)
                    worst = (name, drop, float((predicted == cls).mean()), float((reference.argmax(1) == cls).mean()))
        if disagreements == 0:
            continue
        row = {"class": int(cls), "name": _class_name(int(cls), model_labels), "images": int(members.sum()),
               "disagreements": disagreements, "disagreement_rate": disagreements / (members.sum() * len(names))}
        if worst is not None:
            row.update({"worst_artifact": worst[0], "worst_drop_points": worst[1], "worst_artifact_top1": worst[2],
                        "float_top1": worst[3]})
        rows.append(row)
    rows.sort(key=lambda r: (-r["disagreement_rate"], -r.get("worst_drop_points", 0.0), r["class"]))
    return rows[:count]


def worst_images(evaluation: Evaluation, scores: list[ModelScores], model_labels: list[str] | None,
                 count: int) -> list[dict]:
    """List the images whose top-1 changed under the most artifacts, lowest logit cosine first."""
    names = [s.name for s in scores if s.name in evaluation.artifact_logits]
    if not names or not evaluation.samples:
        return []
    disagreeing = np.zeros(len(evaluation.samples), dtype=np.int64)
    min_cosine = np.ones(len(evaluation.samples))
    for name in names:
        reference = evaluation.float_logits[evaluation.artifact_config[name]]
        logits = evaluation.artifact_logits[name]
        disagreeing += logits.argmax(1) != reference.argmax(1)
        cosine = (logits * reference).sum(1) / np.maximum(
            np.linalg.norm(logits, axis=1) * np.linalg.norm(reference, axis=1), 1e-12)
        min_cosine = np.minimum(min_cosine, cosine)
    order = sorted(np.flatnonzero(disagreeing), key=lambda i: (-disagreeing[i], min_cosine[i]))
    rows = []
    for i in order[:count]:
        reference = evaluation.float_logits[evaluation.artifact_config[names[0]]][i]
        probabilities = softmax(reference.astype(np.float64))
        row = {"image": str(evaluation.samples[i].path), "float_prediction": _class_name(int(reference.argmax()), model_labels),
               "float_probability": float(probabilities.max()), "min_cosine": float(min_cosine[i]),
               "artifacts": {}}
        if evaluation.labels is not None:
            row["label"] = _class_name(int(evaluation.labels[i]), model_labels)
        for name in names:
            predicted = int(evaluation.artifact_logits[name][i].argmax())
            if predicted != int(evaluation.float_logits[evaluation.artifact_config[name]][i].argmax()):
                row["artifacts"][name] = _class_name(predicted, model_labels)
        rows.append(row)
    return rows


def read_baseline(path: Path) -> dict:
    """Read a baseline file written by `--update-baseline`."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"baseline not found: {path}; create it with --update-baseline on an accepted run")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckInputError(f"invalid baseline JSON {path}: {exc}; recreate it with --update-baseline") from exc
    if not isinstance(data, dict) or data.get("schema") != BASELINE_SCHEMA or not isinstance(data.get("models"), dict):
        raise CheckInputError(f"unsupported baseline {path} (schema {data.get('schema') if isinstance(data, dict) else None!r}); "
                              "recreate it with --update-baseline")
    return data


def baseline_metric(scores: ModelScores, labelled: bool) -> float | None:
    """Return the number a baseline tracks: top-1 with labels, agreement with float without."""
    return scores.top1 if labelled else scores.agreement


def compare_with_baseline(baseline: dict, all_scores: list[ModelScores], labelled: bool,
                          limit: float | None) -> list[CheckResult]:
    """Set each model's `baseline` entry and return one check per model that the baseline contains."""
    metric = "top-1" if labelled else "agreement with float"
    results = []
    for scores in all_scores:
        if scores.error or (not labelled and scores.name == FLOAT_NAME):
            continue
        entry = baseline["models"].get(scores.name)
        if entry is None or entry.get("value") is None:
            scores.baseline = {"missing": True}
            results.append(CheckResult(scores.name, "drop vs baseline", True, None, limit,
                                       f"{scores.name}: not in the baseline; accept it with --update-baseline",
                                       skipped=True))
            continue
        current = baseline_metric(scores, labelled)
        drop = (entry["value"] - current) * 100.0
        scores.baseline = {"value": entry["value"], "drop_points": drop,
                           "same_file": bool(scores.sha256) and scores.sha256 == entry.get("sha256")}
        if limit is None:
            continue
        passed = drop <= limit + EPSILON
        results.append(CheckResult(scores.name, "drop vs baseline", passed, drop, limit,
                                   f"{scores.name}: {metric} {current:.2%}, a drop of {drop:.2f} points from the "
                                   f"baseline's {entry['value']:.2%} (limit {limit:g})"))
    return results


def version_changes(old: dict, new: dict) -> dict[str, list]:
    """Return {package: [baseline version, current version]} for every package that differs."""
    return {name: [old.get(name), new.get(name)] for name in sorted(set(old) | set(new)) if old.get(name) != new.get(name)}


def baseline_document(report: dict, all_scores: list[ModelScores]) -> dict:
    labelled = report["labelled"]
    models = {}
    for scores in all_scores:
        if scores.error:
            continue
        models[scores.name] = {"value": baseline_metric(scores, labelled), "top1": scores.top1, "top5": scores.top5,
                               "agreement": scores.agreement, "mean_cosine": scores.mean_cosine,
                               "sha256": scores.sha256, "runtime": scores.runtime, "precision": scores.precision}
    return {"schema": BASELINE_SCHEMA, "created": report["created"], "metric": "top1" if labelled else "agreement",
            "data": {key: report["data"][key] for key in ("path", "images", "labelled", "fingerprint")},
            "checkpoint_sha256": report["float"].get("checkpoint_sha256"),
            "thresholds": report["thresholds"], "tool_versions": report["tool_versions"], "models": models}


def _choose_samples(request: CheckRequest) -> tuple[list[Sample], list[str] | None]:
    data = Path(request.data)
    if not data.is_dir():
        raise FileNotFoundError(f"data folder not found: {data}; pass --data with an ImageFolder tree or a folder of images")
    return sample_images(data, request.limit, request.seed), image_folder_classes(data)


def _float_twins(artifacts: list[ArtifactInfo]) -> dict[tuple[str, str], ArtifactInfo]:
    """Index FP32 artifacts by (target, input config), to serve as per-layer references."""
    return {(info.target, info.config.key()): info for info in artifacts if info.precision == "fp32"}


def _export_float_onnx(loaded, resolution: int, folder: Path) -> Path:
    """Export the float model to FP32 ONNX the way `edgeeff export` does, as a per-layer reference."""
    from edgeeff.export.base import ExportRequest
    from edgeeff.export.onnx import export_onnx

    path = folder / "float.onnx"
    export_onnx(ExportRequest(model=loaded.model, resolution=resolution, precision="fp32", path=path))
    return path


def layer_report(loaded, artifacts: list[ArtifactInfo], images_by_config: dict[str, np.ndarray],
                 warnings: list[str]) -> dict:
    """Per-layer error of each INT8 artifact; failures become warnings, never gate failures."""
    from edgeeff import check_layers

    twins = _float_twins(artifacts)
    report = {}
    for info in artifacts:
        if info.precision != "int8":
            continue
        images = images_by_config.get(info.config.key())
        if images is None or not len(images):
            continue
        twin = twins.get((info.target, info.config.key()))
        suffix = info.path.suffix.lower()
        try:
            if suffix == ".tflite":
                if twin is not None:
                    reference: bytes | Path = twin.path
                else:
                    from edgeeff.export.tflite import convert_float

                    reference = convert_float(loaded.model, info.config.resolution)
                report[info.name] = check_layers.tflite_layer_errors(info.path, reference, images)
            elif suffix == ".onnx":
                if twin is not None:
                    report[info.name] = check_layers.onnx_layer_errors(info.path, twin.path, images)
                else:
                    with tempfile.TemporaryDirectory(prefix="edgeeff-check-") as work:
                        reference_path = _export_float_onnx(loaded, info.config.resolution, Path(work))
                        report[info.name] = check_layers.onnx_layer_errors(info.path, reference_path, images)
            else:
                report[info.name] = {"skipped": "the XNNPACK delegate in a .pte exposes no intermediate tensors; "
                                                "see the .tflite or .onnx INT8 artifact of the same model"}
        except Exception as exc:  # the analysis is advisory: report why it is missing, keep the gate's verdict
            first_line = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            warnings.append(f"per-layer error of {info.name} unavailable: {type(exc).__name__}: {first_line}")
    return report


def _load_baseline(request: CheckRequest, warnings: list[str]) -> dict | None:
    """Read the baseline to compare against; with --update-baseline a missing or unreadable one is replaced."""
    if request.baseline is None:
        if request.update_baseline:
            raise CheckInputError("--update-baseline needs --baseline FILE: the file to write the accepted numbers to")
        return None
    if not request.update_baseline:
        return read_baseline(request.baseline)
    if not Path(request.baseline).exists():
        return None
    try:
        return read_baseline(request.baseline)
    except CheckInputError as exc:
        warnings.append(f"replacing the unreadable baseline: {exc}")
        return None


def _check_artifacts_fit(loaded, artifacts: list[ArtifactInfo], warnings: list[str]) -> list[str] | None:
    """Reject artifacts with another class count; warn about another checkpoint or preprocessing.

    Returns the model's class names: the checkpoint's, else the first sidecar's.
    """
    model_labels = loaded.labels
    num_classes = loaded.num_classes
    for info in artifacts:
        sidecar_classes = int(info.sidecar["model"].get("num_classes", num_classes))
        if sidecar_classes != num_classes:
            raise CheckInputError(f"{info.name} has {sidecar_classes} classes but the float model has {num_classes}; "
                                  "pass the checkpoint the artifact was exported from")
        model_labels = model_labels or load_labels(info.sidecar.get("labels"), num_classes)
        exported_from = info.sidecar.get("weights", {}).get("checkpoint_sha256")
        if exported_from and loaded.checkpoint_sha256 and exported_from != loaded.checkpoint_sha256:
            warnings.append(f"{info.name} was exported from another checkpoint (sha256 {exported_from[:12]}, float "
                            f"model {loaded.checkpoint_sha256[:12]}), so its drops include that difference")
        if info.config.preprocessing != loaded.preprocessing:
            warnings.append(f"{info.name} uses preprocessing {info.config.preprocessing.name!r} from its sidecar and "
                            f"the checkpoint records {loaded.preprocessing.name!r}. The float model is fed the "
                            "sidecar's, as the artifact is")
    return model_labels


def _check_baseline_data(baseline: dict, path: Path, fingerprint: str, image_count: int) -> None:
    if baseline["data"].get("fingerprint") != fingerprint:
        raise CheckInputError(f"baseline {path} was measured on other images "
                              f"({baseline['data'].get('images')} images, fingerprint "
                              f"{str(baseline['data'].get('fingerprint'))[:12]}; now {image_count} images, "
                              f"{fingerprint[:12]}); rerun with the same --data/--limit/--seed, or accept the new "
                              "data with --update-baseline")


def _score_all(evaluation: Evaluation, artifacts: list[ArtifactInfo]) -> tuple[ModelScores, list[ModelScores]]:
    """Score the float model (on the first input config) and every artifact against its own float reference."""
    first_config = next(iter(evaluation.float_logits))
    float_scores = score_float(evaluation.float_logits[first_config], evaluation.labels, evaluation.seconds[FLOAT_NAME])
    artifact_scores = []
    for info in artifacts:
        if info.name in evaluation.errors:
            scores = ModelScores(name=info.name, runtime=runtime_for(info.path), target=info.target,
                                 precision=info.precision, path=str(info.path), sha256=info.sidecar.get("sha256"),
                                 error=evaluation.errors[info.name])
        else:
            reference = evaluation.float_logits[info.config.key()]
            scores = score_artifact(info, evaluation.artifact_logits[info.name], reference, evaluation.labels,
                                    evaluation.seconds[info.name])
        artifact_scores.append(scores)
    return float_scores, artifact_scores


def _layer_images(evaluation: Evaluation, artifacts: list[ArtifactInfo], count: int) -> dict[str, np.ndarray]:
    """Preprocess the first `count` scored images once per input config, for the per-layer analysis."""
    images_by_config: dict[str, np.ndarray] = {}
    if count <= 0:
        return images_by_config
    subset = evaluation.samples[:count]
    for info in artifacts:
        if info.config.key() not in images_by_config:
            images_by_config[info.config.key()], _ = load_batch(subset, info.config.preprocessing,
                                                                  info.config.resolution)
    return images_by_config


def run_check(request: CheckRequest, progress: Callable[[int, int], None] | None = None) -> dict:
    """Score the float model and every artifact, apply the thresholds and the baseline; return the report.

    Raises CheckInputError (or FileNotFoundError) for input that cannot be checked. The
    report's "passed" is False when any threshold fails or any artifact fails to run.
    With `update_baseline`, the baseline file is written only when the run passes.
    """
    started = time.perf_counter()
    thresholds = request.thresholds
    thresholds.validate()
    check_threads(request.threads, usable_cores(), "this host")
    loaded = request.loaded
    if not getattr(loaded, "trained", True):
        raise CheckInputError("the float model has untrained weights: pass --checkpoint with the trained checkpoint "
                              "the artifacts were exported from")
    artifacts = read_artifacts(request.artifacts)
    samples, folder_classes = _choose_samples(request)
    labelled = folder_classes is not None
    if not labelled and thresholds.min_agreement is None and thresholds.min_cosine is None:
        raise CheckInputError(f"{request.data} has no labels (no class sub-folders), so --max-drop cannot be checked; "
                              "pass --min-agreement and/or --min-cosine")
    warnings: list[str] = []
    model_labels = _check_artifacts_fit(loaded, artifacts, warnings)
    class_map, mapping_method = (None, None)
    if labelled:
        class_map, mapping_method = class_mapping(folder_classes, model_labels, loaded.num_classes)

    fingerprint = data_fingerprint(Path(request.data), samples)
    baseline = _load_baseline(request, warnings)
    if baseline is not None and not request.update_baseline:
        _check_baseline_data(baseline, request.baseline, fingerprint, len(samples))

    evaluation = evaluate(loaded, artifacts, samples, class_map, request.threads, progress)
    if not evaluation.samples:
        raise CheckInputError(f"no readable images in {request.data}")
    float_scores, artifact_scores = _score_all(evaluation, artifacts)
    if len(evaluation.float_logits) > 1:
        warnings.append("artifacts use different preprocessing or resolutions. Each is compared with the float model "
                        "fed the same input, and the float row shows the first artifact's input")

    checks: list[CheckResult] = []
    for scores in artifact_scores:
        checks.extend(apply_thresholds(scores, thresholds, labelled))
    all_scores = [float_scores, *artifact_scores]
    baseline_info = None
    current_versions = tool_versions()
    if baseline is not None:
        baseline_checks = compare_with_baseline(baseline, all_scores, labelled, thresholds.baseline_limit)
        baseline_info = {"path": str(request.baseline), "created": baseline.get("created"),
                         "tool_version_changes": version_changes(baseline.get("tool_versions", {}), current_versions),
                         "updated": False}
        # While accepting a new baseline, the old one is shown for comparison but does not gate.
        if request.update_baseline:
            baseline_info["compared_only"] = True
        else:
            checks.extend(baseline_checks)

    images_by_config = _layer_images(evaluation, artifacts, request.layer_images)
    layers = layer_report(loaded, artifacts, images_by_config, warnings) if images_by_config else {}

    passed = all(c.passed for c in checks)
    report = {
        "passed": passed,
        "labelled": labelled,
        "mode": "labelled" if labelled else "unlabelled: agreement and logit cosine only",
        "data": {"path": str(request.data), "images": len(evaluation.samples), "labelled": labelled,
                 "classes": len(folder_classes) if labelled else None, "class_mapping": mapping_method,
                 "fingerprint": fingerprint, "limit": request.limit, "seed": request.seed,
                 "skipped": evaluation.skipped},
        "float": {**float_scores.to_dict(), "checkpoint": loaded.checkpoint,
                  "checkpoint_sha256": loaded.checkpoint_sha256, "variant": loaded.variant.name},
        "artifacts": [s.to_dict() for s in artifact_scores],
        "thresholds": {**asdict(thresholds), "max_baseline_drop": thresholds.baseline_limit},
        "checks": [asdict(c) for c in checks],
        "failures": [c.message for c in checks if not c.passed],
        "worst_classes": worst_classes(evaluation, artifact_scores, model_labels, request.worst_count),
        "worst_images": worst_images(evaluation, artifact_scores, model_labels, request.worst_count),
        "layers": layers,
        "baseline": baseline_info,
        "warnings": warnings,
        "tool_versions": current_versions,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if request.update_baseline:
        if passed:
            write_json_atomic(request.baseline, baseline_document(report, all_scores))
            report["baseline"] = {**(baseline_info or {}), "path": str(request.baseline), "updated": True}
        else:
            report["warnings"].append(f"baseline {request.baseline} not updated because the run failed its thresholds")
    report["seconds"] = round(time.perf_counter() - started, 2)
    return report
