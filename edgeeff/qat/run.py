"""One QAT run: NNCF initialization, fine-tuning with checkpoints and resume, the run summary.

Files in the run folder:
- run.json: what the run fine-tunes (model options, checkpoint and its SHA-256, data), float and PTQ accuracy;
- recipe.yaml: the resolved recipe;
- nncf-init.pt: NNCF's activation ranges and corrected biases, reused on resume;
- last.pt: model, optimizer, scheduler and RNG state after the latest epoch, for `--resume`;
- best.pt: the QAT graph's state at the best validation epoch. Epoch 0 is the calibrated start,
  so a fine-tuning that never beats it on validation hands back NNCF's starting point;
- history.json and summary.json: per-epoch metrics, and float, PTQ and QAT accuracy side by side;
- int8.pt2: the best epoch as a quantize/dequantize program (torch.export, batch 1), which
  `edgeeff export --from-qat` lowers to ExecuTorch and ONNX without re-calibrating;
- qat-float.pt: the QAT-adapted float weights as an edgeeff checkpoint, for FP32 and TFLite exports.

Under torchrun each process trains on its share of every epoch's batches through
DistributedDataParallel; rank 0 writes the files.
"""

from __future__ import annotations

import copy
import json
import math
import os
import time
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np
import torch

from edgeeff.checkpoints import LoadedModel
from edgeeff.interrupts import raise_if_interrupted
from edgeeff.io import write_json_atomic
from edgeeff.qat.data import (QATData, distillation_loss, load_qat_data, predict_logits, score_logits,
                              with_teacher_logits)
from edgeeff.qat.graph import (QATModel, align_batchnorm_eps, capture_training_graph, convert_to_int8,
                               export_int8_program, float_state_dict, prepare_qat_graph, set_regularization)
from edgeeff.qat.nncf_init import NNCFInitialization, apply_biases, initialize_quantizers, nncf_initialization
from edgeeff.qat.recipe import QATRecipe, load_recipe, save_recipe
from edgeeff.train.data import array_batches
from edgeeff.train.loop import train_one_epoch, warmup_cosine

RUN_FILE = "run.json"
RECIPE_FILE = "recipe.yaml"
INIT_FILE = "nncf-init.pt"
LAST_FILE = "last.pt"
BEST_FILE = "best.pt"
HISTORY_FILE = "history.json"
SUMMARY_FILE = "summary.json"
INT8_PROGRAM_FILE = "int8.pt2"
QAT_FLOAT_FILE = "qat-float.pt"
RUN_SCHEMA = 1
# A data folder without train/ and val/ is split with this seed, whatever the recipe's seed, so
# runs with different seeds validate on the same images.
SPLIT_SEED = 0
OBSERVER_BATCH = 32
EVAL_BATCH = 256

Reporter = Callable[[str, dict], None]


class QATRunError(ValueError):
    """A run folder that cannot be used as requested: a run already there, nothing to resume, a mismatch."""


@dataclass
class QATRunRequest:
    """One `edgeeff qat` invocation.

    `loaded` is the float model to fine-tune. `model_options` records how it was chosen (the
    CLI's model options), so `--resume` can load it again. `epochs`, when set, overrides the
    recipe's epoch count, also on resume, to extend a finished run.
    """

    loaded: LoadedModel
    data: Path
    output: Path
    recipe: QATRecipe
    resume: bool = False
    epochs: int | None = None
    model_options: dict | None = None
    command: str | None = None


@dataclass
class Distributed:
    """This process's place in a torchrun job; a single process has rank 0 of 1."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed() -> Distributed:
    """Join the torchrun process group when WORLD_SIZE > 1; pick CUDA when it is available.

    Backend: NCCL on CUDA, Gloo on CPU. Without torchrun this returns a single CPU or CUDA process.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available()
    device = torch.device(f"cuda:{local_rank}" if cuda else "cpu")
    if cuda:
        torch.cuda.set_device(device)
    if world_size <= 1:
        return Distributed(device=device)
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if cuda else "gloo")
    return Distributed(rank=dist.get_rank(), world_size=dist.get_world_size(), local_rank=local_rank, device=device)


