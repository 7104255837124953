"""efficientnet-pytorch (lukemelas) import, run against the library itself.

The library is pure PyTorch, so the test builds its model at random init, sets BatchNorm
statistics from one batch as training would, saves the state dict, imports it and compares
logits on the same input.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from edgeeff.checkpoints import CheckpointError, load_checkpoint

efficientnet_pytorch = pytest.importorskip("efficientnet_pytorch")

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
from reference_weights import calibrate_batchnorm, reference_input  # noqa: E402


def _reference_model(name: str, resolution: int, num_classes: int = 10):
    torch.manual_seed(0)
    model = efficientnet_pytorch.EfficientNet.from_name(f"efficientnet-{name}", num_classes=num_classes,
                                                        image_size=resolution)
    batch = torch.from_numpy(reference_input(resolution, seed=0))
    calibrate_batchnorm(model, batch)
    return model, batch


@pytest.mark.parametrize(("name", "resolution"), [
    ("b0", 72),  # stride-2 convs on 9 and 5 px maps, where SAME padding is symmetric
    pytest.param("b3", 96, marks=pytest.mark.slow),
])
@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_lukemelas_matches_library(tmp_path, name, resolution, suffix):
    model, batch = _reference_model(name, resolution)
    path = tmp_path / f"{name}{suffix}"
    if suffix == ".safetensors":
        from safetensors.torch import save_file

        save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(path))
    else:
        torch.save(model.state_dict(), path)

    loaded = load_checkpoint(path)
    assert loaded.source == "efficientnet-pytorch"
    assert loaded.variant.name == name
    assert loaded.num_classes == 10
    with torch.no_grad():
        expected = model(batch).numpy()
        actual = loaded.model(batch).numpy()
    assert np.abs(actual - expected).max() < 1e-4


def test_lukemelas_whole_model_needs_trust(tmp_path):
    # torch.save(model) pickles the library's classes: rejected unless the user trusts the file.
    model, batch = _reference_model("b0", 64, num_classes=4)
    path = tmp_path / "whole-model.pt"
    torch.save(model, path)
    with pytest.raises(CheckpointError, match="--trust-checkpoint"):
        load_checkpoint(path)
    loaded = load_checkpoint(path, trust=True)
    assert loaded.num_classes == 4
    with torch.no_grad():
        assert np.abs(loaded.model(batch).numpy() - model(batch).numpy()).max() < 1e-4
