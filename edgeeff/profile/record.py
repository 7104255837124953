"""The measurement record and the settings of one profile run, shared by every device kind."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path

from edgeeff.runtime import SUFFIX_RUNTIME

RECORD_SCHEMA = 1
FORMAT_BY_SUFFIX = {".onnx": "onnx", ".tflite": "tflite", ".pte": "pte"}


class ProfileError(RuntimeError):
    """A profile could not be measured (runtime failure, unreachable device, bad tool output)."""


class DeviceError(ProfileError):
    """A device could not be reached or used: no artifact on it can be measured."""


@dataclass
class ProfileSettings:
    """How to time one artifact.

    `threads` None leaves the runtime's default thread count. With `target_rse` (a fraction, 0.02
    for 2 %), timing goes on past `runs` until the relative standard error of the median is below
    it or `time_cap_s` seconds of timed runs have passed.
    """

    threads: int | None = None
    warmup: int = 10
    runs: int = 50
    target_rse: float | None = None
    time_cap_s: float = 60.0
    seed: int = 0

    def __post_init__(self):
        if self.threads is not None and self.threads < 1:
            raise ValueError(f"invalid thread count {self.threads}: pass --threads 1 or more")
        if self.warmup < 0:
            raise ValueError(f"invalid warm-up count {self.warmup}: pass --warmup 0 or more")
        if self.runs < 1:
            raise ValueError(f"invalid run count {self.runs}: pass --runs 1 or more")
        if self.target_rse is not None and not 0 < self.target_rse < 1:
            raise ValueError(f"invalid target RSE {self.target_rse}: pass a fraction such as 0.02 or 2%")
        if self.time_cap_s <= 0:
            raise ValueError(f"invalid time cap {self.time_cap_s} s: pass --time-cap above 0")

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ProfileSettings":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in names})


def parse_target_rse(text: str | float | None) -> float | None:
    """Parse `2%` or `0.02` into the fraction 0.02."""
    if text is None or text == "":
        return None
    raw = str(text).strip()
    try:
        if raw.endswith("%"):
            value = float(raw[:-1]) / 100
        else:
            value = float(raw)
            if value >= 1:
                raise ValueError(f"invalid target RSE {raw}: write a percentage such as {raw}% or a fraction below 1")
    except ValueError as exc:
        if "target RSE" in str(exc):
            raise
        raise ValueError(f"invalid target RSE {raw!r}: write a percentage such as 2% or a fraction such as 0.02") from exc
    if not 0 < value < 1:
        raise ValueError(f"invalid target RSE {raw}: it must be between 0 and 100 %")
    return value


@dataclass
class Measurement:
    """One profile of one artifact on one device: what was run, where, how, and the timings.

    Times are in milliseconds, memory in MiB. `device_fingerprint` and `artifact_sha256` key the
    results database. Fields a device kind cannot measure stay None (for example p90 from LiteRT's
    `benchmark_model`, which prints only p5, median and p95). `extra` contains tool-specific details.
    """

    artifact_name: str
    artifact_sha256: str
    artifact_bytes: int
    artifact_format: str
    runtime: str
    device_name: str
    device_kind: str
    device_fingerprint: str
    status: str = "ok"
    error: str | None = None
    artifact_path: str | None = None
    runtime_version: str | None = None
    runtime_versions: dict = field(default_factory=dict)
    device_info: dict = field(default_factory=dict)
    method: str = "edgeeff-runner"
    threads: int | None = None
    warmup: int | None = None
    runs: int | None = None
    target_rse: float | None = None
    time_cap_s: float | None = None
    input_shape: list | None = None
    variant: str | None = None
    phi: float | None = None
    resolution: int | None = None
    precision: str | None = None
    macs: int | None = None
    load_ms: float | None = None
    first_ms: float | None = None
    min_ms: float | None = None
    median_ms: float | None = None
    p90_ms: float | None = None
    p95_ms: float | None = None
    p99_ms: float | None = None
    max_ms: float | None = None
    mean_ms: float | None = None
    std_ms: float | None = None
    rse: float | None = None
    median_ci_low_ms: float | None = None
    median_ci_high_ms: float | None = None
    stop_reason: str | None = None
    peak_rss_mb: float | None = None
    baseline_rss_mb: float | None = None
    duration_s: float | None = None
    created_at: str = ""
    edgeeff_version: str | None = None
    schema: int = RECORD_SCHEMA
    extra: dict = field(default_factory=dict)

    def __post_init__(self):
        if not self.created_at:
            self.created_at = datetime.now(timezone.utc).isoformat(timespec="seconds")
        if self.edgeeff_version is None:
            self.edgeeff_version = edgeeff_version()

    @property
    def ok(self) -> bool:
        return self.status == "ok"

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=False)

    @classmethod
    def from_dict(cls, data: dict) -> "Measurement":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in data.items() if key in names})

    def apply_timings(self, timings: dict) -> None:
        """Copy the keys of a timing summary (see `stats.summarize`) that name fields of this record."""
        names = {f.name for f in dataclasses.fields(self)}
        for key, value in timings.items():
            if key in names:
                setattr(self, key, value)

    def apply_sidecar(self, sidecar: dict | None) -> None:
        """Fill the model fields from an artifact's sidecar JSON, when there is one."""
        if not sidecar:
            return
        model = sidecar.get("model") or {}
        self.variant = model.get("name", self.variant)
        self.phi = model.get("phi", self.phi)
        self.resolution = model.get("resolution", self.resolution)
        self.macs = model.get("macs", self.macs)
        self.precision = sidecar.get("precision", self.precision)
        if sidecar.get("sha256") and sidecar["sha256"] != self.artifact_sha256:
            self.extra["sidecar_warning"] = "sidecar sha256 differs from the artifact: the sidecar is stale"


