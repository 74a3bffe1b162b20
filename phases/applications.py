"""The backbones' Keras graphs: `keras.applications`, each with the input scaling its weights expect.

Keras' EfficientNetB0-B3 scale [0, 255] RGB with Rescaling(1/255) and a Normalization
whose mean and variance come with the weights. Keras stores ImageNet's standard
deviations as that variance, so its ImageNet model adds Rescaling(1/sqrt(stddev)) after
the Normalization (tensorflow/tensorflow#49930), but only when built with
weights="imagenet". A model built with weights=None, as loading a weights file needs,
lacks it: a file saved from the ImageNet model would see its inputs at ~0.48 of their
scale. Here every EfficientNetB0-B3 has the ImageNet graph whatever its weights, so a
weights file saved from our backbones or from Keras' ImageNet model gives that model's
outputs (and `weights: none` starts from x/255 * 1/sqrt(stddev), the Normalization being
mean 0, variance 1 until weights are loaded).
A file saved from a bare `keras.applications.EfficientNetB0(weights=None)` elsewhere
(Normalization never adapted: mean 0, variance 1; no extra Rescaling) gets inputs
x/255 * 1/sqrt(stddev), ~2.1 times what that model saw.

EfficientNetLite0 (not in Keras) is EfficientNetB0's blocks, with the same layer names,
without squeeze-excitation and with ReLU6 (`block()` skips SE when se_ratio is 0). It was
trained on (x - 127) / 128: its graph replaces Keras' Rescaling and Normalization by one
Rescaling, so it holds no normalisation state a weights file could change. (Lite1-4 leave
the first and last block groups' repeats and the stem's and top's filters unscaled: Lite1
fits Keras' builder with pre-scaled `blocks_args` and depth 1.0, Lite2-4 do not.)
"""

import math

import keras
from keras.src.applications import efficientnet as keras_efficientnet

from phases.architectures import family

LITE_ARCHITECTURES = ("EfficientNetLite0",)
_LITE_BLOCKS = [{**block, "se_ratio": 0.0} for block in keras_efficientnet.DEFAULT_BLOCKS_ARGS]


def build_application(architecture: str, imagenet: bool, **arguments) -> keras.Model:
    """`keras.applications.<architecture>(**arguments)` with Keras' ImageNet weights when
    `imagenet` (Keras downloads and caches them), else random ones; either way the graph
    those weights were trained with. Takes [0, 255] RGB for the EfficientNets (B0-B3, Lite0).

    EfficientNetLite0 has no Keras weights (`imagenet` must be False): its ImageNet weights
    are a file made by phases/lite_weights.py. EfficientNets without Keras' weights cost
    about twice a build (B0: ~1 s more on 2 cores): the graph is copied, layers changed.
    """
    if architecture == "EfficientNetLite0":
        if imagenet:
            raise ValueError("EfficientNetLite0 has no Keras ImageNet weights: load phases/lite_weights.py's file")
        arguments.setdefault("name", "efficientnetlite0")
        model = keras_efficientnet.EfficientNet(
            1.0, 1.0, 224, 0.2, activation="relu6", blocks_args=_LITE_BLOCKS, weights=None, **arguments
        )
        return _rewired(model, _lite_scaling)
    model = getattr(keras.applications, architecture)(weights="imagenet" if imagenet else None, **arguments)
    if family(architecture) == "EfficientNet" and not imagenet:
        return _rewired(model, _imagenet_scaling)
    return model


def _rewired(model: keras.Model, call_function) -> keras.Model:
    """A copy of `model` whose layer calls go through `call_function(layer, *args, **kwargs)`.

    New layers (fresh random weights), not the model's own: a layer called in two graphs
    has two outputs, and `layer.output` (used for `feature_blocks`) would give the old one."""
    return keras.models.clone_model(model, call_function=call_function)


def _imagenet_scaling(layer, *args, **kwargs):
    """Keras' ImageNet graph: Rescaling(1/sqrt(stddev)) after the Normalization."""
    outputs = layer(*args, **kwargs)
    if isinstance(layer, keras.layers.Normalization):
        return keras.layers.Rescaling([1 / math.sqrt(s) for s in keras_efficientnet.IMAGENET_STDDEV_RGB])(outputs)
    return outputs


def _lite_scaling(layer, *args, **kwargs):
    """EfficientNet-Lite's input: (x - 127) / 128, instead of Keras' Rescaling and Normalization."""
    if isinstance(layer, keras.layers.Normalization):
        return args[0]
    if isinstance(layer, keras.layers.Rescaling) and layer.scale == 1 / 255:
        return keras.layers.Rescaling(1 / 128, offset=-127 / 128, name="preprocess_rescaling")(args[0])
    return layer(*args, **kwargs)
