"""Metric-learning losses over a batch: triplet (semi-hard, hard) and contrastive.

Native `keras.ops` replacements for `tfa.losses.triplet_semihard_loss` and
`tfa.losses.triplet_hard_loss` of tensorflow-addons 0.23, with the same values
(`tests/test_losses.py` checks them against a plain NumPy reference). Every loss
takes integer labels [batch] (or [batch, 1]) and embeddings [batch, dim] and
returns one float32 scalar for the whole batch: the pairs and triplets are
formed inside the batch, so a batch needs several images of the same product.

Distances, chosen by `distance_metric`, are computed in float32 even when the
embeddings are float16/bfloat16 (mixed precision), as TFA did:
  "L2"          ||a - b||
  "squared-L2"  ||a - b||^2 (the margin is then in squared units too)
  "angular"     1 - cosine(a, b), in [0, 2]
"""

import keras
import numpy as np
from keras import ops

DISTANCE_METRICS = ("L2", "squared-L2", "angular")


def triplet_semihard_loss(labels, embeddings, margin=1.0, distance_metric="L2"):
    """Triplet loss with semi-hard negatives (FaceNet, arXiv:1503.03832), as in TFA 0.23.

    For every anchor a and positive p (same label, p != a) the negative n is the
    closest one farther than the positive: the smallest d(a, n) > d(a, p). When
    the anchor has no such negative, the farthest negative (largest d(a, n)) is
    used; an anchor with no negative at all uses its smallest distance (0, to itself).
    The loss is the sum of max(margin + d(a, p) - d(a, n), 0) over all ordered
    (anchor, positive) pairs, divided by the number of such pairs.

    Unlike TFA, which divides 0 by 0 and returns NaN, a batch without any positive
    pair returns 0.0. Cost: a few [batch, batch, batch] tensors (batch 256: 64 MiB each).

    Args:
        labels: integer labels, [batch] or [batch, 1], any int dtype.
        embeddings: [batch, dim] float embeddings (NumPy array or tensor).
        margin: float, or a scalar tensor/variable (a schedule may change it).
        distance_metric: "L2", "squared-L2" or "angular".

    Returns:
        float32 scalar tensor.
    """
    same_label, distances = _labels_and_distances(labels, embeddings, distance_metric)
    different_label = ops.logical_not(same_label)
    # semi_hard[a, p, n]: n is a negative of a farther from a than p is.
    semi_hard = ops.logical_and(different_label[:, None, :], distances[:, None, :] > distances[:, :, None])
    closest_semi_hard = ops.squeeze(_masked_minimum(distances[:, None, :], semi_hard), axis=2)
    farthest_negative = _masked_maximum(distances, different_label)
    negative = ops.where(ops.any(semi_hard, axis=2), closest_semi_hard, farthest_negative)

    positive_pairs = ops.cast(ops.logical_and(same_label, _off_diagonal(distances)), "float32")
    per_pair = ops.maximum((_as_float32(margin) + distances - negative) * positive_pairs, 0.0)
    return _mean_or_zero(ops.sum(per_pair), ops.sum(positive_pairs))


def triplet_hard_loss(labels, embeddings, margin=1.0, soft=False, distance_metric="L2"):
    """Triplet loss with the hardest positive and negative per anchor (arXiv:1703.07737), as in TFA 0.23.

    For every anchor a: the hardest positive is its farthest same-label embedding
    (max d(a, p), p != a) and the hardest negative its closest other-label one
    (min d(a, n)). The loss per anchor is max(d_p - d_n + margin, 0), or with
    `soft=True` log(1 + exp(d_p - d_n)) (no margin); the result is the mean over
    all anchors. As in TFA, an anchor without a positive uses its smallest
    distance (0, to itself) as d_p, so it still pushes negatives beyond the margin
    (a batch without any positive pair is therefore not 0); an anchor without a
    negative uses its largest distance as d_n.

    Args:
        labels: integer labels, [batch] or [batch, 1], any int dtype.
        embeddings: [batch, dim] float embeddings (NumPy array or tensor).
        margin: float, or a scalar tensor/variable; unused when `soft`.
        soft: use the soft-margin form log1p(exp(d_p - d_n)).
        distance_metric: "L2", "squared-L2" or "angular".

    Returns:
        float32 scalar tensor (0.0 for an empty batch).
    """
    same_label, distances = _labels_and_distances(labels, embeddings, distance_metric)
    hardest_positive = _masked_maximum(distances, ops.logical_and(same_label, _off_diagonal(distances)))
    hardest_negative = _masked_minimum(distances, ops.logical_not(same_label))
    if soft:
        per_anchor = ops.log1p(ops.exp(hardest_positive - hardest_negative))
    else:
        per_anchor = ops.maximum(hardest_positive - hardest_negative + _as_float32(margin), 0.0)
    return _mean_or_zero(ops.sum(per_anchor), ops.cast(ops.size(per_anchor), "float32"))


