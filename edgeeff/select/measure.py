"""Measuring a candidate for real: export on demand through the cache, profile on the device, store the record.

A stored measurement is reused when the results database has one for the same device
fingerprint, artifact sha256, thread count and runtime version. Where the device object names
its timing tool (host and adb), the stored record must come from the same tool.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from edgeeff.profile import Artifact, Measurement, ProfileSettings, ResultsDatabase
from edgeeff.profile.devices import TARGETS
from edgeeff.select.cache import ExportCache, CachedArtifact, export_key
from edgeeff.select.candidates import Candidate, MeasuredPoint

log = logging.getLogger(__name__)

# The runtime that runs each export target, as the profile records name it.
TARGET_RUNTIME = {"executorch": "executorch", "tflite": "litert", "onnx": "onnxruntime"}
RUNNER_METHOD = "edgeeff-runner"


class SelectStepError(RuntimeError):
    """An export or a profile run that the selection needed failed."""


@dataclass
class CheckpointInfo:
    """A trained checkpoint given to select: its spec, sha256, variant and class count."""

    spec: str
    sha256: str
    variant: str
    num_classes: int


@dataclass
class ExportSettings:
    """Export settings of the candidates: target, precision, CPU family and calibration.

    Few calibration images suffice for latency: the INT8 graph, and so its speed, does not
    depend on the ranges. Artifacts meant for shipping need `edgeeff export` with a full
    calibration set.
    """

    target: str
    precision: str
    arch: str
    calib: Path | None = None
    calib_size: int = 32
    verify_size: int = 4
    seed: int = 0
    num_classes: int = 1000
    trust_checkpoint: bool = False
    checkpoints: dict[str, CheckpointInfo] = field(default_factory=dict)  # by variant name

    def __post_init__(self):
        if self.target not in TARGETS:
            raise ValueError(f"unknown target {self.target!r}: use one of {', '.join(TARGETS)}")
        if self.precision not in ("fp32", "int8"):
            raise ValueError(f"invalid precision {self.precision!r}: use fp32 or int8")
        if self.calib_size < 1:
            raise ValueError(f"invalid --calib-size {self.calib_size}: use a positive number of images")


def point_from_record(record: Measurement, source: str) -> MeasuredPoint:
    return MeasuredPoint(median_ms=record.median_ms, p90_ms=record.p90_ms, p99_ms=record.p99_ms, source=source,
                         artifact=record.artifact_path or record.artifact_name, sha256=record.artifact_sha256,
                         created_at=record.created_at)


class DeviceMeasurer:
    """Export, profile and store candidates on one opened device; counts what it did."""

    def __init__(self, device, device_info: dict, profile_settings: ProfileSettings, export: ExportSettings,
                 cache: ExportCache, database: ResultsDatabase | None, remeasure: bool = False,
                 on_message: Callable[[str], None] | None = None):
        self.device = device
        self.device_info = device_info
        self.profile_settings = profile_settings
        self.export = export
        self.cache = cache
        self.database = database
        self.remeasure = remeasure
        self.on_message = on_message or (lambda message: None)
        self.runtime = TARGET_RUNTIME[export.target]
        self.runtime_version = (device_info.get("runtime_versions") or {}).get(self.runtime)
        binaries = getattr(device, "benchmark_binaries", None)
        if binaries is None:
            self.method = None  # an agent decides on its side; any tool's record is accepted
        else:
            binary = binaries.get(self.runtime)
            self.method = Path(binary).name if binary else RUNNER_METHOD
        self.exports = 0
        self.cache_hits = 0
        self.profiles = 0
        self.artifacts: dict[str, CachedArtifact] = {}

    def key(self, candidate: Candidate) -> dict:
        from edgeeff.sidecar import tool_versions

        checkpoint = self.export.checkpoints.get(candidate.name) if candidate.checkpoint else None
        num_classes = checkpoint.num_classes if checkpoint else self.export.num_classes
        calibration = {"source": str(self.export.calib) if self.export.calib else "bundled",
                       "size": self.export.calib_size, "seed": self.export.seed}
        return export_key(variant=candidate.variant, resolution=candidate.resolution, num_classes=num_classes,
                          precision=self.export.precision, target=self.export.target, arch=self.export.arch,
                          checkpoint_sha256=checkpoint.sha256 if checkpoint else None, calibration=calibration,
                          tool_versions=tool_versions())

    def lookup(self, candidate: Candidate) -> MeasuredPoint | None:
        """Return a stored measurement of the candidate's cached artifact, without exporting or profiling."""
        if self.remeasure or self.database is None:
            return None
        cached = self.cache.lookup(self.key(candidate))
        if cached is None:
            return None
        self.cache_hits += 1
        self.artifacts[candidate.label] = cached
        record = self._stored(cached.sha256)
        return point_from_record(record, "stored") if record else None

    def _stored(self, sha256: str) -> Measurement | None:
        fingerprint = self.device_info.get("fingerprint", "")
        for _, record in self.database.query(fingerprint=fingerprint, sha256=sha256, status="ok"):
            if record.threads != self.profile_settings.threads:
                continue
            if self.runtime_version and record.runtime_version != self.runtime_version:
                continue
            if self.method and record.method != self.method:
                continue
            return record
        return None

    def artifact(self, candidate: Candidate) -> CachedArtifact:
        """Return the candidate's artifact from the cache, exporting it first when it is missing."""
        if candidate.label in self.artifacts:
            return self.artifacts[candidate.label]
        key = self.key(candidate)
        cached = self.cache.lookup(key)
        if cached is not None:
            self.cache_hits += 1
        else:
            cached = self._export(candidate, key)
            self.exports += 1
        self.artifacts[candidate.label] = cached
        return cached

    def _export(self, candidate: Candidate, key: dict) -> CachedArtifact:
        from edgeeff.checkpoints import untrained_model, with_export_resolution
        from edgeeff.checkpoints.resolve import resolve_model
        from edgeeff.export.pipeline import ExportOptions, export_model

        self.on_message(f"export {candidate.label} {self.export.target} {self.export.precision}")
        started = time.perf_counter()
        if candidate.checkpoint:
            loaded = resolve_model(checkpoint=candidate.checkpoint, trust_checkpoint=self.export.trust_checkpoint,
                                   resolution=candidate.resolution)
        else:
            loaded = with_export_resolution(untrained_model(candidate.variant, self.export.num_classes),
                                            candidate.resolution)
        folder = self.cache.entry_dir(key)
        options = ExportOptions(targets=[self.export.target], precisions=[self.export.precision], output=folder,
                                calib=self.export.calib, calib_size=self.export.calib_size,
                                verify_size=self.export.verify_size, arch=self.export.arch, seed=self.export.seed,
                                command=f"edgeeff select (candidate {candidate.label})")
        record = export_model(loaded, options)[0]
        if not record.ok:
            raise SelectStepError(f"export of {candidate.label} failed: {record.error}")
        self.on_message(f"exported {record.path.name} in {time.perf_counter() - started:.0f} s")
        return self.cache.store(key, record.path, record.sidecar)

    def measure(self, candidate: Candidate) -> MeasuredPoint:
        """Export the candidate if needed, then reuse a stored measurement or profile it on the device."""
        cached = self.artifact(candidate)
        if not self.remeasure and self.database is not None:
            stored = self._stored(cached.sha256)
            if stored is not None:
                return point_from_record(stored, "stored")
        self.on_message(f"profile {cached.path.name} on {self.device.name}")
        record = self.device.profile(Artifact.open(cached.path), self.profile_settings)
        self.profiles += 1
        if self.database is not None:
            self.database.add(record)
        if not record.ok:
            raise SelectStepError(f"profiling {candidate.label} on {self.device.name} failed: {record.error}")
        return point_from_record(record, "measured")
