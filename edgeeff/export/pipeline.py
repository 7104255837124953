"""The export pipeline: float model → (INT8) → artifact per target → verified → sidecar.

Steps, in order:
1. load the model (a checkpoint, or untrained weights that are flagged on every output);
2. read calibration photos and a held-out split at the variant's resolution;
3. compute the float model's logits on the held-out images as the reference;
4. per target and precision: the backend writes a temporary file, the artifact is verified in
   its own runtime, the sidecar is written beside it, and only then do both take their final names.
"""

from __future__ import annotations

import copy
import errno
import json
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from edgeeff.checkpoints import LoadedModel
from edgeeff.data.calibration import CalibrationData, load_calibration
from edgeeff.export.base import ARCHES, PRECISIONS, ExportDetails, ExportRequest
from edgeeff.export.verify import FP32_TOLERANCE, verify_artifact
from edgeeff.interrupts import raise_if_interrupted
from edgeeff.io import atomic_paths, check_writable_dir, file_lock, sha256_file
from edgeeff.models.counting import count_macs, count_params
from edgeeff.runtime import SUFFIX_RUNTIME
from edgeeff.sidecar import IMAGENET_LABELS, SCHEMA_VERSION, sidecar_path, tool_versions

log = logging.getLogger(__name__)

TARGETS = ("executorch", "tflite", "onnx")
SUFFIX = {"executorch": ".pte", "tflite": ".tflite", "onnx": ".onnx"}
# INT8 targets that quantize a copy of the model whose biases NNCF corrected on the ONNX graph.
# ExecuTorch's quantize_pt2e has a fast correction, but on the Lite0 checkpoint the ONNX one agreed
# with float on 70 of 78 photos against 67. TFLite corrects its int8 model layer by layer
# (edgeeff.export.tflite_bias) and takes NNCF's biases only for models too large for that.
BIAS_CORRECTED_TARGETS = ("tflite", "executorch")
RUNTIME = {target: SUFFIX_RUNTIME[suffix] for target, suffix in SUFFIX.items()}


@dataclass
class BiasCorrectionPlan:
    """The bias correction of each INT8 target in one export run.

    `nncf_targets` quantize `nncf_model` (NNCF's corrected copy and its count of changed layers).
    `tflite_images` is the number of calibration images for the TFLite backend's layer-by-layer
    correction, 0 when it is off.
    """

    nncf_targets: frozenset[str] = frozenset()
    nncf_model: tuple[torch.nn.Module, int] | None = None
    tflite_images: int = 0


def plan_bias_correction(loaded: LoadedModel, options: ExportOptions, data: CalibrationData) -> BiasCorrectionPlan:
    """Choose each INT8 target's bias correction and compute NNCF's corrected model if a target needs it."""
    if not options.bias_correction or options.qat is not None or "int8" not in options.precisions:
        return BiasCorrectionPlan()
    from edgeeff.export.tflite_bias import plan_images

    tflite_images = 0
    if "tflite" in options.targets:
        layers = sum(isinstance(m, (torch.nn.Conv2d, torch.nn.Linear)) for m in loaded.model.modules())
        macs = count_macs(loaded.model, loaded.resolution)
        tflite_images = plan_images(layers, macs / 1e9, len(data.calibration))
    nncf_targets = frozenset(t for t in options.targets
                             if t in BIAS_CORRECTED_TARGETS and not (t == "tflite" and tflite_images))
    nncf_model = None
    if nncf_targets:
        from edgeeff.quantize.bias_correction import bias_corrected_model

        nncf_model = bias_corrected_model(loaded.model, loaded.resolution, data.calibration)
    return BiasCorrectionPlan(nncf_targets, nncf_model, tflite_images)


class ExportError(RuntimeError):
    """An export or its verification failed; no artifact was left under the final name."""


def _backend(target: str) -> Callable[[ExportRequest], ExportDetails]:
    if target == "executorch":
        from edgeeff.export.executorch import export_executorch
        return export_executorch
    if target == "tflite":
        from edgeeff.export.tflite import export_tflite
        return export_tflite
    if target == "onnx":
        from edgeeff.export.onnx import export_onnx
        return export_onnx
    raise ValueError(f"unknown target {target!r}: use one of {', '.join(TARGETS)} or all")


