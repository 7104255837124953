"""Describe the machine a measurement ran on: CPU model, cores, OS and runtime versions.

The fingerprint hashes only what decides speed and stays fixed across reboots and upgrades of
the Python packages (CPU model, usable cores, architecture, OS family, board model). Runtime
versions are stored beside it, so one device keeps one fingerprint across runtime upgrades and
the results database can still tell the versions apart.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

RUNTIME_PACKAGES = {"onnxruntime": "onnxruntime", "litert": "ai-edge-litert", "executorch": "executorch"}
IDENTITY_KEYS = ("system", "machine", "cpu_model", "board", "cores")


def runtime_versions() -> dict[str, str]:
    """Return the installed runtime, numpy and Python versions, read from package metadata.

    Package metadata is read instead of importing the runtimes: importing ExecuTorch's Python
    bindings loads torch (executorch 1.5.1).
    """
    versions = {"python": platform.python_version()}
    for runtime, package in RUNTIME_PACKAGES.items():
        try:
            versions[runtime] = metadata.version(package)
        except metadata.PackageNotFoundError:
            continue
    try:
        versions["numpy"] = metadata.version("numpy")
    except metadata.PackageNotFoundError:
        pass
    return versions


def _read_text(path: str) -> str | None:
    try:
        return Path(path).read_text(errors="replace")
    except OSError:
        return None


def _cpuinfo_field(cpuinfo: str, *names: str) -> str | None:
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() in names and value.strip():
            return value.strip()
    return None


def cpu_model() -> str:
    """Return the CPU model name as the OS reports it, or the architecture when it reports none."""
    if sys.platform == "darwin":
        try:
            output = subprocess.run(["sysctl", "-n", "machdep.cpu.brand_string"], capture_output=True,
                                    text=True, timeout=5)
            if output.returncode == 0 and output.stdout.strip():
                return output.stdout.strip()
        except (OSError, subprocess.TimeoutExpired):
            pass
    cpuinfo = _read_text("/proc/cpuinfo") or ""
    # x86 reports "model name"; Arm boards often report only "Hardware" or nothing useful.
    name = _cpuinfo_field(cpuinfo, "model name", "hardware", "processor name", "cpu model")
    if name and not name.isdigit():
        return name
    return platform.processor() or platform.machine() or "unknown"


def board_model() -> str | None:
    """Return the board name from the device tree (Raspberry Pi, Jetson), when the OS has one."""
    text = _read_text("/proc/device-tree/model")
    return text.strip("\x00\n ") if text else None


def usable_cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def total_memory_mb() -> int | None:
    meminfo = _read_text("/proc/meminfo")
    if meminfo:
        value = _cpuinfo_field(meminfo, "memtotal")
        if value and value.split()[0].isdigit():
            return int(value.split()[0]) // 1024
    if sys.platform == "darwin":
        try:
            output = subprocess.run(["sysctl", "-n", "hw.memsize"], capture_output=True, text=True, timeout=5)
            return int(output.stdout.strip()) // (1 << 20)
        except (OSError, ValueError, subprocess.TimeoutExpired):
            return None
    return None


def fingerprint_of(info: dict) -> str:
    """Hash the identity fields of a device description into a 16-hex-digit fingerprint."""
    identity = {key: info.get(key) for key in IDENTITY_KEYS}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


@functools.lru_cache(maxsize=1)
def host_info() -> dict:
    """Describe this machine; `fingerprint` identifies it in the results database."""
    info = {
        "system": platform.system(),
        "machine": platform.machine(),
        "cpu_model": cpu_model(),
        "board": board_model(),
        "cores": usable_cores(),
        "logical_cpus": os.cpu_count(),
        "memory_mb": total_memory_mb(),
        "os": platform.platform(),
        "runtime_versions": runtime_versions(),
    }
    info["fingerprint"] = fingerprint_of(info)
    return info
