"""The sidecar JSON written beside every artifact: what it is, how to feed it, how it verified.

No torch here: `predict`, `profile` and the device agent read sidecars with only the runtimes.
"""

from __future__ import annotations

import json
import platform
from importlib import metadata
from pathlib import Path

SCHEMA_VERSION = 1
TOOL_PACKAGES = ("edgeeff", "torch", "torchao", "executorch", "nncf", "onnx", "onnxruntime", "onnxscript",
                 "litert-torch", "ai-edge-litert", "ai-edge-quantizer", "numpy")
LABELS_DIR = Path(__file__).resolve().parent / "labels"
IMAGENET_LABELS = "imagenet1k"


def sidecar_path(artifact: str | Path) -> Path:
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + ".json")


def tool_versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for name in TOOL_PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return versions


def read_sidecar(artifact: str | Path) -> dict:
    """Read an artifact's sidecar; raises FileNotFoundError or ValueError with the fix."""
    path = sidecar_path(artifact)
    if not path.is_file():
        raise FileNotFoundError(f"sidecar not found: {path}; re-export the artifact with edgeeff export")
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid sidecar JSON {path}: {exc}; re-export the artifact") from exc
    if data.get("schema") != SCHEMA_VERSION:
        raise ValueError(f"unsupported sidecar schema {data.get('schema')!r} in {path}; re-export with this edgeeff")
    return data


def load_labels(spec: str | list[str] | None, num_classes: int) -> list[str] | None:
    """Resolve a sidecar's labels field: a name list, the bundled ImageNet-1k names, or none."""
    if isinstance(spec, list):
        return spec
    if spec == IMAGENET_LABELS or (spec is None and num_classes == 1000):
        return (LABELS_DIR / "imagenet1k.txt").read_text().splitlines()
    return None


def read_labels_file(path: str | Path) -> list[str]:
    """Read one class name per line, skipping blank lines."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"labels file not found: {path}; pass a text file with one class name per line")
    names = [line.strip() for line in path.read_text().splitlines() if line.strip()]
    if not names:
        raise ValueError(f"labels file {path} is empty; write one class name per line")
    return names
