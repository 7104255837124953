"""Helpers for the profile tests: small artifacts, the agent as a real server process, stand-in tools.

The stand-in `adb` runs device commands on this machine, with the device's /data/local/tmp
mapped into a test folder. The stand-in benchmark tools print the output formats of LiteRT
`benchmark_model`, ExecuTorch `executor_runner` and `onnxruntime_perf_test`, taken from those
tools' sources. The onnxruntime one also times the model with onnxruntime.
"""

from __future__ import annotations

import atexit
import functools
import os
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def export_onnx(variant: str, resolution: int, path: Path) -> Path:
    """Export an untrained model to ONNX with a sidecar-free single file (no external data)."""
    import torch

    from edgeeff.models import build_model

    model = build_model(variant)
    torch.onnx.export(model, torch.zeros(1, 3, resolution, resolution), path, dynamo=True, external_data=False,
                      input_names=["input"], output_names=["logits"])
    return path


_CACHE_DIR: Path | None = None


@functools.lru_cache(maxsize=None)
def cached_onnx(variant: str, resolution: int) -> Path:
    """Export once per test process and share the file between test modules (an export takes ~20 s)."""
    global _CACHE_DIR
    if _CACHE_DIR is None:
        _CACHE_DIR = Path(tempfile.mkdtemp(prefix="edgeeff-profile-tests-"))
        atexit.register(shutil.rmtree, _CACHE_DIR, ignore_errors=True)
    return export_onnx(variant, resolution, _CACHE_DIR / f"{variant}-{resolution}.onnx")


@functools.lru_cache(maxsize=None)
def cached_exports(resolution: int = 64) -> tuple:
    """Export untrained B0 and Lite0 to all three formats (FP32) through the pipeline, once per test process.

    Returns the pipeline's ArtifactRecords, failed ones included, so a test can show their errors.
    """
    from edgeeff.checkpoints import untrained_model
    from edgeeff.export.pipeline import TARGETS, ExportOptions, export_model
    from edgeeff.models import with_resolution

    global _CACHE_DIR
    if _CACHE_DIR is None:
        _CACHE_DIR = Path(tempfile.mkdtemp(prefix="edgeeff-profile-tests-"))
        atexit.register(shutil.rmtree, _CACHE_DIR, ignore_errors=True)
    records = []
    for variant in ("b0", "lite0"):
        loaded = untrained_model(variant)
        loaded.variant = with_resolution(loaded.variant, resolution)
        options = ExportOptions(targets=list(TARGETS), precisions=["fp32"], output=_CACHE_DIR / "formats",
                                calib_size=8, verify_size=4)
        records += export_model(loaded, options)
    return tuple(records)


def python_env(extra_path: Path | None = None) -> dict[str, str]:
    env = dict(os.environ)
    parts = [str(ROOT)] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else [])
    if extra_path is not None:
        parts.insert(0, str(extra_path))
    env["PYTHONPATH"] = os.pathsep.join(parts)
    env["PYTHONUNBUFFERED"] = "1"
    return env