def parse_targets(value: str) -> list[str]:
    """Parse 'all' or a comma-separated list of targets."""
    if value.strip().lower() == "all":
        return list(TARGETS)
    targets = [t.strip().lower() for t in value.split(",") if t.strip()]
    aliases = {"pte": "executorch", "et": "executorch", "litert": "tflite"}
    targets = [aliases.get(t, t) for t in targets]
    for t in targets:
        if t not in TARGETS:
            raise ValueError(f"unknown target {t!r}: use one of {', '.join(TARGETS)} or all")
    if not targets:
        raise ValueError("no target given: use --target executorch, tflite, onnx or all")
    return list(dict.fromkeys(targets))


def host_arch() -> str:
    import platform

    machine = platform.machine().lower()
    return "arm" if machine.startswith(("arm", "aarch64")) else "x86"


def artifact_name(loaded: LoadedModel, precision: str, target: str) -> str:
    """Name an artifact by variant, resolution and precision, e.g. lite0-224px-int8.tflite."""
    untrained = "" if loaded.trained else "-untrained"
    return f"{loaded.variant.name}-{loaded.resolution}px-{precision}{untrained}{SUFFIX[target]}"


@torch.no_grad()
def warm_batchnorm(model: torch.nn.Module, images: np.ndarray, batch_size: int = 8) -> None:
    """Set BatchNorm statistics of an untrained model from real images.

    Untrained BatchNorm layers have mean 0 and variance 1, so activation ranges bear no relation
    to a trained network's and INT8 latency would be measured on unrealistic graphs.
    """
    model.eval()  # dropout and stochastic depth stay off; only BatchNorm collects statistics
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    for bn in bns:
        bn.reset_running_stats()
        bn.momentum = None  # cumulative average over all warm-up batches
        bn.train()
    for start in range(0, len(images), batch_size):
        model(torch.from_numpy(images[start:start + batch_size]))
    model.eval()


@torch.no_grad()
def float_logits(model: torch.nn.Module, images: np.ndarray, batch_size: int = 16,
                 dtype: torch.dtype = torch.float32) -> np.ndarray:
    """Run `images` through `model` in batches, with inputs cast to `dtype`, and return the logits in that dtype."""
    outs = [model(torch.from_numpy(images[i:i + batch_size]).to(dtype)).numpy()
            for i in range(0, len(images), batch_size)]
    return np.concatenate(outs).astype(torch.empty(0, dtype=dtype).numpy().dtype)


class Float64Logits:
    """The float model's logits in float64, computed on first call and kept: the exact reference
    that FP32 verification falls back to when eager float32 is itself inexact (`verify_artifact`).
    """

    def __init__(self, model: torch.nn.Module, images: np.ndarray):
        self._model, self._images, self._logits = model, images, None

    def __call__(self) -> np.ndarray:
        if self._logits is None:
            exact = copy.deepcopy(self._model).double().eval()
            self._logits = float_logits(exact, self._images, batch_size=4, dtype=torch.float64)
        return self._logits


@dataclass
class ExportOptions:
    """Choices for one export run; the CLI fills these from its flags."""

    targets: list[str]
    precisions: list[str]
    output: Path
    calib: Path | None = None
    calib_size: int = 300
    verify_size: int = 16
    arch: str | None = None
    fp32_tolerance: float = FP32_TOLERANCE
    seed: int = 0
    # Carry NNCF's bias correction into the INT8 targets whose quantizers have none of their own.
    bias_correction: bool = True
    command: str | None = None
    # A finished QAT run (edgeeff.qat.export.QATExportSource). Its INT8 backends replace the
    # calibrating ones, and INT8 artifacts are verified against the QAT model, not the float one.
    qat: object | None = None


