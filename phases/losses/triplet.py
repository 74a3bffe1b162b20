"""Triplet losses over a batch: semi-hard (FaceNet) and hard (batch-hard) mining.

Native `keras.ops` replacements for `tfa.losses.triplet_semihard_loss` and
`tfa.losses.triplet_hard_loss` of tensorflow-addons 0.23, with the same values
(`tests/test_losses.py` checks them against a plain NumPy reference). Distances as
in `phases.losses.batch`.
"""

import keras
from keras import ops

from phases.losses.batch import (
    BatchLoss,
    as_float32,
    labels_and_distances,
    masked_maximum,
    masked_minimum,
    mean_or_zero,
    off_diagonal,
)


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
    same_label, distances = labels_and_distances(labels, embeddings, distance_metric)
    different_label = ops.logical_not(same_label)
    # semi_hard[a, p, n]: n is a negative of a farther from a than p is.
    semi_hard = ops.logical_and(different_label[:, None, :], distances[:, None, :] > distances[:, :, None])
    closest_semi_hard = ops.squeeze(masked_minimum(distances[:, None, :], semi_hard), axis=2)
    farthest_negative = masked_maximum(distances, different_label)
    negative = ops.where(ops.any(semi_hard, axis=2), closest_semi_hard, farthest_negative)

    positive_pairs = ops.cast(ops.logical_and(same_label, off_diagonal(distances)), "float32")
    per_pair = ops.maximum((as_float32(margin) + distances - negative) * positive_pairs, 0.0)
    return mean_or_zero(ops.sum(per_pair), ops.sum(positive_pairs))


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
    same_label, distances = labels_and_distances(labels, embeddings, distance_metric)
    hardest_positive = masked_maximum(distances, ops.logical_and(same_label, off_diagonal(distances)))
    hardest_negative = masked_minimum(distances, ops.logical_not(same_label))
    if soft:
        per_anchor = ops.log1p(ops.exp(hardest_positive - hardest_negative))
    else:
        per_anchor = ops.maximum(hardest_positive - hardest_negative + as_float32(margin), 0.0)
    return mean_or_zero(ops.sum(per_anchor), ops.cast(ops.size(per_anchor), "float32"))


@keras.saving.register_keras_serializable(package="pvs")
class TripletSemiHardLoss(BatchLoss):
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
class TripletHardLoss(BatchLoss):
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
