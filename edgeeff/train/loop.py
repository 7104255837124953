"""Training and evaluation steps as plain functions over iterables of (inputs, targets) batches.

Batches may be tensors or NumPy arrays. The same functions serve float training, QAT
fine-tuning (a quantized model is just another module) and distillation (pass a `criterion`
that compares logits with teacher outputs carried as the batch's targets).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from typing import Callable, Iterable

import numpy as np
import torch
import torch.nn.functional as F

Batch = tuple[torch.Tensor | np.ndarray, torch.Tensor | np.ndarray]
Criterion = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _as_tensor(value) -> torch.Tensor:
    return torch.from_numpy(value) if isinstance(value, np.ndarray) else value


def topk_correct(logits: torch.Tensor, labels: torch.Tensor, k: int) -> int:
    """Count rows whose label is among the `k` largest logits (k is capped at the class count)."""
    k = min(k, logits.shape[1])
    top = logits.topk(k, dim=1).indices
    return int((top == labels[:, None]).any(dim=1).sum())


def train_one_epoch(model: torch.nn.Module, batches: Iterable[Batch], optimizer: torch.optim.Optimizer,
                    scheduler=None, criterion: Criterion | None = None, label_smoothing: float = 0.0,
                    max_grad_norm: float | None = None) -> dict:
    """Run one pass of optimizer steps; return mean loss, training top-1 and counts.

    `scheduler`, when given, steps after every batch (per-step schedules such as warm-up plus
    cosine). Without `criterion`, the loss is cross-entropy with `label_smoothing`. Top-1 is
    reported only when the targets are class indices.
    """
    model.train()
    loss_sum, correct, seen, started = 0.0, 0, 0, time.perf_counter()
    for inputs, targets in batches:
        inputs, targets = _as_tensor(inputs), _as_tensor(targets)
        logits = model(inputs)
        if criterion is None:
            loss = F.cross_entropy(logits, targets, label_smoothing=label_smoothing)
        else:
            loss = criterion(logits, targets)
        if not torch.isfinite(loss):
            raise FloatingPointError(f"training loss became {loss.item()} after {seen} images; "
                                     "lower the learning rate")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if max_grad_norm is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()
        if scheduler is not None:
            scheduler.step()
        count = inputs.shape[0]
        loss_sum += float(loss.detach()) * count
        if targets.dtype in (torch.int64, torch.int32):
            correct += topk_correct(logits.detach(), targets, 1)
        seen += count
    if seen == 0:
        raise ValueError("no training batches: the training set is empty")
    return {"loss": loss_sum / seen, "top1": correct / seen, "images": seen,
            "seconds": time.perf_counter() - started}


@torch.no_grad()
def validate(model: torch.nn.Module, batches: Iterable[Batch]) -> dict:
    """Return top-1 and top-5 accuracy (fractions), mean cross-entropy loss and the image count."""
    model.eval()
    loss_sum, top1, top5, seen = 0.0, 0, 0, 0
    for inputs, labels in batches:
        inputs, labels = _as_tensor(inputs), _as_tensor(labels)
        logits = model(inputs)
        loss_sum += float(F.cross_entropy(logits, labels, reduction="sum"))
        top1 += topk_correct(logits, labels, 1)
        top5 += topk_correct(logits, labels, 5)
        seen += inputs.shape[0]
    if seen == 0:
        raise ValueError("no validation batches: the validation set is empty")
    return {"top1": top1 / seen, "top5": top5 / seen, "loss": loss_sum / seen, "images": seen}


def warmup_cosine(optimizer: torch.optim.Optimizer, total_steps: int,
                  warmup_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up from near 0 to the base learning rate, then cosine decay to 0, per step."""
    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@dataclass(frozen=True)
class FitSettings:
    """Float training from scratch: AdamW with warm-up and cosine decay, random-shift augmentation.

    `lr` is the peak learning rate, `max_shift` the augmentation's translation in px.
    """

    epochs: int = 8
    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.02
    label_smoothing: float = 0.1
    warmup_epochs: float = 1.0
    max_shift: int = 3
    seed: int = 0

    def to_dict(self) -> dict:
        return asdict(self)


def fit_float(model: torch.nn.Module, train, val, settings: FitSettings = FitSettings(),
              on_epoch: Callable[[dict], None] | None = None) -> dict:
    """Train `model` on `train` and evaluate on `val` after every epoch (both `ArrayDataset`s).

    Returns the settings, per-epoch history, the final validation numbers and the wall time.
    The final weights are kept (no best-epoch selection), so the validation set does not pick
    the checkpoint that it later scores. The fill for shifted borders is the training set's
    minimum value, i.e. the background of dark-background images such as the digits.
    """
    from edgeeff.train.data import array_batches

    if settings.epochs < 1:
        raise ValueError(f"invalid epoch count {settings.epochs}: use 1 or more")
    torch.manual_seed(settings.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=settings.lr, weight_decay=settings.weight_decay)
    steps_per_epoch = math.ceil(len(train) / settings.batch_size)
    scheduler = warmup_cosine(optimizer, settings.epochs * steps_per_epoch,
                              max(1, round(settings.warmup_epochs * steps_per_epoch)))
    fill = float(train.images.min())
    history, started = [], time.perf_counter()
    for epoch in range(settings.epochs):
        batches = array_batches(train, settings.batch_size, shuffle=True, seed=settings.seed * 1000 + epoch,
                                max_shift=settings.max_shift, fill=fill)
        trained = train_one_epoch(model, batches, optimizer, scheduler, label_smoothing=settings.label_smoothing)
        scores = validate(model, array_batches(val, 256))
        entry = {"epoch": epoch + 1, "train_loss": trained["loss"], "train_top1": trained["top1"],
                 "val_top1": scores["top1"], "val_top5": scores["top5"], "val_loss": scores["loss"],
                 "seconds": trained["seconds"]}
        history.append(entry)
        if on_epoch:
            on_epoch(entry)
    model.eval()
    final = history[-1]
    return {"settings": settings.to_dict(), "history": history,
            "val": {"top1": final["val_top1"], "top5": final["val_top5"], "loss": final["val_loss"]},
            "seconds": time.perf_counter() - started}
