"""`edgeeff profile`, `edgeeff results` and `edgeeff agent serve`.

No torch here or in edgeeff.profile: the agent starts on a device with only the runtimes.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import click
from rich.progress import BarColumn, MofNCompleteColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table

from edgeeff.cli.common import StepFailed, print_json, stderr, stdout
from edgeeff.profile import (Artifact, DeviceError, Measurement, ProfileSettings, ResultsDatabase, ResultsDatabaseError,
                             open_device, parse_target_rse, resolve_profile, to_csv)
from edgeeff.profile.devices import TOKEN_ENV
from edgeeff.profile.native import parse_binary_options

DEFAULT_WARMUP = 10
DEFAULT_RUNS = 50
FORMAT_LABELS = {"onnx": "ONNX", "tflite": "TFLite", "pte": "ExecuTorch"}


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}"


def _mb(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _runtime_label(record: Measurement) -> str:
    label = f"{record.runtime} {record.runtime_version or ''}".strip()
    return label if record.method == "edgeeff-runner" else f"{label} ({record.method})"


def _status(record: Measurement) -> str:
    if record.ok:
        note = "" if record.stop_reason in (None, "runs", "target reached") else f" ({record.stop_reason})"
        return f"[green]ok[/]{note}"
    return "[red]failed[/]"


def measurement_table(records: list[Measurement], title: str | None = None) -> Table:
    """Build the on-screen table: one row per artifact, like Ultralytics' benchmark summary."""
    table = Table(title=title, title_justify="left")
    for name, justify in (("Artifact", "left"), ("Format", "left"), ("Precision", "left"), ("Status", "left"),
                          ("Size (MB)", "right"), ("Load (ms)", "right"), ("Median (ms)", "right"),
                          ("p90 (ms)", "right"), ("RSE", "right"), ("Peak RSS (MB)", "right"), ("Runs", "right")):
        table.add_column(name, justify=justify, no_wrap=name != "Artifact")
    for record in records:
        rse = "-" if record.rse is None else f"{record.rse:.1%}"
        table.add_row(record.artifact_name, FORMAT_LABELS.get(record.artifact_format, record.artifact_format),
                      record.precision or "-", _status(record), f"{record.artifact_bytes / 1e6:.1f}",
                      _ms(record.load_ms), _ms(record.median_ms), _ms(record.p90_ms), rse,
                      _mb(record.peak_rss_mb), str(record.runs or "-"))
    return table


def device_title(info: dict, name: str) -> str:
    versions = ", ".join(f"{key} {value}" for key, value in (info.get("runtime_versions") or {}).items()
                         if key in ("onnxruntime", "litert", "executorch"))
    parts = [f"{name}: {info.get('cpu_model', 'unknown CPU')}", f"{info.get('cores', '?')} cores"]
    if info.get("board"):
        parts.insert(1, info["board"])
    if versions:
        parts.append(versions)
    return " · ".join(parts)


class ProgressReporter:
    """A rich progress bar per artifact, fed by the worker's (or agent's) progress events."""

    def __init__(self, progress: Progress):
        self.progress = progress
        self.tasks: dict[str, int] = {}

    def start(self, name: str) -> None:
        self.tasks[name] = self.progress.add_task(f"{name}: load", total=None)

    def __call__(self, name: str, event: dict) -> None:
        task = self.tasks.get(name)
        if task is None:
            return
        kind = event.get("event")
        if kind == "phase":
            self.progress.update(task, description=f"{name}: {event['phase']}", total=event.get("total"),
                                 completed=0)
        elif kind == "progress":
            total = event.get("total")
            self.progress.update(task, description=f"{name}: {event.get('phase')}", completed=event.get("done", 0),
                                 total=total if total else None)

    def finish(self, name: str, record: Measurement) -> None:
        task = self.tasks.get(name)
        if task is not None:
            label = f"median {record.median_ms:.2f} ms" if record.ok and record.median_ms else record.status
            self.progress.update(task, description=f"{name}: {label}", total=1, completed=1)


def _settings(profile, threads, warmup, runs, target_rse, time_cap) -> ProfileSettings:
    """Combine command-line values, then the device profile's, then the defaults."""
    if threads is None:
        threads = profile.threads
    if warmup is None:
        warmup = profile.warmup if profile.warmup is not None else DEFAULT_WARMUP
    if runs is None:
        runs = profile.runs or DEFAULT_RUNS
    return ProfileSettings(threads=threads, warmup=warmup, runs=runs, target_rse=parse_target_rse(target_rse),
                           time_cap_s=time_cap)


@click.command("profile")
@click.argument("artifacts", nargs=-1, required=True, type=click.Path(dir_okay=False))
@click.option("--device", "-d", "device_spec", default="host", show_default=True,
              help="Where to run: host, agent://HOST:PORT, adb:SERIAL, a profile name from recipes/devices "
                   "(pi5, pixel7, ...) or a profile .yaml file.")
