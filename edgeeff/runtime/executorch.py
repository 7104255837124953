"""Run ExecuTorch programs (.pte) with the ExecuTorch runtime's Python bindings.

This module imports neither torch nor executorch until a runner is created. The bindings
(executorch 1.5.1) link libtorch and take torch tensors, not NumPy arrays, so a runner needs
torch installed and imports it when it loads a program: `pip install 'edgeeff[executorch-runtime]'`.

The runner calls the compiled bindings (`executorch.extension.pybindings._C`) directly.
`executorch.runtime.Runtime` wraps the same calls, but importing it also imports the whole
`executorch.exir` compiler, which took over 30 s on a 2-core machine.
"""

from __future__ import annotations

import weakref
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import numpy as np

from edgeeff.runtime.base import Runner, RuntimeUnavailable

# A .pte file is a FlatBuffer whose file identifier, "ET" and two version digits, sits at bytes 4–8.
_IDENTIFIER = slice(4, 8)

# Number of programs that ExecuTorchRunner instances in this process hold. See _set_thread_count.
_loaded_programs = 0


class ExecuTorchRunner(Runner):
    """An ExecuTorch program loaded for inference, with XNNPACK's threads set when `threads` is given.

    XNNPACK's thread pool is one per process. Set `threads` on the first runner, or close the
    earlier runners (`close()`) before opening one with another thread count.
    """

    runtime = "executorch"

    def __init__(self, path: str | Path, threads: int | None = None):
        super().__init__(path, threads)
        if threads is not None and threads < 1:
            raise ValueError(f"invalid thread count {threads}: use 1 or more, or None for the runtime default")
        _check_program_file(self.path)
        self._torch, bindings = _import_runtime()
        _set_thread_count(bindings, threads)

        try:
            program = bindings._load_program(str(self.path),
                                             program_verification=bindings.Verification.InternalConsistency)
            method_names = [program.get_method_name(i) for i in range(program.num_methods())]
            if "forward" not in method_names:
                raise ValueError(f"ExecuTorch program {self.path} has no forward method (methods: "
                                 f"{', '.join(method_names) or 'none'}); re-export the model")
            self._method = program.load_method("forward")
        except RuntimeError as exc:
            raise ValueError(f"failed to load ExecuTorch program {self.path}: {exc}; the file is truncated, "
                             "corrupt or from another ExecuTorch version: re-export it") from exc

        meta = self._method.method_meta()
        if meta.num_inputs() != 1 or meta.num_outputs() != 1:
            raise ValueError(f"ExecuTorch program {self.path} has {meta.num_inputs()} inputs and "
                             f"{meta.num_outputs()} outputs, expected 1 image input and 1 logits output")
        self._input_shape = tuple(int(d) for d in meta.input_tensor_meta(0).sizes())
        _program_loaded()
        self._release = weakref.finalize(self, _program_released)

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self._input_shape

    @staticmethod
    def version() -> str:
        try:
            return version("executorch")
        except PackageNotFoundError:
            return "not installed"

    def run(self, batch: np.ndarray) -> np.ndarray:
        if self._method is None:
            raise RuntimeError(f"runner for {self.path} is closed; open the artifact again")
        batch = np.asarray(batch)
        if batch.shape != self._input_shape:
            raise ValueError(f"input batch has shape {batch.shape}, but {self.path.name} was exported for "
                             f"{self._input_shape}; preprocess at the exported resolution")
        tensor = self._torch.from_numpy(np.ascontiguousarray(batch, dtype=np.float32))
        (logits,) = self._method((tensor,))
        return logits.numpy().astype(np.float32, copy=False)

    def close(self) -> None:
        """Free the program, so that a later runner may set another XNNPACK thread count."""
        self._method = None
        self._release()


def _check_program_file(path: Path) -> None:
    """Reject files that are not ExecuTorch programs before the runtime reads them.

    executorch 1.5.1 aborts the whole process (a pybind11 UnicodeDecodeError raised in C++)
    when it logs a file identifier that is not UTF-8, so random bytes must never reach it.
    """
    if not path.is_file():
        raise FileNotFoundError(f"ExecuTorch program not found: {path}")
    with open(path, "rb") as f:
        header = f.read(_IDENTIFIER.stop)
    if len(header) < _IDENTIFIER.stop:
        raise ValueError(f"not an ExecuTorch program: {path} has only {len(header)} bytes; "
                         "pass a .pte file written by edgeeff export")
    identifier = header[_IDENTIFIER]
    if identifier[:2] != b"ET" or not identifier[2:].isdigit():
        raise ValueError(f"not an ExecuTorch program: {path} has no 'ET' file identifier at byte 4; "
                         "pass a .pte file written by edgeeff export")


def _import_runtime():
    """Import torch and the ExecuTorch bindings, or raise RuntimeUnavailable."""
    try:
        import torch
        from executorch.extension.pybindings import _C as bindings
    except ImportError as exc:
        raise RuntimeUnavailable(f"the ExecuTorch runtime is not installed ({exc}); "
                                 "run pip install 'edgeeff[executorch-runtime]'") from exc
    return torch, bindings


def _set_thread_count(bindings, threads: int | None) -> None:
    """Resize XNNPACK's process-wide thread pool to `threads`, when that is safe.

    Each loaded XNNPACK delegate keeps a pointer to the pool, and a resize destroys the old
    pool. Resizing while a program is loaded therefore leaves its delegates with a freed pool,
    which crashed the next run with executorch 1.5.1. So the resize happens only while no
    runner holds a program.
    NOTE: programs loaded through ExecuTorch directly, not through this runner, are not counted.
    """
    if threads is None:
        return
    current = bindings._threadpool_get_thread_count()
    if threads == current:
        return
    if _loaded_programs:
        raise RuntimeError(f"cannot set ExecuTorch to {threads} threads: {_loaded_programs} program(s) are "
                           f"still loaded with {current} threads; close their runners first, or use "
                           f"threads={current}")
    bindings._unsafe_reset_threadpool(threads)


def _program_loaded() -> None:
    global _loaded_programs
    _loaded_programs += 1


def _program_released() -> None:
    global _loaded_programs
    _loaded_programs -= 1
