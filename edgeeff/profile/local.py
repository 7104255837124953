"""Profile artifacts on this machine, each in a fresh worker process (or a native benchmark tool)."""

from __future__ import annotations

import logging
import os
import queue
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

from edgeeff.profile import native
from edgeeff.profile.fingerprint import host_info, usable_cores
from edgeeff.profile.record import Artifact, Measurement, ProfileError, ProfileSettings, new_measurement

log = logging.getLogger(__name__)

EventCallback = Callable[[dict], None]
HEARTBEAT_S = 5.0
STDERR_TAIL_LINES = 15
# The directory that contains the edgeeff package, so the worker imports this same copy.
PACKAGE_ROOT = Path(__file__).resolve().parents[2]


def worker_argv(path: str | Path, settings: ProfileSettings, input_shape: list[int] | None = None) -> list[str]:
    argv = [sys.executable, "-m", "edgeeff.profile.worker", str(path), "--warmup", str(settings.warmup),
            "--runs", str(settings.runs), "--time-cap", str(settings.time_cap_s), "--seed", str(settings.seed)]
    if settings.threads:
        argv += ["--threads", str(settings.threads)]
    if settings.target_rse is not None:
        argv += ["--target-rse", str(settings.target_rse)]
    if input_shape:
        argv += ["--input-shape", ",".join(str(dim) for dim in input_shape)]
    return argv


def worker_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PACKAGE_ROOT), env.get("PYTHONPATH")]))
    env["PYTHONUNBUFFERED"] = "1"
    return env


def _describe_exit(returncode: int) -> str:
    if returncode < 0:
        try:
            return f"was killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"was killed by signal {-returncode}"
    return f"exited with status {returncode}"


def _stderr_tail(handle) -> str:
    handle.seek(0)
    lines = handle.read().decode(errors="replace").strip().splitlines()
    return "\n".join(lines[-STDERR_TAIL_LINES:])


def run_worker(path: str | Path, settings: ProfileSettings, on_event: EventCallback | None = None,
               input_shape: list[int] | None = None, heartbeat_s: float = HEARTBEAT_S,
               timeout_s: float | None = None) -> dict:
    """Time one artifact in a fresh worker process and return the worker's result.

    Progress events go to `on_event` as they arrive, plus a heartbeat event after `heartbeat_s`
    seconds of silence (the device agent forwards them to keep its client's connection alive).
    The worker is killed when `on_event` raises, when `timeout_s` passes, or on any other exit
    from this function, so it never outlives its caller. Raises ProfileError when the worker
    reports an error or dies.
    """
    with tempfile.TemporaryFile() as stderr:
        process = subprocess.Popen(worker_argv(path, settings, input_shape), stdout=subprocess.PIPE, stderr=stderr,
                                   stdin=subprocess.DEVNULL, env=worker_env())
        lines: queue.Queue = queue.Queue()

        def read_lines():
            for raw in process.stdout:
                lines.put(raw)
            lines.put(None)

        threading.Thread(target=read_lines, daemon=True).start()
        deadline = time.monotonic() + timeout_s if timeout_s else None
        result = error = None
        try:
            while True:
                wait = heartbeat_s
                if deadline is not None:
                    wait = min(wait, max(0.0, deadline - time.monotonic()))
                try:
                    raw = lines.get(timeout=wait)
                except queue.Empty:
                    if deadline is not None and time.monotonic() >= deadline:
                        raise ProfileError(f"profiling {Path(path).name} timed out after {timeout_s:.0f} s")
                    if on_event:
                        on_event({"event": "heartbeat"})
                    continue
                if raw is None:
                    break
                event = _parse_event(raw)
                if event is None:
                    continue
                if event.get("event") == "result":
                    result = event["result"]
                elif event.get("event") == "error":
                    error = event.get("error", "unknown error")
                elif on_event:
                    on_event(event)
            returncode = process.wait()
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            process.stdout.close()
        if error is not None:
            raise ProfileError(error)
        if result is None:
            tail = _stderr_tail(stderr)
            raise ProfileError(f"the runtime process {_describe_exit(returncode)} before reporting a result"
                               + (f"; its last output:\n{tail}" if tail else ""))
        return result


def _parse_event(raw: bytes) -> dict | None:
    import json

    try:
        event = json.loads(raw)
    except ValueError:
        log.debug("ignored non-JSON line from the worker: %r", raw[:200])
        return None
    return event if isinstance(event, dict) else None