def _barrier(dist_info: Distributed) -> None:
    if dist_info.world_size > 1:
        import torch.distributed as dist

        dist.barrier()


def _report(reporter: Reporter | None, event: str, **data) -> None:
    if reporter is not None:
        reporter(event, data)


def read_run(folder: str | Path) -> dict:
    """Read a run folder's run.json; raises QATRunError when it is missing or unreadable."""
    path = Path(folder) / RUN_FILE
    if not path.is_file():
        raise QATRunError(f"no QAT run in {folder}: {RUN_FILE} is missing; pass the --output folder of an "
                          "edgeeff qat run")
    try:
        run = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise QATRunError(f"invalid {path}: {exc}; the run folder is damaged, start a new run") from exc
    if run.get("schema") != RUN_SCHEMA:
        raise QATRunError(f"unsupported run schema {run.get('schema')!r} in {path}; start a new run with this edgeeff")
    return run


def _check_output(request: QATRunRequest, dist_info: Distributed) -> dict | None:
    """Return the existing run.json when resuming; reject a clash with an existing run otherwise."""
    output = request.output
    exists = (output / RUN_FILE).is_file()
    saved_epoch = (output / LAST_FILE).is_file()
    if request.resume:
        if not exists or not saved_epoch:
            raise QATRunError(f"nothing to resume in {output}: no finished epoch was saved there; "
                              "drop --resume to start the run")
        run = read_run(output)
        if run["model"]["checkpoint_sha256"] != request.loaded.checkpoint_sha256:
            raise QATRunError(f"the run in {output} fine-tunes another checkpoint "
                              f"({run['model']['checkpoint']}); resume it with that checkpoint")
        return run
    if exists and saved_epoch:
        raise QATRunError(f"{output} already contains a QAT run: pass --resume to continue it, or another --output")
    if dist_info.is_main:
        from edgeeff.io import check_writable_dir

        check_writable_dir(output)
        # A run that stopped before its first epoch saved nothing to resume, so it starts over,
        # without an initialization that may come from other calibration settings.
        (output / INIT_FILE).unlink(missing_ok=True)
    return None


def _select_calibration(train: np.ndarray, count: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    index = np.sort(rng.permutation(len(train))[:count])
    return train[index]


class _Inference(torch.nn.Module):
    """Run a graph that rejects train()/eval() (NNCF's output) through code that calls them."""

    def __init__(self, graph: torch.nn.Module):
        super().__init__()
        self.graph = graph

    def train(self, mode: bool = True):
        self.training = mode
        return self

    def forward(self, x):
        return self.graph(x)


def _evaluate(model, data: QATData, reference: np.ndarray | None, device: torch.device) -> dict:
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()

    def run(batch: torch.Tensor) -> torch.Tensor:
        return model(batch.to(device)).cpu()

    logits = predict_logits(run, data.val.images, EVAL_BATCH)
    if was_training:
        model.train()
    return score_logits(logits, data.val, reference)


def _metric(scores: dict, labelled: bool) -> tuple[float, float]:
    """Return the value to maximise and the tie-breaker to minimise when choosing the best epoch."""
    if labelled:
        return scores["top1"], scores["loss"]
    return scores["agreement"], scores["kl"]


def _param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """Split parameters into conv and linear weights, which decay, and the rest (BatchNorm, biases, ranges)."""
    decay, no_decay = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        if parameter.ndim > 1 and name.endswith("weight"):
            decay.append(parameter)
        else:
            no_decay.append(parameter)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _optimizer(model: torch.nn.Module, recipe: QATRecipe) -> torch.optim.Optimizer:
    groups = _param_groups(model, recipe.weight_decay)
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=recipe.lr, momentum=recipe.momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr=recipe.lr)


def _scheduler(optimizer: torch.optim.Optimizer, recipe: QATRecipe, steps_per_epoch: int):
    warmup = max(1, round(recipe.warmup_epochs * steps_per_epoch)) if recipe.warmup_epochs > 0 else 0
    if recipe.schedule == "cosine":
        return warmup_cosine(optimizer, recipe.epochs * steps_per_epoch, max(1, warmup))
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: min(1.0, (step + 1) / warmup) if warmup else 1.0)


