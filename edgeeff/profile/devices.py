"""Device specs and named device profiles (recipes/devices/*.yaml), and opening a device from one.

A device spec is `host`, `agent://HOST:PORT`, `adb:SERIAL`, a profile name such as `pi5`, or
the path of a profile YAML file. A profile gives the connection plus defaults for threads,
warm-up and timed runs, the preferred runtime, and a latency budget for `edgeeff select`.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from edgeeff.profile.native import parse_binary_options

DEVICES_ENV = "EDGEEFF_DEVICES_DIR"
TOKEN_ENV = "EDGEEFF_AGENT_TOKEN"
CONNECTION_TYPES = ("host", "agent", "adb")
PROFILE_KEYS = {"name", "description", "connection", "runtime", "threads", "warmup", "runs", "budget"}
CONNECTION_KEYS = {"type", "address", "token_env", "serial", "adb", "remote_dir", "benchmark_binaries", "timeout_s"}
METRICS = ("median", "p90", "p99")
# Export targets, as `edgeeff export --target` names them.
TARGETS = ("executorch", "tflite", "onnx")


@dataclass
class DeviceProfile:
    """A device as a YAML profile describes it; fields left out take the command-line defaults.

    `runtime` is the preferred export target (executorch, tflite or onnx) for `edgeeff select`.
    """

    name: str
    connection: dict = field(default_factory=lambda: {"type": "host"})
    description: str = ""
    runtime: str | None = None
    threads: int | None = None
    warmup: int | None = None
    runs: int | None = None
    budget_ms: float | None = None
    budget_metric: str = "p90"
    source: Path | None = None

    @property
    def kind(self) -> str:
        return self.connection.get("type", "host")


def profile_dirs() -> list[Path]:
    """Return the folders searched for NAME.yaml, first match wins.

    $EDGEEFF_DEVICES_DIR (several joined with the path separator), ./recipes/devices, the
    user's config folder (edgeeff/devices), then the recipes shipped beside the package.
    """
    import platformdirs

    dirs = [Path(part) for part in os.environ.get(DEVICES_ENV, "").split(os.pathsep) if part]
    dirs.append(Path.cwd() / "recipes" / "devices")
    dirs.append(Path(platformdirs.user_config_dir("edgeeff", appauthor=False)) / "devices")
    dirs.append(Path(__file__).resolve().parents[2] / "recipes" / "devices")
    unique = []
    for folder in dirs:
        if folder not in unique:
            unique.append(folder)
    return unique


def available_profiles() -> dict[str, Path]:
    found: dict[str, Path] = {}
    for folder in profile_dirs():
        if folder.is_dir():
            for path in sorted(folder.glob("*.yaml")) + sorted(folder.glob("*.yml")):
                found.setdefault(path.stem, path)
    return found


def _positive_int(data: dict, key: str, source: Path, minimum: int = 1) -> int | None:
    value = data.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise ValueError(f"invalid {key}: {value!r} in device profile {source}; write an integer >= {minimum}")
    return value


def load_profile(path: str | Path) -> DeviceProfile:
    """Read and check one device profile YAML file."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise FileNotFoundError(f"device profile not readable: {path} ({exc.strerror})") from exc
    except yaml.YAMLError as exc:
        raise ValueError(f"invalid YAML in device profile {path}: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"device profile {path} is not a mapping; see recipes/devices/host.yaml for the layout")
    unknown = set(data) - PROFILE_KEYS
    if unknown:
        raise ValueError(f"unknown keys {sorted(unknown)} in device profile {path}; allowed: {sorted(PROFILE_KEYS)}")

    connection = data.get("connection") or {"type": "host"}
    if not isinstance(connection, dict):
        raise ValueError(f"connection in device profile {path} must be a mapping with a type")
    unknown = set(connection) - CONNECTION_KEYS
    if unknown:
        raise ValueError(f"unknown connection keys {sorted(unknown)} in device profile {path}; "
                         f"allowed: {sorted(CONNECTION_KEYS)}")
    kind = connection.get("type", "host")
    if kind not in CONNECTION_TYPES:
        raise ValueError(f"invalid connection type {kind!r} in device profile {path}; use one of {CONNECTION_TYPES}")
    if kind == "agent" and not str(connection.get("address", "")).startswith("agent://"):
        raise ValueError(f"agent connection in device profile {path} needs address: agent://HOST:PORT")
    if kind == "adb" and not connection.get("serial"):
        raise ValueError(f"adb connection in device profile {path} needs serial: (see `adb devices`)")
    if connection.get("benchmark_binaries") is not None:
        connection["benchmark_binaries"] = parse_binary_options(connection["benchmark_binaries"])

    runtime = data.get("runtime")
    if runtime is not None and runtime not in TARGETS:
        raise ValueError(f"invalid runtime {runtime!r} in device profile {path}; use one of {TARGETS}")

    budget = data.get("budget") or {}
    if not isinstance(budget, dict):
        raise ValueError(f"budget in device profile {path} must be a mapping such as {{ms: 25, metric: p90}}")
    budget_ms = budget.get("ms")
    if budget_ms is not None and (not isinstance(budget_ms, (int, float)) or budget_ms <= 0):
        raise ValueError(f"invalid budget ms {budget_ms!r} in device profile {path}; write a positive number")
    metric = budget.get("metric", "p90")
    if metric not in METRICS:
        raise ValueError(f"invalid budget metric {metric!r} in device profile {path}; use one of {METRICS}")

    return DeviceProfile(
        name=str(data.get("name") or path.stem), connection=connection, description=str(data.get("description", "")),
        runtime=runtime, threads=_positive_int(data, "threads", path),
        warmup=_positive_int(data, "warmup", path, minimum=0), runs=_positive_int(data, "runs", path),
        budget_ms=float(budget_ms) if budget_ms is not None else None, budget_metric=metric, source=path)


def resolve_profile(spec: str) -> DeviceProfile:
    """Turn a device spec into a profile: a built-in kind, a profile name, or a YAML path."""
    spec = (spec or "host").strip()
    if spec == "host":
        # A host.yaml among the profile folders sets this machine's defaults and budget.
        found = available_profiles().get("host")
        profile = load_profile(found) if found else DeviceProfile(name="host")
        if profile.kind != "host":
            raise ValueError(f"device profile {found} is named host but connects by {profile.kind}; "
                             "rename it or set connection: {type: host}")
        return profile
    if spec.startswith("agent://"):
        return DeviceProfile(name=spec, connection={"type": "agent", "address": spec})
    if spec.startswith("adb:"):
        serial = spec[len("adb:"):]
        if not serial:
            raise ValueError("missing serial in --device adb:; write adb:SERIAL with a serial from `adb devices`")
        return DeviceProfile(name=spec, connection={"type": "adb", "serial": serial})
    if spec.endswith((".yaml", ".yml")) or os.sep in spec:
        return load_profile(spec)
    profiles = available_profiles()
    if spec in profiles:
        return load_profile(profiles[spec])
    close = difflib.get_close_matches(spec, list(profiles), n=1)
    hint = f"did you mean {close[0]}? " if close else ""
    known = ", ".join(sorted(profiles)) or "none found"
    raise ValueError(f"unknown device {spec!r}: {hint}use host, agent://HOST:PORT, adb:SERIAL, a profile YAML path, "
                     f"or a profile name ({known})")


def parse_agent_address(address: str) -> tuple[str, int]:
    """Split `agent://HOST:PORT` into host and port."""
    rest = address[len("agent://"):] if address.startswith("agent://") else address
    rest = rest.rstrip("/")
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"invalid agent address {address!r}: write agent://HOST:PORT, for example agent://127.0.0.1:8765")
    return host.strip("[]"), int(port)


