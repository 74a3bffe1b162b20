"""What every batch loss shares: pairwise distances, masked extremes, and the Keras loss base.

Distances, chosen by `distance_metric`, are computed in float32 even when the
embeddings are float16/bfloat16 (mixed precision), as TFA did:
  "L2"          ||a - b||
  "squared-L2"  ||a - b||^2 (the margin is then in squared units too)
  "angular"     1 - cosine(a, b), in [0, 2]
"""

import keras
import numpy as np
from keras import ops

from phases.phase_config import DISTANCE_METRICS


def check_distance_metric(distance_metric: str) -> None:
    """Raise ValueError naming the valid metrics unless `distance_metric` is one of them."""
    if distance_metric not in DISTANCE_METRICS:
        valid = ", ".join(repr(name) for name in DISTANCE_METRICS)
        raise ValueError(f"distance_metric must be one of {valid}; got {distance_metric!r}")


def labels_and_distances(labels, embeddings, distance_metric):
    """-> (same_label bool [batch, batch], distances float32 [batch, batch])."""
    check_distance_metric(distance_metric)
    labels = ops.reshape(ops.convert_to_tensor(labels), (-1,))
    # float16 distances lose the small differences the mining compares (TFA: precise_embeddings).
    embeddings = as_float32(embeddings)
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
    return squared * (1.0 - is_zero) * ops.cast(off_diagonal(squared), "float32")


def masked_maximum(data, mask):
    """Max of `data` over the last axis where `mask`, keeping that axis (size 1).

    TFA's formula, kept for its edge case: where the mask selects nothing the
    result is the row's minimum.
    """
    row_minimum = ops.min(data, axis=-1, keepdims=True)
    return ops.max((data - row_minimum) * ops.cast(mask, "float32"), axis=-1, keepdims=True) + row_minimum


def masked_minimum(data, mask):
    """Min of `data` over the last axis where `mask` (broadcast); an empty selection gives the row's maximum."""
    row_maximum = ops.max(data, axis=-1, keepdims=True)
    return ops.min((data - row_maximum) * ops.cast(mask, "float32"), axis=-1, keepdims=True) + row_maximum


def off_diagonal(matrix):
    """Bool [n, n]: True except on the diagonal."""
    index = ops.arange(ops.shape(matrix)[0])
    return ops.not_equal(index[:, None], index[None, :])


def mean_or_zero(total, count):
    """total / count, or 0.0 when count is 0 (max() keeps the untaken branch's gradient finite)."""
    return ops.where(count > 0, total / ops.maximum(count, 1.0), 0.0)


def as_float32(value):
    return ops.cast(ops.convert_to_tensor(value), "float32")


class ScheduledMargin:
    """The `margin` of a Keras loss that a margin schedule changes between epochs
    (`phases.losses.schedule.schedule_plan` sets `loss.margin`); mixed into the loss classes."""

    def _keep_margin(self, margin) -> None:
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


class BatchLoss(ScheduledMargin, keras.losses.Loss):
    """Shared by the loss classes: the margin variable, label handling and config."""

    loss_function = None  # set by subclasses: f(labels, embeddings, margin, distance_metric, **extra)

    def __init__(self, margin, distance_metric, name):
        super().__init__(name=name)
        check_distance_metric(distance_metric)  # now, not at the first batch
        self.distance_metric = distance_metric
        self._keep_margin(margin)

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
