"""timm and torchvision import, checked against data recorded from the real libraries.

Neither library imports beside edgeeff's CPU torch, so tests/fixtures/make_reference.py ran them
in a separate environment (versions recorded in the fixtures) and stored each architecture's
state-dict manifest plus, for a few, the logits of weights drawn by `fill_state`, before and
after `calibrate_batchnorm`. Here the same weights are rebuilt from the manifest, saved as the
library would save them, imported, and run through the same steps.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from edgeeff.checkpoints import CheckpointError, load_checkpoint
from edgeeff.checkpoints.formats import FORMATS
from edgeeff.checkpoints.load import infer_variant

FIXTURES = Path(__file__).parent / "fixtures"
sys.path.insert(0, str(FIXTURES))
from reference_weights import (calibrate_batchnorm, fill_state, load_reference, manifest_of_arch,  # noqa: E402
                               reference_input)

TIMM = load_reference("timm")
TORCHVISION = load_reference("torchvision")


def _variant_of(arch: str) -> str:
    return arch.rsplit("_", 1)[1]  # tf_efficientnet_lite0 → lite0


def _format_of(library: str, arch: str) -> str:
    return "timm-tf" if arch.startswith("tf_") else library


def _save_filled(reference: dict, arch: str, path: Path) -> Path:
    state = {k: torch.from_numpy(v) for k, v in fill_state(manifest_of_arch(reference, arch), reference["seed"]).items()}
    if path.suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save(state, path)
    return path


def _logits(loaded, reference: dict, calibrate: bool = True) -> np.ndarray:
    batch = torch.from_numpy(reference_input(reference["resolution"], reference["seed"]))
    if calibrate:
        calibrate_batchnorm(loaded.model, batch)
    with torch.no_grad():
        return loaded.model(batch).numpy()


def _max_diff(loaded, reference: dict, arch: str, calibrate: bool = True) -> float:
    expected = np.asarray(reference["logits"][arch]["logits" if calibrate else "logits_raw"])
    return float(np.abs(_logits(loaded, reference, calibrate) - expected).max())


LOGIT_CASES = [("timm", arch) for arch in TIMM["logits"]] + [
    ("torchvision", "efficientnet_b0"),
    pytest.param("torchvision", "efficientnet_b5", marks=pytest.mark.slow),  # eps 1e-3 unlike B0-B4
]
MANIFEST_CASES = [("timm", arch) for arch in TIMM["manifests"]] + [("torchvision", arch) for arch in TORCHVISION["manifests"]]


def test_fixtures_record_versions():
    assert TIMM["versions"]["timm"] == "1.0.31"
    assert TORCHVISION["versions"]["torchvision"].startswith("0.29.1")
    assert TIMM["num_classes"] == TORCHVISION["num_classes"] == 10


@pytest.mark.parametrize(("library", "arch"), MANIFEST_CASES)
def test_manifest_maps_to_variant(library, arch):
    reference = TIMM if library == "timm" else TORCHVISION
    raw = {key: torch.empty(shape, device="meta") for key, shape in manifest_of_arch(reference, arch)}
    state = FORMATS[_format_of(library, arch)].convert_state(raw).state
    name, mismatches = infer_variant(state, reference["num_classes"])
    assert name == _variant_of(arch)
    assert mismatches == 0


@pytest.mark.parametrize(("library", "arch"), LOGIT_CASES)
def test_logits_match_library(tmp_path, library, arch):
    _check_logits(tmp_path / f"{arch}.pth", library, arch)


@pytest.mark.parametrize(("library", "arch"), [("timm", "tf_efficientnet_lite0"), ("torchvision", "efficientnet_b0")])
def test_safetensors_match_library(tmp_path, library, arch):
    _check_logits(tmp_path / f"{arch}.safetensors", library, arch)


def _check_logits(path: Path, library: str, arch: str) -> None:
    reference = TIMM if library == "timm" else TORCHVISION
    path = _save_filled(reference, arch, path)
    loaded = load_checkpoint(path, checkpoint_format=_format_of(library, arch))
    assert loaded.variant.name == _variant_of(arch)
    assert loaded.num_classes == 10
    # Uncalibrated first: these logits depend on the BatchNorm statistics read from the file.
    assert _max_diff(loaded, reference, arch, calibrate=False) < 1e-4
    assert _max_diff(loaded, reference, arch) < 1e-4


@pytest.mark.parametrize(("arch", "wrong_format"), [("tf_efficientnet_b2", "timm"), ("efficientnet_b0", "timm-tf")])
def test_wrong_padding_is_detectable(tmp_path, arch, wrong_format):
    # The match above means something only if padding and epsilon change the logits.
    path = _save_filled(TIMM, arch, tmp_path / "model.pth")
    loaded = load_checkpoint(path, checkpoint_format=wrong_format)
    assert _max_diff(loaded, TIMM, arch) > 1e-2


def test_timm_conventions(tmp_path):
    path = _save_filled(TIMM, "tf_efficientnet_lite0", tmp_path / "lite0.pth")
    timm_own = load_checkpoint(path)
    tf_port = load_checkpoint(path, checkpoint_format="timm-tf")
    assert timm_own.source == "timm"
    assert (timm_own.model.config.padding, timm_own.model.config.bn_eps) == ("symmetric", 1e-5)
    assert (tf_port.model.config.padding, tf_port.model.config.bn_eps) == ("same", 1e-3)
    assert tf_port.preprocessing.mean == (127.5, 127.5, 127.5)
    assert timm_own.preprocessing.name == "imagenet"


def test_timm_detection_notes_padding_guess(tmp_path):
    loaded = load_checkpoint(_save_filled(TIMM, "efficientnet_b0", tmp_path / "b0.pth"))
    assert loaded.source == "timm"
    assert any("--checkpoint-format timm-tf" in note for note in loaded.notes)
    explicit = load_checkpoint(tmp_path / "b0.pth", checkpoint_format="timm")
    assert not any("timm-tf" in note for note in explicit.notes)


def test_timm_training_checkpoint_arch_selects_tf(tmp_path):
    state = {k: torch.from_numpy(v) for k, v in fill_state(manifest_of_arch(TIMM, "tf_efficientnet_b0"), 0).items()}
    path = tmp_path / "checkpoint-12.pth.tar"
    torch.save({"epoch": 12, "arch": "tf_efficientnet_b0", "state_dict": state}, path)
    loaded = load_checkpoint(path)
    assert loaded.source == "timm-tf"
    assert loaded.model.config.padding == "same"


def test_hub_config_selects_tf_and_preprocessing(tmp_path):
    _save_filled(TIMM, "tf_efficientnet_b0", tmp_path / "model.safetensors")
    config = {"architecture": "tf_efficientnet_b0", "num_classes": 10,
              "pretrained_cfg": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25], "crop_pct": 0.9,
                                 "interpolation": "bilinear"}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    loaded = load_checkpoint(tmp_path / "model.safetensors")
    assert loaded.source == "timm-tf"
    assert loaded.preprocessing.mean == (127.5, 127.5, 127.5)
    assert loaded.preprocessing.std == (63.75, 63.75, 63.75)
    assert loaded.preprocessing.crop_fraction == 0.9
    assert loaded.preprocessing.interpolation == "bilinear"


def test_torchvision_detected_with_eps(tmp_path):
    b0 = load_checkpoint(_save_filled(TORCHVISION, "efficientnet_b0", tmp_path / "b0.pth"))
    assert b0.source == "torchvision"
    assert b0.model.config.bn_eps == 1e-5
    assert b0.preprocessing.crop_fraction == 0.875
    b2 = load_checkpoint(_save_filled(TORCHVISION, "efficientnet_b2", tmp_path / "b2.pth"))
    assert any("evaluates b2 at 288 px" in note for note in b2.notes)


def test_format_override_must_match_keys(tmp_path):
    path = _save_filled(TORCHVISION, "efficientnet_b0", tmp_path / "b0.pth")
    with pytest.raises(CheckpointError, match="not in the timm layout .*look like torchvision"):
        load_checkpoint(path, checkpoint_format="timm")


def test_wrong_variant_named(tmp_path):
    path = _save_filled(TIMM, "efficientnet_b0", tmp_path / "b0.pth")
    with pytest.raises(CheckpointError, match="does not fit b2: .*it looks like b0: pass --model b0"):
        load_checkpoint(path, "b2")
