"""QAT training and validation data: a labelled ImageFolder tree or an unlabelled folder, held in memory.

Accepted layouts of `--data DIR`:
- DIR/train and DIR/val, each an ImageFolder tree (one sub-folder per class): labelled;
- DIR/train and DIR/val with loose images: unlabelled;
- DIR itself an ImageFolder tree, or a folder of loose images: a deterministic share of it
  (`val_fraction`, per class when labelled) becomes the validation split.

Without labels, fine-tuning distils the float model (see `distillation_loss`), and validation
measures agreement with the float model's top-1 instead of accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F

from edgeeff.data.images import DataError, LoadReport, Sample, image_folder_classes, list_images, load_batch
from edgeeff.data.preprocess import Preprocessing
from edgeeff.train.data import ArrayDataset

UNLABELLED = -1
DEFAULT_VAL_FRACTION = 0.1


@dataclass
class QATData:
    """Training and validation arrays, whether they carry labels, and where they came from."""

    train: ArrayDataset
    val: ArrayDataset
    labelled: bool
    source: dict = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def _read(samples: list[Sample], preprocessing: Preprocessing, resolution: int, classes: list[str]) -> ArrayDataset:
    report = LoadReport()
    images, kept = load_batch(samples, preprocessing, resolution, report)
    labels = np.array([UNLABELLED if s.label is None else s.label for s in kept], dtype=np.int64)
    return ArrayDataset(images=images, labels=labels, classes=classes, files=[str(s.path) for s in kept])


def _labelled_samples(root: Path, classes: list[str]) -> list[Sample]:
    index = {name: i for i, name in enumerate(classes)}
    return [Sample(path, index[path.relative_to(root).parts[0]]) for path in list_images(root)
            if path.relative_to(root).parts[0] in index]


def _split(samples: list[Sample], val_fraction: float, seed: int) -> tuple[list[Sample], list[Sample]]:
    """Hold out `val_fraction` of the samples, per class when labelled; the same seed gives the same split."""
    from edgeeff.datasets.digits import split_indices

    if len(samples) < 2:
        raise DataError(f"only {len(samples)} image found: QAT needs at least 2, one to train and one to validate")
    labels = np.array([UNLABELLED if s.label is None else s.label for s in samples])
    train, val = split_indices(labels, val_fraction, seed)
    if len(train) == 0:
        train, val = val[1:], val[:1]
    return [samples[i] for i in train], [samples[i] for i in val]


def _class_mapping(folder_classes: list[str], model_labels: list[str] | None, num_classes: int,
                   root: Path) -> tuple[list[int], list[str]]:
    """Map folder class indices onto the model's classes; return the mapping and notes.

    With label names on the model, folders are matched by name. Without them, the sorted
    folder order is taken as the class order, which needs as many folders as classes.
    """
    if model_labels:
        missing = [name for name in folder_classes if name not in model_labels]
        if not missing:
            return [model_labels.index(name) for name in folder_classes], []
        if len(folder_classes) != num_classes:
            raise DataError(f"class folders in {root} ({', '.join(missing[:3])}...) are not among the model's "
                            f"{num_classes} labels; name the folders after the labels or pass an unlabelled folder")
        return list(range(num_classes)), [f"class folders of {root} do not match the model's label names; "
                                          "the sorted folder order is taken as the class order"]
    if len(folder_classes) != num_classes:
        raise DataError(f"{root} has {len(folder_classes)} class folders but the model has {num_classes} classes; "
                        "pass a tree with one folder per class, or an unlabelled folder for distillation")
    return list(range(num_classes)), []


def load_qat_data(root: str | Path, preprocessing: Preprocessing, resolution: int, num_classes: int,
                  model_labels: list[str] | None = None, val_fraction: float = DEFAULT_VAL_FRACTION,
                  seed: int = 0) -> QATData:
    """Read the training and validation images under `root` into memory (see the module docstring).

    NOTE: everything is decoded into float32 arrays up front (3 x resolution² x 4 bytes per
    image), which suits fine-tuning subsets, not a full ImageNet-sized set.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"data folder not found: {root}; pass an ImageFolder tree with train/ and val/, "
                        "or a folder of images")
    train_dir, val_dir = root / "train", root / "val"
    notes: list[str] = []
    if train_dir.is_dir() and val_dir.is_dir():
        train_classes, val_classes = image_folder_classes(train_dir), image_folder_classes(val_dir)
        if bool(train_classes) != bool(val_classes):
            raise DataError(f"{train_dir} and {val_dir} disagree: one has class sub-folders and the other not; "
                            "label both splits or neither")
        if train_classes:
            if set(val_classes) - set(train_classes):
                raise DataError(f"{val_dir} has classes missing from {train_dir}: "
                                f"{', '.join(sorted(set(val_classes) - set(train_classes))[:5])}")
            train_samples = _labelled_samples(train_dir, train_classes)
            val_index = {name: train_classes.index(name) for name in val_classes}
            val_samples = [Sample(s.path, val_index[val_classes[s.label]])
                           for s in _labelled_samples(val_dir, val_classes)]
            folder_classes = train_classes
        else:
            train_samples = [Sample(p) for p in list_images(train_dir)]
            val_samples = [Sample(p) for p in list_images(val_dir)]
            folder_classes = None
        layout = "train/ and val/ splits"
    else:
        folder_classes = image_folder_classes(root)
        samples = (_labelled_samples(root, folder_classes) if folder_classes
                   else [Sample(p) for p in list_images(root)])
        train_samples, val_samples = _split(samples, val_fraction, seed)
        layout = f"one folder, {val_fraction:.0%} held out for validation (seed {seed})"

    labelled = folder_classes is not None
    classes: list[str] = []
    if labelled:
        mapping, notes = _class_mapping(folder_classes, model_labels, num_classes, root)
        train_samples = [Sample(s.path, mapping[s.label]) for s in train_samples]
        val_samples = [Sample(s.path, mapping[s.label]) for s in val_samples]
        classes = list(model_labels) if model_labels else list(folder_classes)
    train = _read(train_samples, preprocessing, resolution, classes)
    val = _read(val_samples, preprocessing, resolution, classes)
    source = {"path": str(root), "layout": layout, "labelled": labelled, "train_images": len(train),
              "val_images": len(val), "classes": len(classes) if labelled else None}
    return QATData(train=train, val=val, labelled=labelled, source=source, notes=notes)


