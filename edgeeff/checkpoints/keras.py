"""Keras `keras.applications.EfficientNetB0` … `B7` models saved as .keras or .h5.

Reading needs only h5py and zipfile, not TensorFlow. Two file layouts exist:

- `.keras` (Keras 3): a zip of config.json and model.weights.h5. The weights file does not use
  layer names. Each layer's variables sit under a name made from its class in snake case and a
  counter (`conv2d_7/vars/0`), counted in the order of `model.layers`. So the config is walked
  in that order to give each variable its layer name back.
- `.h5` full model (Keras 3 `model.save("m.h5")` and tf-keras): `model_config` JSON in the file
  attributes, and weights stored under `model_weights` by layer name (`stem_conv/kernel:0`).

A weights-only file (`save_weights`) has no config, so neither the preprocessing layers nor
(in Keras 3) the layer names can be recovered, and it is rejected.

The reader returns Keras-layout tensors keyed `LAYER/VARIABLE` (kernels still HWIO), so a
state dict written to safetensors in that layout loads through the same conversion. The
in-graph Rescaling and Normalization layers are composed into one per-channel affine map of
0–255 pixels and stored as `preprocessing/scale` and `preprocessing/offset`. The conversion
turns that map into edgeeff's Preprocessing, and the imported network has no such layers,
so inputs are normalized exactly once.

Padding: Keras pads stride-2 convs with ZeroPadding2D(correct_pad) and a valid conv. For an
even input that is (k//2 - 1, k//2), the same as TF SAME. For an odd input it is (k//2, k//2),
again the same as SAME, but only when the model was built for a fixed input size. A model built
for any size (`input_shape=(None, None, 3)`) always pads as for even inputs.
"""

from __future__ import annotations

import io
import json
import re
import zipfile
from pathlib import Path

import numpy as np
import torch

from edgeeff.data.preprocess import Preprocessing

KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")
SCALE_KEY = "preprocessing/scale"
OFFSET_KEY = "preprocessing/offset"
# keras.layers.Normalization divides by max(sqrt(variance), epsilon), with Keras' epsilon 1e-7.
_KERAS_EPSILON = 1e-7

# Variable names by position in a Keras 3 weights file, per layer class.
_VARIABLES = {
    "Conv2D": ("kernel", "bias"),
    "DepthwiseConv2D": ("kernel", "bias"),
    "Dense": ("kernel", "bias"),
    "Normalization": ("mean", "variance", "count"),
}
_CONTAINERS = ("Functional", "Sequential", "Model")
# Layers that do nothing at inference (augmentation, dropout, reshapes) or have no weights.
_INFERENCE_NO_OPS = re.compile(r"Random\w+|Dropout|GaussianNoise|GaussianDropout|InputLayer")


class KerasFileError(ValueError):
    """A Keras file that cannot be imported: unreadable, weights only, or another model."""


def _snake_case(name: str) -> str:
    # keras.src.utils.naming.to_snake_case (Keras 3.15).
    name = re.sub(r"\W+", "", name)
    name = re.sub("(.)([A-Z][a-z]+)", r"\1_\2", name)
    return re.sub("([a-z])([A-Z])", r"\1_\2", name).lower()


def _layer_name(layer: dict) -> str:
    return layer.get("name") or layer["config"]["name"]


def _bn_variables(config: dict) -> tuple[str, ...]:
    names = []
    if config.get("scale", True):
        names.append("gamma")
    if config.get("center", True):
        names.append("beta")
    return (*names, "moving_mean", "moving_variance")


def _variable_names(layer: dict) -> tuple[str, ...] | None:
    if layer["class_name"] == "BatchNormalization":
        return _bn_variables(layer["config"])
    return _VARIABLES.get(layer["class_name"])


def _flatten_layers(layers: list[dict]) -> list[dict]:
    """Return the layers in graph order, with nested models' layers in place of the model."""
    flat = []
    for layer in layers:
        if layer["class_name"] in _CONTAINERS:
            flat.extend(_flatten_layers(layer["config"]["layers"]))
        else:
            flat.append(layer)
    return flat


