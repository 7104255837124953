"""The device agent: an HTTP server on the device that profiles uploaded artifacts.

`edgeeff agent serve` runs it. Every request needs `Authorization: Bearer TOKEN`. It binds
127.0.0.1 by default (reach it through an SSH tunnel). Uploads are checked against
the size cap from Content-Length before any byte is stored, written under a sanitized,
content-addressed name in the agent's own folder, and checked for the format's magic bytes.
One benchmark runs at a time; a second request gets 503 with Retry-After. Measurements come
from the same worker processes as on the host.

API (JSON unless noted):
  GET  /info                 device description, upload cap, busy flag
  PUT  /artifacts/NAME       body: the artifact bytes; returns {"artifact_id", "sha256", ...}
  POST /profile              body: {"artifact_id", "threads", "warmup", "runs", ...};
                             returns JSON lines: progress and heartbeat events, then
                             {"event": "result", "record": {...}} or {"event": "error", ...}
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import os
import re
import secrets
import shutil
import signal
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from importlib.util import find_spec
from pathlib import Path
from urllib.parse import unquote, urlsplit

from edgeeff.profile.fingerprint import host_info, usable_cores
from edgeeff.profile.local import HostDevice, check_threads
from edgeeff.profile.record import Artifact, ProfileSettings, artifact_format, edgeeff_version, runtime_of

log = logging.getLogger("edgeeff.agent")

API_VERSION = 1
DEFAULT_PORT = 8765
DEFAULT_MAX_UPLOAD_MB = 512
DEFAULT_KEEP = 20
MAX_JSON_BYTES = 64 * 1024
CHUNK_BYTES = 1 << 20
MAX_CONCURRENT_UPLOADS = 2
# Free disk left after an upload, so the agent never fills the device's disk.
DISK_RESERVE_BYTES = 64 << 20
RETRY_AFTER_S = 2
ARTIFACT_ID = re.compile(r"^[0-9a-f]{16}-[A-Za-z0-9_.-]{1,120}$")
UNSAFE_CHARACTERS = re.compile(r"[^A-Za-z0-9_.-]+")
RUNTIME_MODULES = {"onnxruntime": "onnxruntime", "litert": "ai_edge_litert", "executorch": "executorch"}


class RequestError(Exception):
    """A request the agent rejects: HTTP status and a message for the client."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status = status
        self.headers = headers or {}


@dataclass
class AgentConfig:
    token: str
    directory: Path
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD_MB << 20
    keep: int = DEFAULT_KEEP
    socket_timeout_s: float = 60.0
    benchmark_binaries: dict = field(default_factory=dict)


def safe_artifact_name(name: str) -> str:
    """Reduce a client-given file name to a safe base name with a known artifact suffix.

    Directory parts are dropped, characters outside [A-Za-z0-9_.-] become `_`, and leading dots
    are removed, so the name can neither leave the agent's folder nor hide in it.
    """
    base = unquote(name).replace("\\", "/").rsplit("/", 1)[-1]
    base = UNSAFE_CHARACTERS.sub("_", base).lstrip(".")[-100:]
    if not base or "." not in base:
        raise RequestError(400, f"invalid artifact name {name[:100]!r}: send a file name ending in .onnx, .tflite or .pte")
    try:
        artifact_format(base)
    except ValueError as exc:
        raise RequestError(400, str(exc)) from exc
    return base


def check_magic(path: Path, runtime: str) -> None:
    """Reject files that cannot be the format their suffix names, before any runtime parses them.

    TFLite and ExecuTorch files are FlatBuffers with the identifiers TFL3 and ET.. at byte 4.
    ONNX is a protobuf without magic bytes, so its top-level fields are walked instead: they
    must parse and include a graph. The runtime catches the rest when it loads the file.
    """
    with open(path, "rb") as handle:
        head = handle.read(8)
    if runtime == "litert" and head[4:8] != b"TFL3":
        raise RequestError(400, "upload is not a TFLite model (no TFL3 identifier); send the .tflite file itself")
    if runtime == "executorch" and head[4:6] != b"ET":
        raise RequestError(400, "upload is not an ExecuTorch program (no ET identifier); send the .pte file itself")
    if runtime == "onnxruntime" and not onnx_structure_ok(path):
        raise RequestError(400, "upload is not an ONNX model (not a protobuf ModelProto with a graph); "
                                "send the .onnx file itself")


def _read_varint(handle) -> int | None:
    value = shift = 0
    while shift < 64:
        byte = handle.read(1)
        if not byte:
            return None
        value |= (byte[0] & 0x7F) << shift
        if byte[0] < 0x80:
            return value
        shift += 7
    return None