def measurement_from_worker(record: Measurement, result: dict) -> Measurement:
    """Fill a record started by `new_measurement` with a worker's result."""
    record.runtime = result.get("runtime", record.runtime)
    record.runtime_version = result.get("runtime_version") or record.runtime_version
    record.input_shape = result.get("input_shape")
    if result.get("threads_used") is not None:
        record.extra["threads_used"] = result["threads_used"]
    record.load_ms = result.get("load_ms")
    record.first_ms = result.get("first_ms")
    record.apply_timings(result.get("timings", {}))
    record.stop_reason = result.get("stop_reason")
    record.peak_rss_mb = result.get("peak_rss_mb")
    record.baseline_rss_mb = result.get("baseline_rss_mb")
    record.extra["memory_source"] = "peak RSS of the worker process (Python, numpy and the runtime)"
    if result.get("warnings"):
        record.extra["note"] = "; ".join(result["warnings"])
    return record


def measurement_from_native(record: Measurement, parsed: dict, settings: ProfileSettings, tool: str,
                            command: str) -> Measurement:
    """Fill a record started by `new_measurement` with a native benchmark tool's parsed output."""
    record.method = tool
    record.warmup = native.effective_warmup(record.runtime, settings)
    record.target_rse = None
    record.time_cap_s = None
    extra = parsed.pop("extra", {})
    record.apply_timings(parsed)
    record.stop_reason = "runs"
    record.extra.update(extra)
    record.extra["command"] = command
    if record.peak_rss_mb is not None:
        record.extra["memory_source"] = f"peak memory reported by {tool}"
    if settings.target_rse is not None:
        record.extra["note"] = f"{tool} runs a fixed count: --target-rse was not applied"
    return record


def check_threads(threads: int | None, cores: int | None, where: str) -> None:
    if threads and cores and threads > cores:
        raise ValueError(f"--threads {threads} is more than the {cores} cores usable on {where}; "
                         f"pass --threads {cores} or fewer")


class HostDevice:
    """This machine. Artifacts run in the edgeeff runners, or in native tools given per runtime."""

    kind = "host"

    def __init__(self, name: str = "host", benchmark_binaries: dict[str, str] | None = None,
                 timeout_s: float | None = None):
        self.name = name
        self.benchmark_binaries = dict(benchmark_binaries or {})
        self.timeout_s = timeout_s

    def info(self) -> dict:
        return host_info()

    def profile(self, artifact: Artifact, settings: ProfileSettings,
                on_event: EventCallback | None = None) -> Measurement:
        check_threads(settings.threads, usable_cores(), "this host")
        record = new_measurement(artifact, self.name, self.kind, self.info(), settings)
        started = time.monotonic()
        try:
            if artifact.runtime in self.benchmark_binaries:
                binary = self.benchmark_binaries[artifact.runtime]
                argv = native.benchmark_argv(artifact.runtime, binary, str(artifact.path), settings)
                output = run_native_local(argv, self.timeout_s)
                parsed = native.parse_benchmark_output(artifact.runtime, output, settings)
                measurement_from_native(record, parsed, settings, Path(binary).name, native.shell_command(argv))
            else:
                result = run_worker(artifact.path, settings, on_event, artifact.input_shape(),
                                    timeout_s=self.timeout_s)
                measurement_from_worker(record, result)
        except ProfileError as exc:
            record.status, record.error = "failed", str(exc)
        record.duration_s = round(time.monotonic() - started, 3)
        return record

    def close(self) -> None:
        pass


def run_native_local(argv: list[str], timeout_s: float | None) -> str:
    """Run a native benchmark tool here; return its standard output and error together."""
    try:
        completed = subprocess.run(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                   timeout=timeout_s)
    except FileNotFoundError as exc:
        raise ProfileError(f"benchmark tool not found: {argv[0]}; pass its path with --benchmark-binary") from exc
    except subprocess.TimeoutExpired as exc:
        raise ProfileError(f"{Path(argv[0]).name} timed out after {timeout_s:.0f} s") from exc
    output = completed.stdout.decode(errors="replace")
    if completed.returncode != 0:
        raise ProfileError(f"{Path(argv[0]).name} {_describe_exit(completed.returncode)}; its output ends with:\n"
                           f"{output.strip()[-native.OUTPUT_TAIL_CHARS:]}")
    return output