def _read_keras3_weights(layers: list[dict], group, prefix: str, out: dict[str, dict[str, np.ndarray]]) -> None:
    """Read a Keras 3 weights file into {layer name: {variable: array}}, walking the config."""
    used: dict[str, int] = {}
    for layer in layers:
        class_name = layer["class_name"]
        base = _snake_case(class_name)
        used[base] = used.get(base, -1) + 1
        slot = base if used[base] == 0 else f"{base}_{used[base]}"
        path = f"{prefix}/{slot}"
        if class_name in _CONTAINERS:
            _read_keras3_weights(layer["config"]["layers"], group, f"{path}/layers", out)
            continue
        if f"{path}/vars" not in group:
            continue
        variables = group[f"{path}/vars"]
        arrays = [np.asarray(variables[str(i)]) for i in range(len(variables))]
        if not arrays:
            continue
        names = _variable_names(layer) or tuple(f"var{i}" for i in range(len(arrays)))
        out[_layer_name(layer)] = dict(zip(names, arrays))


def _read_legacy_weights(group) -> dict[str, dict[str, np.ndarray]]:
    """Read `model_weights` of a legacy .h5 model into {layer name: {variable: array}}."""
    out: dict[str, dict[str, np.ndarray]] = {}
    for layer_group_name in group.attrs.get("layer_names", []):
        layer_group = group[_decode(layer_group_name)]
        for weight_name in layer_group.attrs.get("weight_names", []):
            weight_name = _decode(weight_name)
            parts = weight_name.split("/")
            layer, variable = parts[-2], parts[-1].split(":")[0]
            variable = "kernel" if variable == "depthwise_kernel" else variable
            out.setdefault(layer, {})[variable] = np.asarray(layer_group[weight_name])
    return out