def onnx_structure_ok(path: Path) -> bool:
    """Walk the top-level protobuf fields of a ModelProto; return True when they parse and a graph is present."""
    size = path.stat().st_size
    has_graph = False
    with open(path, "rb") as handle:
        while handle.tell() < size:
            key = _read_varint(handle)
            if key is None:
                return False
            number, wire_type = key >> 3, key & 7
            if not 1 <= number <= 100:
                return False
            if wire_type == 0:
                if _read_varint(handle) is None:
                    return False
            elif wire_type == 2:
                length = _read_varint(handle)
                if length is None or handle.tell() + length > size:
                    return False
                handle.seek(length, os.SEEK_CUR)
                # ModelProto.graph is field 7.
                has_graph = has_graph or number == 7
            elif wire_type in (1, 5):
                handle.seek(8 if wire_type == 1 else 4, os.SEEK_CUR)
            else:
                return False
    return has_graph


class FailureLog:
    """Count rejected requests and log at most one line per interval, so floods cannot fill the log."""

    def __init__(self, interval_s: float = 10.0):
        self.interval_s = interval_s
        self.count = 0
        self.last = 0.0
        self.lock = threading.Lock()

    def record(self, message: str, client: str) -> None:
        with self.lock:
            self.count += 1
            now = time.monotonic()
            if now - self.last >= self.interval_s:
                log.warning("%s from %s (%d rejected so far)", message, client, self.count)
                self.last = now


class AgentServer(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, config: AgentConfig):
        self.config = config
        self.config.directory.mkdir(parents=True, exist_ok=True)
        self.directory = self.config.directory.resolve()
        self.job_lock = threading.Lock()
        self.upload_slots = threading.BoundedSemaphore(MAX_CONCURRENT_UPLOADS)
        self.in_use: set[Path] = set()
        self.auth_failures = FailureLog()
        self.device = HostDevice(name=socket.gethostname(), benchmark_binaries=config.benchmark_binaries)
        super().__init__((config.host, config.port), AgentHandler)

    def info(self) -> dict:
        runtimes = [name for name, module in RUNTIME_MODULES.items() if find_spec(module) is not None]
        return {"agent": "edgeeff", "api": API_VERSION, "version": edgeeff_version(), "device": host_info(),
                "runtimes": runtimes, "benchmark_binaries": sorted(self.config.benchmark_binaries),
                "max_upload_bytes": self.config.max_upload_bytes, "busy": self.job_lock.locked()}

    def prune(self) -> None:
        """Delete the oldest stored artifacts beyond the `keep` newest, never one being profiled."""
        stored = [path for path in self.directory.iterdir() if ARTIFACT_ID.match(path.name)]
        stored.sort(key=lambda path: path.stat().st_mtime, reverse=True)
        for path in stored[self.config.keep:]:
            if path not in self.in_use:
                path.unlink(missing_ok=True)
                log.info("removed old artifact %s", path.name)


