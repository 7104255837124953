"""Android devices over adb: `--device adb:SERIAL`.

The artifact is pushed to the device and timed by the platform's own benchmark tool, which
the user builds or downloads and points to per runtime (`--benchmark-binary
litert=/data/local/tmp/benchmark_model`). A path that exists on this machine is pushed too;
any other path is taken as already on the device.
"""

from __future__ import annotations

import logging
import posixpath
import shlex
import subprocess
import time
from pathlib import Path
from typing import Callable

from edgeeff.profile import native
from edgeeff.profile.fingerprint import fingerprint_of
from edgeeff.profile.local import check_threads, measurement_from_native
from edgeeff.profile.record import Artifact, DeviceError, Measurement, ProfileError, ProfileSettings, new_measurement

log = logging.getLogger(__name__)

# A benchmark of a large model on a slow phone can take minutes; other adb commands are quick.
BENCHMARK_TIMEOUT_S = 1800.0
PROPERTIES = {"manufacturer": "ro.product.manufacturer", "model": "ro.product.model", "soc": "ro.soc.model",
              "platform": "ro.board.platform", "abi": "ro.product.cpu.abi", "android": "ro.build.version.release",
              "sdk": "ro.build.version.sdk"}


class AdbDevice:
    """An Android device reached with adb; artifacts run in native benchmark tools."""

    kind = "adb"

    def __init__(self, name: str, serial: str, adb: str = "adb", remote_dir: str = "/data/local/tmp/edgeeff",
                 benchmark_binaries: dict[str, str] | None = None, timeout_s: float = 120.0,
                 benchmark_timeout_s: float = BENCHMARK_TIMEOUT_S):
        self.name = name
        self.serial = serial
        self.adb = adb
        self.remote_dir = remote_dir
        self.benchmark_binaries = dict(benchmark_binaries or {})
        self.timeout_s = timeout_s
        self.benchmark_timeout_s = benchmark_timeout_s
        self._info: dict | None = None
        self._pushed_binaries: dict[str, str] = {}

    def _run(self, *args: str, timeout_s: float | None = None, check: bool = True) -> str:
        argv = [self.adb, "-s", self.serial, *args]
        timeout = timeout_s or self.timeout_s
        try:
            completed = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                       stdin=subprocess.DEVNULL, timeout=timeout)
        except FileNotFoundError as exc:
            raise DeviceError(f"adb not found: {self.adb}; install Android platform-tools or pass --adb PATH") from exc
        except subprocess.TimeoutExpired as exc:
            raise DeviceError(f"`adb {' '.join(args[:2])}` on {self.serial} timed out after {timeout:.0f} s") from exc
        output = completed.stdout.decode(errors="replace")
        if check and completed.returncode != 0:
            raise DeviceError(f"`adb -s {self.serial} {' '.join(args[:2])}` failed with status {completed.returncode}: "
                              f"{output.strip()[-500:]}")
        return output

    def shell(self, command: str, timeout_s: float | None = None, check: bool = True) -> str:
        return self._run("shell", command, timeout_s=timeout_s, check=check)

    def info(self) -> dict:
        """Describe the device from its system properties; raises DeviceError when it is not attached."""
        if self._info is None:
            state = self._run("get-state", check=False).strip()
            if state != "device":
                raise DeviceError(f"adb device {self.serial} is not ready ({state or 'no answer'}); check `adb devices` "
                                  "and that USB debugging is allowed")
            info = {"system": "Android"}
            for key, prop in PROPERTIES.items():
                info[key] = self.shell(f"getprop {prop}").strip() or None
            cpus = self.shell("cat /proc/cpuinfo", check=False)
            info["cpu_model"] = (info.get("soc") or info.get("platform")
                                 or _cpuinfo_hardware(cpus) or info.get("model") or "unknown")
            info["machine"] = info.get("abi")
            info["board"] = " ".join(filter(None, [info.get("manufacturer"), info.get("model")])) or None
            cores = self.shell("nproc", check=False).strip()
            info["cores"] = int(cores) if cores.isdigit() else None
            info["os"] = f"Android {info.get('android')} (SDK {info.get('sdk')})"
            info["fingerprint"] = fingerprint_of(info)
            self._info = info
        return self._info

    def _binary(self, runtime: str) -> str:
        """Return the on-device path of the runtime's benchmark tool, pushing a local one first."""
        if runtime not in self.benchmark_binaries:
            tool = native.RUNTIME_TOOL[runtime]
            raise ProfileError(f"no benchmark tool for {runtime} on adb:{self.serial}; pass --benchmark-binary "
                               f"{runtime}=/data/local/tmp/{tool} (a path on the device, or a local file to push)")
        binary = self.benchmark_binaries[runtime]
        if runtime in self._pushed_binaries:
            return self._pushed_binaries[runtime]
        if Path(binary).is_file():
            remote = posixpath.join(self.remote_dir, Path(binary).name)
            self._run("push", binary, remote, timeout_s=max(self.timeout_s, 300))
            self.shell(f"chmod 755 {shlex.quote(remote)}")
            binary = remote
        self._pushed_binaries[runtime] = binary
        return binary

    def profile(self, artifact: Artifact, settings: ProfileSettings,
                on_event: Callable[[dict], None] | None = None) -> Measurement:
        info = self.info()
        check_threads(settings.threads, info.get("cores"), f"adb:{self.serial}")
        record = new_measurement(artifact, self.name, self.kind, info, settings)
        started = time.monotonic()
        try:
            self.shell(f"mkdir -p {shlex.quote(self.remote_dir)}")
            binary = self._binary(artifact.runtime)
            remote = posixpath.join(self.remote_dir, f"{artifact.sha256[:16]}-{artifact.name}")
            if on_event:
                on_event({"event": "phase", "phase": "push"})
            self._run("push", str(artifact.path), remote, timeout_s=max(self.timeout_s, 600))
            argv = native.benchmark_argv(artifact.runtime, binary, remote, settings)
            command = native.shell_command(argv)
            if on_event:
                on_event({"event": "phase", "phase": "measure", "total": settings.runs})
            # Run from the artifact's folder: tools write side files (onnxruntime_perf_test results) there.
            output = self.shell(f"cd {shlex.quote(self.remote_dir)} && {command}", timeout_s=self.benchmark_timeout_s,
                                check=False)
            parsed = native.parse_benchmark_output(artifact.runtime, output, settings)
            measurement_from_native(record, parsed, settings, posixpath.basename(binary), command)
            record.runtime_version = None
            record.extra["remote_path"] = remote
        except ProfileError as exc:
            record.status, record.error = "failed", str(exc)
        record.duration_s = round(time.monotonic() - started, 3)
        return record

    def close(self) -> None:
        pass


def _cpuinfo_hardware(text: str) -> str | None:
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip().lower() == "hardware" and value.strip():
            return value.strip()
    return None
