"""Class-centre losses with a margin: ArcFace, sub-center ArcFace and CosFace, in `keras.ops`.

A `CosineClassifier` layer gives the cosine of each feature to each class's centre (the
nearest of a class's K centres for sub-center ArcFace); the losses add a margin to the
target class's angle (ArcFace, Deng et al. 2019, arXiv:1801.07698) or subtract one from
its cosine (CosFace, Wang et al. 2018, arXiv:1801.09414), multiply every cosine by a
scale and take softmax cross-entropy. Unlike the batch losses, labels are class indices
0 .. classes - 1 (a product's id), not only equal or not. `tests/test_margin_losses.py`
checks them against a NumPy reference written with arccos.

The losses take integer labels [batch] (or [batch, 1]; Keras passes them as float32, exact
below 2**24 classes) and cosines [batch, classes] and compute in float32, also under mixed
precision. Their `margin` is a variable, as the batch losses': a margin schedule changes it
between epochs without recompiling the train step.
"""

import math

import keras
from keras import ops

from phases.losses.batch import ScheduledMargin, as_float32
from phases.phase_config import MARGIN_LOSSES


@keras.saving.register_keras_serializable(package="pvs")
class CosineClassifier(keras.layers.Layer):
    """Cosines of features to class centres: [batch, dim] -> float32 [batch, classes], in [-1, 1].

    Features and centres are both L2-normalised, so the output is cos(theta), theta the angle
    between a feature and a centre. With `centers` K > 1 (sub-center ArcFace, Deng et al.
    2020) each class has K centres and its cosine is the largest of the K: an image of a
    noisy or multi-modal class needs to be near one of them only. Computed in float32 under
    a mixed precision policy too: cosines near 1 differ in the digits float16 drops, and
    the margin losses take their arccos.

    Args:
        classes: number of classes (the labels are 0 .. classes - 1).
        centers: centres per class, K (3 in sub-center ArcFace; 1 for ArcFace and CosFace).
        kernel_initializer: initializer of the centres, a [dim, classes * centers] matrix
            (class c's centres are its columns c * K .. c * K + K - 1); only their directions matter.
        dtype: the layer's dtype policy, float32 unless given.

    Example:
        cosines = CosineClassifier(classes=1000, centers=3, name="head_classes")(features)
    """

    def __init__(self, classes, centers=1, kernel_initializer="random_normal", dtype="float32", **kwargs):
        super().__init__(dtype=dtype, **kwargs)
        if int(classes) < 1 or int(centers) < 1:
            raise ValueError(f"CosineClassifier needs classes >= 1 and centers >= 1; got {classes} and {centers}")
        self.classes, self.centers = int(classes), int(centers)
        self.kernel_initializer = keras.initializers.get(kernel_initializer)

    def build(self, input_shape):
        # Cost: dim x classes x centers float32 weights (512 x 100,000 x 3: 614 MB), twice more for Adam's moments.
        self.kernel = self.add_weight(
            name="centers", shape=(input_shape[-1], self.classes * self.centers), initializer=self.kernel_initializer
        )

    def call(self, inputs):
        cosines = ops.matmul(unit_vectors(inputs, axis=1), unit_vectors(self.kernel, axis=0))
        if self.centers > 1:
            cosines = ops.max(ops.reshape(cosines, (-1, self.classes, self.centers)), axis=2)
        return cosines

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.classes)

    def get_config(self):
        return {
            **super().get_config(),
            "classes": self.classes,
            "centers": self.centers,
            "kernel_initializer": keras.initializers.serialize(self.kernel_initializer),
        }


def unit_vectors(x, axis):
    """`x` divided by its L2 norm along `axis`, as tf.math.l2_normalize (a zero vector stays 0)."""
    x = as_float32(x)
    return x * ops.rsqrt(ops.maximum(ops.sum(ops.square(x), axis=axis, keepdims=True), 1e-12))


def arcface_loss(labels, cosines, scale=64.0, margin=0.5, easy_margin=False):
    """ArcFace (Deng et al. 2019): softmax cross-entropy of s * cos(theta_y + m) against s * cos(theta_j).

    The target class y's angle theta_y gets the additive angular margin m; every other
    class keeps its cosine. Where theta_y + m would pass pi (cos(theta_y) <= cos(pi - m)),
    cos(theta_y + m) would grow again with theta_y: as insightface's reference code, the
    target's logit is then cos(theta_y) - m sin(m), which keeps falling. With `easy_margin`
    the margin applies only where cos(theta_y) > 0, the target's plain cosine elsewhere.

    Args:
        labels: integer class indices, [batch] or [batch, 1], in 0 .. classes - 1.
        cosines: [batch, classes] cosines (a `CosineClassifier`'s output).
        scale: s, the logits' scale (64 in the paper).
        margin: m in radians (0.5 in the paper), a float or a scalar tensor/variable.
        easy_margin: apply the margin only where cos(theta_y) > 0.

    Returns:
        float32 scalar tensor: the mean over the batch.
    """
    return ops.mean(_cross_entropy(labels, cosines, scale, _arcface_target, margin=margin, easy_margin=easy_margin))