class AgentProcess:
    """`edgeeff agent serve` started as its own process on 127.0.0.1 with a free port."""

    def __init__(self, directory: Path, token: str, *extra: str, env: dict | None = None):
        code = "import sys; from edgeeff.cli.profile import agent_group; agent_group(sys.argv[1:])"
        argv = [sys.executable, "-c", code, "serve", "--port", "0", "--token", token, "--dir", str(directory), *extra]
        self.log_path = directory.parent / f"{directory.name}-agent.log"
        self.log = open(self.log_path, "w+")
        self.process = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=self.log, text=True,
                                        env=env or python_env())
        self.port = self._wait_for_port()
        self.address = f"agent://127.0.0.1:{self.port}"

    def _wait_for_port(self, timeout_s: float = 60.0) -> int:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if not line:
                break
            match = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
            if match:
                return int(match.group(1))
        self.stop()
        raise RuntimeError(f"agent did not start; its log:\n{self.log_text()}")

    def log_text(self) -> str:
        if not self.log.closed:
            self.log.flush()
        return self.log_path.read_text()

    def alive(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process.stdout.close()
        self.log.close()


FAKE_ADB = '''\
#!{python}
"""Stand-in adb: runs the device's commands on this machine; /data/local/tmp maps to $FAKE_ADB_ROOT."""
import os, shutil, subprocess, sys

root = os.environ["FAKE_ADB_ROOT"]
serials = os.environ.get("FAKE_ADB_SERIALS", "emulator-5554").split(",")
properties = {{
    "ro.product.manufacturer": "Google", "ro.product.model": "Pixel 7", "ro.soc.model": "GS201",
    "ro.board.platform": "gs201", "ro.product.cpu.abi": "arm64-v8a", "ro.build.version.release": "14",
    "ro.build.version.sdk": "34",
}}
with open(os.path.join(root, "adb-calls.log"), "a") as log:
    log.write(" ".join(sys.argv[1:]) + "\\n")

def device_path(path):
    return path.replace("/data/local/tmp", os.path.join(root, "data/local/tmp"))

args = sys.argv[1:]
if args[:1] != ["-s"]:
    sys.exit("stand-in adb needs -s SERIAL")
serial, command, rest = args[1], args[2], args[3:]
if serial not in serials:
    print(f"error: device '{{serial}}' not found", file=sys.stderr)
    sys.exit(1)
if command == "get-state":
    print("device")
elif command == "push":
    source, target = rest
    target = device_path(target)
    os.makedirs(os.path.dirname(target), exist_ok=True)
    shutil.copy(source, target)
    print(f"{{source}}: 1 file pushed, 0 skipped.")
elif command == "shell":
    line = " ".join(rest)
    if line.startswith("getprop "):
        print(properties.get(line.split()[1], ""))
        sys.exit(0)
    sys.exit(subprocess.run(["sh", "-c", device_path(line)]).returncode)
else:
    sys.exit(f"stand-in adb does not know {{command}}")
'''

FAKE_TOOL = '''\
#!{python}
"""Stand-in for the platform benchmark tools, printing their real output formats."""
import os, re, sys, time

tool = os.path.basename(sys.argv[0])
flags = dict(re.findall(r"--(\\w+)=(\\S+)", " ".join(sys.argv[1:])))

def fail(message):
    print(message, file=sys.stderr)
    sys.exit(1)

if tool == "benchmark_model":
    graph = flags.get("graph")
    if not graph or not os.path.isfile(graph):
        fail(f"ERROR: Could not build model from '{{graph}}'")
    runs, warmup = int(flags["num_runs"]), int(flags["warmup_runs"])
    print("INFO: STARTING!")
    print(f"INFO: Num threads: [{{flags.get('num_threads', 1)}}]")
    print(f"INFO: Graph: [{{graph}}]")
    print(f"INFO: Loaded model {{graph}}")
    print("INFO: Created TensorFlow Lite XNNPACK delegate for CPU.")
    print(f"INFO: The input model file size (MB): {{os.path.getsize(graph) / 1e6:.5f}}")
    print("INFO: Initialized session in 3.152ms.")
    print(f"INFO: Running benchmark for at least {{warmup}} iterations and at least 0 seconds but terminate if exceeding 150 seconds.")
    print(f"INFO: count={{warmup}} first=5210 curr=4480 min=4410 max=5210 avg=4620.5 std=230 p5=4410 median=4530 p95=5210")
    print("")
    print(f"INFO: Running benchmark for at least {{runs}} iterations and at least 0 seconds but terminate if exceeding 150 seconds.")
    print(f"INFO: count={{runs}} first=4470 curr=4460 min=4390 max=4980 avg=4501.25 std=95 p5=4400 median=4482 p95=4710")
    print("")
    print("INFO: Inference timings in us: Init: 3152, First inference: 5210, Warmup (avg): 4620.5, Inference (avg): 4501.25")
    print("INFO: Note: as the benchmark tool itself affects memory footprint, the following is only APPROXIMATE to the actual memory footprint of the model at runtime. Take the information at your discretion.")
    print("INFO: Memory footprint delta from the start of the tool (MB): init=6.39844 overall=13.3047")
    print("INFO: Overall peak memory footprint (MB) via periodic monitoring: 21.25")
elif tool == "executor_runner":
    model = flags.get("model_path")
    if not model or not os.path.isfile(model):
        fail(f"E 00:00:00.000120 executorch:executor_runner.cpp:210] FileDataLoader::from() failed: 0x22")
    count = int(flags.get("num_executions", 1))
    log = lambda message: print(f"I 00:00:00.{{int(time.time() * 1e6) % 1000000:06d}} executorch:executor_runner.cpp:120] {{message}}", file=sys.stderr)
    if "cpu_threads" in flags:
        log(f"Resetting threadpool with num threads = {{flags['cpu_threads']}}")
    log(f"Model file {{model}} is loaded.")
    log("Model loaded in 4.812000 ms.")
    total = 0.0
    for index in range(count):
        elapsed = 6.25 if index == 0 else 3.0 + 0.01 * (index % 7)
        total += elapsed
        log(f"Iteration {{index + 1}} of {{count}}: {{elapsed:.6f}} ms")
    log(f"Model executed successfully {{count}} time(s) in {{total:.6f}} ms.")
    log("1 outputs: ")
elif tool == "onnxruntime_perf_test":
    import numpy as np
    import onnxruntime as ort

    args = sys.argv[1:]
    model = args[-1]
    runs = int(args[args.index("-r") + 1])
    options = ort.SessionOptions()
    if "-x" in args:
        options.intra_op_num_threads = int(args[args.index("-x") + 1])
    started = time.perf_counter()
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    created = time.perf_counter() - started
    feed = {{i.name: np.random.default_rng(0).standard_normal([d if isinstance(d, int) else 1 for d in i.shape], dtype=np.float32) for i in session.get_inputs()}}
    started = time.perf_counter()
    session.run(None, feed)
    first_ms = int((time.perf_counter() - started) * 1000)
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        session.run(None, feed)
        times.append(time.perf_counter() - started)
    total = sum(times)
    print(f"Session creation time cost: {{created}} s")
    print(f"First inference time cost: {{first_ms}} ms")
    print(f"Total inference time cost: {{total}} s")
    print(f"Total inference requests: {{runs}}")
    print(f"Average inference time cost: {{total / runs * 1000}} ms")
    print(f"Total inference run time: {{total}} s")
    print(f"Number of inferences per second: {{runs / total}} ")
    print("Avg CPU usage: 96 %")
    print("Peak working set size: 48234496 bytes")
    print("Avg CPU usage:96")
    print("Peak working set size:48234496")
    print(f"Runs:{{runs}}")
    ordered = sorted(times)
    pick = lambda q: ordered[int(len(ordered) * q)]
    print(f"Min Latency: {{ordered[0]}} s")
    print(f"Max Latency: {{ordered[-1]}} s")
    for name, q in (("P50", 0.5), ("P90", 0.9), ("P95", 0.95), ("P99", 0.99), ("P999", 0.999)):
        print(f"{{name}} Latency: {{pick(q)}} s")
else:
    fail(f"unknown stand-in tool {{tool}}")
'''


def install_fake_adb(folder: Path) -> dict[str, str]:
    """Write the stand-in adb and tools under `folder`; return the environment that puts adb on PATH."""
    bin_dir = folder / "bin"
    tools_dir = folder / "tools"
    device_root = folder / "device"
    for directory in (bin_dir, tools_dir, device_root / "data" / "local" / "tmp"):
        directory.mkdir(parents=True, exist_ok=True)
    adb = bin_dir / "adb"
    adb.write_text(FAKE_ADB.format(python=sys.executable))
    adb.chmod(0o755)
    for name in ("benchmark_model", "executor_runner", "onnxruntime_perf_test"):
        tool = tools_dir / name
        tool.write_text(FAKE_TOOL.format(python=sys.executable))
        tool.chmod(0o755)
    env = {"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "FAKE_ADB_ROOT": str(device_root)}
    return env


def fake_tflite(path: Path) -> Path:
    """Write bytes with the TFLite identifier: enough for the stand-in tool, not a runnable model."""
    path.write_bytes(b"\x1c\x00\x00\x00TFL3" + bytes(64))
    return path


def fake_pte(path: Path) -> Path:
    path.write_bytes(b"\x1c\x00\x00\x00ET12" + bytes(64))
    return path


def dedent(text: str) -> str:
    return textwrap.dedent(text).strip() + "\n"