@click.option("--threads", type=click.IntRange(min=1),
              help="Runtime threads (default: the device profile's, else the runtime's default).")
@click.option("--warmup", type=click.IntRange(min=0), help=f"Untimed runs after the first (default {DEFAULT_WARMUP}).")
@click.option("--runs", type=click.IntRange(min=1), help=f"Timed runs (default {DEFAULT_RUNS}).")
@click.option("--target-rse", help="Keep timing until the relative standard error of the median is below this, "
                                   "e.g. 2% or 0.02 (runs then sets the minimum).")
@click.option("--time-cap", type=click.FloatRange(min=0, min_open=True), default=60.0, show_default=True,
              help="Seconds of timed runs per artifact after which --target-rse gives up.")
@click.option("--db", "db_path", type=click.Path(dir_okay=False),
              help="Results database file (default: $EDGEEFF_RESULTS_DB, else the user data folder).")
@click.option("--no-save", is_flag=True, help="Do not store the measurements in the results database.")
@click.option("--json", "as_json", is_flag=True, help="Print the measurement records as JSON instead of a table.")
@click.option("--token", help=f"Device agent token (default: ${TOKEN_ENV}).")
@click.option("--benchmark-binary", "benchmark_binaries", multiple=True, metavar="RUNTIME=PATH",
              help="Native benchmark tool per runtime (litert=benchmark_model, executorch=executor_runner, "
                   "onnxruntime=onnxruntime_perf_test). Required for adb; optional on host. Repeatable.")
@click.option("--adb", "adb_path", help="adb executable for adb devices (default: adb on PATH).")
@click.option("--timeout", type=click.FloatRange(min=0, min_open=True),
              help="Seconds to wait for an agent's next message or an adb command (default 60 and 120).")
def profile_command(artifacts, device_spec, threads, warmup, runs, target_rse, time_cap, db_path, no_save, as_json,
                    token, benchmark_binaries, adb_path, timeout):
    """Measure the latency and memory of exported artifacts in their own runtimes.

    Each artifact is loaded in a fresh process: load time, first inference, WARMUP untimed
    runs, then RUNS timed runs (min, median, p90, p99, mean, std), peak resident memory and
    file size. Results go into the results database, keyed by device and artifact sha256.
    """
    profile = resolve_profile(device_spec)
    settings = _settings(profile, threads, warmup, runs, target_rse, time_cap)
    database = None if no_save else ResultsDatabase(db_path)
    opened = [Artifact.open(path) for path in artifacts]
    if database is not None:
        try:
            # A corrupt file, or a folder that cannot hold one, fails here instead of after the timed runs.
            database.query(limit=1)
        except ResultsDatabaseError as exc:
            raise StepFailed(str(exc)) from exc
    device = open_device(profile, token=token, benchmark_binaries=parse_binary_options(benchmark_binaries),
                         adb=adb_path, timeout_s=timeout)
    try:
        info = device.info()
    except DeviceError as exc:
        raise StepFailed(str(exc)) from exc

    records: list[Measurement] = []
    progress = Progress(SpinnerColumn(), TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                        TimeElapsedColumn(), console=stderr, transient=as_json, disable=not stderr.is_terminal)
    reporter = ProgressReporter(progress)
    try:
        with progress:
            for artifact in opened:
                reporter.start(artifact.name)
                record = device.profile(artifact, settings, lambda event, name=artifact.name: reporter(name, event))
                reporter.finish(artifact.name, record)
                if database is not None:
                    database.add(record)
                records.append(record)
    except DeviceError as exc:
        raise StepFailed(str(exc)) from exc
    except ResultsDatabaseError as exc:
        raise StepFailed(str(exc)) from exc
    finally:
        device.close()

    if as_json:
        print_json([record.to_dict() for record in records])
    else:
        stdout.print(measurement_table(records, device_title(info, profile.name)))
        for record in records:
            if not record.ok:
                stderr.print(f"[bold red]failed:[/] {record.artifact_name}: {record.error}", highlight=False)
            for note in (record.extra.get("note"), record.extra.get("sidecar_warning")):
                if note:
                    stderr.print(f"[yellow]note:[/] {record.artifact_name}: {note}", highlight=False)
        if database is not None:
            stderr.print(f"saved {len(records)} measurement(s) to {database.path}", highlight=False)
    failed = [record.artifact_name for record in records if not record.ok]
    if failed:
        raise StepFailed(f"{len(failed)} of {len(records)} artifact(s) failed to profile: {', '.join(failed)}")