def cosface_loss(labels, cosines, scale=64.0, margin=0.35):
    """CosFace (Wang et al. 2018): softmax cross-entropy of s * (cos(theta_y) - m) against s * cos(theta_j).

    Args:
        labels: integer class indices, [batch] or [batch, 1], in 0 .. classes - 1.
        cosines: [batch, classes] cosines (a `CosineClassifier`'s output).
        scale: s, the logits' scale (64 in the paper).
        margin: m, subtracted from the target's cosine (0.35 in the paper); a float or a scalar tensor/variable.

    Returns:
        float32 scalar tensor: the mean over the batch.
    """
    return ops.mean(_cross_entropy(labels, cosines, scale, _cosface_target, margin=margin))


def _arcface_target(cosine, margin, easy_margin):
    """cos(theta + m) of the target cosines [batch], by cos(a + b) = cos a cos b - sin a sin b."""
    margin = as_float32(margin)
    cosine = ops.clip(cosine, -1.0, 1.0)  # rounding can give 1 + 1e-7
    # The floor keeps sqrt's gradient finite where theta is 0 (a sine of 3e-4 there, not 0).
    sine = ops.sqrt(ops.maximum(1.0 - ops.square(cosine), 1e-7))
    with_margin = cosine * ops.cos(margin) - sine * ops.sin(margin)
    if easy_margin:
        return ops.where(cosine > 0.0, with_margin, cosine)
    return ops.where(cosine > ops.cos(math.pi - margin), with_margin, cosine - margin * ops.sin(margin))


def _cosface_target(cosine, margin):
    return cosine - as_float32(margin)


def _cross_entropy(labels, cosines, scale, target_with_margin, **margin_arguments):
    """Per-example softmax cross-entropy [batch] of scale * cosines, the target's replaced by
    `target_with_margin(target cosines [batch], **margin_arguments)`."""
    cosines = as_float32(cosines)
    labels = ops.cast(ops.reshape(ops.convert_to_tensor(labels), (-1,)), "int32")
    is_target = ops.cast(ops.one_hot(labels, ops.shape(cosines)[1]), "bool")
    target = target_with_margin(ops.sum(ops.where(is_target, cosines, 0.0), axis=1), **margin_arguments)
    logits = float(scale) * ops.where(is_target, target[:, None], cosines)
    return ops.logsumexp(logits, axis=1) - float(scale) * target


class MarginLoss(ScheduledMargin, keras.losses.Loss):
    """Shared by ArcFaceLoss and CosFaceLoss: the margin variable, the scale and the config."""

    def __init__(self, scale, margin, name):
        super().__init__(name=name)
        if not float(scale) > 0:
            raise ValueError(f"{type(self).__name__}: scale must be > 0; got {scale}")
        self.scale = float(scale)
        self._keep_margin(margin)

    def get_config(self):
        return {"name": self.name, "scale": self.scale, "margin": self.margin, **self._extra_arguments()}

    def _extra_arguments(self) -> dict:
        return {}


@keras.saving.register_keras_serializable(package="pvs")
class ArcFaceLoss(MarginLoss):
    """Keras loss for `arcface_loss`: y_true class indices [batch] or [batch, 1], y_pred cosines
    [batch, classes] (of a `CosineClassifier`, with one centre per class or several).

    Args:
        scale: s, the logits' scale (64 in the paper).
        margin: m in radians (0.5 in the paper), float or `keras.Variable`; set `loss.margin = 0.3`
            to change it between epochs.
        easy_margin: apply the margin only where cos(theta_y) > 0.
        name: loss name shown in logs.

    Example:
        model.compile(optimizer="adam", loss=ArcFaceLoss(scale=64.0, margin=0.5), metrics=["accuracy"])
    """

    def __init__(self, scale=64.0, margin=0.5, easy_margin=False, name="arcface_loss"):
        super().__init__(scale, margin, name)
        self.easy_margin = bool(easy_margin)

    def call(self, y_true, y_pred):
        return _cross_entropy(y_true, y_pred, self.scale, _arcface_target, margin=self._margin,
                              easy_margin=self.easy_margin)

    def _extra_arguments(self) -> dict:
        return {"easy_margin": self.easy_margin}


@keras.saving.register_keras_serializable(package="pvs")
class CosFaceLoss(MarginLoss):
    """Keras loss for `cosface_loss`: y_true class indices [batch] or [batch, 1], y_pred cosines [batch, classes].

    Args:
        scale: s, the logits' scale (64 in the paper).
        margin: m, a cosine (0.35 in the paper), float or `keras.Variable`; set `loss.margin` to change it.
        name: loss name shown in logs.
    """

    def __init__(self, scale=64.0, margin=0.35, name="cosface_loss"):
        super().__init__(scale, margin, name)

    def call(self, y_true, y_pred):
        return _cross_entropy(y_true, y_pred, self.scale, _cosface_target, margin=self._margin)


def make_margin_loss(kind: str, scale: float, margin: float, easy_margin: bool = False) -> MarginLoss:
    """The Keras loss of a class-centre loss `kind` ("arcface", "subcenter_arcface": the same
    loss on a `CosineClassifier` with several centres, or "cosface")."""
    if kind in ("arcface", "subcenter_arcface"):
        return ArcFaceLoss(scale=scale, margin=margin, easy_margin=easy_margin)
    if kind == "cosface":
        return CosFaceLoss(scale=scale, margin=margin)
    raise ValueError(f"no class-centre loss {kind!r}; the class-centre losses are {', '.join(MARGIN_LOSSES)}")
