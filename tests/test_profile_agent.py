"""The device agent as a real HTTP server process on 127.0.0.1: auth, uploads, profiling, failures."""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from edgeeff.profile import Artifact, DeviceError, ProfileSettings, open_device
from edgeeff.profile.agent import RequestError, safe_artifact_name
from profile_helpers import AgentProcess, cached_exports, cached_onnx, python_env

TOKEN = "test-token-0123456789abcdef"
# A well-formed ModelProto frame (ir_version 7, then a graph field) around a graph of garbage bytes:
# it passes the agent's upload check and fails in onnxruntime.
GARBAGE_GRAPH = b"this is not a graph" * 5
BROKEN_ONNX = b"\x08\x07\x3a" + bytes([len(GARBAGE_GRAPH)]) + GARBAGE_GRAPH


@pytest.fixture(scope="module")
def agent(tmp_path_factory):
    folder = tmp_path_factory.mktemp("agent")
    process = AgentProcess(folder / "store", TOKEN, "--max-upload-mb", "64")
    yield process
    process.stop()


@pytest.fixture(scope="module")
def b0_onnx():
    return cached_onnx("b0", 64)


def request(port: int, method: str, path: str, body: bytes | None = None, token: str | None = TOKEN,
            headers: dict | None = None, timeout: float = 30.0) -> tuple[int, dict, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    all_headers = dict(headers or {})
    if token is not None:
        all_headers["Authorization"] = f"Bearer {token}"
    try:
        connection.request(method, path, body=body, headers=all_headers)
        response = connection.getresponse()
        return response.status, dict(response.headers), response.read()
    finally:
        connection.close()


def stored_files(agent: AgentProcess) -> list[str]:
    store = agent.log_path.parent / "store"
    return sorted(path.name for path in store.iterdir())


def test_info_requires_token(agent):
    status, headers, body = request(agent.port, "GET", "/info", token=None)
    assert status == 401
    assert headers.get("WWW-Authenticate", "").startswith("Bearer")
    assert "missing token" in json.loads(body)["error"]


def test_info_rejects_wrong_token(agent):
    status, _, body = request(agent.port, "GET", "/info", token="wrong-token-0123456789")
    assert status == 401
    assert "invalid token" in json.loads(body)["error"]
    assert "wrong-token" not in agent.log_text()


def test_info_with_token(agent):
    status, _, body = request(agent.port, "GET", "/info")
    assert status == 200
    info = json.loads(body)
    assert info["max_upload_bytes"] == 64 << 20
    assert info["device"]["cores"] >= 1
    assert len(info["device"]["fingerprint"]) == 16
    assert "onnxruntime" in info["runtimes"]


def test_client_wrong_token_message(agent):
    device = open_device(agent.address, token="wrong-token-0123456789")
    with pytest.raises(DeviceError, match="rejected the token"):
        device.info()


def test_upload_without_token_not_stored(agent):
    before = stored_files(agent)
    status, _, _ = request(agent.port, "PUT", "/artifacts/m.onnx", body=BROKEN_ONNX, token=None)
    assert status == 401
    assert stored_files(agent) == before


def test_oversize_upload_rejected_before_storing(agent):
    before = stored_files(agent)
    # Only the headers claim 200 MiB; the agent must respond from Content-Length alone.
    connection = http.client.HTTPConnection("127.0.0.1", agent.port, timeout=10)
    connection.putrequest("PUT", "/artifacts/huge.onnx")
    connection.putheader("Authorization", f"Bearer {TOKEN}")
    connection.putheader("Content-Length", str(200 << 20))
    connection.endheaders()
    connection.send(b"\x08\x07" * 100)
    response = connection.getresponse()
    body = json.loads(response.read())
    connection.close()
    assert response.status == 413
    assert "--max-upload-mb" in body["error"]
    assert stored_files(agent) == before


def test_upload_without_length_rejected(agent):
    connection = http.client.HTTPConnection("127.0.0.1", agent.port, timeout=10)
    connection.putrequest("PUT", "/artifacts/m.onnx")
    connection.putheader("Authorization", f"Bearer {TOKEN}")
    connection.putheader("Transfer-Encoding", "chunked")
    connection.endheaders()
    response = connection.getresponse()
    response.read()
    connection.close()
    assert response.status == 411


@pytest.mark.parametrize("name, content", [
    ("model.tflite", b"hello, this is not a flatbuffer"),
    ("model.pte", b"\x00" * 32),
    ("model.onnx", b"plain text, not protobuf"),
    ("notes.txt", BROKEN_ONNX),
    ("noext", BROKEN_ONNX),
])
def test_bad_upload_rejected_and_agent_serves(agent, name, content):
    before = stored_files(agent)
    status, _, body = request(agent.port, "PUT", f"/artifacts/{name}", body=content)
    assert status == 400
    assert json.loads(body)["error"]
    assert stored_files(agent) == before
    assert agent.alive()
    assert request(agent.port, "GET", "/info")[0] == 200


@pytest.mark.parametrize("raw_name, stored_suffix", [
    ("..%2F..%2Fescape.onnx", "-escape.onnx"),
    ("../../escape2.onnx", "-escape2.onnx"),
    ("..%5C..%5Cwin.onnx", "-win.onnx"),
    (".hidden.onnx", "-hidden.onnx"),
    ("%2e%2e%2f%2e%2e%2fetc%2fpasswd.onnx", "-passwd.onnx"),
    ("we%20ird%3Bname%24.onnx", "-we_ird_name_.onnx"),
])
def test_upload_names_cannot_escape(agent, raw_name, stored_suffix):
    store = agent.log_path.parent / "store"
    outside_before = sorted(path.name for path in store.parent.iterdir())
    content = BROKEN_ONNX + b"\x12" + bytes([len(raw_name)]) + raw_name.encode()
    status, _, body = request(agent.port, "PUT", f"/artifacts/{raw_name}", body=content)
    assert status == 201, body
    stored = json.loads(body)
    assert stored["artifact_id"].endswith(stored_suffix)
    assert (store / stored["artifact_id"]).read_bytes() == content
    assert sorted(path.name for path in store.parent.iterdir()) == outside_before


def test_safe_artifact_name_cases():
    assert safe_artifact_name("a/b/../c.tflite") == "c.tflite"
    for bad in ("..", "", "/", ".onnx", "x.exe", "%00.onnx.sh"):
        with pytest.raises(RequestError):
            safe_artifact_name(bad)


def test_profile_unknown_artifact_id(agent):
    payload = json.dumps({"artifact_id": "0123456789abcdef-missing.onnx"}).encode()
    status, _, body = request(agent.port, "POST", "/profile", body=payload,
                              headers={"Content-Length": str(len(payload))})
    assert status == 404
    assert "upload it again" in json.loads(body)["error"]


@pytest.mark.parametrize("payload", [b"{not json", b"[1, 2]", json.dumps({"artifact_id": "../../x.onnx"}).encode()])
def test_profile_bad_request(agent, payload):
    status, _, _ = request(agent.port, "POST", "/profile", body=payload, headers={"Content-Length": str(len(payload))})
    assert status == 400
    assert agent.alive()


def test_profile_rejects_bad_settings(agent):
    status, _, body = request(agent.port, "PUT", "/artifacts/settings.onnx", body=BROKEN_ONNX + b"\x12\x08settings")
    artifact_id = json.loads(body)["artifact_id"]
    for settings in ({"runs": 0}, {"threads": 100000}, {"warmup": "ten"}, {"target_rse": 5}):
        payload = json.dumps({"artifact_id": artifact_id, **settings}).encode()
        status, _, body = request(agent.port, "POST", "/profile", body=payload,
                                  headers={"Content-Length": str(len(payload))})
        assert status == 400, settings
        assert json.loads(body)["error"]


def test_broken_model_fails_and_agent_serves(agent, tmp_path):
    path = tmp_path / "broken.onnx"
    path.write_bytes(BROKEN_ONNX)
    device = open_device(agent.address, token=TOKEN)
    record = device.profile(Artifact.open(path), ProfileSettings(warmup=0, runs=2))
    assert record.status == "failed"
    assert record.error
    assert agent.alive()
    assert request(agent.port, "GET", "/info")[0] == 200


def test_profile_through_agent(agent, b0_onnx):
    device = open_device(agent.address, token=TOKEN)
    events = []
    record = device.profile(Artifact.open(b0_onnx), ProfileSettings(threads=1, warmup=2, runs=8), events.append)
    assert record.ok, record.error
    assert record.device_kind == "agent"
    assert record.device_name == agent.address
    assert record.artifact_name == "b0-64.onnx"
    assert record.runs == 8
    assert 0 < record.min_ms <= record.median_ms <= record.p90_ms <= record.max_ms
    assert record.peak_rss_mb > record.baseline_rss_mb > 0
    assert record.device_fingerprint == device.info()["fingerprint"]
    assert any(event.get("phase") == "measure" for event in events)


@pytest.mark.slow
def test_agent_profiles_all_formats(agent):
    """B0 and Lite0 in ExecuTorch, TFLite and ONNX profile through the agent with their sidecar metadata."""
    exports = cached_exports()
    assert [(r.target, r.error) for r in exports if not r.ok] == []
    device = open_device(agent.address, token=TOKEN)
    for export in exports:
        record = device.profile(Artifact.open(export.path), ProfileSettings(threads=1, warmup=2, runs=10))
        assert record.ok, (export.path.name, record.error)
        assert record.artifact_name == export.path.name
        assert record.variant == export.sidecar["model"]["name"]
        assert record.runtime == export.sidecar["runtime"]
        assert record.median_ms > 0


def test_one_benchmark_at_a_time(agent, b0_onnx):
    device = open_device(agent.address, token=TOKEN)
    artifact_id = device.upload(Artifact.open(b0_onnx))
    long_run = json.dumps({"artifact_id": artifact_id, "threads": 1, "warmup": 0, "runs": 400}).encode()
    short_run = json.dumps({"artifact_id": artifact_id, "threads": 1, "warmup": 0, "runs": 1}).encode()
    first = {}

    def run_first():
        first["status"] = request(agent.port, "POST", "/profile", body=long_run,
                                  headers={"Content-Length": str(len(long_run))}, timeout=300)

    thread = threading.Thread(target=run_first)
    thread.start()
    deadline = time.monotonic() + 60
    while not json.loads(request(agent.port, "GET", "/info")[2])["busy"]:
        assert time.monotonic() < deadline, "the first benchmark never started"
        time.sleep(0.05)
    status, headers, body = request(agent.port, "POST", "/profile", body=short_run,
                                    headers={"Content-Length": str(len(short_run))})
    thread.join()
    assert status == 503
    assert headers.get("Retry-After") == "2"
    assert "busy" in json.loads(body)["error"]
    assert first["status"][0] == 200
    assert b'"event": "result"' in first["status"][2]


def test_client_disconnect_frees_agent(agent, b0_onnx):
    device = open_device(agent.address, token=TOKEN)
    artifact_id = device.upload(Artifact.open(b0_onnx))
    payload = json.dumps({"artifact_id": artifact_id, "threads": 1, "warmup": 0, "runs": 100000}).encode()
    with socket.create_connection(("127.0.0.1", agent.port), timeout=30) as client:
        client.sendall(b"POST /profile HTTP/1.0\r\nAuthorization: Bearer " + TOKEN.encode()
                       + b"\r\nContent-Length: " + str(len(payload)).encode() + b"\r\n\r\n" + payload)
        assert client.recv(64).startswith(b"HTTP/1.0 200")
        time.sleep(1.0)
    deadline = time.monotonic() + 30
    while json.loads(request(agent.port, "GET", "/info")[2])["busy"]:
        assert time.monotonic() < deadline, "the agent kept running a benchmark for a client that left"
        time.sleep(0.1)
    assert "client connection lost" in agent.log_text()


def test_agent_keeps_newest_uploads(tmp_path):
    process = AgentProcess(tmp_path / "store", TOKEN, "--keep", "2")
    try:
        ids = []
        for index in range(3):
            body = BROKEN_ONNX + b"\x12\x01" + str(index).encode()
            status, _, response = request(process.port, "PUT", f"/artifacts/m{index}.onnx", body=body)
            assert status == 201
            ids.append(json.loads(response)["artifact_id"])
            time.sleep(0.05)
        assert sorted(path.name for path in (tmp_path / "store").iterdir()) == sorted(ids[1:])
    finally:
        process.stop()


def test_client_times_out_when_agent_hangs(tmp_path):
    process = AgentProcess(tmp_path / "store", TOKEN)
    try:
        os.kill(process.process.pid, signal.SIGSTOP)
        device = open_device(process.address, token=TOKEN, timeout_s=2)
        started = time.monotonic()
        with pytest.raises(DeviceError, match="did not respond"):
            device.info()
        assert time.monotonic() - started < 15
    finally:
        os.kill(process.process.pid, signal.SIGCONT)
        process.stop()


def test_client_error_when_agent_gone(tmp_path):
    process = AgentProcess(tmp_path / "store", TOKEN)
    address = process.address
    process.stop()
    with pytest.raises(DeviceError, match="refused the connection"):
        open_device(address, token=TOKEN).info()


def test_agent_binds_loopback_by_default(tmp_path):
    process = AgentProcess(tmp_path / "store", TOKEN)
    try:
        assert process.address.startswith("agent://127.0.0.1:")
    finally:
        process.stop()


@pytest.fixture
def torch_blocker(tmp_path) -> Path:
    """A folder that, first on PYTHONPATH, makes `import torch` fail in every child process."""
    folder = tmp_path / "no-torch"
    (folder / "torch").mkdir(parents=True)
    (folder / "torch" / "__init__.py").write_text("raise ImportError('torch is blocked in this test')\n")
    return folder


def test_agent_without_torch_profiles_onnx(tmp_path, torch_blocker, b0_onnx):
    process = AgentProcess(tmp_path / "store", TOKEN, env=python_env(torch_blocker))
    try:
        record = open_device(process.address, token=TOKEN).profile(Artifact.open(b0_onnx),
                                                                   ProfileSettings(threads=1, warmup=1, runs=3))
        assert record.ok, record.error
        assert "torch is blocked" not in process.log_text()
    finally:
        process.stop()
