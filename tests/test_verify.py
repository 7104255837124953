"""FP32 verification: the logit-scale bound, and the float64 check for models whose float32 reference is inexact.

The artifact is a real ONNX file that flattens its input, so its logits are the input's values
and each test sets how far the float32 and float64 references are from them.
"""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgeeff.export.pipeline import Float64Logits
from edgeeff.export.verify import FLOAT64_ERROR_FACTOR, verify_artifact

SCALE = 1000.0  # logits near 1100 are what untrained B6 reached; the first bound is then 0.1


@pytest.fixture(scope="module")
def flatten_onnx(tmp_path_factory):
    graph = helper.make_graph([helper.make_node("Flatten", ["input"], ["logits"])], "flatten",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 2, 2])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, [1, 12])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path_factory.mktemp("verify") / "flatten.onnx"
    onnx.save(model, path)
    return path


@pytest.fixture
def images():
    return (np.random.default_rng(0).uniform(-1, 1, (3, 3, 2, 2)) * SCALE).astype(np.float32)


def exact_logits(images: np.ndarray) -> np.ndarray:
    return images.reshape(len(images), -1).astype(np.float64)


def test_close_artifact_skips_float64(flatten_onnx, images):
    def never():
        raise AssertionError("the float64 reference is computed only when the first bound fails")

    reference = (exact_logits(images) + 0.05).astype(np.float32)
    result = verify_artifact(flatten_onnx, images, reference, "fp32", float64_reference=never)
    assert result["passed"]
    assert result["tolerance"] == pytest.approx(1e-4 * np.abs(reference).max())
    assert "float64_check" not in result


def test_inexact_reference_uses_float64(flatten_onnx, images):
    # Eager float32 sits 0.5 from exact; the artifact computes the exact values.
    reference = (exact_logits(images) + 0.5).astype(np.float32)
    failed = verify_artifact(flatten_onnx, images, reference, "fp32")
    assert not failed["passed"]
    assert "logit scale" in failed["reason"]

    result = verify_artifact(flatten_onnx, images, reference, "fp32", float64_reference=lambda: exact_logits(images))
    assert result["passed"], result
    check = result["float64_check"]
    assert check["eager_float32_error"] == pytest.approx(0.5, abs=1e-3)
    assert check["artifact_error"] < 1e-3
    assert check["tolerance"] == pytest.approx(FLOAT64_ERROR_FACTOR * 0.5, abs=1e-2)


def test_wrong_artifact_fails_float64_check(flatten_onnx, images):
    # The artifact is 5 from exact, ten times eager float32's 0.5: a conversion error, not rounding.
    exact = exact_logits(images) + 5.0
    reference = (exact + 0.5).astype(np.float32)
    result = verify_artifact(flatten_onnx, images, reference, "fp32", float64_reference=lambda: exact)
    assert not result["passed"]
    assert "float64 model" in result["reason"]
    assert "eager float32" in result["reason"]
    assert result["float64_check"]["artifact_error"] == pytest.approx(5.0, abs=1e-3)


def test_int8_skips_float64_check(flatten_onnx, images):
    reference = (exact_logits(images) + 50).astype(np.float32)
    result = verify_artifact(flatten_onnx, images, reference, "int8", float64_reference=lambda: 1 / 0)
    assert result["passed"]
    assert "float64_check" not in result


def test_float64_logits_computed_once():
    import torch

    calls = []

    class Probe(torch.nn.Module):
        def forward(self, x):
            calls.append(x.dtype)
            return x.flatten(1)

    images = np.ones((5, 3, 2, 2), dtype=np.float32)
    logits = Float64Logits(Probe(), images)
    first = logits()
    assert first.dtype == np.float64
    assert first.shape == (5, 12)
    assert logits() is first
    assert calls == [torch.float64, torch.float64]  # two batches of at most 4 images, on the first call only