def contrastive_loss(labels, embeddings, margin=1.0, distance_metric="L2"):
    """Contrastive loss (Hadsell et al. 2006) over all pairs of the batch.

    For every unordered pair i < j: d^2 when the labels match (pull together),
    max(margin - d, 0)^2 when they differ (push apart to at least `margin`);
    the result is the mean over the batch * (batch - 1) / 2 pairs. With
    "squared-L2", d is the squared distance, so the terms are ||a - b||^4 and
    max(margin - ||a - b||^2, 0)^2. A batch of fewer than 2 returns 0.0.

    Args:
        labels: integer labels, [batch] or [batch, 1], any int dtype.
        embeddings: [batch, dim] float embeddings (NumPy array or tensor).
        margin: float, or a scalar tensor/variable.
        distance_metric: "L2", "squared-L2" or "angular".

    Returns:
        float32 scalar tensor.
    """
    same_label, distances = _labels_and_distances(labels, embeddings, distance_metric)
    index = ops.arange(ops.shape(distances)[0])
    pairs = ops.cast(index[:, None] < index[None, :], "float32")
    shortfall = ops.maximum(_as_float32(margin) - distances, 0.0)
    per_pair = ops.where(same_label, ops.square(distances), ops.square(shortfall))
    return _mean_or_zero(ops.sum(per_pair * pairs), ops.sum(pairs))


def check_distance_metric(distance_metric: str) -> None:
    """Raise ValueError naming the valid metrics unless `distance_metric` is one of them."""
    if distance_metric not in DISTANCE_METRICS:
        valid = ", ".join(repr(name) for name in DISTANCE_METRICS)
        raise ValueError(f"distance_metric must be one of {valid}; got {distance_metric!r}")


def _labels_and_distances(labels, embeddings, distance_metric):
    """-> (same_label bool [batch, batch], distances float32 [batch, batch])."""
    check_distance_metric(distance_metric)
    labels = ops.reshape(ops.convert_to_tensor(labels), (-1,))
    # float16 distances lose the small differences the mining compares (TFA: precise_embeddings).
    embeddings = _as_float32(embeddings)
    return ops.equal(labels[:, None], labels[None, :]), _pairwise_distances(embeddings, distance_metric)


def _pairwise_distances(embeddings, distance_metric):
    """[batch, dim] float32 -> [batch, batch] distances, as TFA's metric_learning does."""
    if distance_metric == "angular":
        # tf.math.l2_normalize: x / sqrt(max(sum x^2, 1e-12)). The diagonal is not zeroed.
        unit = embeddings * ops.rsqrt(ops.maximum(ops.sum(ops.square(embeddings), axis=1, keepdims=True), 1e-12))
        return ops.maximum(1.0 - ops.matmul(unit, ops.transpose(unit)), 0.0)
    squared_norms = ops.sum(ops.square(embeddings), axis=1)
    # |a|^2 + |b|^2 - 2 a.b: one matmul instead of a [batch, batch, dim] difference tensor;
    # rounding can make it slightly negative, hence the clamp.
    dot_products = ops.matmul(embeddings, ops.transpose(embeddings))
    squared = ops.maximum(squared_norms[:, None] + squared_norms[None, :] - 2.0 * dot_products, 0.0)
    is_zero = ops.cast(squared <= 0.0, "float32")
    if distance_metric == "L2":
        # sqrt has an infinite gradient at 0: take it of 1e-16 there, then zero the result.
        squared = ops.sqrt(squared + is_zero * 1e-16)
    return squared * (1.0 - is_zero) * ops.cast(_off_diagonal(squared), "float32")


