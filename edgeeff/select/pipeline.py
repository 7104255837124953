"""`select_model`: from a device, a budget and a list of models to a decision and its record.

Steps: resolve the device profile, which gives the budget, metric, runtime and thread
defaults. Build the candidates with their counts and attach accuracy. Open the device and run
the measuring loop, with exports through the cache and measurements through the results
database. Last, build the JSON decision record.
"""

from __future__ import annotations

import platform
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from edgeeff.profile import ProfileSettings, ResultsDatabase, open_device, resolve_profile
from edgeeff.profile.local import check_threads
from edgeeff.select.accuracy import attach_accuracy, read_accuracy
from edgeeff.select.cache import ExportCache
from edgeeff.select.candidates import build_candidates, parse_models
from edgeeff.select.decide import decision_record
from edgeeff.select.measure import TARGET_RUNTIME, CheckpointInfo, DeviceMeasurer, ExportSettings
from edgeeff.select.search import (DEFAULT_FIT_POINTS, DEFAULT_MAX_FIT_ERROR, DeviceContext, Selection,
                                   SelectionSettings, run_selection)

DEFAULT_TARGET = "tflite"
DEFAULT_WARMUP = 10
DEFAULT_RUNS = 50
DEFAULT_CALIB_SIZE = 32
DEFAULT_VERIFY_SIZE = 4


@dataclass
class SelectRequest:
    """Everything `edgeeff select` takes; None fields fall back to the device profile, then the defaults.

    `variants` are released or custom-φ variants; `resolutions` are the parsed --resolutions
    items. `checkpoints` are checkpoint specs, each applied to the variant it loads as.
    """

    device: str = "host"
    budget_ms: float | None = None
    metric: str | None = None
    target: str | None = None
    precision: str = "fp32"
    variants: list = field(default_factory=lambda: parse_models(None))
    resolutions: list = field(default_factory=lambda: ["native"])
    checkpoints: list[str] = field(default_factory=list)
    trust_checkpoint: bool = False
    num_classes: int | None = None
    accuracy_files: list[str] = field(default_factory=list)
    max_fit_error: float = DEFAULT_MAX_FIT_ERROR
    fit_points: int = DEFAULT_FIT_POINTS
    measure_all: bool = False
    threads: int | None = None
    warmup: int | None = None
    runs: int | None = None
    calib: Path | None = None
    calib_size: int = DEFAULT_CALIB_SIZE
    verify_size: int = DEFAULT_VERIFY_SIZE
    arch: str | None = None
    cache_dir: Path | None = None
    db_path: Path | None = None
    save: bool = True
    remeasure: bool = False
    token: str | None = None
    benchmark_binaries: dict[str, str] = field(default_factory=dict)
    adb: str | None = None
    timeout_s: float | None = None
    command: str | None = None


@dataclass
class SelectResult:
    """A finished selection with its JSON record and what it cost (exports, profile runs)."""

    selection: Selection
    record: dict
    device_name: str
    target: str
    precision: str
    exports: int
    profiles: int
    untrained: bool


def arch_of(machine: str | None) -> str:
    """Return the export CPU family (arm or x86) for a machine name such as aarch64 or x86_64."""
    machine = (machine or platform.machine()).lower()
    return "arm" if machine.startswith(("arm", "aarch64")) else "x86"


def load_checkpoints(specs: list[str], trust: bool) -> dict[str, CheckpointInfo]:
    """Load each checkpoint once to learn its variant, sha256 and class count; key them by variant."""
    from edgeeff.checkpoints.resolve import resolve_model

    found: dict[str, CheckpointInfo] = {}
    for spec in specs:
        loaded = resolve_model(checkpoint=spec, trust_checkpoint=trust)
        name = loaded.variant.name
        if name in found:
            raise ValueError(f"two checkpoints for {name}: {found[name].spec} and {spec}; pass one per variant")
        found[name] = CheckpointInfo(spec=spec, sha256=loaded.checkpoint_sha256, variant=name,
                                     num_classes=loaded.num_classes)
    return found


