"""Models of the recipe: the backbone, the classification head, the projection.

* backbone: `keras.applications.EfficientNetB0(include_top=False, pooling="avg")`,
  images float32 [batch, size, size, 3] in [0, 255] -> features [batch, 1280];
* classifier (phases 1-3): backbone -> BatchNormalization -> Dropout -> Dense(softmax);
* projection (phase 4): features [batch, 1280] -> Dense(512) -> L2 normalisation;
* embedder (extraction): backbone -> projection, or the backbone alone.

Only serialisable Keras layers are used (no Lambda), so saved models load in
Keras safe mode.
"""

import re
import warnings
from pathlib import Path

import keras

from phases.config import ClassificationPhase, ModelConfig
from phases.errors import ConfigError

BACKBONE_NAME = "backbone"
FEATURE_DIM = {"EfficientNetB0": 1280}


def build_backbone(config: ModelConfig, image_size: int) -> keras.Model:
    """The configured architecture without its top, average-pooled, with its weights."""
    weights = config.weights
    if weights not in ("imagenet", "none") and not Path(weights).is_file():
        raise ConfigError(f"model.weights: {weights!r} is neither 'imagenet', 'none' nor an existing weights file")
    constructor = getattr(keras.applications, config.architecture)
    backbone = constructor(
        include_top=False,
        pooling="avg",
        weights="imagenet" if weights == "imagenet" else None,
        input_shape=(image_size, image_size, 3),
        name=BACKBONE_NAME,
    )
    if weights not in ("imagenet", "none"):
        try:
            with warnings.catch_warnings():
                # Keras warns once per layer it cannot match (hundreds of lines) before it raises.
                warnings.filterwarnings("ignore", message="Skipping nested container", category=UserWarning)
                backbone.load_weights(weights)
        except (ValueError, KeyError, OSError) as error:
            reason = str(error).strip().splitlines()[0].split(" Example error message")[0]  # then Keras lists every layer
            raise ConfigError(
                f"model.weights: {weights} does not fit {config.architecture} without its top ({reason}); give a "
                f".weights.h5 file saved from {config.architecture}(include_top=False), or 'imagenet' or 'none'"
            ) from None
    return backbone


def calibrate_batch_norm(backbone: keras.Model, batches) -> int:
    """Set every BatchNormalization layer's moving statistics to the average over `batches`.

    `batches` yields image tensors [batch, size, size, 3]. Each batch runs through the
    backbone in training mode with the momentum set so that the moving statistics
    become the running mean of the batch statistics; nothing else changes. Returns
    the number of batches used.
    """
    norms = [layer for layer in backbone.layers if isinstance(layer, keras.layers.BatchNormalization)]
    saved = [(layer.momentum, layer.trainable) for layer in norms]
    used = 0
    try:
        for used, images in enumerate(batches, start=1):
            for layer in norms:
                layer.trainable = True  # a frozen layer ignores training=True in Keras 3
                layer.momentum = (used - 1) / used
            backbone(images, training=True)
    finally:
        for layer, (momentum, trainable) in zip(norms, saved):
            layer.momentum, layer.trainable = momentum, trainable
    return used


def build_classifier(backbone: keras.Model, classes: int, dropout: float) -> keras.Model:
    """Backbone plus the seed's head: BatchNormalization, Dropout, Dense(classes, softmax)."""
    features = backbone.output
    x = keras.layers.BatchNormalization(name="head_batch_norm")(features)
    x = keras.layers.Dropout(dropout, name="head_dropout")(x)
    outputs = keras.layers.Dense(classes, activation="softmax", name="head_classes")(x)
    return keras.Model(backbone.input, outputs, name="classifier")


def backbone_of(model: keras.Model) -> keras.Model:
    """The backbone part of a classifier: its input up to the pooled features."""
    return keras.Model(model.input, model.get_layer("head_batch_norm").input, name=BACKBONE_NAME)


def block_names(backbone: keras.Model) -> list[str]:
    """The block prefixes of a backbone's layers in order (e.g. block1a ... block7a)."""
    names = []
    for layer in backbone.layers:
        match = re.match(r"^(block\d+[a-z])_", layer.name)
        if match and match.group(1) not in names:
            names.append(match.group(1))
    return names


def set_trainable(model: keras.Model, phase: ClassificationPhase, freeze_batch_norm: bool = True) -> list[str]:
    """Make the phase's layers trainable; returns the names of the trainable layers.

    The head always trains. Backbone layers train from the first layer whose name
    starts with `phase.unfreeze_from` (or all of them, or none), except
    BatchNormalization layers, which stay frozen when `freeze_batch_norm` (the
    seed's choice): in Keras 3 a frozen BatchNormalization also runs in inference
    mode, so its ImageNet statistics are kept.
    """
    head = {"head_batch_norm", "head_dropout", "head_classes"}
    backbone_layers = [layer for layer in model.layers if layer.name not in head]
    if phase.unfreeze == "none":
        start = len(backbone_layers)
    elif phase.unfreeze == "all":
        start = 0
    else:
        start = next((i for i, l in enumerate(backbone_layers) if l.name.startswith(phase.unfreeze_from)), None)
        if start is None:
            raise ConfigError(
                f"phase {phase.name!r}: unfreeze_from {phase.unfreeze_from!r} matches no layer; "
                f"valid blocks: {', '.join(block_names(model))}"
            )
    model.trainable = True
    for position, layer in enumerate(backbone_layers):
        frozen_norm = freeze_batch_norm and isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = position >= start and not frozen_norm
    return [layer.name for layer in model.layers if layer.trainable and layer.weights]


def build_projection(input_dim: int, projection_dim: int) -> keras.Model:
    """Phase 4's head: Dense(projection_dim) then L2 normalisation (a real layer, not a Lambda)."""
    features = keras.Input((input_dim,), name="features")
    projected = keras.layers.Dense(projection_dim, name="projection_dense")(features)
    embedding = keras.layers.UnitNormalization(axis=-1, name="projection_l2")(projected)
    return keras.Model(features, embedding, name="projection")


def build_embedder(backbone: keras.Model, projection: keras.Model | None) -> keras.Model:
    """Images -> final embeddings: the backbone, followed by the projection when trained."""
    if projection is None:
        return backbone
    return keras.Model(backbone.input, projection(backbone.output), name="embedder")