def _decode(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _open_h5(source):
    try:
        import h5py
    except ImportError as exc:
        raise KerasFileError("reading Keras files needs h5py: pip install 'edgeeff[keras]' or pip install h5py") from exc
    return h5py.File(source, "r")


def _load_model_file(path: Path) -> tuple[dict, dict[str, dict[str, np.ndarray]]]:
    """Return the model config and the weights by layer name from a .keras or .h5 file."""
    if path.suffix == ".keras":
        try:
            with zipfile.ZipFile(path) as archive:
                config = json.loads(archive.read("config.json"))
                weights_bytes = archive.read("model.weights.h5")
        except (zipfile.BadZipFile, KeyError, OSError, json.JSONDecodeError) as exc:
            raise KerasFileError(f"invalid .keras file {path}: {exc}; re-save it with model.save('model.keras')") from exc
        weights: dict[str, dict[str, np.ndarray]] = {}
        with _open_h5(io.BytesIO(weights_bytes)) as h5:
            _read_keras3_weights(config["config"]["layers"], h5, "layers", weights)
        return config, weights

    try:
        h5 = _open_h5(path)
    except OSError as exc:
        raise KerasFileError(f"invalid HDF5 file {path}: {exc}; re-save the model with model.save()") from exc
    with h5:
        if "model_config" not in h5.attrs:
            raise KerasFileError(f"{path} contains Keras weights but no model config, so its preprocessing "
                                 "layers and layer names are unknown; save the whole model with "
                                 "model.save('model.keras')")
        config = json.loads(_decode(h5.attrs["model_config"]))
        return config, _read_legacy_weights(h5["model_weights"] if "model_weights" in h5 else h5)


def _input_size(config: dict) -> int | None:
    for layer in _flatten_layers(config["config"]["layers"]):
        if layer["class_name"] == "InputLayer":
            shape = layer["config"].get("batch_shape") or layer["config"].get("batch_input_shape")
            if shape and len(shape) == 4:
                return shape[1] if shape[1] == shape[2] else None
    return None


def _compose_preprocessing(layers: list[dict], weights: dict) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Compose the Rescaling and Normalization layers before the stem into y = scale * x + offset.

    `x` is the 0–255 pixel. Returns per-channel scale and offset, and the layers composed.
    """
    scale, offset = np.ones(3, np.float64), np.zeros(3, np.float64)
    used = []
    for layer in layers:
        class_name, config = layer["class_name"], layer["config"]
        if class_name in ("Conv2D", "ZeroPadding2D"):
            break
        if class_name == "Rescaling":
            s = np.broadcast_to(np.asarray(config.get("scale", 1.0), np.float64), (3,))
            o = np.broadcast_to(np.asarray(config.get("offset", 0.0), np.float64), (3,))
            scale, offset = scale * s, offset * s + o
        elif class_name == "Normalization":
            if config.get("invert"):
                raise KerasFileError(f"Normalization layer {_layer_name(layer)} has invert=True; "
                                     "only forward normalization can move into preprocessing")
            stored = weights.get(_layer_name(layer), {})
            mean = config.get("mean") if config.get("mean") is not None else stored.get("mean")
            variance = config.get("variance") if config.get("variance") is not None else stored.get("variance")
            if mean is None or variance is None:
                raise KerasFileError(f"Normalization layer {_layer_name(layer)} has no mean or variance in the file")
            mean = np.broadcast_to(np.asarray(mean, np.float64).reshape(-1), (3,))
            std = np.maximum(np.sqrt(np.broadcast_to(np.asarray(variance, np.float64).reshape(-1), (3,))),
                             _KERAS_EPSILON)
            scale, offset = scale / std, (offset - mean) / std
        elif not _INFERENCE_NO_OPS.fullmatch(class_name):
            raise KerasFileError(f"layer {_layer_name(layer)} ({class_name}) before the stem conv is not "
                                 "Rescaling or Normalization; edgeeff cannot move it into preprocessing")
        else:
            continue
        used.append(_layer_name(layer))
    return scale, offset, used


def read_keras_file(path: str | Path) -> tuple[dict[str, torch.Tensor], dict]:
    """Read a Keras EfficientNet file into Keras-layout tensors and source metadata.

    Returns ({"LAYER/VARIABLE": tensor}, {"source": {...}}) where the source metadata has
    the BatchNorm epsilon, the input size the model was built for, and notes for the user.
    """
    path = Path(path)
    config, weights = _load_model_file(path)
    layers = _flatten_layers(config["config"]["layers"])
    scale, offset, used = _compose_preprocessing(layers, weights)

    state: dict[str, torch.Tensor] = {}
    for layer in layers:
        name = _layer_name(layer)
        if layer["class_name"] == "Normalization" or name not in weights:
            continue
        for variable, array in weights[name].items():
            state[f"{name}/{variable}"] = torch.from_numpy(np.array(array, np.float32))
    state[SCALE_KEY] = torch.tensor(scale, dtype=torch.float32)
    state[OFFSET_KEY] = torch.tensor(offset, dtype=torch.float32)

    notes = []
    eps = {layer["config"].get("epsilon", 1e-3) for layer in layers if layer["class_name"] == "BatchNormalization"}
    dense = [layer for layer in layers if layer["class_name"] == "Dense"]
    if dense and dense[-1]["config"].get("activation") not in (None, "linear"):
        notes.append(f"the Keras model applies {dense[-1]['config']['activation']} in its last Dense layer; "
                     "the exported model returns the logits before it")
    size = _input_size(config)
    if size is None:
        notes.append("the Keras model was built for any input size: its stride-2 padding equals TF SAME only "
                     "where a feature map is even, so export at a multiple of 32 px to match it")
    source = {"bn_eps": eps.pop() if len(eps) == 1 else 1e-3, "input_size": size, "notes": notes,
              "preprocessing_layers": used}
    return state, {"source": source}


# Keras layer names inside keras.applications.efficientnet, mapped to edgeeff modules.
_TOP = {"stem_conv": "stem.conv", "stem_bn": "stem.bn", "top_conv": "head.conv", "top_bn": "head.bn"}
_BLOCK_LAYER = re.compile(r"block(\d+)([a-z]+)_(expand_conv|expand_bn|dwconv|bn|se_reduce|se_expand|"
                          r"project_conv|project_bn)")
_BLOCK_MODULE = {"expand_conv": "expand.conv", "expand_bn": "expand.bn", "dwconv": "depthwise.conv",
                 "bn": "depthwise.bn", "se_reduce": "se.reduce", "se_expand": "se.expand",
                 "project_conv": "project.conv", "project_bn": "project.bn"}
_BN_PARAMS = {"gamma": "weight", "beta": "bias", "moving_mean": "running_mean", "moving_variance": "running_var"}


def detect(keys: list[str]) -> bool:
    return "stem_conv/kernel" in keys


def _to_torch(module: str, variable: str, tensor: torch.Tensor) -> tuple[str, torch.Tensor]:
    """Map one Keras variable to an edgeeff parameter name and PyTorch layout."""
    if module.endswith(".bn"):
        return f"{module}.{_BN_PARAMS.get(variable, variable)}", tensor
    if variable == "kernel" and module.endswith("depthwise.conv"):
        # (kh, kw, channels, multiplier) → (channels * multiplier, 1, kh, kw)
        kh, kw, channels, multiplier = tensor.shape
        return f"{module}.weight", tensor.permute(2, 3, 0, 1).reshape(channels * multiplier, 1, kh, kw)
    if variable == "kernel" and tensor.ndim == 4:
        return f"{module}.weight", tensor.permute(3, 2, 0, 1)  # HWIO → OIHW
    if variable == "kernel" and tensor.ndim == 2:
        return f"{module}.weight", tensor.t()  # (in, out) → (out, in)
    return f"{module}.{variable}", tensor


def _keras_preprocessing(state: dict[str, torch.Tensor]) -> tuple[Preprocessing, list[str]]:
    notes = []
    if SCALE_KEY in state and OFFSET_KEY in state:
        scale, offset = state[SCALE_KEY].double().numpy(), state[OFFSET_KEY].double().numpy()
    else:
        # keras.applications' graph: Rescaling(1 / 255), then Normalization.
        scale, offset = np.full(3, 1 / 255), np.zeros(3)
        if "normalization/mean" in state and "normalization/variance" in state:
            mean = state["normalization/mean"].double().numpy()
            std = np.maximum(np.sqrt(state["normalization/variance"].double().numpy()), _KERAS_EPSILON)
            scale, offset = scale / std, (offset - mean) / std
        notes.append("no preprocessing/scale and preprocessing/offset tensors: assumed keras.applications' "
                     "Rescaling(1/255) then Normalization")
    if not np.all(np.isfinite(scale)) or np.any(scale == 0):
        raise ValueError(f"invalid Keras preprocessing scale {scale.tolist()}: it must be finite and non-zero")
    mean = tuple(float(v) for v in -offset / scale)
    std = tuple(float(v) for v in 1 / scale)
    # Keras pipelines (image_dataset_from_directory) resize the whole image bilinearly, no crop.
    return Preprocessing("keras", mean, std, crop_fraction=1.0, interpolation="bilinear"), notes


def convert(state: dict[str, torch.Tensor]):
    """Rename and transpose Keras-layout tensors to edgeeff's, and recover the preprocessing.

    Returns (edgeeff state, preprocessing, notes). A Dense layer of any name is the classifier
    when it is the only one. Unknown layers keep their name under `unmapped.`, so the shape
    check reports them.
    """
    layers: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in state.items():
        layer, _, variable = key.rpartition("/")
        layers.setdefault(layer, {})[variable] = tensor

    blocks = sorted({(int(m[1]), m[2]) for name in layers if (m := _BLOCK_LAYER.fullmatch(name))},
                    key=lambda sb: (sb[0], len(sb[1]), sb[1]))
    flat_index = {stage_block: i for i, stage_block in enumerate(blocks)}
    dense = [name for name, variables in layers.items()
             if name not in _TOP and not _BLOCK_LAYER.fullmatch(name)
             and variables.get("kernel") is not None and variables["kernel"].ndim == 2]

    out: dict[str, torch.Tensor] = {}
    for name, variables in layers.items():
        if name in ("preprocessing", "normalization"):
            continue
        match = _BLOCK_LAYER.fullmatch(name)
        if name in _TOP:
            module = _TOP[name]
        elif match:
            module = f"blocks.{flat_index[(int(match[1]), match[2])]}.{_BLOCK_MODULE[match[3]]}"
        elif dense == [name]:
            module = "classifier"
            if "bias" not in variables:
                variables = {**variables, "bias": torch.zeros(variables["kernel"].shape[1])}
        else:
            for variable, tensor in variables.items():
                out[f"unmapped.{name}/{variable}"] = tensor
            continue
        for variable, tensor in variables.items():
            key, value = _to_torch(module, variable, tensor)
            out[key] = value.contiguous()
    preprocessing, notes = _keras_preprocessing(state)
    return out, preprocessing, notes