def select_model(request: SelectRequest, on_message: Callable[[str], None] | None = None,
                 on_event: Callable[[dict], None] | None = None) -> SelectResult:
    """Run `edgeeff select`: measure as few candidates as needed and decide.

    Raises ValueError for invalid input, DeviceError when the device cannot be reached, and
    SelectStepError when an export or profile run that the decision needs fails.
    """
    profile = resolve_profile(request.device)
    budget = request.budget_ms if request.budget_ms is not None else profile.budget_ms
    if budget is None:
        raise ValueError(f"no latency budget: pass --budget-ms, or set budget: {{ms: ...}} in the device profile "
                         f"of {profile.name}")
    metric = request.metric or profile.budget_metric
    settings = SelectionSettings(budget_ms=budget, metric=metric, max_fit_error=request.max_fit_error,
                                 fit_points=request.fit_points, measure_all=request.measure_all,
                                 by_accuracy=bool(request.accuracy_files))
    target = request.target or profile.runtime or DEFAULT_TARGET
    if target not in TARGET_RUNTIME:
        raise ValueError(f"unknown target {target!r}: use one of {', '.join(TARGET_RUNTIME)}")
    threads = request.threads if request.threads is not None else profile.threads
    profile_settings = ProfileSettings(
        threads=threads,
        warmup=request.warmup if request.warmup is not None else
        (profile.warmup if profile.warmup is not None else DEFAULT_WARMUP),
        runs=request.runs or profile.runs or DEFAULT_RUNS)

    checkpoints = load_checkpoints(request.checkpoints, request.trust_checkpoint)
    names = {variant.name for variant in request.variants}
    for info in checkpoints.values():
        if info.variant not in names:
            raise ValueError(f"checkpoint {info.spec} is {info.variant}, which is not among the candidates "
                             f"({', '.join(sorted(names))}); add it to --models")
    num_classes = request.num_classes or next((c.num_classes for c in checkpoints.values()), 1000)
    candidates = build_candidates(request.variants, request.resolutions, num_classes,
                                  {name: info.spec for name, info in checkpoints.items()})

    if request.accuracy_files:
        entries = [entry for path in request.accuracy_files for entry in read_accuracy(path)]
        if not attach_accuracy(candidates, entries, request.precision, target):
            listed = ", ".join(sorted({f"{e.model}@{e.resolution}" if e.resolution else e.model for e in entries}))
            raise ValueError(f"no accuracy entry matches a candidate: the files list {listed}, the candidates are "
                             f"{', '.join(c.label for c in candidates)}; an entry without @resolution applies to "
                             "the native resolution only")

    database = ResultsDatabase(request.db_path) if request.save else None
    cache = ExportCache(request.cache_dir)
    device = open_device(profile, token=request.token, benchmark_binaries=request.benchmark_binaries,
                         adb=request.adb, timeout_s=request.timeout_s)
    try:
        info = device.info()
        # Rejected here, before the first candidate is exported, not when it is profiled.
        check_threads(threads, info.get("cores"), profile.name)
        export = ExportSettings(target=target, precision=request.precision,
                                arch=request.arch or arch_of(info.get("machine")), calib=request.calib,
                                calib_size=request.calib_size, verify_size=request.verify_size,
                                num_classes=num_classes, trust_checkpoint=request.trust_checkpoint,
                                checkpoints=checkpoints)
        measurer = DeviceMeasurer(device, info, profile_settings, export, cache, database,
                                  remeasure=request.remeasure, on_message=on_message)
        context = DeviceContext(name=profile.name, precision=request.precision, threads=threads,
                                cores=info.get("cores"))
        selection = run_selection(candidates, settings, measurer.measure, measurer.lookup, on_event, context)
    finally:
        device.close()

    untrained = any(c.checkpoint is None for c in candidates)
    record = decision_record(selection, {
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "command": request.command,
        "device": {"name": profile.name, "kind": profile.kind, "fingerprint": info.get("fingerprint"),
                   "cpu_model": info.get("cpu_model"), "board": info.get("board"), "cores": info.get("cores"),
                   "runtime_versions": info.get("runtime_versions")},
        "target": target,
        "runtime": TARGET_RUNTIME[target],
        "precision": request.precision,
        "arch": export.arch,
        "profile_settings": profile_settings.to_dict(),
        "weights": {"checkpoints": {name: {"path": c.spec, "sha256": c.sha256} for name, c in checkpoints.items()},
                    "untrained_candidates": [c.label for c in candidates if c.checkpoint is None],
                    "note": ("untrained weights: latency-only selection, never an accuracy claim" if untrained
                             else None)},
        "calibration": {"source": str(request.calib) if request.calib else "bundled photos",
                        "images": request.calib_size,
                        "note": "few calibration images: enough for latency, not for shipping INT8 ranges; "
                                "export the chosen model with edgeeff export --calib-size 300 to ship it"},
        "cache": {"dir": str(cache.root), "exports": measurer.exports, "hits": measurer.cache_hits},
        "profiles": measurer.profiles,
        "results_db": str(database.path) if database else None,
    })
    return SelectResult(selection=selection, record=record, device_name=profile.name, target=target,
                        precision=request.precision, exports=measurer.exports, profiles=measurer.profiles,
                        untrained=untrained)
