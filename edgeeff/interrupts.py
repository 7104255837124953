"""Ctrl-C and SIGTERM: stop a run at the next safe point, even when a library drops the interrupt.

Python runs a signal handler between two bytecodes of the main thread, wherever they are. When
that is inside a garbage-collection or weakref callback (JAX and torch register some), the
KeyboardInterrupt the handler raises is printed as "Exception ignored" and dropped, and the
run would go on and publish its artifact. So the handler also records the signal, and long
steps call `raise_if_interrupted()` at their safe points: before an artifact is renamed into
place, between targets, between training steps. A signal can then be delayed, never lost.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from typing import Iterator

# Signals that stop a run; `install_handlers` turns both into KeyboardInterrupt.
INTERRUPT_SIGNALS = (signal.SIGINT, signal.SIGTERM)

_received: list[int] = []


def _handler(signum, frame) -> None:
    _received.append(signum)
    raise KeyboardInterrupt


def install_handlers() -> None:
    """Make SIGINT and SIGTERM raise KeyboardInterrupt and be remembered; main thread only."""
    for signum in INTERRUPT_SIGNALS:
        signal.signal(signum, _handler)


def interrupted() -> bool:
    """Return whether a signal reached the handlers that `install_handlers` set."""
    return bool(_received)


def raise_if_interrupted() -> None:
    """Raise KeyboardInterrupt when a signal came earlier and its exception was dropped."""
    if _received:
        raise KeyboardInterrupt


@contextlib.contextmanager
def interrupts_deferred() -> Iterator[None]:
    """Hold SIGINT and SIGTERM until the block ends, then act on the first one received.

    Use it around short steps that must not be split, such as renaming an artifact and its
    sidecar into place. Outside the main thread, where Python cannot set handlers, and for a
    signal whose handler was not set from Python, it defers nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {}
    for signum in INTERRUPT_SIGNALS:
        handler = signal.getsignal(signum)
        if handler is not None:
            previous[signum] = signal.signal(signum, lambda number, frame: received.append(number))
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
        if received:
            signal.raise_signal(received[0])


def reset() -> None:
    """Forget recorded signals; for tests that run several commands in one process."""
    _received.clear()


__all__ = ["INTERRUPT_SIGNALS", "install_handlers", "interrupted", "interrupts_deferred", "raise_if_interrupted",
           "reset"]