def distillation_loss(temperature: float = 1.0):
    """Return a criterion: KL divergence from the teacher's softened distribution to the student's.

    The targets are the teacher's logits. The loss is multiplied by temperature², which keeps
    gradient magnitudes comparable across temperatures (Hinton et al., 2015).
    """
    def criterion(logits: torch.Tensor, teacher_logits: torch.Tensor) -> torch.Tensor:
        student = F.log_softmax(logits / temperature, dim=1)
        teacher = F.log_softmax(teacher_logits / temperature, dim=1)
        return F.kl_div(student, teacher, log_target=True, reduction="batchmean") * temperature ** 2

    return criterion


def with_teacher_logits(batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
                        teacher: torch.nn.Module) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Replace each batch's targets with the teacher's logits on the same (augmented) images."""
    teacher.eval()
    for images, _ in batches:
        with torch.no_grad():
            logits = teacher(images)
        yield images, logits


@torch.no_grad()
def predict_logits(model, images: np.ndarray, batch_size: int = 256) -> np.ndarray:
    """Return logits for a float32 NCHW array; `model` is any callable on tensors (eval mode already set)."""
    outputs = [model(torch.from_numpy(images[i:i + batch_size])).float().numpy()
               for i in range(0, len(images), batch_size)]
    return np.concatenate(outputs) if outputs else np.empty((0, 0), np.float32)


def score_logits(logits: np.ndarray, dataset: ArrayDataset, reference_logits: np.ndarray | None) -> dict:
    """Score logits: top-1 and top-5 when labelled, and top-1 agreement with `reference_logits` when given."""
    scores: dict = {"images": int(len(logits))}
    labels = dataset.labels
    if len(labels) and (labels >= 0).all():
        top = np.argsort(-logits, axis=1)[:, :5]
        scores["top1"] = float((top[:, 0] == labels).mean())
        scores["top5"] = float((top == labels[:, None]).any(axis=1).mean())
        log_probs = torch.log_softmax(torch.from_numpy(logits), dim=1)
        scores["loss"] = float(F.nll_loss(log_probs, torch.from_numpy(labels)))
    if reference_logits is not None:
        scores["agreement"] = float((logits.argmax(1) == reference_logits.argmax(1)).mean())
        student = torch.log_softmax(torch.from_numpy(logits), dim=1)
        teacher = torch.log_softmax(torch.from_numpy(reference_logits), dim=1)
        scores["kl"] = float(F.kl_div(student, teacher, log_target=True, reduction="batchmean"))
    return scores