class AgentHandler(BaseHTTPRequestHandler):
    server: AgentServer
    protocol_version = "HTTP/1.0"
    server_version = "edgeeff-agent"
    sys_version = ""

    def setup(self) -> None:
        # A stalled client times out instead of holding a thread (or the benchmark slot) forever.
        self.timeout = self.server.config.socket_timeout_s
        super().setup()

    def log_message(self, format: str, *args) -> None:
        log.info("%s %s", self.client_address[0], format % args)

    # Responses

    def _send_json(self, status: int, data: dict, headers: dict | None = None) -> None:
        body = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Connection", "close")
        for key, value in (headers or {}).items():
            self.send_header(key, str(value))
        self.end_headers()
        self.wfile.write(body)
        self.close_connection = True

    def _dispatch(self, handler) -> None:
        try:
            self._check_token()
            handler()
        except RequestError as exc:
            # Token failures are already logged, rate-limited, by _check_token.
            if exc.status != 401:
                level = logging.WARNING if exc.status >= 500 or exc.status == 413 else logging.INFO
                log.log(level, "%s %s from %s rejected with %d: %s", self.command, self.path[:100],
                        self.client_address[0], exc.status, exc)
            self._send_json(exc.status, {"error": str(exc)}, exc.headers)
        except (BrokenPipeError, ConnectionResetError, socket.timeout) as exc:
            log.warning("%s %s: client connection lost (%s)", self.command, self.path, type(exc).__name__)
            self.close_connection = True
        except Exception:
            log.exception("%s %s failed", self.command, self.path)
            try:
                self._send_json(500, {"error": "internal agent error; see the agent's log"})
            except OSError:
                self.close_connection = True

    def _check_token(self) -> None:
        header = self.headers.get("Authorization", "")
        scheme, _, presented = header.partition(" ")
        if scheme.lower() != "bearer" or not presented:
            self.server.auth_failures.record("request without a token", self.client_address[0])
            raise RequestError(401, "missing token: send Authorization: Bearer TOKEN (edgeeff profile --token)",
                               {"WWW-Authenticate": "Bearer"})
        if not hmac.compare_digest(presented.strip().encode(), self.server.config.token.encode()):
            self.server.auth_failures.record("request with a wrong token", self.client_address[0])
            raise RequestError(401, "invalid token: pass the token the agent was started with",
                               {"WWW-Authenticate": 'Bearer error="invalid_token"'})

    # Routes

    def do_GET(self) -> None:
        self._dispatch(self._get)

    def do_PUT(self) -> None:
        self._dispatch(self._put)

    def do_POST(self) -> None:
        self._dispatch(self._post)

    def _get(self) -> None:
        if urlsplit(self.path).path != "/info":
            raise RequestError(404, f"no such resource {self.path[:100]}; use GET /info")
        self._send_json(200, self.server.info())

    def _put(self) -> None:
        route = urlsplit(self.path).path
        if not route.startswith("/artifacts/"):
            raise RequestError(404, f"no such resource {self.path[:100]}; use PUT /artifacts/NAME")
        name = safe_artifact_name(route[len("/artifacts/"):])
        length = self._content_length()
        if not self.server.upload_slots.acquire(blocking=False):
            raise RequestError(503, "too many uploads at once; retry shortly", {"Retry-After": RETRY_AFTER_S})
        try:
            stored = self._store_upload(name, length)
        finally:
            self.server.upload_slots.release()
        self.server.prune()
        self._send_json(201, stored)

    def _content_length(self) -> int:
        if self.headers.get("Transfer-Encoding"):
            raise RequestError(411, "chunked uploads are not accepted; send Content-Length")
        raw = self.headers.get("Content-Length")
        if raw is None:
            raise RequestError(411, "missing Content-Length; send the artifact with its size")
        if not raw.strip().isdigit():
            raise RequestError(400, f"invalid Content-Length {raw[:30]!r}")
        length = int(raw)
        cap = self.server.config.max_upload_bytes
        if length > cap:
            raise RequestError(413, f"artifact of {length} bytes is over the agent's upload limit of {cap} bytes; "
                                    "start the agent with a larger --max-upload-mb")
        if length == 0:
            raise RequestError(400, "empty upload; send the artifact's bytes")
        free = shutil.disk_usage(self.server.directory).free
        if free - length < DISK_RESERVE_BYTES:
            raise RequestError(507, f"not enough disk space on the agent for {length} bytes ({free} free); "
                                    "remove files from its --dir or lower --keep")
        return length

    def _store_upload(self, name: str, length: int) -> dict:
        """Stream the body to a temporary file, hash it, check it, and move it under its final name."""
        directory = self.server.directory
        temporary = directory / f".upload-{secrets.token_hex(8)}.partial"
        digest = hashlib.sha256()
        try:
            with open(temporary, "wb") as handle:
                remaining = length
                while remaining:
                    chunk = self.rfile.read(min(CHUNK_BYTES, remaining))
                    if not chunk:
                        raise RequestError(400, f"upload ended after {length - remaining} of {length} bytes")
                    digest.update(chunk)
                    handle.write(chunk)
                    remaining -= len(chunk)
            sha256 = digest.hexdigest()
            check_magic(temporary, runtime_of(name))
            final = directory / f"{sha256[:16]}-{name}"
            if final.resolve().parent != directory:
                raise RequestError(400, f"invalid artifact name {name!r}")
            if final.exists():
                temporary.unlink()
                os.utime(final)
            else:
                os.replace(temporary, final)
        finally:
            temporary.unlink(missing_ok=True)
        log.info("stored %s (%d bytes) from %s", final.name, length, self.client_address[0])
        return {"artifact_id": final.name, "sha256": sha256, "size_bytes": length}

    def _read_json(self) -> dict:
        raw = self.headers.get("Content-Length")
        if raw is None or not raw.strip().isdigit():
            raise RequestError(411, "missing Content-Length on the JSON request")
        length = int(raw)
        if length > MAX_JSON_BYTES:
            raise RequestError(413, f"JSON request of {length} bytes is over {MAX_JSON_BYTES} bytes")
        try:
            data = json.loads(self.rfile.read(length) or b"{}")
        except ValueError as exc:
            raise RequestError(400, f"invalid JSON request: {exc}") from exc
        if not isinstance(data, dict):
            raise RequestError(400, "the JSON request must be an object")
        return data

    def _profile_request(self, data: dict) -> tuple[Path, ProfileSettings, list[int] | None]:
        artifact_id = data.get("artifact_id")
        if not isinstance(artifact_id, str) or not ARTIFACT_ID.match(artifact_id):
            raise RequestError(400, "invalid artifact_id; upload the artifact with PUT /artifacts/NAME first")
        path = self.server.directory / artifact_id
        if not path.is_file():
            raise RequestError(404, f"artifact {artifact_id} is not stored on the agent (removed or never uploaded); "
                                    "upload it again")
        try:
            settings = ProfileSettings(
                threads=_optional_int(data, "threads"), warmup=_optional_int(data, "warmup", 10),
                runs=_optional_int(data, "runs", 50), target_rse=_optional_float(data, "target_rse"),
                time_cap_s=_optional_float(data, "time_cap_s", 60.0), seed=_optional_int(data, "seed", 0))
            check_threads(settings.threads, usable_cores(), "the agent's host")
        except (TypeError, ValueError) as exc:
            raise RequestError(400, str(exc)) from exc
        shape = data.get("input_shape")
        if shape is not None and not (isinstance(shape, list) and all(isinstance(d, int) and d > 0 for d in shape)):
            raise RequestError(400, "invalid input_shape: send a list of positive integers")
        return path, settings, shape

    def _post(self) -> None:
        if urlsplit(self.path).path != "/profile":
            raise RequestError(404, f"no such resource {self.path[:100]}; use POST /profile")
        path, settings, shape = self._profile_request(self._read_json())
        if not self.server.job_lock.acquire(blocking=False):
            raise RequestError(503, "agent busy: another benchmark is running; retry later",
                               {"Retry-After": RETRY_AFTER_S})
        self.server.in_use.add(path)
        try:
            self._stream_profile(path, settings, shape)
        finally:
            self.server.in_use.discard(path)
            self.server.job_lock.release()

    def _stream_profile(self, path: Path, settings: ProfileSettings, shape: list[int] | None) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Connection", "close")
        self.end_headers()
        self.close_connection = True

        def send(event: dict) -> None:
            self.wfile.write((json.dumps(event) + "\n").encode())
            self.wfile.flush()

        log.info("profiling %s for %s (threads=%s warmup=%d runs=%d)", path.name, self.client_address[0],
                 settings.threads, settings.warmup, settings.runs)
        try:
            artifact = Artifact.open(path)
            if shape:
                artifact.sidecar = {"input": {"shape": shape}}
            record = self.server.device.profile(artifact, settings, on_event=send)
        except (BrokenPipeError, ConnectionResetError, socket.timeout):
            raise
        except Exception as exc:  # the status line is sent, so the failure goes out as an event
            log.exception("profiling %s failed", path.name)
            send({"event": "error", "error": f"{type(exc).__name__}: {exc}"})
            return
        log.info("profiled %s: %s", path.name,
                 f"median {record.median_ms:.2f} ms" if record.ok and record.median_ms else record.error)
        send({"event": "result", "record": record.to_dict()})


