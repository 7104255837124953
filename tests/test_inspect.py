"""`inspect_checkpoint`, `against_source` and the `edgeeff inspect` command."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from edgeeff.checkpoints import CheckpointError, untrained_model
from edgeeff.checkpoints.inspect import against_source, inspect_checkpoint
from edgeeff.cli import cli

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
from reference_weights import calibrate_batchnorm, fill_state, load_reference, manifest_of_arch  # noqa: E402
from reference_weights import reference_input  # noqa: E402

efficientnet_pytorch = pytest.importorskip("efficientnet_pytorch")


@pytest.fixture(scope="module")
def lukemelas_b0(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    model = efficientnet_pytorch.EfficientNet.from_name("efficientnet-b0", num_classes=10)
    calibrate_batchnorm(model, torch.from_numpy(reference_input(64, seed=0)))
    path = tmp_path_factory.mktemp("inspect") / "b0-lukemelas.pth"
    torch.save(model.state_dict(), path)
    return path


def test_inspect_reports_fields(lukemelas_b0):
    report = inspect_checkpoint(lukemelas_b0)
    assert report["loads"] is True
    assert report["error"] is None
    assert report["format"] == "efficientnet-pytorch"
    assert report["format_detected"] is True
    assert report["variant"] == "b0"
    assert report["classes"] == 10
    assert report["resolution"] == 224
    assert 3.9e6 < report["params"] < 4.1e6
    assert report["padding"] == "same"
    assert report["preprocessing"]["name"] == "imagenet"


def test_inspect_unloadable_reports_error(lukemelas_b0):
    report = inspect_checkpoint(lukemelas_b0, model="b2")
    assert report["loads"] is False
    assert report["format"] == "efficientnet-pytorch"
    assert "it looks like b0" in report["error"]


def test_inspect_pickle_needs_trust(tmp_path):
    path = tmp_path / "train.pth.tar"
    state = untrained_model("b0", num_classes=3).model.state_dict()
    torch.save({"state_dict": state, "args": argparse.Namespace(model="efficientnet_b0")}, path)
    assert "--trust-checkpoint" in inspect_checkpoint(path)["error"]
    assert inspect_checkpoint(path, trust=True)["classes"] == 3


def test_inspect_invalid_requests(lukemelas_b0, tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        inspect_checkpoint(tmp_path / "missing.pt")
    with pytest.raises(CheckpointError, match="unknown checkpoint format"):
        inspect_checkpoint(lukemelas_b0, checkpoint_format="onnx")


def test_against_lukemelas(lukemelas_b0):
    result = against_source(lukemelas_b0, resolution=64)
    assert result["library"] == "efficientnet-pytorch"
    assert result["resolution"] == 64
    assert result["max_abs_logit_diff"] < 1e-4
    assert result["passed"] is True


def test_against_missing_library_skips(tmp_path):
    try:
        import timm  # noqa: F401
        pytest.skip("timm imports here; the skip path needs it absent")
    except ImportError:
        pass
    reference = load_reference("timm")
    state = {k: torch.from_numpy(v) for k, v in fill_state(manifest_of_arch(reference, "efficientnet_b0"), 0).items()}
    torch.save(state, tmp_path / "timm-b0.pth")
    result = against_source(tmp_path / "timm-b0.pth", resolution=64)
    assert result["library"] == "timm"
    assert "not installed" in result["skipped"]


def test_against_native_skips(tmp_path):
    path = tmp_path / "native.pt"
    torch.save(untrained_model("b0", num_classes=2).model.state_dict(), path)
    assert "edgeeff's own format" in against_source(path)["skipped"]


def test_cli_inspect_json(lukemelas_b0):
    result = CliRunner().invoke(cli, ["inspect", str(lukemelas_b0), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["variant"] == "b0"
    assert report["classes"] == 10


def test_cli_inspect_table(lukemelas_b0):
    result = CliRunner().invoke(cli, ["inspect", str(lukemelas_b0)])
    assert result.exit_code == 0, result.output
    assert "efficientnet-pytorch" in result.output


def test_cli_inspect_exit_codes(tmp_path):
    path = tmp_path / "resnet.pt"
    torch.save({"conv1.weight": torch.zeros(4, 3, 3, 3)}, path)
    not_loading = CliRunner().invoke(cli, ["inspect", str(path), "--json"])
    assert not_loading.exit_code == 1
    assert "unrecognised checkpoint layout" in json.loads(not_loading.output)["error"]
    missing = CliRunner().invoke(cli, ["inspect", str(tmp_path / "missing.pt")])
    assert missing.exit_code == 2
    bad_format = CliRunner().invoke(cli, ["inspect", str(path), "--checkpoint-format", "caffe"])
    assert bad_format.exit_code == 2


@pytest.mark.slow
def test_cli_against_source(lukemelas_b0):
    result = CliRunner().invoke(cli, ["inspect", str(lukemelas_b0), "--against-source", "--json"])
    assert result.exit_code == 0, result.output
    comparison = json.loads(result.output)["against_source"]
    assert comparison["resolution"] == 224
    assert comparison["passed"] is True
