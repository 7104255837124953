"""Atomic file writes: an artifact appears under its final name complete or not at all."""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterator

from edgeeff.interrupts import interrupts_deferred, raise_if_interrupted


def _default_file_mode() -> int:
    """Return the mode a new file gets from open(): 0o666 less the process umask."""
    try:
        # Linux reports the umask here; reading it does not change it for other threads.
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


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
        raise_if_interrupted()
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        # mkstemp creates the file as 0o600; give the artifact the permissions open() would.
        os.chmod(tmp, _default_file_mode())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextlib.contextmanager
def atomic_paths(*paths: str | Path) -> Iterator[list[Path]]:
    """Yield a temporary path for each of `paths`, for files that must appear together.

    When the block succeeds, the files are renamed into place in the order given, with SIGINT
    and SIGTERM held, so an interrupt leaves all of them under their final names or none. On
    any error, every temporary file is removed. SIGKILL or a power loss between two renames
    can still publish only the first ones.
    """
    with contextlib.ExitStack() as publish:
        with contextlib.ExitStack() as temporaries:
            # ExitStack exits in reverse order, so entering the last path first renames the first path first.
            tmps = [temporaries.enter_context(atomic_path(path)) for path in reversed(paths)][::-1]
            yield tmps
            raise_if_interrupted()  # a signal whose KeyboardInterrupt was dropped must not publish
            publish.enter_context(interrupts_deferred())


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


def sha256_file(path: str | Path) -> str:
    """Return the hex SHA-256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
