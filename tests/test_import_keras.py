"""Keras import: keras.applications EfficientNet saved by Keras, imported, and run against Keras.

The reference is the Keras model loaded back from the saved file, because a Normalization layer
changed in memory by set_weights keeps its old statistics until Keras reloads it. Keras takes
0–255 pixels and normalizes in the graph; edgeeff applies the imported Preprocessing first.
"""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
keras = pytest.importorskip("keras")

from edgeeff.checkpoints import CheckpointError, load_checkpoint  # noqa: E402
from edgeeff.checkpoints.keras import read_keras_file  # noqa: E402

pytestmark = [
    pytest.mark.slow,
    # Keras 3.15 on TensorFlow 2.21 converts variables with np.array(x), which NumPy 2 flags.
    pytest.mark.filterwarnings("ignore:__array__ implementation doesn't accept a copy keyword:DeprecationWarning"),
]

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406])
IMAGENET_STD = np.array([0.229, 0.224, 0.225])


def _randomize(model, seed: int = 0) -> None:
    """Give BatchNorm layers trained-looking statistics and Normalization ImageNet's."""
    rng = np.random.RandomState(seed)
    layers = [sub for layer in model.layers for sub in (layer.layers if hasattr(layer, "layers") else [layer])]
    for layer in layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            shape = layer.get_weights()[0].shape
            layer.set_weights([rng.uniform(0.5, 1.5, shape), rng.normal(0, 0.1, shape), rng.normal(0, 0.1, shape),
                               rng.uniform(0.5, 2.0, shape)])
        elif isinstance(layer, keras.layers.Normalization):
            layer.set_weights([IMAGENET_MEAN, IMAGENET_STD**2, np.array(0)])


def _pixels(resolution: int, batch: int = 2) -> np.ndarray:
    return np.random.RandomState(1).uniform(0, 255, (batch, resolution, resolution, 3)).astype(np.float32)


def _edgeeff_logits(loaded, pixels: np.ndarray) -> np.ndarray:
    p = loaded.preprocessing
    x = (pixels - np.asarray(p.mean, np.float32)) / np.asarray(p.std, np.float32)
    with torch.no_grad():
        return loaded.model(torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))).numpy()


def _keras_logits(path, pixels: np.ndarray) -> np.ndarray:
    model = keras.saving.load_model(path, compile=False)
    return np.asarray(model.predict(pixels, verbose=0))


@pytest.fixture(scope="module")
def b0_files(tmp_path_factory):
    # 72 px puts stride-2 convs on 9 and 5 px maps, where SAME padding is symmetric.
    folder = tmp_path_factory.mktemp("keras")
    model = keras.applications.EfficientNetB0(weights=None, input_shape=(72, 72, 3), classes=10,
                                              classifier_activation=None)
    _randomize(model)
    model.save(folder / "b0.keras")
    model.save(folder / "b0.h5")
    model.save_weights(folder / "b0.weights.h5")
    return folder


@pytest.mark.parametrize("name", ["b0.keras", "b0.h5"])
def test_keras_b0_matches(b0_files, name):
    loaded = load_checkpoint(b0_files / name)
    assert loaded.source == "keras"
    assert loaded.variant.name == "b0"
    assert loaded.num_classes == 10
    assert loaded.model.config.padding == "same"
    assert loaded.model.config.bn_eps == 1e-3
    pixels = _pixels(72)
    diff = np.abs(_edgeeff_logits(loaded, pixels) - _keras_logits(b0_files / name, pixels)).max()
    assert diff < 1e-4


def test_keras_normalization_moves_to_preprocessing(b0_files):
    preprocessing = load_checkpoint(b0_files / "b0.keras").preprocessing
    assert preprocessing.name == "keras"
    np.testing.assert_allclose(preprocessing.mean, IMAGENET_MEAN * 255, rtol=1e-6)
    np.testing.assert_allclose(preprocessing.std, IMAGENET_STD * 255, rtol=1e-6)


def test_keras_safetensors_layout(b0_files, tmp_path):
    from safetensors.torch import save_file

    state, _ = read_keras_file(b0_files / "b0.keras")
    save_file(state, str(tmp_path / "b0.safetensors"))
    loaded = load_checkpoint(tmp_path / "b0.safetensors")
    assert loaded.source == "keras"
    pixels = _pixels(72)
    diff = np.abs(_edgeeff_logits(loaded, pixels) - _keras_logits(b0_files / "b0.keras", pixels)).max()
    assert diff < 1e-4


def test_keras_weights_only_rejected(b0_files):
    with pytest.raises(CheckpointError, match="weights but no model config"):
        load_checkpoint(b0_files / "b0.weights.h5")


def test_keras_transfer_learning_model(tmp_path):
    # The usual fine-tuning recipe: a headless base inside a model with augmentation and a new head.
    base = keras.applications.EfficientNetB1(weights=None, include_top=False, input_shape=(64, 64, 3))
    inputs = keras.Input((64, 64, 3))
    x = keras.layers.RandomFlip()(inputs)
    x = keras.layers.GlobalAveragePooling2D()(base(x))
    outputs = keras.layers.Dense(7, activation="softmax")(keras.layers.Dropout(0.2)(x))
    model = keras.Model(inputs, outputs)
    _randomize(model)
    model.save(tmp_path / "tuned.keras")

    loaded = load_checkpoint(tmp_path / "tuned.keras")
    assert loaded.variant.name == "b1"
    assert loaded.num_classes == 7
    assert any("softmax" in note for note in loaded.notes)
    pixels = _pixels(64)
    probabilities = torch.softmax(torch.from_numpy(_edgeeff_logits(loaded, pixels)), dim=1).numpy()
    diff = np.abs(probabilities - _keras_logits(tmp_path / "tuned.keras", pixels)).max()
    assert diff < 1e-5


def test_keras_any_size_model_noted(tmp_path):
    base = keras.applications.EfficientNetB0(weights=None, include_top=False, input_shape=(None, None, 3))
    inputs = keras.Input((None, None, 3))
    outputs = keras.layers.Dense(3)(keras.layers.GlobalAveragePooling2D()(base(inputs)))
    model = keras.Model(inputs, outputs)
    _randomize(model)
    model.save(tmp_path / "any.keras")

    loaded = load_checkpoint(tmp_path / "any.keras")
    assert any("multiple of 32" in note for note in loaded.notes)
    pixels = _pixels(64)
    diff = np.abs(_edgeeff_logits(loaded, pixels) - _keras_logits(tmp_path / "any.keras", pixels)).max()
    assert diff < 1e-4


def test_tf_keras_h5(tmp_path):
    tf_keras = pytest.importorskip("tf_keras")
    model = tf_keras.applications.EfficientNetB0(weights=None, input_shape=(64, 64, 3), classes=5,
                                                 classifier_activation=None)
    model.save(tmp_path / "tfk.h5")
    reloaded = tf_keras.models.load_model(tmp_path / "tfk.h5", compile=False)
    pixels = _pixels(64)
    expected = reloaded.predict(pixels, verbose=0)

    loaded = load_checkpoint(tmp_path / "tfk.h5")
    assert loaded.variant.name == "b0"
    assert loaded.num_classes == 5
    assert np.abs(_edgeeff_logits(loaded, pixels) - expected).max() < 1e-4


def test_keras_against_source(b0_files):
    from edgeeff.checkpoints.inspect import against_source

    result = against_source(b0_files / "b0.keras")
    assert result["library"] == "keras"
    assert result["resolution"] == 72
    assert result["max_abs_logit_diff"] < 1e-4
    assert result["passed"] is True