def _steps_per_epoch(images: int, batch_size: int, world_size: int) -> int:
    batches = math.ceil(images / batch_size)
    # Every process must run the same number of steps, or DDP's all-reduce waits forever.
    return batches if world_size == 1 else max(1, batches // world_size)


def _shard(batches: Iterable, dist_info: Distributed, steps: int) -> Iterator:
    """Yield this process's batches (every world_size-th), at most `steps` of them."""
    yielded = 0
    for index, batch in enumerate(batches):
        if yielded == steps:
            return
        if index % dist_info.world_size == dist_info.rank:
            yielded += 1
            yield batch


def _to_device(batches: Iterable, device: torch.device) -> Iterator:
    for images, targets in batches:
        yield images.to(device, non_blocking=True), targets.to(device, non_blocking=True)


def _counted(batches: Iterable, reporter: Reporter | None, epoch: int, total: int) -> Iterator:
    for done, batch in enumerate(batches, start=1):
        raise_if_interrupted()
        yield batch
        _report(reporter, "batch", epoch=epoch, done=done, total=total)


def _save_state(path: Path, state: dict) -> None:
    from edgeeff.io import atomic_path

    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def _initialization(request: QATRunRequest, working: torch.nn.Module, data: QATData, recipe: QATRecipe,
                    dist_info: Distributed, precomputed: NNCFInitialization | None,
                    agreement_reference: np.ndarray | None,
                    reporter: Reporter | None) -> tuple[NNCFInitialization, dict | None]:
    """Return NNCF's initialization (read back, precomputed or computed now), and PTQ scores when computed now."""
    path = request.output / INIT_FILE
    if path.is_file():
        return NNCFInitialization.load(path), None
    if precomputed is not None:
        if dist_info.is_main:
            precomputed.save(path)
        return precomputed, None
    ptq_scores = None
    if dist_info.is_main:
        _report(reporter, "stage", name="NNCF calibration")
        calibration = _select_calibration(data.train.images, recipe.calibration_size, recipe.seed)
        init, ptq_graph = nncf_initialization(working, request.loaded.resolution, calibration)
        ptq_scores = _evaluate(_Inference(ptq_graph), data, agreement_reference, torch.device("cpu"))
        init.save(path)
    _barrier(dist_info)
    if not dist_info.is_main:
        init = NNCFInitialization.load(path)
    return init, ptq_scores


def build_qat_model(float_model: torch.nn.Module, resolution: int, recipe: QATRecipe,
                    init: NNCFInitialization, observer_images: np.ndarray) -> tuple[QATModel, torch.nn.Module, dict]:
    """Build the QAT graph from a float model and NNCF's initialization.

    Returns the QATModel (in eval mode, on the CPU), the eager working copy that it was
    captured from (BatchNorm eps aligned, NNCF's biases applied, the recipe's regularization),
    and the initialization counts.
    """
    working = prepare_working_copy(float_model, recipe)
    biases_changed = apply_biases(working, init.biases)
    graph = prepare_qat_graph(capture_training_graph(working, resolution), recipe.learn_ranges)
    model = QATModel(graph, freeze_bn=True)
    model.calibrate_observers(torch.from_numpy(observer_images[:OBSERVER_BATCH]))
    counts = initialize_quantizers(model, init)
    counts["biases_changed"] = biases_changed
    return model, working, counts


def prepare_working_copy(float_model: torch.nn.Module, recipe: QATRecipe) -> torch.nn.Module:
    """Copy the float model with QAT's BatchNorm eps and the recipe's dropout and stochastic depth."""
    working = copy.deepcopy(float_model).cpu().eval()
    align_batchnorm_eps(working)
    set_regularization(working, float(recipe.dropout), float(recipe.drop_path))
    return working


def _write_final(request: QATRunRequest, model: QATModel, working: torch.nn.Module, best_state: dict,
                 data: QATData, reference: np.ndarray) -> dict:
    """Convert the best epoch to INT8, write int8.pt2 and qat-float.pt, and score the INT8 graph."""
    from edgeeff.checkpoints import save_checkpoint
    from edgeeff.io import atomic_path

    final = copy.deepcopy(model).cpu()
    final.load_state_dict(best_state)
    converted = convert_to_int8(final)
    scores = score_logits(predict_logits(converted, data.val.images, EVAL_BATCH), data.val, reference)
    program = export_int8_program(converted, request.loaded.resolution)
    with atomic_path(request.output / INT8_PROGRAM_FILE) as tmp:
        torch.export.save(program, str(tmp))
    eager = copy.deepcopy(working)
    eager.load_state_dict(float_state_dict(final, eager))
    adapted = LoadedModel(model=eager.eval(), variant=request.loaded.variant,
                          preprocessing=request.loaded.preprocessing, source="edgeeff", labels=request.loaded.labels)
    save_checkpoint(adapted, request.output / QAT_FLOAT_FILE)
    return scores


def _new_run_record(request: QATRunRequest, data: QATData, recipe: QATRecipe, dist_info: Distributed) -> dict:
    from edgeeff.sidecar import tool_versions

    loaded = request.loaded
    return {
        "schema": RUN_SCHEMA,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": request.command,
        "model": {"variant": loaded.variant.name, "phi": loaded.variant.phi, "resolution": loaded.resolution,
                  "num_classes": loaded.num_classes, "checkpoint": loaded.checkpoint,
                  "checkpoint_sha256": loaded.checkpoint_sha256, "preprocessing": loaded.preprocessing.to_dict(),
                  "labels": loaded.labels},
        "model_options": request.model_options or {},
        "data": data.source,
        "data_notes": data.notes,
        "mode": "supervised" if data.labelled and not recipe.distill else "distillation",
        "world_size": dist_info.world_size,
        "device": str(dist_info.device),
        "tool_versions": tool_versions(),
    }


def run_qat(request: QATRunRequest, reporter: Reporter | None = None,
            initialization: NNCFInitialization | None = None) -> dict:
    """Fine-tune `request.loaded` with quantization in the loop; return the run summary.

    `reporter(event, data)` receives "stage", "batch" and "epoch" events for progress output.
    `initialization` skips NNCF's calibration with a result computed before. The run resumes
    from last.pt when `request.resume` is set.
    """
    started = time.perf_counter()
    dist_info = setup_distributed()
    existing = _check_output(request, dist_info)
    _barrier(dist_info)  # every process checks the folder before rank 0 writes into it
    recipe = _resolve_recipe(request, existing)

    _report(reporter, "stage", name="reading images")
    data_path = Path(existing["data"]["path"]) if existing else Path(request.data).resolve()
    data = load_qat_data(data_path, request.loaded.preprocessing,
                         request.loaded.resolution, request.loaded.num_classes, request.loaded.labels,
                         seed=SPLIT_SEED)
    teacher = copy.deepcopy(request.loaded.model).eval()
    reference = predict_logits(teacher, data.val.images, EVAL_BATCH)
    # Without labels, validation scores agreement with the float model's logits.
    agreement_reference = None if data.labelled else reference
    run = existing or _new_run_record(request, data, recipe, dist_info)
    if existing is None:
        run["accuracy"] = {"float": score_logits(reference, data.val, agreement_reference)}
    if dist_info.is_main:
        save_recipe(recipe, request.output / RECIPE_FILE)

    model, working = _prepare_model(request, recipe, data, run, agreement_reference, dist_info, initialization,
                                    reporter)
    history, best, best_state = _fine_tune(request, recipe, data, model, teacher, agreement_reference, dist_info,
                                           reporter, run["accuracy"].get("qat_start"))

    summary = {"status": "complete", "run": str(request.output), "mode": run["mode"], "epochs": recipe.epochs,
               "best_epoch": best["epoch"], "recipe": recipe.to_dict(), "initialization": run["initialization"],
               "data": run["data"], "model": run["model"], "history": history}
    if dist_info.is_main:
        _report(reporter, "stage", name="converting the best epoch to INT8")
        qat_scores = _write_final(request, model, working, best_state, data, agreement_reference)
        summary["accuracy"] = {**run["accuracy"], "qat": qat_scores, "qat_fake_quant": best["scores"],
                               "qat_last_epoch": _last_scores(history)}
        summary["artifacts"] = {"int8_program": INT8_PROGRAM_FILE, "qat_float_checkpoint": QAT_FLOAT_FILE}
        summary["seconds"] = round(time.perf_counter() - started, 1)
        write_json_atomic(request.output / SUMMARY_FILE, summary)
    _barrier(dist_info)
    return summary


def _prepare_model(request: QATRunRequest, recipe: QATRecipe, data: QATData, run: dict,
                   agreement_reference: np.ndarray | None, dist_info: Distributed,
                   initialization: NNCFInitialization | None,
                   reporter: Reporter | None) -> tuple[QATModel, torch.nn.Module]:
    """Initialize from NNCF, build the QAT model, and record PTQ accuracy in `run` for a new run.

    Returns the QAT model and the eager copy that it was captured from.
    """
    working = prepare_working_copy(request.loaded.model, recipe)
    init, ptq_scores = _initialization(request, working, data, recipe, dist_info, initialization,
                                       agreement_reference, reporter)
    _report(reporter, "stage", name="preparing the QAT graph")
    observer_images = _select_calibration(data.train.images, OBSERVER_BATCH, recipe.seed)
    model, working, counts = build_qat_model(request.loaded.model, request.loaded.resolution, recipe, init,
                                             observer_images)
    run["initialization"] = {"tool": f"nncf {init.nncf_version} quantize_pt2e + XNNPACKQuantizer, as the "
                                     "ExecuTorch INT8 export", "calibration_images": init.calibration_images,
                             **counts}
    if "ptq" not in run["accuracy"]:
        cpu = torch.device("cpu")
        start_scores = _evaluate(model, data, agreement_reference, cpu)
        if ptq_scores is None:
            ptq_scores = {**start_scores, "source": "QAT graph before training"}
        else:
            ptq_scores["source"] = "nncf quantize_pt2e graph"
        run["accuracy"]["ptq"] = ptq_scores
        run["accuracy"]["qat_start"] = start_scores
        if dist_info.is_main:
            write_json_atomic(request.output / RUN_FILE, run)
    return model, working


def _fine_tune(request: QATRunRequest, recipe: QATRecipe, data: QATData, model: QATModel,
               teacher: torch.nn.Module, agreement_reference: np.ndarray | None, dist_info: Distributed,
               reporter: Reporter | None, start_scores: dict | None) -> tuple[list[dict], dict, dict]:
    """Train the remaining epochs, saving last.pt every epoch; return the history, best epoch and its state.

    The calibrated start, scored as `start_scores`, competes as epoch 0: an epoch becomes the
    best only when it beats the start on validation.
    """
    model.to(dist_info.device)
    trainer = _trainer(model, dist_info)
    optimizer = _optimizer(model, recipe)
    steps = _steps_per_epoch(len(data.train), recipe.batch_size, dist_info.world_size)
    scheduler = _scheduler(optimizer, recipe, steps)
    history: list[dict] = []
    best: dict | None = None
    best_state: dict | None = None
    start_epoch = 0
    # Seeded here, after NNCF and the graph capture, so a run that reuses a saved initialization
    # draws the same dropout and stochastic-depth masks as one that computed it.
    torch.manual_seed(recipe.seed)
    if request.resume:
        start_epoch, history, best = _load_last(request.output, model, optimizer, scheduler)
        best_state = torch.load(request.output / BEST_FILE, map_location="cpu", weights_only=True)
        _report(reporter, "stage", name=f"resuming after epoch {start_epoch}")
    elif start_scores is not None:
        best = {"epoch": 0, "scores": start_scores}
        best_state = _state_copy(model)
        if dist_info.is_main:
            _save_state(request.output / BEST_FILE, best_state)

    distill = recipe.distill or not data.labelled
    teacher.to(dist_info.device)
    criterion = distillation_loss(recipe.distill_temperature) if distill else None
    fill = float(data.train.images.min())
    for epoch in range(start_epoch, recipe.epochs):
        model.set_freeze_bn(epoch >= recipe.freeze_bn_epoch)
        batches = array_batches(data.train, recipe.batch_size, shuffle=True, seed=recipe.seed * 1000 + epoch,
                                max_shift=recipe.max_shift, fill=fill)
        batches = _to_device(_shard(batches, dist_info, steps), dist_info.device)
        if distill:
            batches = with_teacher_logits(batches, teacher)
        batches = _counted(batches, reporter, epoch + 1, steps)
        trained = train_one_epoch(trainer, batches, optimizer, scheduler, criterion=criterion,
                                  label_smoothing=recipe.label_smoothing, max_grad_norm=recipe.max_grad_norm)
        scores = _evaluate(model, data, agreement_reference, dist_info.device)
        entry = {"epoch": epoch + 1, "train_loss": trained["loss"],
                 "train_top1": None if distill else trained["top1"],
                 "lr": optimizer.param_groups[0]["lr"], "bn_frozen": model.freeze_bn,
                 "seconds": round(trained["seconds"], 1),
                 **{f"val_{key}": value for key, value in scores.items() if key != "images"}}
        history.append(entry)
        improved = best is None or _better(scores, best["scores"], data.labelled)
        if improved:
            best = {"epoch": epoch + 1, "scores": scores}
            best_state = _state_copy(model)
        if dist_info.is_main:
            _save_epoch(request.output, model, optimizer, scheduler, epoch + 1, history, best, best_state, improved)
        _report(reporter, "epoch", **entry, epochs=recipe.epochs, best_epoch=best["epoch"])
    return history, best, best_state


def _resolve_recipe(request: QATRunRequest, existing: dict | None) -> QATRecipe:
    """Resolve `auto` rates for the variant; on resume, read the saved recipe and apply only --epochs."""
    if existing is not None:
        recipe = load_recipe(request.output / RECIPE_FILE)
    else:
        recipe = request.recipe.resolved(request.loaded.variant.dropout)
    if request.epochs is not None:
        recipe = load_recipe(None, {**recipe.to_dict(), "epochs": request.epochs})
    recipe.validate()
    return recipe


def _trainer(model: QATModel, dist_info: Distributed) -> torch.nn.Module:
    if dist_info.world_size == 1:
        return model
    from torch.nn.parallel import DistributedDataParallel

    device_ids = [dist_info.local_rank] if dist_info.device.type == "cuda" else None
    return DistributedDataParallel(model, device_ids=device_ids)


def _better(scores: dict, best: dict, labelled: bool) -> bool:
    value, tie = _metric(scores, labelled)
    best_value, best_tie = _metric(best, labelled)
    return value > best_value or (value == best_value and tie < best_tie)


def _state_copy(model: torch.nn.Module) -> dict:
    """Return a detached CPU copy of the model's state, which later training steps leave unchanged."""
    return {name: tensor.detach().cpu().clone() for name, tensor in model.state_dict().items()}


def _last_scores(history: list[dict]) -> dict:
    last = history[-1]
    return {key[len("val_"):]: value for key, value in last.items() if key.startswith("val_")}


def _save_epoch(output: Path, model: QATModel, optimizer, scheduler, epoch: int, history: list[dict], best: dict,
                best_state: dict, improved: bool) -> None:
    if improved:
        _save_state(output / BEST_FILE, best_state)
    _save_state(output / LAST_FILE, {"epoch": epoch, "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                                     "scheduler": scheduler.state_dict(), "history": history, "best": best,
                                     "rng": torch.get_rng_state()})
    write_json_atomic(output / HISTORY_FILE, history)


def _load_last(output: Path, model: QATModel, optimizer, scheduler) -> tuple[int, list[dict], dict]:
    state = torch.load(output / LAST_FILE, map_location="cpu", weights_only=True)
    model.load_state_dict(state["model"])
    optimizer.load_state_dict(state["optimizer"])
    scheduler.load_state_dict(state["scheduler"])
    torch.set_rng_state(state["rng"])
    return int(state["epoch"]), list(state["history"]), state["best"]