def _optional_int(data: dict, key: str, default: int | None = None) -> int | None:
    value = data.get(key, default)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"invalid {key} {value!r}: send an integer")
    return value


def _optional_float(data: dict, key: str, default: float | None = None) -> float | None:
    value = data.get(key, default)
    if value is None:
        return None
    if not isinstance(value, (int, float)) or isinstance(value, bool):
        raise ValueError(f"invalid {key} {value!r}: send a number")
    return float(value)


def new_token() -> str:
    return secrets.token_urlsafe(24)


def serve(config: AgentConfig, announce=print) -> None:
    """Run the agent until SIGINT or SIGTERM; `announce` gets the address line once listening."""
    if not config.token:
        raise ValueError("empty agent token: pass --token or set EDGEEFF_AGENT_TOKEN")
    if len(config.token) < 16:
        log.warning("the agent token is shorter than 16 characters and easy to guess")
    server = AgentServer(config)
    host, port = server.server_address[:2]
    if config.host not in ("127.0.0.1", "localhost", "::1"):
        log.warning("serving on %s: the token and artifacts travel unencrypted; prefer the default 127.0.0.1 "
                    "and an SSH tunnel (ssh -L %d:127.0.0.1:%d DEVICE)", config.host, port, port)

    def stop(signum, frame):
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, stop) if threading.current_thread() is threading.main_thread() else None
    announce(f"edgeeff agent listening on http://{host}:{port} (artifacts in {server.directory}, "
             f"upload limit {config.max_upload_bytes >> 20} MiB)")
    log.info("agent started on %s:%d, directory %s", host, port, server.directory)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
        log.info("agent on %s:%d stopped", host, port)
