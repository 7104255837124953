"""The export cache of `edgeeff select`: one verified artifact per key, reused across runs.

The key contains everything that changes the artifact: the weights (checkpoint sha256, or
untrained), the variant's scaling, the input resolution, the class count, precision, target,
CPU family, the calibration settings, and the versions of every export tool. An entry is a
folder named by the key's hash, containing the artifact, its sidecar and key.json. An entry
counts only when its artifact's sha256 matches its sidecar, so a half-copied folder is exported
again.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path

from edgeeff.io import write_json_atomic

CACHE_ENV = "EDGEEFF_CACHE"
KEY_FILE = "key.json"
KEY_SCHEMA = 1


def default_cache_dir() -> Path:
    """Return $EDGEEFF_CACHE/select, else the user cache folder's edgeeff/select."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser() / "select"
    import platformdirs

    return Path(platformdirs.user_cache_dir("edgeeff", appauthor=False)) / "select"


@dataclass
class CachedArtifact:
    """An artifact found in, or just added to, the cache."""

    path: Path
    sidecar: dict
    sha256: str
    exported: bool  # True when this run exported it, False when it came from the cache


def export_key(*, variant, resolution: int, num_classes: int, precision: str, target: str, arch: str,
               checkpoint_sha256: str | None, calibration: dict, tool_versions: dict) -> dict:
    """Return the cache key of one export as a JSON-able dict."""
    return {
        "schema": KEY_SCHEMA,
        "variant": {"name": variant.name, "family": variant.family, "phi": variant.phi, "width": variant.width,
                    "depth": variant.depth},
        "resolution": resolution,
        "num_classes": num_classes,
        "precision": precision,
        "target": target,
        "arch": arch,
        "weights": checkpoint_sha256 or "untrained",
        "calibration": calibration,
        "tool_versions": tool_versions,
    }


def key_digest(key: dict) -> str:
    return hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:20]


class ExportCache:
    """Artifacts under `root`/exports, one folder per key."""

    def __init__(self, root: str | Path | None = None):
        self.root = Path(root).expanduser() if root else default_cache_dir()

    def entry_dir(self, key: dict) -> Path:
        variant = key["variant"]["name"]
        return (self.root / "exports" /
                f"{variant}-{key['resolution']}px-{key['precision']}-{key['target']}-{key_digest(key)}")

    def lookup(self, key: dict) -> CachedArtifact | None:
        """Return the cached artifact of `key`, or None when it is absent or incomplete."""
        from edgeeff.profile.record import sha256_file
        from edgeeff.sidecar import read_sidecar

        folder = self.entry_dir(key)
        key_path = folder / KEY_FILE
        if not key_path.is_file():
            return None
        try:
            stored = json.loads(key_path.read_text())
            artifact = folder / stored["artifact"]
            sidecar = read_sidecar(artifact)
        except (OSError, ValueError, KeyError):
            return None
        if stored.get("key") != key or not artifact.is_file():
            return None
        sha256 = sha256_file(artifact)
        if sidecar.get("sha256") != sha256:
            return None
        return CachedArtifact(path=artifact, sidecar=sidecar, sha256=sha256, exported=False)

    def store(self, key: dict, artifact: Path, sidecar: dict) -> CachedArtifact:
        """Record an artifact exported into `entry_dir(key)`; key.json is written last, so it marks a complete entry."""
        write_json_atomic(self.entry_dir(key) / KEY_FILE, {"key": key, "artifact": artifact.name})
        return CachedArtifact(path=artifact, sidecar=sidecar, sha256=sidecar["sha256"], exported=True)
