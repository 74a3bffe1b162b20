"""Multi-similarity loss (Wang et al., CVPR 2019, arXiv:1904.06627), in `keras.ops`.

Like the other batch losses it takes integer labels [batch] (or [batch, 1])
and embeddings [batch, dim] and returns one float32 scalar for the batch; unlike
them it works on cosine similarity, so its only distance metric is "angular".
`tests/test_losses.py` checks it against a plain NumPy reference.
"""

import keras
from keras import ops

from phases.losses.batch import (
    BatchLoss,
    as_float32,
    check_distance_metric,
    labels_and_distances,
    masked_maximum,
    masked_minimum,
    off_diagonal,
)


def multi_similarity_loss(
    labels, embeddings, margin=0.1, alpha=2.0, beta=50.0, threshold=0.5, distance_metric="angular"
):
    """Multi-similarity loss: pairs mined with margin `margin`, then weighted by their similarity.

    With S the cosine similarity of the L2-normalised embeddings (in float32), for
    every anchor i, its positives p (same label, p != i) and negatives n:
      mining: keep a negative if S_in + margin > min_p S_ip (it is harder than the
        easiest positive), keep a positive if S_ip - margin < max_n S_in;
      loss_i = 1/alpha * log(1 + sum_kept_p exp(-alpha (S_ip - threshold)))
             + 1/beta  * log(1 + sum_kept_n exp( beta (S_in - threshold))).
    As in the authors' implementation (MalongTech research-ms-loss), an anchor
    that keeps no positive or no negative (e.g. one without positives, or one whose
    pairs are all easy) adds 0, and the sum is divided by the whole batch size: a
    batch without any positive pair therefore returns 0.0. Unlike that
    implementation, which drops every positive with S >= 1 - 1e-5, only the anchor
    itself is left out, so a duplicate image still counts as a positive.

    Args:
        labels: integer labels, [batch] or [batch, 1], any int dtype.
        embeddings: [batch, dim] float embeddings (NumPy array or tensor); a zero
            vector has similarity 0 with everything.
        margin: the mining margin epsilon, a float or a scalar tensor/variable
            (the margin schedule changes it).
        alpha: weight of the positive pairs (2 in the paper).
        beta: weight of the negative pairs (50 in the paper).
        threshold: the similarity lambda between pulling and pushing (0.5 in the paper).
        distance_metric: must be "angular"; taken so that every batch loss has one signature.

    Returns:
        float32 scalar tensor.
    """
    _check_cosine(distance_metric)
    same_label, distances = labels_and_distances(labels, embeddings, "angular")
    similarities = 1.0 - distances
    positives = ops.logical_and(same_label, off_diagonal(similarities))
    negatives = ops.logical_not(same_label)
    margin = as_float32(margin)
    # Without positives (negatives) these are the row's extremes, but then the anchor keeps no pair of that kind anyway.
    easiest_positive = masked_minimum(similarities, positives)
    hardest_negative = masked_maximum(similarities, negatives)
    kept_negatives = ops.logical_and(negatives, similarities + margin > easiest_positive)
    kept_positives = ops.logical_and(positives, similarities - margin < hardest_negative)

    positive_term = _log_one_plus_sum_exp(-alpha * (similarities - threshold), kept_positives) / alpha
    negative_term = _log_one_plus_sum_exp(beta * (similarities - threshold), kept_negatives) / beta
    mined = ops.logical_and(ops.any(kept_positives, axis=1), ops.any(kept_negatives, axis=1))
    per_anchor = ops.where(mined, positive_term + negative_term, 0.0)
    return ops.mean(per_anchor)


def _check_cosine(distance_metric: str) -> None:
    """Raise ValueError unless `distance_metric` is "angular" (naming the valid metrics when it is none of them)."""
    check_distance_metric(distance_metric)
    if distance_metric != "angular":
        raise ValueError(
            "the multi-similarity loss works on cosine similarity: distance_metric must be 'angular'; "
            f"got {distance_metric!r}"
        )


def _log_one_plus_sum_exp(exponents, mask):
    """[n, n] exponents, bool mask -> [n] log(1 + sum of exp(exponents) where mask), without overflow.

    logsumexp over the row with a zero exponent added for the "1 +": beta = 50 makes
    exp(50 * 0.5) ~ 7e10, and exponents of unkept pairs must not reach exp at all
    (where() would pass their inf on as a NaN gradient).
    """
    exponents = ops.where(mask, exponents, float("-inf"))
    shift = ops.stop_gradient(ops.maximum(ops.max(exponents, axis=1), 0.0))
    return shift + ops.log(ops.exp(-shift) + ops.sum(ops.exp(exponents - shift[:, None]), axis=1))


@keras.saving.register_keras_serializable(package="pvs")
class MultiSimilarityLoss(BatchLoss):
    """Keras loss for `multi_similarity_loss`: y_true labels [batch] or [batch, 1], y_pred embeddings [batch, dim].

    Args:
        margin: the mining margin, float or `keras.Variable`; set `loss.margin = 0.2` to change it between epochs.
        alpha, beta, threshold: as in `multi_similarity_loss`.
        distance_metric: "angular", the only one (kept for the config round trip).
        name: loss name shown in logs.

    Example:
        model.compile(optimizer="adam", loss=MultiSimilarityLoss(margin=0.1, alpha=2.0, beta=50.0, threshold=0.5))
    """

    loss_function = staticmethod(multi_similarity_loss)

    def __init__(
        self, margin=0.1, alpha=2.0, beta=50.0, threshold=0.5, distance_metric="angular", name="multi_similarity_loss"
    ):
        _check_cosine(distance_metric)  # now, not at the first batch
        super().__init__(margin, distance_metric, name)
        self.alpha, self.beta, self.threshold = float(alpha), float(beta), float(threshold)

    def _extra_arguments(self) -> dict:
        return {"alpha": self.alpha, "beta": self.beta, "threshold": self.threshold}
