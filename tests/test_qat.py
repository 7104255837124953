"""Quantization-aware fine-tuning on the digits fixture: recipes, runs, resume, distillation, exports.

The slow tests fine-tune on a small slice of the fixture (16 training and 6 validation images
per class at 32 px), so each run takes about a minute on two cores; NNCF's initialization is
computed once and shared.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from edgeeff.cli import cli
from edgeeff.qat.recipe import AUTO, QATRecipe, RecipeError, load_recipe, parse_assignments

ROOT = Path(__file__).resolve().parents[1]
RECIPES = ROOT / "recipes" / "qat"
VAL_PER_CLASS = 6  # as in conftest's digits_slice
EPOCHS = 2
EXPECTED = json.loads((Path(__file__).parent / "expected" / "qat_digits_slice.json").read_text())


def run_cli(*args):
    return CliRunner().invoke(cli, [str(a) for a in args])


def quick_recipe(**fields) -> QATRecipe:
    values = {"epochs": EPOCHS, "batch_size": 32, "calibration_size": 16, **fields}
    return load_recipe(RECIPES / "digits.yaml", values)


# Recipes: fast checks without training.

def test_recipe_files_load():
    default = load_recipe(RECIPES / "default.yaml")
    digits = load_recipe(RECIPES / "digits.yaml")
    assert default == QATRecipe()
    assert digits.batch_size == 64
    assert digits.max_shift == 3


def test_recipe_overrides_parse_text():
    recipe = load_recipe(RECIPES / "digits.yaml", {"lr": "3e-5", "dropout": "0.3", "distill": "true",
                                                   "max_grad_norm": "none"})
    assert recipe.lr == pytest.approx(3e-5)
    assert recipe.dropout == pytest.approx(0.3)
    assert recipe.distill is True
    assert recipe.max_grad_norm is None


@pytest.mark.parametrize("overrides,message", [
    ({"lr": "fast"}, "invalid lr 'fast'"),
    ({"optimizer": "adam"}, "invalid optimizer 'adam'"),
    ({"epochs": 0}, "invalid epochs 0"),
    ({"dropout": 1.5}, r"invalid dropout 1.5: use a value in \[0, 1\)"),
    ({"learn_ranges": "maybe"}, "invalid learn_ranges 'maybe'"),
    ({"warmup_epochs": 5, "epochs": 2}, "invalid warmup_epochs 5"),
    ({"bogus": 1}, "unknown recipe field 'bogus'"),
])
def test_recipe_rejects_invalid(overrides, message):
    with pytest.raises(RecipeError, match=message):
        load_recipe(None, overrides)


def test_recipe_file_missing(tmp_path):
    with pytest.raises(RecipeError, match="recipe not found"):
        load_recipe(tmp_path / "none.yaml")


def test_recipe_auto_rates_follow_phi():
    from edgeeff.models import get_variant

    for name, rate in (("b0", 0.2), ("b2", 0.3), ("b7", 0.5)):
        resolved = QATRecipe().resolved(get_variant(name).dropout)
        assert resolved.dropout == pytest.approx(rate)
        assert resolved.drop_path == pytest.approx(rate)
    assert QATRecipe(dropout=0.1).resolved(0.5).dropout == pytest.approx(0.1)
    assert QATRecipe().dropout == AUTO


def test_parse_assignments():
    assert parse_assignments(["lr=1e-4", "freeze-bn-epoch=2"]) == {"lr": "1e-4", "freeze_bn_epoch": "2"}
    with pytest.raises(RecipeError, match="use KEY=VALUE"):
        parse_assignments(["lr"])


# Graph pieces.

def test_align_batchnorm_eps_keeps_eval_output():
    from edgeeff.models import build_model, get_variant, with_resolution
    from edgeeff.qat.graph import QAT_BATCHNORM_EPS, align_batchnorm_eps

    torch.manual_seed(0)
    model = build_model(with_resolution(get_variant("b0"), 32), num_classes=10)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_var.uniform_(0.0005, 2.0)
            module.running_mean.normal_()
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = model(images)
        align_batchnorm_eps(model)
        after = model(images)
    assert model.config.bn_eps == QAT_BATCHNORM_EPS
    assert all(m.eps == QAT_BATCHNORM_EPS for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-4)


# Data layouts and the distillation loss.

def _write_images(folder: Path, count: int, offset: int = 0) -> None:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for index in range(count):
        value = (offset + index * 37) % 256
        Image.new("RGB", (8, 8), (value, 255 - value, value // 2)).save(folder / f"{offset + index:03d}.png")


def _load(root: Path, num_classes: int = 2, labels=None):
    from edgeeff.data.preprocess import Preprocessing
    from edgeeff.qat.data import load_qat_data

    preprocessing = Preprocessing("test", (0.0, 0.0, 0.0), (255.0, 255.0, 255.0), crop_fraction=1.0,
                                  interpolation="bilinear")
    return load_qat_data(root, preprocessing, 32, num_classes, labels)


def test_data_train_val_tree(tmp_path):
    for split, count in (("train", 6), ("val", 2)):
        _write_images(tmp_path / split / "cat", count)
        _write_images(tmp_path / split / "dog", count, offset=50)
    data = _load(tmp_path, labels=["dog", "cat"])
    assert data.labelled
    assert len(data.train) == 12
    assert len(data.val) == 4
    assert data.train.images.shape[1:] == (3, 32, 32)
    cat_file = next(i for i, f in enumerate(data.train.files) if "/cat/" in f)
    assert data.train.labels[cat_file] == 1  # matched to the model's label names, not the folder order


def test_data_single_tree_is_split_per_class(tmp_path):
    _write_images(tmp_path / "a", 10)
    _write_images(tmp_path / "b", 10, offset=50)
    data = _load(tmp_path)
    assert data.labelled
    assert len(data.val) == 2
    assert sorted(data.val.labels.tolist()) == [0, 1]
    assert len(data.train) == 18


def test_data_unlabelled_folder(tmp_path):
    _write_images(tmp_path, 20)
    data = _load(tmp_path, num_classes=10)
    assert not data.labelled
    assert (data.train.labels == -1).all()
    assert len(data.val) == 2


@pytest.mark.parametrize("layout,message", [
    ("mixed", "label both splits or neither"),
    ("three_classes", "has 3 class folders but the model has 2 classes"),
    ("missing", "data folder not found"),
])
def test_data_rejects_bad_layouts(tmp_path, layout, message):
    from edgeeff.data.images import DataError

    if layout == "mixed":
        _write_images(tmp_path / "train" / "a", 2)
        _write_images(tmp_path / "train" / "b", 2)
        _write_images(tmp_path / "val", 2)
    elif layout == "three_classes":
        for name in ("a", "b", "c"):
            _write_images(tmp_path / name, 3)
    with pytest.raises(DataError, match=message):
        _load(tmp_path if layout != "missing" else tmp_path / "none")


def test_distillation_loss_zero_for_same_logits():
    from edgeeff.qat.data import distillation_loss

    logits = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 0.3]])
    criterion = distillation_loss(temperature=2.0)
    assert criterion(logits, logits).item() == pytest.approx(0.0, abs=1e-7)
    assert criterion(logits, logits.flip(1)).item() > 0.1


# CLI input errors: exit 2 before any work.

@pytest.mark.parametrize("args,message", [
    (["--data", "x"], "pass --checkpoint"),
    (["--resume"], "--resume needs --output"),
])
def test_qat_cli_usage_errors(args, message):
    result = run_cli("qat", *args)
    assert result.exit_code == 2
    assert message in result.output


def test_qat_cli_rejects_existing_run(tmp_path, lite0_checkpoint):
    (tmp_path / "run.json").write_text("{}")
    (tmp_path / "last.pt").write_bytes(b"")
    result = run_cli("qat", "--checkpoint", lite0_checkpoint, "--data", tmp_path, "--output", tmp_path)
    assert result.exit_code == 2
    assert "already contains a QAT run" in result.output


def test_qat_cli_resume_needs_saved_epoch(tmp_path, lite0_checkpoint):
    result = run_cli("qat", "--checkpoint", lite0_checkpoint, "--data", tmp_path, "--output", tmp_path, "--resume")
    assert result.exit_code == 2
    assert "no QAT run in" in result.output


def test_export_from_qat_rejects_model_options(tmp_path):
    result = run_cli("export", "--from-qat", tmp_path, "--model", "b0")
    assert result.exit_code == 2
    assert "drop the model options" in result.output


def test_export_from_unfinished_run(tmp_path):
    result = run_cli("export", "--from-qat", tmp_path)
    assert result.exit_code == 2
    assert "no QAT run in" in result.output


# Fine-tuning runs on a slice of the fixture.

def _request(digits_fixture, data: Path, output: Path, recipe: QATRecipe, **kwargs):
    from edgeeff.checkpoints import load_checkpoint
    from edgeeff.qat.run import QATRunRequest

    loaded = load_checkpoint(digits_fixture.checkpoint)
    return QATRunRequest(loaded=loaded, data=data, output=output, recipe=recipe, **kwargs)


@pytest.fixture(scope="module")
def qat_run(digits_fixture, digits_slice, tmp_path_factory) -> Path:
    """A finished two-epoch supervised run on the slice."""
    from edgeeff.qat.run import run_qat

    output = tmp_path_factory.mktemp("qat-run")
    run_qat(_request(digits_fixture, digits_slice, output, quick_recipe()))
    return output


@pytest.mark.slow
def test_qat_run_matches_or_beats_ptq(qat_run):
    summary = json.loads((qat_run / "summary.json").read_text())
    accuracy = summary["accuracy"]
    assert summary["status"] == "complete"
    assert summary["mode"] == "supervised"
    images = accuracy["qat"]["images"]
    assert images == 10 * VAL_PER_CLASS
    one_image = 1.0 / images  # top1 is a fraction
    assert accuracy["qat"]["top1"] >= accuracy["ptq"]["top1"] - EXPECTED["max_images_below_ptq"] * one_image - 1e-9
    assert accuracy["qat"]["top1"] >= accuracy["float"]["top1"] - EXPECTED["max_points_below_float"] / 100
    # The QAT graph starts as NNCF's PTQ graph, and that start competes for the best epoch.
    assert accuracy["qat_start"]["top1"] == accuracy["ptq"]["top1"]
    assert accuracy["qat_fake_quant"]["top1"] >= accuracy["ptq"]["top1"]
    assert len(summary["history"]) == EPOCHS
    init = summary["initialization"]
    assert init["unmatched"] == []
    assert init["matched"] == init["activation_quantizers"] > 100
    assert init["biases_changed"] > 0


@pytest.mark.slow
def test_qat_run_writes_resolved_recipe_and_artifacts(qat_run):
    for name in ("run.json", "recipe.yaml", "nncf-init.pt", "last.pt", "best.pt", "history.json", "summary.json",
                 "int8.pt2", "qat-float.pt"):
        assert (qat_run / name).is_file(), name
    saved = load_recipe(qat_run / "recipe.yaml")
    assert saved.dropout == pytest.approx(0.2)  # "auto" resolved for B0
    assert saved.drop_path == pytest.approx(0.2)
    assert saved.epochs == EPOCHS


@pytest.mark.slow
def test_qat_resume_continues_identically(qat_run, digits_fixture, digits_slice, tmp_path):
    """Stop a run after its first epoch, resume it, and get the uninterrupted run's result."""
    from edgeeff.qat.nncf_init import NNCFInitialization
    from edgeeff.qat.run import run_qat

    class Stop(Exception):
        pass

    def stop_after_first_epoch(event, info):
        if event == "epoch":
            raise Stop

    init = NNCFInitialization.load(qat_run / "nncf-init.pt")
    with pytest.raises(Stop):
        run_qat(_request(digits_fixture, digits_slice, tmp_path, quick_recipe()), stop_after_first_epoch, init)
    assert (tmp_path / "last.pt").is_file()
    assert not (tmp_path / "summary.json").exists()

    resumed = run_qat(_request(digits_fixture, digits_slice, tmp_path, quick_recipe(), resume=True))
    uninterrupted = json.loads((qat_run / "summary.json").read_text())
    assert [e["epoch"] for e in resumed["history"]] == [1, 2]
    for key in ("train_loss", "val_loss", "val_top1"):
        assert resumed["history"][-1][key] == pytest.approx(uninterrupted["history"][-1][key], rel=1e-5)
    best_resumed = torch.load(tmp_path / "best.pt", weights_only=True)
    best_uninterrupted = torch.load(qat_run / "best.pt", weights_only=True)
    for name, tensor in best_uninterrupted.items():
        if name.endswith("num_batches_tracked"):
            continue  # the exported graph counts every forward pass, evaluation included
        torch.testing.assert_close(best_resumed[name], tensor, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.slow
def test_harmful_fine_tuning_hands_back_the_calibrated_start(qat_run, digits_fixture, digits_slice, tmp_path):
    """A learning rate that wrecks the weights leaves the calibrated start (epoch 0) as the best checkpoint."""
    from edgeeff.qat.nncf_init import NNCFInitialization
    from edgeeff.qat.run import run_qat

    init = NNCFInitialization.load(qat_run / "nncf-init.pt")
    recipe = quick_recipe(epochs=1, lr=1.0, warmup_epochs=0)
    summary = run_qat(_request(digits_fixture, digits_slice, tmp_path, recipe), None, init)
    accuracy = summary["accuracy"]
    assert summary["history"][0]["val_top1"] < accuracy["qat_start"]["top1"]
    assert summary["best_epoch"] == 0
    assert accuracy["qat_fake_quant"]["top1"] == accuracy["qat_start"]["top1"]
    # int8.pt2 is converted from best.pt, so it scores like the start, give or take one image.
    assert abs(accuracy["qat"]["top1"] - accuracy["qat_start"]["top1"]) <= 1 / accuracy["qat"]["images"] + 1e-9


@pytest.mark.slow
def test_qat_distillation_on_unlabelled_folder(qat_run, digits_fixture, digits_slice, tmp_path):
    from edgeeff.qat.nncf_init import NNCFInitialization
    from edgeeff.qat.run import run_qat

    unlabelled = tmp_path / "images"
    unlabelled.mkdir()
    for path in sorted(digits_slice.rglob("*.png")):
        shutil.copy(path, unlabelled / f"{path.parent.parent.name}-{path.parent.name}-{path.name}")
    init = NNCFInitialization.load(qat_run / "nncf-init.pt")
    summary = run_qat(_request(digits_fixture, unlabelled, tmp_path / "run", quick_recipe(epochs=1)), None, init)
    assert summary["mode"] == "distillation"
    assert summary["data"]["labelled"] is False
    entry = summary["history"][0]
    assert entry["train_top1"] is None
    assert entry["val_kl"] >= 0
    assert summary["accuracy"]["qat"]["agreement"] >= 0.9
    assert "top1" not in summary["accuracy"]["qat"]
    assert "agreement" in summary["accuracy"]["ptq"]


@pytest.mark.slow
def test_qat_exports_agree_with_fake_quant(qat_run, digits_slice, tmp_path):
    from edgeeff.export.pipeline import ExportOptions, export_model
    from edgeeff.qat.data import load_qat_data
    from edgeeff.qat.export import QATExportSource, load_qat_run
    from edgeeff.runtime import open_runner

    run = load_qat_run(qat_run)
    source = QATExportSource(run)
    options = ExportOptions(targets=["executorch", "onnx", "tflite"], precisions=["int8"], output=tmp_path,
                            calib=digits_slice / "train", calib_size=32, verify_size=8, qat=source)
    records = {r.target: r for r in export_model(run.loaded, options)}
    assert all(r.ok for r in records.values()), [r.error for r in records.values()]
    for target in ("executorch", "onnx"):
        verification = records[target].sidecar["verification"]
        assert verification["reference"] == "qat int8 model"
        assert verification["top1_agreement"] == 1.0, target
        assert verification["mean_cosine"] > 0.999, target
        assert records[target].sidecar["quantization"]["scheme"] == "quantization-aware training"
    assert "re-calibrated" in " ".join(records["tflite"].sidecar["warnings"])

    data = load_qat_data(digits_slice, run.loaded.preprocessing, run.loaded.resolution, 10, run.loaded.labels)
    fake_quant = source.int8_logits(data.val.images).argmax(1)
    fake_quant_top1 = float((fake_quant == data.val.labels).mean())
    for target, record in records.items():
        logits = open_runner(record.path).run_many(data.val.images)
        top1 = float((logits.argmax(1) == data.val.labels).mean())
        # One image is 1.7 points of these 60. The runtimes' integer kernels round differently
        # from the quantize/dequantize reference, which can flip one borderline image.
        assert abs(top1 - fake_quant_top1) <= 1 / len(data.val) + 1e-9, (target, top1, fake_quant_top1)
        assert np.isfinite(logits).all()