@dataclass
class ArtifactRecord:
    """One target × precision outcome: the artifact path and its sidecar, or the failure."""

    target: str
    precision: str
    path: Path | None
    sidecar: dict = field(default_factory=dict)
    error: str | None = None
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return self.error is None


def _model_metadata(loaded: LoadedModel) -> dict:
    variant = loaded.variant
    return {
        "name": variant.name,
        "family": variant.family,
        "phi": variant.phi,
        "width": variant.width,
        "depth": variant.depth,
        "resolution": variant.resolution,
        "released": variant.released,
        "params": count_params(loaded.model),
        "macs": count_macs(loaded.model, variant.resolution),
        "num_classes": loaded.num_classes,
        "padding": loaded.model.config.padding,
    }


def _weights_metadata(loaded: LoadedModel) -> dict:
    return {
        "trained": loaded.trained,
        "source": loaded.source,
        "checkpoint": loaded.checkpoint,
        "checkpoint_sha256": loaded.checkpoint_sha256,
        "warning": None if loaded.trained else "UNTRAINED WEIGHTS: for latency work only, never for accuracy",
    }


def prepare_data(loaded: LoadedModel, options: ExportOptions, progress=None) -> CalibrationData:
    data = load_calibration(options.calib, loaded.preprocessing, loaded.resolution, options.calib_size,
                            options.verify_size, options.seed, progress)
    used = len(data.calibration_files) + len(data.holdout_files)
    if data.skipped:
        log.warning("skipped %d unreadable image files in %s (first: %s)", len(data.skipped), data.source,
                    data.skipped[0])
    if data.upscaled and options.calib is None:
        # The bundled photos include crops below 224 px on purpose; a user can do nothing about them.
        log.info("%d of the %d bundled photos are smaller than %d px and were upscaled", len(data.upscaled), used,
                 loaded.resolution)
    elif data.upscaled:
        log.warning("%d of %d images in %s are smaller than %d px and were upscaled (first: %s); calibrate with "
                    "images at least as large as the model input", len(data.upscaled), used, data.source,
                    loaded.resolution, data.upscaled[0])
    if not loaded.trained:
        warm_batchnorm(loaded.model, data.calibration)
    return data