def _masked_maximum(data, mask):
    """Max of `data` over the last axis where `mask`, keeping that axis (size 1).

    TFA's formula, kept for its edge case: where the mask selects nothing the
    result is the row's minimum.
    """
    row_minimum = ops.min(data, axis=-1, keepdims=True)
    return ops.max((data - row_minimum) * ops.cast(mask, "float32"), axis=-1, keepdims=True) + row_minimum


def _masked_minimum(data, mask):
    """Min of `data` over the last axis where `mask` (broadcast); an empty selection gives the row's maximum."""
    row_maximum = ops.max(data, axis=-1, keepdims=True)
    return ops.min((data - row_maximum) * ops.cast(mask, "float32"), axis=-1, keepdims=True) + row_maximum


def _off_diagonal(matrix):
    """Bool [n, n]: True except on the diagonal."""
    index = ops.arange(ops.shape(matrix)[0])
    return ops.not_equal(index[:, None], index[None, :])


def _mean_or_zero(total, count):
    """total / count, or 0.0 when count is 0 (max() keeps the untaken branch's gradient finite)."""
    return ops.where(count > 0, total / ops.maximum(count, 1.0), 0.0)


def _as_float32(value):
    return ops.cast(ops.convert_to_tensor(value), "float32")


class _BatchLoss(keras.losses.Loss):
    """Shared by the loss classes: the margin variable, label handling and config."""

    loss_function = None  # set by subclasses: f(labels, embeddings, margin, distance_metric, **extra)

    def __init__(self, margin, distance_metric, name):
        super().__init__(name=name)
        check_distance_metric(distance_metric)  # now, not at the first batch
        self.distance_metric = distance_metric
        # A variable, not a float: compiled train steps read its current value, so a
        # margin schedule can change it between epochs without recompiling. float32, as
        # the losses use it (TPUs have no float64); `margin` reads it back as the shortest
        # decimal of that float32, so that get_config() gives back 0.1, not 0.10000000149.
        if isinstance(margin, keras.Variable):
            self._margin = margin
        else:
            self._margin = keras.Variable(float(margin), trainable=False, dtype="float32", name="margin")

    @property
    def margin(self) -> float:
        value = ops.convert_to_numpy(self._margin)
        if value.dtype == np.float32:
            return float(np.format_float_positional(np.float32(value), unique=True))
        return float(value)

    @margin.setter
    def margin(self, value: float):
        self._margin.assign(float(value))

    def __call__(self, y_true, y_pred, sample_weight=None):
        # Keras casts y_true to float32 before call(), which would merge product ids
        # above 2**24. Only label equality matters, so pass each label as the batch
        # index of its first occurrence, which float32 holds exactly.
        labels = ops.reshape(ops.convert_to_tensor(y_true), (-1,))
        batch_size = ops.shape(labels)[0]
        index = ops.arange(batch_size)
        same_label = ops.equal(labels[:, None], labels[None, :])
        first_occurrence = ops.min(ops.where(same_label, index[None, :], batch_size), axis=1)
        return super().__call__(first_occurrence, y_pred, sample_weight)

    def call(self, y_true, y_pred):
        loss = self.loss_function(
            y_true, y_pred, margin=self._margin, distance_metric=self.distance_metric, **self._extra_arguments()
        )
        # Shape [1], not (): Keras' "sum_over_batch_size" then returns the same value
        # but divides it by the replica count under tf.distribute, as for built-in losses.
        return ops.reshape(loss, (1,))

    def _extra_arguments(self) -> dict:
        return {}

    def get_config(self):
        config = {"name": self.name, "margin": self.margin, "distance_metric": self.distance_metric}
        return {**config, **self._extra_arguments()}