@click.command("results")
@click.option("--db", "db_path", type=click.Path(dir_okay=False), help="Results database file (default as for profile).")
@click.option("--device", "device", help="Device name (host, pi5, agent://...) or fingerprint prefix.")
@click.option("--artifact", help="Part of the artifact file name, or a sha256 prefix.")
@click.option("--format", "artifact_format", type=click.Choice(["onnx", "tflite", "pte"]), help="Artifact format.")
@click.option("--variant", help="Model variant from the sidecar, e.g. b0 or lite0.")
@click.option("--precision", type=click.Choice(["fp32", "int8"]), help="Artifact precision from the sidecar.")
@click.option("--threads", type=click.IntRange(min=1), help="Thread count the measurement used.")
@click.option("--status", type=click.Choice(["ok", "failed"]), help="Only successful or only failed measurements.")
@click.option("--limit", type=click.IntRange(min=1), default=50, show_default=True, help="Newest N measurements.")
@click.option("--json", "as_json", is_flag=True, help="Print full records as JSON.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False, allow_dash=True),
              help="Write the matching measurements as CSV to this file ('-' for standard output).")
def results_command(db_path, device, artifact, artifact_format, variant, precision, threads, status, limit, as_json,
                    csv_path):
    """List stored measurements, newest first, filtered by device, artifact and settings."""
    database = ResultsDatabase(db_path)
    if not database.path.exists():
        raise click.ClickException(f"no results database at {database.path}; run edgeeff profile first or pass --db")
    try:
        rows = database.query(device=device, artifact=artifact, artifact_format=artifact_format, variant=variant,
                              precision=precision, threads=threads, status=status, limit=limit)
    except ResultsDatabaseError as exc:
        raise StepFailed(str(exc)) from exc
    if csv_path:
        text = to_csv(rows)
        if csv_path == "-":
            click.echo(text, nl=False)
        else:
            from edgeeff.io import atomic_path

            with atomic_path(csv_path) as tmp:
                tmp.write_text(text)
            stderr.print(f"wrote {len(rows)} measurement(s) to {csv_path}", highlight=False)
        return
    if as_json:
        print_json([{"id": row_id, **record.to_dict()} for row_id, record in rows])
        return
    table = Table(title=f"{len(rows)} measurement(s) in {database.path}", title_justify="left")
    for name in ("ID", "When (UTC)", "Device", "Artifact", "Format", "Threads", "Status", "Median (ms)", "p90 (ms)",
                 "Peak RSS (MB)", "Runtime"):
        table.add_column(name, justify="right" if name in ("ID", "Threads") or "(" in name and "UTC" not in name
                         else "left")
    for row_id, record in rows:
        table.add_row(str(row_id), record.created_at.replace("T", " ")[:19], record.device_name, record.artifact_name,
                      FORMAT_LABELS.get(record.artifact_format, record.artifact_format),
                      str(record.threads or "default"), _status(record), _ms(record.median_ms), _ms(record.p90_ms),
                      _mb(record.peak_rss_mb), _runtime_label(record))
    stdout.print(table)


@click.group("agent")
def agent_group():
    """Run the device agent that profiles artifacts sent over HTTP."""


@agent_group.command("serve")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind. Keep the loopback default and reach it through an SSH tunnel; any other "
                   "address sends the token and artifacts unencrypted.")
@click.option("--port", type=click.IntRange(0, 65535), default=8765, show_default=True,
              help="TCP port (0 picks a free one, printed at start).")
@click.option("--token", help=f"Token clients must send (default: ${TOKEN_ENV}, else a new random token printed once).")
@click.option("--dir", "directory", type=click.Path(file_okay=False),
              help="Folder for uploaded artifacts (default: edgeeff/agent in the user cache folder).")
@click.option("--max-upload-mb", type=click.IntRange(min=1), default=512, show_default=True,
              help="Largest artifact accepted, in MiB.")
@click.option("--keep", type=click.IntRange(min=1), default=20, show_default=True,
              help="Uploaded artifacts kept; older ones are deleted.")
@click.option("--benchmark-binary", "benchmark_binaries", multiple=True, metavar="RUNTIME=PATH",
              help="Time this runtime with its native tool instead of the Python runner (for example "
                   "executorch=/opt/executor_runner on a device without torch). Repeatable.")
def serve_command(host, port, token, directory, max_upload_mb, keep, benchmark_binaries):
    """Serve profile requests on this device until Ctrl-C or SIGTERM."""
    import platformdirs

    from edgeeff.profile.agent import AgentConfig, new_token, serve

    logging.getLogger("edgeeff.agent").setLevel(logging.INFO)
    if not logging.getLogger().handlers:
        logging.basicConfig(format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    token = token or os.environ.get(TOKEN_ENV)
    if not token:
        token = new_token()
        click.echo(f"agent token (pass it to clients with --token or {TOKEN_ENV}): {token}")
    folder = Path(directory) if directory else Path(platformdirs.user_cache_dir("edgeeff", appauthor=False)) / "agent"
    config = AgentConfig(token=token, directory=folder, host=host, port=port, max_upload_bytes=max_upload_mb << 20,
                         keep=keep, benchmark_binaries=parse_binary_options(benchmark_binaries))
    try:
        serve(config, announce=lambda line: click.echo(line))
    except OSError as exc:
        raise click.ClickException(f"cannot listen on {host}:{port} ({exc.strerror}); pick another --port") from exc


__all__ = ["agent_group", "measurement_table", "profile_command", "results_command"]