def export_one(loaded: LoadedModel, data: CalibrationData, reference: np.ndarray, target: str,
               precision: str, options: ExportOptions, model_meta: dict,
               bias_plan: BiasCorrectionPlan | None = None,
               float64_reference: Callable[[], np.ndarray] | None = None) -> ArtifactRecord:
    """Export, verify and publish one artifact; the final name appears only on success.

    `bias_plan` says which INT8 targets quantize NNCF's bias-corrected model and how many images
    the TFLite backend's own correction uses. `float64_reference` (see `Float64Logits`) lets an
    FP32 artifact be checked against exact logits when eager float32 is too far from them.
    """
    bias_plan = bias_plan or BiasCorrectionPlan()
    final = options.output / artifact_name(loaded, precision, target)
    arch = options.arch or host_arch()
    started = time.perf_counter()
    record = ArtifactRecord(target=target, precision=precision, path=None)
    try:
        # The artifact and its sidecar are renamed into place together, after verification.
        with file_lock(final), atomic_paths(final, sidecar_path(final)) as (tmp, sidecar_tmp):
            corrected = bias_plan.nncf_model
            use_corrected = corrected is not None and precision == "int8" and target in bias_plan.nncf_targets
            request = ExportRequest(model=corrected[0] if use_corrected else loaded.model,
                                    resolution=loaded.resolution, precision=precision,
                                    path=tmp, calibration=data.calibration if precision == "int8" else None,
                                    arch=arch, bias_corrected=use_corrected,
                                    bias_correction_images=bias_plan.tflite_images if target == "tflite" else 0)
            qat_backend = options.qat.backend_for(target, precision) if options.qat is not None else None
            details = (qat_backend or _backend(target))(request)
            if use_corrected:
                details.quantization["bias_correction"] = f"nncf, computed on ONNX, {corrected[1]} layers"
            export_seconds = time.perf_counter() - started
            verification = verify_artifact(tmp, data.holdout, reference, precision, options.fp32_tolerance,
                                           float64_reference=float64_reference if precision == "fp32" else None)
            from_qat = options.qat is not None and precision == "int8"
            verification["reference"] = "qat int8 model" if from_qat else "float model"
            if not verification["passed"]:
                raise ExportError(f"{target} {precision} verification failed: {verification.get('reason')}")
            sidecar = {
                "schema": SCHEMA_VERSION,
                "artifact": final.name,
                "sha256": sha256_file(tmp),
                "size_bytes": tmp.stat().st_size,
                "target": target,
                "runtime": RUNTIME[target],
                "precision": precision,
                "arch": arch,
                "model": model_meta,
                "weights": _weights_metadata(loaded),
                "labels": loaded.labels if loaded.labels else (IMAGENET_LABELS if loaded.num_classes == 1000 else None),
                "preprocessing": loaded.preprocessing.to_dict(),
                "input": {"name": "input", "shape": [1, 3, loaded.resolution, loaded.resolution],
                          "layout": details.input_layout, "dtype": details.input_dtype},
                "quantization": details.quantization,
                "graph": details.graph,
                "verification": {**verification, "holdout_source": data.source,
                                 "calibration_images": len(data.calibration) if precision == "int8" else 0,
                                 "skipped_images": len(data.skipped), "upscaled_images": len(data.upscaled)},
                "export_seconds": round(export_seconds, 2),
                "warnings": details.warnings + loaded.notes,
                "tool_versions": tool_versions(),
                "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
                "command": options.command,
            }
            sidecar_tmp.write_text(json.dumps(sidecar, indent=2) + "\n")
        record.path, record.sidecar = final, sidecar
    except ExportError as exc:
        record.error = str(exc)
    except Exception as exc:  # converters raise many types; one target's failure must not stop the rest
        log.debug("export failed", exc_info=True)
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EFBIG, errno.EDQUOT):
            record.error = (f"{target} {precision} export failed: {exc.strerror} while writing to {options.output}; "
                            "free space or pass --output on another disk")
        else:
            first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            record.error = f"{target} {precision} export failed: {type(exc).__name__}: {first_line}"
    record.seconds = time.perf_counter() - started
    return record


def export_model(loaded: LoadedModel, options: ExportOptions, progress=None,
                 on_record: Callable[[ArtifactRecord], None] | None = None) -> list[ArtifactRecord]:
    """Export `loaded` to every requested target and precision; return one record each.

    A failed target does not stop the others: its record carries the error and no file is
    left under its final name.
    """
    for p in options.precisions:
        if p not in PRECISIONS:
            raise ValueError(f"unknown precision {p!r}: use fp32, int8 or both")
    if options.arch is not None and options.arch not in ARCHES:
        raise ValueError(f"unknown arch {options.arch!r}: use {' or '.join(ARCHES)}")
    for target in options.targets:
        if target not in TARGETS:
            raise ValueError(f"unknown target {target!r}: use one of {', '.join(TARGETS)} or all")
    created = not options.output.exists()
    check_writable_dir(options.output)
    try:
        data = prepare_data(loaded, options, progress)
        reference = float_logits(loaded.model, data.holdout)
        float64_reference = Float64Logits(loaded.model, data.holdout)
        int8_reference = reference
        if options.qat is not None and "int8" in options.precisions:
            int8_reference = options.qat.int8_logits(data.holdout)
        model_meta = _model_metadata(loaded)
        bias_plan = plan_bias_correction(loaded, options, data)
        records = []
        for precision in options.precisions:
            for target in options.targets:
                raise_if_interrupted()
                record = export_one(loaded, data, int8_reference if precision == "int8" else reference, target,
                                    precision, options, model_meta, bias_plan, float64_reference)
                records.append(record)
                if on_record:
                    on_record(record)
    except BaseException:
        # Bad calibration data or an interrupt must not leave behind an empty folder this run created.
        if created:
            _remove_if_empty(options.output)
        raise
    return records


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass  # not empty (another run's files or a lock file) or already gone