@keras.saving.register_keras_serializable(package="pvs")
class TripletSemiHardLoss(_BatchLoss):
    """Keras loss for `triplet_semihard_loss`: y_true labels [batch] or [batch, 1], y_pred embeddings [batch, dim].

    Args:
        margin: float or `keras.Variable`; set `loss.margin = 0.3` to change it between epochs.
        distance_metric: "L2", "squared-L2" or "angular".
        name: loss name shown in logs.

    Example:
        model.compile(optimizer="adam", loss=TripletSemiHardLoss(margin=0.2, distance_metric="angular"))
    """

    loss_function = staticmethod(triplet_semihard_loss)

    def __init__(self, margin=1.0, distance_metric="L2", name="triplet_semihard_loss"):
        super().__init__(margin, distance_metric, name)


@keras.saving.register_keras_serializable(package="pvs")
class TripletHardLoss(_BatchLoss):
    """Keras loss for `triplet_hard_loss`: y_true labels [batch] or [batch, 1], y_pred embeddings [batch, dim].

    Args:
        margin: float or `keras.Variable`; set `loss.margin = 0.3` to change it between epochs.
        soft: use the soft-margin form log1p(exp(d_p - d_n)).
        distance_metric: "L2", "squared-L2" or "angular".
        name: loss name shown in logs.
    """

    loss_function = staticmethod(triplet_hard_loss)

    def __init__(self, margin=1.0, soft=False, distance_metric="L2", name="triplet_hard_loss"):
        super().__init__(margin, distance_metric, name)
        self.soft = bool(soft)

    def _extra_arguments(self) -> dict:
        return {"soft": self.soft}


@keras.saving.register_keras_serializable(package="pvs")
class ContrastiveLoss(_BatchLoss):
    """Keras loss for `contrastive_loss`: y_true labels [batch] or [batch, 1], y_pred embeddings [batch, dim].

    Args:
        margin: float or `keras.Variable`; set `loss.margin = 0.3` to change it between epochs.
        distance_metric: "L2", "squared-L2" or "angular".
        name: loss name shown in logs.
    """

    loss_function = staticmethod(contrastive_loss)

    def __init__(self, margin=1.0, distance_metric="L2", name="contrastive_loss"):
        super().__init__(margin, distance_metric, name)


def make_loss(phase, margin: float) -> keras.losses.Loss:
    """The Keras loss an embedding phase (`phases.config.MetricLearning`) configures, at `margin`."""
    if phase.loss == "triplet_semihard":
        return TripletSemiHardLoss(margin=margin, distance_metric=phase.distance_metric)
    if phase.loss == "triplet_hard":
        return TripletHardLoss(margin=margin, distance_metric=phase.distance_metric)
    if phase.loss == "multi_similarity":
        from phases.multi_similarity import MultiSimilarityLoss  # it imports this module's helpers

        options = phase.multi_similarity
        return MultiSimilarityLoss(margin=margin, alpha=options.alpha, beta=options.beta, threshold=options.threshold)
    return ContrastiveLoss(margin=margin, distance_metric=phase.distance_metric)


def compile_for_schedule(model: keras.Model, phase, jit_compile: bool | str = "auto") -> None:
    """Compile an embedding phase's model with Adam and its loss, at the schedule's first step
    (in the strategy's scope when there is one: the optimizer's variables are made here).
    `jit_compile`: `runtime.jit_compile`. The loss is computed in float32 under mixed precision
    too (a Keras loss's dtype is floatx, and these losses cast the embeddings to float32)."""
    first = phase.margin_schedule[0]
    model.compile(
        optimizer=keras.optimizers.Adam(first.learning_rate), loss=make_loss(phase, first.margin), jit_compile=jit_compile
    )


def apply_schedule_step(model: keras.Model, phase, epoch: int):
    """Set the compiled loss's margin and the optimizer's learning rate to those of the
    schedule step of `epoch` (0-based); returns that step."""
    step = phase.step(epoch)
    model.loss.margin = step.margin
    model.optimizer.learning_rate.assign(step.learning_rate)
    return step