@dataclass
class Artifact:
    """An artifact file to profile: its identity (sha256), format and sidecar, read once on this side."""

    path: Path
    sha256: str
    size_bytes: int
    format: str
    runtime: str
    sidecar: dict | None = None
    sidecar_warning: str | None = None

    @property
    def name(self) -> str:
        return self.path.name

    @classmethod
    def open(cls, path: str | Path) -> "Artifact":
        path = Path(path)
        fmt = artifact_format(path)
        if not path.is_file():
            raise FileNotFoundError(f"artifact not found: {path}; pass the path of an exported .onnx, .tflite or .pte file")
        sidecar, warning = read_sidecar_if_any(path)
        return cls(path=path, sha256=sha256_file(path), size_bytes=path.stat().st_size, format=fmt,
                   runtime=runtime_of(path), sidecar=sidecar, sidecar_warning=warning)

    def input_shape(self) -> list[int] | None:
        """Return the input shape the sidecar records, used where the artifact's own shape is dynamic."""
        shape = ((self.sidecar or {}).get("input") or {}).get("shape")
        return [int(dim) for dim in shape] if shape else None


def new_measurement(artifact: Artifact, device_name: str, device_kind: str, device_info: dict,
                    settings: ProfileSettings) -> Measurement:
    """Start a record for `artifact` on a device, with the settings and sidecar filled in."""
    record = Measurement(
        artifact_name=artifact.name, artifact_sha256=artifact.sha256, artifact_bytes=artifact.size_bytes,
        artifact_format=artifact.format, runtime=artifact.runtime, artifact_path=str(artifact.path),
        device_name=device_name, device_kind=device_kind, device_fingerprint=device_info.get("fingerprint", ""),
        device_info={key: value for key, value in device_info.items() if key != "fingerprint"},
        runtime_versions=dict(device_info.get("runtime_versions") or {}),
        threads=settings.threads, warmup=settings.warmup, runs=settings.runs, target_rse=settings.target_rse,
        time_cap_s=settings.time_cap_s if settings.target_rse is not None else None)
    record.runtime_version = record.runtime_versions.get(artifact.runtime)
    record.apply_sidecar(artifact.sidecar)
    if artifact.sidecar_warning:
        record.extra["sidecar_warning"] = artifact.sidecar_warning
    return record


def edgeeff_version() -> str | None:
    try:
        return metadata.version("edgeeff")
    except metadata.PackageNotFoundError:
        return None


def artifact_format(path: str | Path) -> str:
    suffix = Path(path).suffix.lower()
    if suffix not in FORMAT_BY_SUFFIX:
        raise ValueError(f"unknown artifact type {suffix or '(no suffix)'} for {path}: use a .onnx, .tflite or .pte file")
    return FORMAT_BY_SUFFIX[suffix]


def runtime_of(path: str | Path) -> str:
    artifact_format(path)
    return SUFFIX_RUNTIME[Path(path).suffix.lower()]


def sha256_file(path: str | Path, chunk_bytes: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(chunk_bytes), b""):
            digest.update(chunk)
    return digest.hexdigest()


def read_sidecar_if_any(path: str | Path) -> tuple[dict | None, str | None]:
    """Return (sidecar, warning): the sidecar when it exists and parses, else None with the reason."""
    from edgeeff.sidecar import read_sidecar, sidecar_path

    if not sidecar_path(path).is_file():
        return None, None
    try:
        return read_sidecar(path), None
    except (ValueError, OSError) as exc:
        return None, str(exc)
