"""The client side of the device agent: `--device agent://HOST:PORT`.

Every call has a connect timeout and a read timeout. The agent sends a heartbeat every few
seconds while it benchmarks, so the read timeout bounds how long a vanished agent can stall
the client, whatever the length of the benchmark.
"""

from __future__ import annotations

import http.client
import json
import logging
import socket
import time
from typing import Callable
from urllib.parse import quote

from edgeeff.profile.record import Artifact, DeviceError, Measurement, ProfileSettings, new_measurement

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10.0
UPLOAD_BLOCK_BYTES = 1 << 20


class AgentDevice:
    """A device reached through `edgeeff agent serve` on it."""

    kind = "agent"

    def __init__(self, name: str, host: str, port: int, token: str, read_timeout_s: float = 60.0,
                 connect_timeout_s: float = CONNECT_TIMEOUT_S, busy_wait_s: float = 600.0):
        self.name = name
        self.host = host
        self.port = port
        self.token = token
        self.read_timeout_s = read_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.busy_wait_s = busy_wait_s
        self._info: dict | None = None

    @property
    def address(self) -> str:
        return f"agent://{self.host}:{self.port}"

    # Transport

    def _connect(self) -> http.client.HTTPConnection:
        connection = http.client.HTTPConnection(self.host, self.port, timeout=self.connect_timeout_s,
                                                blocksize=UPLOAD_BLOCK_BYTES)
        try:
            connection.connect()
        except ConnectionRefusedError as exc:
            raise DeviceError(f"agent at {self.address} refused the connection; start it on the device with "
                              "`edgeeff agent serve` or check --device") from exc
        except socket.timeout as exc:
            raise DeviceError(f"connecting to agent at {self.address} timed out after {self.connect_timeout_s:.0f} s; "
                              "check the address and that the agent (or its SSH tunnel) is running") from exc
        except OSError as exc:
            raise DeviceError(f"cannot connect to agent at {self.address}: {exc}") from exc
        connection.sock.settimeout(self.read_timeout_s)
        return connection

    def _headers(self, extra: dict | None = None) -> dict:
        headers = {"Authorization": f"Bearer {self.token}"}
        headers.update(extra or {})
        return headers

    def _request(self, method: str, path: str, body=None, headers: dict | None = None,
                 stream: bool = False):
        """Send one request; return (status, headers, body), or (200, response, connection) when streaming."""
        connection = self._connect()
        keep_open = False
        try:
            connection.request(method, path, body=body, headers=self._headers(headers))
            response = connection.getresponse()
            if stream and response.status == 200:
                keep_open = True
                return response.status, response, connection
            return response.status, response.headers, response.read()
        except socket.timeout as exc:
            connection.close()
            raise DeviceError(f"agent at {self.address} did not respond to {method} {path} within "
                              f"{self.read_timeout_s:.0f} s; it may have stopped or hung") from exc
        except (ConnectionError, http.client.HTTPException) as exc:
            connection.close()
            raise DeviceError(f"connection to agent at {self.address} was lost during {method} {path} "
                              f"({type(exc).__name__}); check that the agent is still running") from exc
        finally:
            if not keep_open:
                connection.close()

    def _error(self, status: int, body: bytes) -> str:
        try:
            message = json.loads(body).get("error", "")
        except (ValueError, AttributeError):
            message = body[:200].decode(errors="replace")
        if status == 401:
            return (f"agent at {self.address} rejected the token ({message}); pass the agent's token with --token "
                    "or EDGEEFF_AGENT_TOKEN")
        return f"agent at {self.address} answered {status}: {message}"

    # API

    def info(self) -> dict:
        """Return the agent's device description (cached); raises DeviceError when unreachable or unauthorized."""
        if self._info is None:
            status, _, body = self._request("GET", "/info")
            if status != 200:
                raise DeviceError(self._error(status, body))
            data = json.loads(body)
            self._info = data
        return self._info["device"]

    def _retry_when_busy(self, send: Callable[[], tuple], action: str):
        deadline = time.monotonic() + self.busy_wait_s
        while True:
            status, headers, body = send()
            if status != 503:
                return status, headers, body
            if time.monotonic() >= deadline:
                raise DeviceError(f"agent at {self.address} stayed busy for {self.busy_wait_s:.0f} s while {action}; "
                                  "retry when its other benchmark finishes")
            wait = float(headers.get("Retry-After", 2)) if hasattr(headers, "get") else 2.0
            log.info("agent busy; retrying %s in %.0f s", action, wait)
            time.sleep(min(wait, 30.0))

    def upload(self, artifact: Artifact) -> str:
        """Upload an artifact; return the id the agent stores it under."""
        self.info()
        cap = self._info.get("max_upload_bytes")
        if cap is not None and artifact.size_bytes > cap:
            raise DeviceError(f"{artifact.name} is {artifact.size_bytes} bytes, over the upload limit of agent "
                              f"{self.address} ({cap} bytes); restart the agent with a larger --max-upload-mb")

        def send():
            with open(artifact.path, "rb") as handle:
                return self._request("PUT", f"/artifacts/{quote(artifact.name)}", body=handle,
                                     headers={"Content-Length": str(artifact.size_bytes),
                                              "Content-Type": "application/octet-stream"})

        status, _, body = self._retry_when_busy(send, f"uploading {artifact.name}")
        if status != 201:
            raise DeviceError(self._error(status, body))
        stored = json.loads(body)
        if stored.get("sha256") != artifact.sha256:
            raise DeviceError(f"agent at {self.address} stored {artifact.name} with sha256 {stored.get('sha256')}, "
                              f"not {artifact.sha256}: the upload was corrupted; retry")
        return stored["artifact_id"]

    def profile(self, artifact: Artifact, settings: ProfileSettings,
                on_event: Callable[[dict], None] | None = None) -> Measurement:
        info = self.info()
        artifact_id = self.upload(artifact)
        request = {"artifact_id": artifact_id, **settings.to_dict(), "input_shape": artifact.input_shape()}
        payload = json.dumps(request).encode()

        def send():
            return self._request("POST", "/profile", body=payload, stream=True,
                                 headers={"Content-Type": "application/json", "Content-Length": str(len(payload))})

        status, response, connection = self._retry_when_busy(send, f"profiling {artifact.name}")
        if status != 200:
            # For an error the last two items are the headers and the body.
            raise DeviceError(self._error(status, connection))
        try:
            final = self._read_events(response, on_event)
        finally:
            connection.close()

        if final.get("event") == "error":
            record = new_measurement(artifact, self.name, self.kind, info, settings)
            record.status, record.error = "failed", final.get("error", "unknown agent error")
            return record
        record = Measurement.from_dict(final["record"])
        # The agent stores the file under a content id, so the record gets this side's names back.
        record.extra["agent_device_name"] = record.device_name
        record.device_name, record.device_kind = self.name, self.kind
        record.artifact_name, record.artifact_path = artifact.name, str(artifact.path)
        record.extra["agent"] = self.address
        record.apply_sidecar(artifact.sidecar)
        return record

    def _read_events(self, response, on_event) -> dict:
        try:
            while True:
                line = response.readline()
                if not line:
                    raise DeviceError(f"agent at {self.address} closed the connection before sending a result; "
                                      "check the agent's log")
                try:
                    event = json.loads(line)
                except ValueError:
                    continue
                if event.get("event") in ("result", "error"):
                    return event
                if on_event and event.get("event") != "heartbeat":
                    on_event(event)
        except socket.timeout as exc:
            raise DeviceError(f"agent at {self.address} sent nothing for {self.read_timeout_s:.0f} s during a "
                              "benchmark; it may have stopped or hung") from exc
        except (ConnectionError, http.client.HTTPException) as exc:
            raise DeviceError(f"connection to agent at {self.address} was lost during a benchmark "
                              f"({type(exc).__name__})") from exc

    def close(self) -> None:
        pass
