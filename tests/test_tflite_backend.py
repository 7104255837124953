"""TFLite backend: litert-torch FP32, ai-edge-quantizer full-integer INT8, and the LiteRT runner."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from edgeeff.checkpoints import load_checkpoint, untrained_model, with_export_resolution
from edgeeff.data.images import load_batch, sample_images
from edgeeff.export.base import ExportRequest
from edgeeff.export.tflite import TFLiteExportError, export_tflite
from edgeeff.runtime import open_runner
from edgeeff.runtime.litert import LiteRTRunner, default_threads

RESOLUTION = 96
CALIBRATION_COUNT = 16
COMPARE_COUNT = 8


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


@torch.no_grad()
def warm_batchnorm_only(model: torch.nn.Module, images: np.ndarray) -> None:
    """Set BatchNorm statistics from `images` with every other layer in eval mode.

    Stochastic depth and dropout stay off, so the statistics are deterministic and match the
    activations the eval-mode model sees.
    """
    model.eval()
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.reset_running_stats()
            module.momentum = None
            module.train()
    model(torch.from_numpy(images))
    model.eval()


def photo_split(photos: Path, preprocessing) -> tuple[np.ndarray, np.ndarray]:
    """Return disjoint calibration and comparison batches of real photos."""
    samples = sample_images(photos, CALIBRATION_COUNT + COMPARE_COUNT, seed=1)
    batch, _ = load_batch(samples, preprocessing, RESOLUTION)
    return batch[:CALIBRATION_COUNT], batch[CALIBRATION_COUNT:]


@pytest.fixture(scope="module")
def b0(photos):
    loaded = with_export_resolution(untrained_model("b0"), RESOLUTION)
    calibration, compare = photo_split(photos, loaded.preprocessing)
    # Warm on every image that is later compared, so no held-out image drives activations far
    # outside the statistics, which would inflate logits of an untrained model into thousands.
    warm_batchnorm_only(loaded.model, np.concatenate([calibration, compare]))
    return loaded.model, calibration, compare


@pytest.fixture(scope="module")
def lite0(photos, lite0_checkpoint):
    loaded = with_export_resolution(load_checkpoint(lite0_checkpoint), RESOLUTION)
    assert loaded.model.config.padding == "same"
    calibration, compare = photo_split(photos, loaded.preprocessing)
    return loaded.model, calibration, compare


def export(tmp_path_factory, model, precision, calibration=None, bias_correction_images=0):
    path = tmp_path_factory.mktemp("tflite") / f"model-{precision}.tflite"
    details = export_tflite(ExportRequest(model=model, resolution=RESOLUTION, precision=precision, path=path,
                                          calibration=calibration, bias_correction_images=bias_correction_images))
    return path, details


@torch.no_grad()
def eager_logits(model, images: np.ndarray) -> np.ndarray:
    return model(torch.from_numpy(images)).numpy()


@pytest.fixture(scope="module")
def b0_fp32(tmp_path_factory, b0):
    model, _, _ = b0
    return export(tmp_path_factory, model, "fp32")


@pytest.fixture(scope="module")
def b0_int8(tmp_path_factory, b0):
    model, calibration, _ = b0
    return export(tmp_path_factory, model, "int8", calibration)


@pytest.fixture(scope="module")
def lite0_fp32(tmp_path_factory, lite0):
    model, _, _ = lite0
    return export(tmp_path_factory, model, "fp32")


@pytest.fixture(scope="module")
def lite0_int8(tmp_path_factory, lite0):
    model, calibration, _ = lite0
    return export(tmp_path_factory, model, "int8", calibration)


@pytest.fixture(scope="module")
def lite0_int8_corrected(tmp_path_factory, lite0):
    model, calibration, _ = lite0
    return export(tmp_path_factory, model, "int8", calibration, bias_correction_images=CALIBRATION_COUNT)


@pytest.fixture(scope="module")
def b0_int8_corrected(tmp_path_factory, b0):
    model, calibration, _ = b0
    return export(tmp_path_factory, model, "int8", calibration, bias_correction_images=8)


# FP32


@pytest.mark.slow
@pytest.mark.parametrize("name", ["b0", "lite0"])
def test_fp32_matches_eager(name, request):
    model, _, compare = request.getfixturevalue(name)
    path, details = request.getfixturevalue(f"{name}_fp32")
    logits = LiteRTRunner(path, threads=2).run_many(compare)
    diff = np.abs(logits - eager_logits(model, compare)).max()
    assert diff < 1e-4, f"max |Δlogit| {diff:.2e}"
    assert details.input_layout == "NCHW"
    assert details.input_dtype == "float32"


@pytest.mark.slow
def test_fp32_graph_details(b0_fp32):
    _, details = b0_fp32
    graph = details.graph
    assert graph["input"]["shape"] == [1, 3, RESOLUTION, RESOLUTION]
    assert graph["output"]["shape"] == [1, 1000]
    assert graph["op_counts"]["CONV_2D"] > 0
    assert graph["float_compute_ops"]["CONV_2D"] == graph["op_counts"]["CONV_2D"]
    assert graph["weights"]["dtype"] == "float32"
    assert details.quantization == {}
    assert details.tool.startswith("litert-torch ")


# INT8


@pytest.mark.slow
@pytest.mark.parametrize("name", ["b0_int8", "lite0_int8"])
def test_int8_has_no_float_compute_ops(name, request):
    path, details = request.getfixturevalue(name)
    assert details.graph["float_compute_ops"] == {}
    assert details.graph["float_compute_op_names"] == []
    # An independent check through the interpreter: no float tensor anywhere in the graph.
    from ai_edge_litert.interpreter import Interpreter

    interpreter = Interpreter(model_path=str(path))
    float_tensors = [t["name"] for t in interpreter.get_tensor_details() if t["dtype"] == np.float32]
    assert float_tensors == []


@pytest.mark.slow
def test_int8_quantization_details(b0_int8):
    _, details = b0_int8
    quantization = details.quantization
    assert quantization["tool"].startswith("ai-edge-quantizer ")
    assert quantization["per_channel"] is True
    assert quantization["weight_dtype"] == "int8"
    assert quantization["activation_dtype"] == "int8"
    assert quantization["calibration_count"] == CALIBRATION_COUNT
    assert details.input_dtype == "int8"
    assert details.input_layout == "NCHW"
    assert details.graph["weights"]["per_channel"] == details.graph["weights"]["total"]
    # SiLU becomes LOGISTIC and MUL, and the SE block's pool a MEAN: all must run in int8.
    for op in ("LOGISTIC", "MUL", "MEAN", "ADD"):
        assert details.graph["op_counts"].get(op, 0) > 0, op


@pytest.mark.slow
def test_int8_b0_agrees_with_float(b0, b0_int8):
    model, _, compare = b0
    path, _ = b0_int8
    logits = LiteRTRunner(path, threads=2).run_many(compare)
    assert logits.dtype == np.float32
    assert logits.shape == (COMPARE_COUNT, 1000)
    # Untrained logits are small and nearly flat, so quantization noise weighs more than on a
    # trained model. Measured mean cosine is 0.94, and this bound catches a broken graph.
    assert cosine(logits, eager_logits(model, compare)).mean() > 0.85


@pytest.mark.slow
def test_int8_lite0_agrees_with_float(lite0, lite0_int8):
    model, _, compare = lite0
    path, _ = lite0_int8
    logits = LiteRTRunner(path, threads=2).run_many(compare)
    # Measured mean cosine is 0.989 at 96 px with 16 calibration photos.
    assert cosine(logits, eager_logits(model, compare)).mean() > 0.95


@pytest.mark.slow
def test_bias_correction_brings_lite0_closer(lite0, lite0_int8, lite0_int8_corrected):
    model, _, compare = lite0
    reference = eager_logits(model, compare)
    plain = cosine(LiteRTRunner(lite0_int8[0], threads=2).run_many(compare), reference)
    corrected = cosine(LiteRTRunner(lite0_int8_corrected[0], threads=2).run_many(compare), reference)
    # Held-out photos, not the 16 that set the biases. Measured mean cosine at 96 px: 0.989 -> 0.996.
    assert corrected.mean() > plain.mean()
    assert corrected.mean() > 0.98
    _, details = lite0_int8_corrected
    assert details.quantization["bias_correction"].startswith(f"sequential on the int8 TFLite model, "
                                                              f"{CALIBRATION_COUNT} images")
    assert "bias_correction" not in lite0_int8[1].quantization


@pytest.mark.slow
def test_bias_correction_b0_stays_near_float(b0, b0_int8_corrected):
    model, _, compare = b0
    path, details = b0_int8_corrected
    assert details.graph["float_compute_op_total"] == 0
    logits = LiteRTRunner(path, threads=2).run_many(compare)
    similarity = cosine(logits, eager_logits(model, compare)).mean()
    # Same bound as the uncorrected B0 above. Untrained logits are nearly flat, so correcting noise
    # shows here. Measured mean cosine: 0.94 uncorrected, 0.91 corrected, 0.81 when every channel is corrected.
    assert similarity > 0.85


@pytest.mark.parametrize(("layers", "gmacs", "available", "expected"), [
    (50, 0.4, 63, 32),     # Lite0 at 224 px: the cap
    (50, 0.4, 10, 10),     # fewer images than the cap: all of them
    (120, 1.0, 300, 16),   # B2-sized: the budget
    (165, 4.2, 300, 0),    # B4-sized: under MIN_IMAGES, so off
    (50, 0.4, 0, 0),       # no images
])
def test_bias_correction_image_plan(layers, gmacs, available, expected):
    from edgeeff.export.tflite_bias import plan_images

    assert plan_images(layers, gmacs, available) == expected


@pytest.mark.slow
def test_int8_lite0_same_padding_pads_quantized(lite0_int8):
    path, details = lite0_int8
    graph = details.graph
    # TF SAME padding adds an explicit asymmetric pad before each stride-2 conv. The converter
    # folds those into SAME convs except where the pad precedes the layout transpose (the stem),
    # and any PAD left must run in int8.
    assert graph["op_counts"].get("PAD", 0) <= 1
    assert "PAD" not in graph["float_compute_ops"]


@pytest.mark.slow
def test_int8_raises_when_float_ops_remain(b0, b0_fp32, monkeypatch):
    model, calibration, _ = b0
    path, _ = b0_fp32
    float_model = path.read_bytes()
    monkeypatch.setattr("edgeeff.export.tflite.convert_float", lambda model, resolution: float_model)
    monkeypatch.setattr("edgeeff.export.tflite.quantize_int8", lambda model, calibration: model)
    output = path.with_name("not-written.tflite")
    with pytest.raises(TFLiteExportError, match="float compute ops .*CONV_2D"):
        export_tflite(ExportRequest(model=model, resolution=RESOLUTION, precision="int8", path=output,
                                    calibration=calibration))
    assert not output.exists()


# Request checks, before any conversion.


@pytest.mark.parametrize("calibration, message", [
    (None, "needs calibration images"),
    (np.zeros((0, 3, RESOLUTION, RESOLUTION), np.float32), "needs calibration images"),
    (np.zeros((2, RESOLUTION, RESOLUTION, 3), np.float32), "invalid calibration shape"),
    (np.zeros((2, 3, RESOLUTION, RESOLUTION), np.uint8), "invalid calibration dtype"),
    (np.full((2, 3, RESOLUTION, RESOLUTION), np.nan, np.float32), "NaN or Inf"),
])
def test_int8_rejects_bad_calibration(calibration, message, tmp_path):
    model = untrained_model("lite0").model
    request = ExportRequest(model=model, resolution=RESOLUTION, precision="int8", path=tmp_path / "m.tflite",
                            calibration=calibration)
    with pytest.raises(ValueError, match=message):
        export_tflite(request)


def test_export_rejects_unknown_precision(tmp_path):
    request = ExportRequest(model=untrained_model("lite0").model, resolution=RESOLUTION, precision="fp16",
                            path=tmp_path / "m.tflite")
    with pytest.raises(ValueError, match="invalid precision 'fp16'"):
        export_tflite(request)


# Runner


@pytest.mark.slow
def test_runner_passes_thread_count(b0_fp32, monkeypatch):
    import ai_edge_litert.interpreter as litert_interpreter

    path, _ = b0_fp32
    created = []
    original = litert_interpreter.Interpreter

    class RecordingInterpreter(original):
        def __init__(self, *args, **kwargs):
            created.append(kwargs.get("num_threads"))
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(litert_interpreter, "Interpreter", RecordingInterpreter)
    assert LiteRTRunner(path, threads=1).num_threads == 1
    assert LiteRTRunner(path, threads=3).num_threads == 3
    assert LiteRTRunner(path).num_threads == default_threads()
    assert created == [1, 3, default_threads()]


@pytest.mark.slow
def test_runner_thread_counts_agree(b0_fp32, b0):
    path, _ = b0_fp32
    _, _, compare = b0
    one = LiteRTRunner(path, threads=1).run(compare[:1])
    two = LiteRTRunner(path, threads=2).run(compare[:1])
    np.testing.assert_allclose(one, two, atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize("threads", [0, -2, 1.5, True])
def test_runner_rejects_invalid_threads(b0_fp32, threads):
    path, _ = b0_fp32
    with pytest.raises(ValueError, match="invalid thread count"):
        LiteRTRunner(path, threads=threads)


@pytest.mark.slow
def test_runner_reports_input_contract(b0_fp32, b0_int8):
    for path, dtype in ((b0_fp32[0], np.float32), (b0_int8[0], np.int8)):
        runner = open_runner(path, threads=1)
        assert isinstance(runner, LiteRTRunner)
        assert runner.input_shape == (1, 3, RESOLUTION, RESOLUTION)
        assert runner.layout == "NCHW"
        assert runner.input_dtype == dtype
        assert runner.version()


@pytest.mark.slow
def test_runner_rejects_wrong_input_shape(b0_fp32):
    runner = LiteRTRunner(b0_fp32[0], threads=1)
    with pytest.raises(ValueError, match="does not match the model's"):
        runner.run(np.zeros((1, RESOLUTION, RESOLUTION, 3), np.float32))


def test_runner_missing_artifact(tmp_path):
    missing = tmp_path / "missing.tflite"
    with pytest.raises(FileNotFoundError, match="missing.tflite"):
        LiteRTRunner(missing)
    with pytest.raises(FileNotFoundError, match="artifact not found"):
        open_runner(missing)


@pytest.mark.parametrize("content", [b"", b"not a flatbuffer at all" * 10])
def test_runner_garbage_artifact(tmp_path, content):
    path = tmp_path / "garbage.tflite"
    path.write_bytes(content)
    with pytest.raises(ValueError, match=r"invalid TFLite model .*garbage.tflite.*re-export"):
        LiteRTRunner(path)


@pytest.mark.slow
def test_runner_transposes_for_nhwc_model(tmp_path):
    import litert_torch

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3, padding=1), torch.nn.Flatten()).eval()
    nhwc = litert_torch.to_channel_last_io(model, args=[0])
    path = tmp_path / "nhwc.tflite"
    litert_torch.convert(nhwc, (torch.zeros(1, 8, 8, 3),)).export(str(path))
    runner = LiteRTRunner(path, threads=1)
    assert runner.layout == "NHWC"
    assert runner.input_shape == (1, 3, 8, 8)
    image = np.random.default_rng(0).standard_normal((1, 3, 8, 8)).astype(np.float32)
    np.testing.assert_allclose(runner.run(image), eager_logits(model, image), atol=1e-5)

