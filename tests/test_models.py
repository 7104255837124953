"""Model builder: the paper's table, scaling rules, Lite specifics and forward shapes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from edgeeff.models import VARIANTS, arch_config, build_model, custom_variant, get_variant
from edgeeff.models.counting import count_macs, count_params
from edgeeff.models.efficientnet import EfficientNet, same_padding
from edgeeff.models.scaling import compound, round_channels, round_repeats

PAPER = json.loads((Path(__file__).parent / "expected" / "paper_table.json").read_text())


def _meta_model(variant):
    with torch.device("meta"):
        return EfficientNet(arch_config(variant))


@pytest.mark.parametrize("name", sorted(PAPER["variants"]))
def test_params_and_macs_match_paper(name):
    expected = PAPER["variants"][name]
    variant = get_variant(name)
    model = _meta_model(variant)
    params = count_params(model)
    macs = count_macs(model, variant.resolution)
    assert variant.resolution == expected["resolution"]
    assert abs(params / expected["params"] - 1) <= PAPER["tolerance"]["params"], params
    assert abs(macs / expected["macs"] - 1) <= PAPER["tolerance"]["macs"], macs


def test_b0_block_table():
    cfg = arch_config(get_variant("b0"))
    assert len(cfg.blocks) == 16
    assert cfg.stem_channels == 32
    assert cfg.head_channels == 1280
    assert [b.out_channels for b in cfg.blocks][-1] == 320
    assert cfg.blocks[0].se_channels == 8  # 32 input channels x 0.25
    assert cfg.blocks[-1].drop_path == pytest.approx(0.2 * 15 / 16)


def test_lite_keeps_stem_head_and_end_stages():
    cfg = arch_config(get_variant("lite4"))
    assert cfg.stem_channels == 32
    assert cfg.head_channels == 1280
    assert cfg.activation == "relu6"
    assert all(b.se_channels == 0 for b in cfg.blocks)
    assert cfg.blocks[0].in_channels == 32
    # Stage 1 and stage 7 keep one block each; the middle stages scale by depth 1.8.
    assert sum(1 for b in cfg.blocks if b.out_channels == round_channels(320, 1.4)) == 1


def test_lite0_params():
    assert count_params(_meta_model(get_variant("lite0"))) == pytest.approx(4.65e6, rel=0.01)


@pytest.mark.parametrize("channels,width,expected", [(32, 1.1, 32), (32, 1.2, 40), (16, 1.2, 24), (1280, 2.0, 2560)])
def test_round_channels(channels, width, expected):
    assert round_channels(channels, width) == expected


def test_round_repeats_rounds_up():
    assert round_repeats(3, 1.1) == 4
    assert round_repeats(1, 3.1) == 4


def test_compound_phi_rule():
    coeffs = compound(2.0)
    assert coeffs.width == pytest.approx(1.21)
    assert coeffs.depth == pytest.approx(1.44)
    assert coeffs.resolution % 8 == 0
    assert 1.2 * 1.1**2 * 1.15**2 == pytest.approx(2, abs=0.1)


def test_custom_phi_between_released():
    small, large = custom_variant(2.0), custom_variant(2.5)
    macs_small = count_macs(_meta_model(small), small.resolution)
    macs_large = count_macs(_meta_model(large), large.resolution)
    assert macs_large > macs_small


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_compound_rejects_bad_phi(bad):
    with pytest.raises(ValueError, match="invalid phi"):
        compound(bad)


def test_unknown_model_suggests_closest():
    with pytest.raises(KeyError, match="did you mean 'b2'"):
        get_variant("b22")


def test_aliases_resolve():
    assert get_variant("efficientnet-b3").name == "b3"
    assert get_variant("EfficientNet_Lite2").name == "lite2"


@pytest.mark.parametrize("size,kernel,stride,expected", [(224, 3, 2, (0, 1)), (112, 5, 2, (1, 2)), (56, 3, 1, (1, 1)),
                                                         (225, 3, 2, (1, 1))])
def test_same_padding_matches_tensorflow(size, kernel, stride, expected):
    assert same_padding(size, kernel, stride) == expected


def test_forward_shapes_small_resolution():
    model = build_model("b0", num_classes=10)
    with torch.no_grad():
        out = model(torch.randn(2, 3, 64, 64))
    assert out.shape == (2, 10)


def test_same_padding_model_runs_odd_sizes():
    model = EfficientNet(arch_config(get_variant("lite0"), padding="same")).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 3, 70, 70))
    assert out.shape == (1, 1000)


def test_all_variants_listed():
    assert set(VARIANTS) == {f"b{i}" for i in range(8)} | {f"lite{i}" for i in range(5)}


def test_same_padding_counts_the_same_macs():
    """TensorFlow "same" padding calls F.conv2d with the conv's weight; its MACs still count."""
    symmetric = count_macs(build_model("lite0", padding="symmetric"), 224)
    same = count_macs(build_model("lite0", padding="same"), 224)
    assert same == symmetric