def open_device(spec: str | DeviceProfile = "host", *, token: str | None = None,
                benchmark_binaries: dict[str, str] | None = None, adb: str | None = None,
                timeout_s: float | None = None):
    """Open the device a spec names: a HostDevice, AgentDevice or AdbDevice.

    Command-line values (`token`, `benchmark_binaries`, `adb`, `timeout_s`) override the profile's.
    The agent token comes from `token`, else the environment variable the profile's token_env
    names, else $EDGEEFF_AGENT_TOKEN.
    """
    profile = spec if isinstance(spec, DeviceProfile) else resolve_profile(spec)
    connection = profile.connection
    binaries = dict(connection.get("benchmark_binaries") or {})
    binaries.update(benchmark_binaries or {})
    timeout = timeout_s if timeout_s is not None else connection.get("timeout_s")
    if profile.kind == "host":
        from edgeeff.profile.local import HostDevice

        return HostDevice(profile.name, binaries)
    if profile.kind == "agent":
        from edgeeff.profile.client import AgentDevice

        token = token or os.environ.get(connection.get("token_env") or TOKEN_ENV) or os.environ.get(TOKEN_ENV)
        if not token:
            raise ValueError(f"no token for agent {connection['address']}: pass --token or set "
                             f"{connection.get('token_env') or TOKEN_ENV}")
        host, port = parse_agent_address(connection["address"])
        return AgentDevice(profile.name, host, port, token, read_timeout_s=timeout or 60.0)
    from edgeeff.profile.adb import AdbDevice

    return AdbDevice(profile.name, connection["serial"], adb=adb or connection.get("adb") or "adb",
                     remote_dir=connection.get("remote_dir") or "/data/local/tmp/edgeeff",
                     benchmark_binaries=binaries, timeout_s=timeout or 120.0)
