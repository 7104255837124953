"""Classify images with an exported artifact in its own runtime (no torch needed)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgeeff.data.images import open_rgb
from edgeeff.data.preprocess import Preprocessing
from edgeeff.io import sha256_file
from edgeeff.runtime import open_runner, runtime_for
from edgeeff.sidecar import load_labels, read_sidecar


class ArtifactMismatch(ValueError):
    """The artifact file is not the one its sidecar describes."""


def softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(-1, keepdims=True)
    exp = np.exp(shifted)
    return exp / exp.sum(-1, keepdims=True)


def predict(artifact: str | Path, images: list[str | Path], top_k: int = 5, threads: int | None = None) -> dict:
    """Return top-k classes per image, using the preprocessing recorded in the sidecar."""
    artifact = Path(artifact)
    if not artifact.is_file():
        raise FileNotFoundError(f"artifact not found: {artifact}; pass a .pte, .tflite or .onnx file from edgeeff export")
    runtime_for(artifact)  # rejects an unknown suffix before anything else is read
    sidecar = read_sidecar(artifact)
    if sidecar.get("sha256") and sha256_file(artifact) != sidecar["sha256"]:
        raise ArtifactMismatch(f"{artifact} does not match its sidecar's sha256; the file was replaced: re-export it")
    preprocessing = Preprocessing.from_dict(sidecar["preprocessing"])
    resolution = int(sidecar["model"]["resolution"])
    labels = load_labels(sidecar.get("labels"), int(sidecar["model"]["num_classes"]))
    runner = open_runner(artifact, threads)
    results = []
    for image_path in images:
        image_path = Path(image_path)
        if not image_path.is_file():
            raise FileNotFoundError(f"image not found: {image_path}; pass the path of a jpg, png, webp or bmp file")
        batch = preprocessing(open_rgb(image_path), resolution)[None]
        probs = softmax(runner.run(batch.astype(np.float32))[0].astype(np.float64))
        order = np.argsort(-probs)[:top_k]
        results.append({
            "image": str(image_path),
            "top": [{"class": int(i), "label": labels[i] if labels else str(int(i)), "probability": float(probs[i])}
                    for i in order],
        })
    return {"artifact": str(artifact), "runtime": runner.runtime, "trained": sidecar["weights"]["trained"],
            "warning": sidecar["weights"].get("warning"), "predictions": results}
