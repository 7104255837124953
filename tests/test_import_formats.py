"""Format detection, overrides and rejections that apply to every checkpoint source."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pytest
import torch

from edgeeff.checkpoints import CheckpointError, load_checkpoint, untrained_model
from edgeeff.checkpoints.formats import FORMATS, detect_format

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
from reference_weights import load_reference, manifest_of_arch  # noqa: E402

TIMM = load_reference("timm")
TORCHVISION = load_reference("torchvision")


def _keys(reference: dict, arch: str) -> list[str]:
    return [key for key, _ in manifest_of_arch(reference, arch)]


def _lukemelas_keys() -> list[str]:
    efficientnet_pytorch = pytest.importorskip("efficientnet_pytorch")
    return list(efficientnet_pytorch.EfficientNet.from_name("efficientnet-b0").state_dict())


def _native_keys() -> list[str]:
    return list(untrained_model("b0").model.state_dict())


@pytest.mark.parametrize(("keys", "expected"), [
    (lambda: _keys(TIMM, "efficientnet_b0"), "timm"),
    (lambda: _keys(TIMM, "tf_efficientnet_lite0"), "timm"),
    (lambda: _keys(TORCHVISION, "efficientnet_b3"), "torchvision"),
    (_lukemelas_keys, "efficientnet-pytorch"),
    (_native_keys, "edgeeff"),
    (lambda: ["stem_conv/kernel", "stem_bn/gamma", "predictions/kernel"], "keras"),
])
def test_detect_each_format(keys, expected):
    assert detect_format(keys()).name == expected


def test_detect_tf_arch_hint():
    keys = _keys(TIMM, "efficientnet_b0")
    assert detect_format(keys, "tf_efficientnet_b0").name == "timm-tf"
    assert detect_format(keys, "efficientnet_b0").name == "timm"


def test_every_format_registered():
    assert set(FORMATS) == {"efficientnet-pytorch", "edgeeff", "timm", "timm-tf", "torchvision", "keras"}


@pytest.fixture
def ten_class_b0(tmp_path) -> Path:
    path = tmp_path / "b0-10.pt"
    torch.save(untrained_model("b0", num_classes=10).model.state_dict(), path)
    return path


def test_head_size_from_checkpoint(ten_class_b0):
    loaded = load_checkpoint(ten_class_b0)
    assert loaded.num_classes == 10
    assert loaded.model.classifier.out_features == 10


def test_unknown_format_name(ten_class_b0):
    with pytest.raises(CheckpointError, match="unknown checkpoint format 'caffe': use one of .*timm-tf"):
        load_checkpoint(ten_class_b0, checkpoint_format="caffe")


def test_override_with_other_layout(ten_class_b0):
    with pytest.raises(CheckpointError, match="not in the torchvision layout .*look like edgeeff"):
        load_checkpoint(ten_class_b0, checkpoint_format="torchvision")


def test_unrecognised_layout(tmp_path):
    path = tmp_path / "resnet.pt"
    torch.save({"conv1.weight": torch.zeros(64, 3, 7, 7), "fc.weight": torch.zeros(10, 512)}, path)
    with pytest.raises(CheckpointError, match="unrecognised checkpoint layout .*conv1.weight"):
        load_checkpoint(path)


def test_labels_length_mismatch(ten_class_b0):
    with pytest.raises(CheckpointError, match="labels file has 3 names but checkpoint .* has 10 classes"):
        load_checkpoint(ten_class_b0, labels=["cat", "dog", "bird"])


def test_labels_carried(ten_class_b0):
    labels = [f"class{i}" for i in range(10)]
    assert load_checkpoint(ten_class_b0, labels=labels).labels == labels


def test_wrong_variant_names_likely(ten_class_b0):
    with pytest.raises(CheckpointError, match="does not fit b1: .*it looks like b0: pass --model b0"):
        load_checkpoint(ten_class_b0, "b1")


def test_pickled_args_need_trust(tmp_path):
    # timm's training script saves its argparse.Namespace beside the weights.
    state = untrained_model("b0", num_classes=10).model.state_dict()
    path = tmp_path / "train-checkpoint.pth.tar"
    torch.save({"state_dict": state, "args": argparse.Namespace(lr=0.1), "epoch": 3}, path)
    with pytest.raises(CheckpointError, match="rejected .*pickled Python objects.*--trust-checkpoint"):
        load_checkpoint(path)
    assert load_checkpoint(path, trust=True).num_classes == 10


def test_safetensors_native(tmp_path):
    from safetensors.torch import save_file

    loaded = untrained_model("lite0", num_classes=5)
    save_file(loaded.model.state_dict(), str(tmp_path / "lite0.safetensors"))
    again = load_checkpoint(tmp_path / "lite0.safetensors")
    assert again.variant.name == "lite0"
    assert again.num_classes == 5


def test_invalid_keras_archive(tmp_path):
    path = tmp_path / "broken.keras"
    path.write_bytes(b"not a zip archive")
    with pytest.raises(CheckpointError, match="invalid .keras file"):
        load_checkpoint(path)
