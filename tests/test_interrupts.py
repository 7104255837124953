"""A signal whose KeyboardInterrupt a library drops still stops the run before it publishes."""

from __future__ import annotations

import signal
import weakref

import pytest

from edgeeff import interrupts
from edgeeff.io import atomic_path, atomic_paths


@pytest.fixture
def handlers():
    previous = {signum: signal.getsignal(signum) for signum in interrupts.INTERRUPT_SIGNALS}
    interrupts.install_handlers()
    yield
    interrupts.reset()
    for signum, handler in previous.items():
        signal.signal(signum, handler)


class Resource:
    """Stands in for an object that JAX or torch tracks with a weakref callback."""


def drop_interrupt_in_weakref_callback() -> None:
    """Deliver SIGTERM inside a weakref callback, where Python prints the exception and drops it."""
    resource = Resource()
    ref = weakref.ref(resource, lambda _: signal.raise_signal(signal.SIGTERM))
    del resource
    assert ref() is None


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_signal_in_weakref_callback_is_dropped_by_python(handlers):
    drop_interrupt_in_weakref_callback()  # no exception reaches this frame
    assert interrupts.interrupted()
    with pytest.raises(KeyboardInterrupt):
        interrupts.raise_if_interrupted()


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_dropped_interrupt_stops_atomic_path(handlers, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with atomic_path(tmp_path / "m.onnx") as tmp:
            tmp.write_bytes(b"model")
            drop_interrupt_in_weakref_callback()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_dropped_interrupt_stops_atomic_paths(handlers, tmp_path):
    with pytest.raises(KeyboardInterrupt):
        with atomic_paths(tmp_path / "m.tflite", tmp_path / "m.tflite.json") as (model, sidecar):
            model.write_bytes(b"model")
            sidecar.write_text("{}")
            drop_interrupt_in_weakref_callback()
    assert list(tmp_path.iterdir()) == []


def test_no_signal_publishes(handlers, tmp_path):
    with atomic_path(tmp_path / "m.onnx") as tmp:
        tmp.write_bytes(b"model")
    assert (tmp_path / "m.onnx").read_bytes() == b"model"
    assert not interrupts.interrupted()
