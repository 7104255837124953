"""Time one artifact in this process: `python -m edgeeff.profile.worker ARTIFACT [options]`.

The parent starts one such process per artifact, so one runtime's memory and thread pools never
distort another's measurement. The process writes JSON lines to its standard output: progress
events, then one `result` or `error` event. Anything the runtimes print to standard output is
moved to standard error, so it cannot corrupt the event stream.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Callable

import numpy as np

from edgeeff.profile.stats import relative_standard_error, summarize

PROGRESS_INTERVAL_S = 0.5
# Without --target-rse the run count is fixed; with it, timing stops at this count at the latest.
MAX_RUNS = 1_000_000


def peak_rss_mb() -> float | None:
    """Return this process's peak resident set size in MiB, or None where the OS does not report it.

    Linux keeps getrusage's ru_maxrss across fork and exec, so a worker started by a large parent
    (a test run with torch loaded) would report the parent's peak. VmHWM in /proc/self/status
    belongs to the current program image only, so it is read first.
    """
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    # Linux reports kilobytes, macOS bytes.
    return peak / (1 << 20) if sys.platform == "darwin" else peak / 1024


def input_shape_for(runner_shape, fallback: list[int] | None) -> tuple[int, ...]:
    """Return a concrete input shape, replacing dynamic dimensions with the sidecar's or with 1."""
    shape = []
    for index, dim in enumerate(runner_shape):
        if isinstance(dim, (int, np.integer)) and dim > 0:
            shape.append(int(dim))
        elif fallback is not None and index < len(fallback):
            shape.append(int(fallback[index]))
        elif index == 0:
            shape.append(1)
        else:
            raise ValueError(f"input dimension {index} of the artifact is dynamic ({dim!r}) and no sidecar gives it; "
                             "re-export with a fixed input size")
    return tuple(shape)


class EventWriter:
    """Write events as JSON lines, and throttle progress events to one per interval."""

    def __init__(self, stream):
        self.stream = stream
        self.last_progress = 0.0

    def emit(self, event: dict) -> None:
        self.stream.write(json.dumps(event) + "\n")
        self.stream.flush()

    def progress(self, phase: str, done: int, total: int | None, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self.last_progress >= PROGRESS_INTERVAL_S:
            self.last_progress = now
            self.emit({"event": "progress", "phase": phase, "done": done, "total": total})


def time_runs(run: Callable[[], object], count: int, on_done: Callable[[int], None], offset: int = 0) -> list[float]:
    samples = []
    for index in range(count):
        started = time.perf_counter_ns()
        run()
        samples.append((time.perf_counter_ns() - started) / 1e6)
        on_done(offset + index + 1)
    return samples


def measure(path: str, threads: int | None, warmup: int, runs: int, target_rse: float | None, time_cap_s: float,
            seed: int, fallback_shape: list[int] | None, events: EventWriter) -> dict:
    """Load the artifact, run it once, warm it up, then time it; return the worker's result."""
    from edgeeff.runtime import open_runner

    baseline_rss = peak_rss_mb()
    events.emit({"event": "phase", "phase": "load"})
    started = time.perf_counter_ns()
    runner = open_runner(path, threads)
    load_ms = (time.perf_counter_ns() - started) / 1e6

    shape = input_shape_for(runner.input_shape, fallback_shape)
    batch = np.random.default_rng(seed).standard_normal(shape, dtype=np.float32)
    events.emit({"event": "phase", "phase": "first", "load_ms": load_ms})
    started = time.perf_counter_ns()
    output = runner.run(batch)
    first_ms = (time.perf_counter_ns() - started) / 1e6
    warnings = []
    if not np.all(np.isfinite(output)):
        warnings.append("the artifact returned NaN or Inf logits on a random input")

    def run():
        runner.run(batch)

    events.emit({"event": "phase", "phase": "warmup", "total": warmup})
    time_runs(run, warmup, lambda done: events.progress("warmup", done, warmup))

    events.emit({"event": "phase", "phase": "measure", "total": runs})
    measure_started = time.monotonic()
    samples = time_runs(run, runs, lambda done: events.progress("measure", done, runs))
    stop_reason = "runs"
    if target_rse is not None:
        # Add batches of runs until the median is known well enough or the time cap is reached.
        batch_runs = max(10, runs // 2)
        while True:
            rse = relative_standard_error(samples)
            if rse <= target_rse:
                stop_reason = "target reached"
                break
            if time.monotonic() - measure_started >= time_cap_s:
                stop_reason = "time cap"
                break
            if len(samples) >= MAX_RUNS:
                stop_reason = "max runs"
                break
            samples += time_runs(run, batch_runs, lambda done: events.progress("measure", done, None), len(samples))
    events.progress("measure", len(samples), len(samples), force=True)

    return {
        "runtime": runner.runtime,
        "runtime_version": runner.version(),
        "input_shape": list(shape),
        # Runners resolve threads=None to their own default; report it where they expose it.
        "threads_used": getattr(runner, "num_threads", None) or getattr(runner, "intra_op_threads", None) or runner.threads,
        "load_ms": load_ms,
        "first_ms": first_ms,
        "timings": summarize(samples),
        "stop_reason": stop_reason,
        "measure_s": time.monotonic() - measure_started,
        "peak_rss_mb": peak_rss_mb(),
        "baseline_rss_mb": baseline_rss,
        "pid": os.getpid(),
        "warnings": warnings,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m edgeeff.profile.worker", description=__doc__)
    parser.add_argument("artifact")
    parser.add_argument("--threads", type=int)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--target-rse", type=float)
    parser.add_argument("--time-cap", type=float, default=60.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--input-shape", help="Comma-separated shape for dynamic inputs, e.g. 1,3,224,224.")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    # Keep the real standard output for events and send everything else printed to stderr.
    events = EventWriter(os.fdopen(os.dup(1), "w", buffering=1))
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    fallback = [int(dim) for dim in args.input_shape.split(",")] if args.input_shape else None
    try:
        result = measure(args.artifact, args.threads, args.warmup, args.runs, args.target_rse, args.time_cap,
                         args.seed, fallback, events)
    except Exception as exc:  # every failure goes back to the parent as an event
        message = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        events.emit({"event": "error", "error": f"{type(exc).__name__}: {message}".rstrip(": ")})
        return 1
    events.emit({"event": "result", "result": result})
    return 0


if __name__ == "__main__":
    sys.exit(main())
