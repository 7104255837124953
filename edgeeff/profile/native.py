"""The platforms' own benchmark tools: their command lines and parsers for their output.

LiteRT `benchmark_model`, ExecuTorch `executor_runner` and `onnxruntime_perf_test` are what
Android (and other) users run on devices without Python. Each parser turns the tool's text
output into the keys of a `Measurement`. Output formats were taken from the tools' sources:
tensorflow/lite/tools/benchmark/benchmark_model.cc, examples/portable/executor_runner/
executor_runner.cpp in pytorch/executorch, and onnxruntime/test/perftest/performance_runner.cc.
"""

from __future__ import annotations

import re
import shlex
from pathlib import PurePosixPath

from edgeeff.profile.record import ProfileError, ProfileSettings
from edgeeff.profile.stats import summarize

TOOL_RUNTIME = {"benchmark_model": "litert", "executor_runner": "executorch", "onnxruntime_perf_test": "onnxruntime"}
RUNTIME_TOOL = {runtime: tool for tool, runtime in TOOL_RUNTIME.items()}
RUNTIME_ALIASES = {"litert": "litert", "tflite": "litert", "executorch": "executorch", "pte": "executorch",
                   "onnxruntime": "onnxruntime", "onnx": "onnxruntime", "ort": "onnxruntime"}
OUTPUT_TAIL_CHARS = 2000


def parse_binary_options(values: list[str] | tuple[str, ...] | dict | None) -> dict[str, str]:
    """Parse `RUNTIME=PATH` (or a bare path named after its tool) into {runtime: path}."""
    if not values:
        return {}
    if isinstance(values, dict):
        items = [f"{key}={value}" for key, value in values.items()]
    else:
        items = list(values)
    binaries = {}
    for item in items:
        key, sep, path = item.partition("=")
        if sep:
            runtime = RUNTIME_ALIASES.get(key.strip().lower())
            if runtime is None:
                raise ValueError(f"unknown runtime {key!r} in --benchmark-binary {item}: use litert=, executorch= or onnxruntime=")
        else:
            path = item
            runtime = TOOL_RUNTIME.get(PurePosixPath(item).name)
            if runtime is None:
                raise ValueError(f"cannot tell the runtime of --benchmark-binary {item}: write it as RUNTIME=PATH, "
                                 "for example litert=/data/local/tmp/benchmark_model")
        if not path.strip():
            raise ValueError(f"empty path in --benchmark-binary {item}: write it as RUNTIME=PATH")
        binaries[runtime] = path.strip()
    return binaries


def benchmark_argv(runtime: str, binary: str, model_path: str, settings: ProfileSettings) -> list[str]:
    """Return the tool's command line for one profile with these settings."""
    if runtime == "litert":
        argv = [binary, f"--graph={model_path}", f"--warmup_runs={settings.warmup}", "--warmup_min_secs=0",
                f"--num_runs={settings.runs}", "--min_secs=0", "--use_xnnpack=true",
                "--report_peak_memory_footprint=true"]
        if settings.threads:
            argv.append(f"--num_threads={settings.threads}")
        return argv
    if runtime == "executorch":
        # executor_runner has no warm-up option: run 1 + warmup + runs times and drop the first ones.
        argv = [binary, f"--model_path={model_path}", f"--num_executions={1 + settings.warmup + settings.runs}"]
        if settings.threads:
            argv.append(f"--cpu_threads={settings.threads}")
        return argv
    if runtime == "onnxruntime":
        # -I generates random inputs, -s prints percentiles; the tool runs one warm-up inference itself.
        argv = [binary, "-e", "cpu", "-m", "times", "-r", str(settings.runs), "-I", "-s"]
        if settings.threads:
            argv += ["-x", str(settings.threads)]
        return argv + [model_path]
    raise ValueError(f"no benchmark tool known for runtime {runtime!r}")


def shell_command(argv: list[str]) -> str:
    return " ".join(shlex.quote(part) for part in argv)


def _tail(text: str) -> str:
    text = text.strip()
    return text[-OUTPUT_TAIL_CHARS:] if len(text) > OUTPUT_TAIL_CHARS else text


def _number(pattern: str, text: str) -> float | None:
    matches = re.findall(pattern, text)
    return float(matches[-1]) if matches else None


