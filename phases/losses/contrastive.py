"""Contrastive loss over all pairs of a batch (Hadsell et al. 2006), in `keras.ops`.

`tests/test_losses.py` checks it against a plain NumPy reference. Distances as in
`phases.losses.batch`.
"""

import keras
from keras import ops

from phases.losses.batch import BatchLoss, as_float32, labels_and_distances, mean_or_zero


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
    same_label, distances = labels_and_distances(labels, embeddings, distance_metric)
    index = ops.arange(ops.shape(distances)[0])
    pairs = ops.cast(index[:, None] < index[None, :], "float32")
    shortfall = ops.maximum(as_float32(margin) - distances, 0.0)
    per_pair = ops.where(same_label, ops.square(distances), ops.square(shortfall))
    return mean_or_zero(ops.sum(per_pair * pairs), ops.sum(pairs))


@keras.saving.register_keras_serializable(package="pvs")
class ContrastiveLoss(BatchLoss):
    """Keras loss for `contrastive_loss`: y_true labels [batch] or [batch, 1], y_pred embeddings [batch, dim].

    Args:
        margin: float or `keras.Variable`; set `loss.margin = 0.3` to change it between epochs.
        distance_metric: "L2", "squared-L2" or "angular".
        name: loss name shown in logs.
    """

    loss_function = staticmethod(contrastive_loss)

    def __init__(self, margin=1.0, distance_metric="L2", name="contrastive_loss"):
        super().__init__(margin, distance_metric, name)
