"""Atomic file writes: an artifact appears under its final name complete or not at all."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a unique temporary path beside `path`; rename it into place when the block succeeds.

    The temporary file lives in the same directory, so the final rename is atomic on POSIX, and
    its name is unique, so two writers to the same output never share a partial file. On any
    error, including KeyboardInterrupt, the temporary file is removed.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # The temporary name keeps the final suffix, so a runtime can load it for verification first.
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".partial{path.suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | Path, data) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, sort_keys=False) + "\n")


def check_writable_dir(path: str | Path) -> Path:
    """Create `path` if needed and check that files can be written there."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".edgeeff-write-check-"):
            pass
    except OSError as exc:
        raise OSError(f"output directory not writable: {path} ({exc.strerror}); pass --output with a writable folder") from exc
    return path


@contextlib.contextmanager
def file_lock(path: str | Path) -> Iterator[None]:
    """Hold an exclusive advisory lock on `path`.lock, so two writers of one artifact take turns."""
    import fcntl

    lock_path = Path(path).with_name(f".{Path(path).name}.lock")
    with open(lock_path, "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