def parse_benchmark_model(text: str) -> dict:
    """Parse LiteRT `benchmark_model` output; its times are microseconds."""
    summary = re.search(r"Inference timings in us: Init: ([\d.e+]+), First inference: ([\d.e+]+), "
                        r"Warmup \(avg\): ([\d.e+]+), Inference \(avg\): ([\d.e+]+)", text)
    if not summary:
        raise ProfileError(f"benchmark_model printed no 'Inference timings' line; its output ends with:\n{_tail(text)}")
    init_us, first_us, _, mean_us = (float(value) for value in summary.groups())
    result = {"load_ms": init_us / 1000, "first_ms": first_us / 1000, "mean_ms": mean_us / 1000}

    # Each phase prints "count=N first=.. curr=.. min=.. max=.. avg=.. std=.." (newer tools add p5=,
    # median=, p95=); the last such line before the summary is the timed phase, the one before it warm-up.
    stat_lines = re.findall(r"^(?:INFO: )?count=(\d+)(.*)$", text[:summary.start()], flags=re.MULTILINE)
    if stat_lines:
        count, rest = stat_lines[-1]
        fields = dict(re.findall(r"(\w+)=([\d.e+-]+)", rest))
        result["runs"] = int(count)
        for key, name in (("min", "min_ms"), ("max", "max_ms"), ("avg", "mean_ms"), ("std", "std_ms"),
                          ("median", "median_ms"), ("p95", "p95_ms")):
            if key in fields:
                result[name] = float(fields[key]) / 1000
    peak = _number(r"Overall peak memory footprint \(MB\) via periodic monitoring: ([\d.]+)", text)
    if peak is not None:
        result["peak_rss_mb"] = peak
    delta = re.search(r"Memory footprint delta from the start of the tool \(MB\): init=([\d.]+) overall=([\d.]+)", text)
    if delta:
        result["extra"] = {"memory_delta_mb": {"init": float(delta.group(1)), "overall": float(delta.group(2))}}
    return result


def parse_executor_runner(text: str, warmup: int) -> dict:
    """Parse ExecuTorch `executor_runner` output (ET_LOG lines); its times are milliseconds.

    Newer runners log every iteration ("Iteration i of N: t ms"), which gives the full
    distribution. Older ones log only the total, which gives the mean including warm-up runs.
    """
    total = re.findall(r"Model executed successfully (\d+) time\(s\) in ([\d.]+) ms", text)
    if not total:
        raise ProfileError(f"executor_runner printed no 'Model executed successfully' line; its output ends with:\n"
                           f"{_tail(text)}")
    result = {}
    load_ms = _number(r"Model loaded in ([\d.]+) ms", text)
    if load_ms is not None:
        result["load_ms"] = load_ms
    iterations = [float(ms) for _, ms in re.findall(r"Iteration (\d+) of \d+: ([\d.]+) ms", text)]
    if iterations:
        result["first_ms"] = iterations[0]
        timed = iterations[1 + warmup:] or iterations[1:] or iterations
        result.update(summarize(timed))
    else:
        executions, total_ms = int(total[-1][0]), float(total[-1][1])
        result.update({"runs": executions, "mean_ms": total_ms / executions,
                       "extra": {"note": "this executor_runner logs no per-iteration times: mean includes warm-up"}})
    return result


def parse_perf_test(text: str) -> dict:
    """Parse `onnxruntime_perf_test -s` output; latency percentiles are in seconds."""
    mean_ms = _number(r"Average inference time cost:\s*([\d.e+-]+) ms", text)
    if mean_ms is None:
        raise ProfileError(f"onnxruntime_perf_test printed no 'Average inference time cost' line; its output ends "
                           f"with:\n{_tail(text)}")
    result = {"mean_ms": mean_ms}
    load_s = _number(r"Session creation time cost:\s*([\d.e+-]+) s", text)
    if load_s is not None:
        result["load_ms"] = load_s * 1000
    first_ms = _number(r"First inference time cost:\s*([\d.e+-]+) ms", text)
    if first_ms is not None:
        result["first_ms"] = first_ms
    runs = _number(r"Total inference requests:\s*(\d+)", text)
    if runs is not None:
        result["runs"] = int(runs)
    peak = _number(r"Peak working set size:\s*(\d+)", text)
    if peak is not None:
        result["peak_rss_mb"] = peak / (1 << 20)
    # Both "P90 Latency: 0.0123 s" (current) and "P90 Latency is 0.0123sec" (older) forms.
    for label, name in (("Min", "min_ms"), ("Max", "max_ms"), ("P50", "median_ms"), ("P90", "p90_ms"),
                        ("P95", "p95_ms"), ("P99", "p99_ms")):
        seconds = _number(rf"{label} Latency(?::| is)\s*([\d.e+-]+)\s*s", text)
        if seconds is not None:
            result[name] = seconds * 1000
    return result


def parse_benchmark_output(runtime: str, text: str, settings: ProfileSettings) -> dict:
    if runtime == "litert":
        return parse_benchmark_model(text)
    if runtime == "executorch":
        return parse_executor_runner(text, settings.warmup)
    if runtime == "onnxruntime":
        return parse_perf_test(text)
    raise ValueError(f"no benchmark tool known for runtime {runtime!r}")


def effective_warmup(runtime: str, settings: ProfileSettings) -> int:
    """Return the warm-up runs the tool really does (onnxruntime_perf_test always does one)."""
    return 1 if runtime == "onnxruntime" else settings.warmup
