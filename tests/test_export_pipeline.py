"""End to end: checkpoint → artifacts in all three formats → verified in their runtimes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeeff.checkpoints import load_checkpoint, untrained_model
from edgeeff.data import open_rgb
from edgeeff.data.images import list_images
from edgeeff.export.pipeline import TARGETS, ExportOptions, export_model
from edgeeff.models import with_resolution
from edgeeff.predict import predict
from edgeeff.runtime import open_runner
from edgeeff.sidecar import read_sidecar

EXPECTED = json.loads((Path(__file__).parent / "expected" / "lite0_int8.json").read_text())


@pytest.fixture(scope="module")
def b0_artifacts(tmp_path_factory):
    """Untrained B0 at 64 px, FP32 and INT8, in every format."""
    loaded = untrained_model("b0")
    loaded.variant = with_resolution(loaded.variant, 64)
    out = tmp_path_factory.mktemp("b0")
    options = ExportOptions(targets=list(TARGETS), precisions=["fp32", "int8"], output=out, calib_size=40)
    return export_model(loaded, options)


@pytest.mark.slow
def test_b0_all_formats_verify(b0_artifacts):
    assert [(r.target, r.precision) for r in b0_artifacts if not r.ok] == []
    for record in b0_artifacts:
        assert record.path.is_file()
        assert record.sidecar["verification"]["passed"]
        if record.precision == "fp32":
            verification = record.sidecar["verification"]
            assert verification["max_abs_logit_diff"] <= verification["tolerance"]
            assert verification["tolerance"] <= 1e-4 * 100  # logits of an untrained B0 stay below 100


@pytest.mark.slow
def test_b0_sidecar_contents(b0_artifacts):
    record = next(r for r in b0_artifacts if r.target == "tflite" and r.precision == "int8")
    sidecar = read_sidecar(record.path)
    assert sidecar["model"]["name"] == "b0"
    assert sidecar["model"]["resolution"] == 64
    assert sidecar["weights"]["trained"] is False
    assert "UNTRAINED" in sidecar["weights"]["warning"]
    assert record.path.name == "b0-64px-int8-untrained.tflite"
    assert sidecar["input"]["shape"] == [1, 3, 64, 64]
    assert sidecar["quantization"]
    assert set(sidecar["tool_versions"]) >= {"torch", "executorch", "nncf", "onnxruntime", "ai-edge-litert"}


@pytest.mark.slow
def test_no_partial_files_left(b0_artifacts):
    folder = b0_artifacts[0].path.parent
    leftovers = [p.name for p in folder.iterdir() if ".partial" in p.name]
    assert leftovers == []


@pytest.fixture(scope="module")
def lite0_int8(tmp_path_factory, lite0_checkpoint):
    loaded = load_checkpoint(lite0_checkpoint)
    out = tmp_path_factory.mktemp("lite0")
    options = ExportOptions(targets=list(TARGETS), precisions=["int8"], output=out)
    return loaded, export_model(loaded, options)


@pytest.mark.slow
def test_lite0_int8_classifies_cat(lite0_int8, cat_photo):
    _, records = lite0_int8
    for record in records:
        assert record.ok, record.error
        result = predict(record.path, [cat_photo])
        top1 = result["predictions"][0]["top"][0]
        assert top1["class"] in EXPECTED["cat_classes"], (record.target, top1)
        assert "cat" in top1["label"].lower() or top1["label"] == "tabby"


@pytest.mark.slow
def test_lite0_int8_agrees_with_float(lite0_int8, photos):
    loaded, records = lite0_int8
    files = list_images(photos)
    batch = np.stack([loaded.preprocessing(open_rgb(p), 224) for p in files])
    with torch.no_grad():
        reference = loaded.model(torch.from_numpy(batch)).numpy()
    for record in records:
        logits = open_runner(record.path).run_many(batch)
        agreement = float((logits.argmax(1) == reference.argmax(1)).mean())
        cosine = float(np.mean([np.dot(a, b) / np.linalg.norm(a) / np.linalg.norm(b) for a, b in zip(logits, reference)]))
        assert agreement >= EXPECTED["min_top1_agreement_with_float"][record.target], (record.target, agreement)
        assert cosine >= EXPECTED["min_mean_logit_cosine"], (record.target, cosine)


@pytest.mark.slow
def test_custom_phi_exports_all_formats(tmp_path, small_photos):
    from edgeeff.checkpoints.resolve import resolve_model

    loaded = resolve_model(phi=0.5, resolution=64)
    records = export_model(loaded, ExportOptions(targets=list(TARGETS), precisions=["fp32"], output=tmp_path,
                                                 calib=small_photos))
    assert [r.error for r in records if not r.ok] == []
    for record in records:
        assert record.path.name.startswith("b-phi0.5-64px-fp32")
        assert record.sidecar["model"]["phi"] == 0.5
        assert record.sidecar["model"]["released"] is False
