"""Metric-learning losses over a batch, in `keras.ops`: triplet (semi-hard, hard),
contrastive and multi-similarity, each as a function and as a Keras loss; and the
class-centre losses ArcFace (with sub-centres) and CosFace, with their cosine layer.

Every batch loss takes integer labels [batch] (or [batch, 1]) and embeddings [batch, dim]
and returns one float32 scalar for the whole batch: the pairs and triplets are formed inside
the batch, so a batch needs several images of the same product. `tests/test_losses.py`
checks each against a plain NumPy reference. The class-centre losses take class indices and
the cosines of a `CosineClassifier` instead (`tests/test_margin_losses.py`).

  batch.py             what they share: distances ("L2", "squared-L2", "angular"), masks, the Keras base
  triplet.py           triplet_semihard_loss, triplet_hard_loss (those of tensorflow-addons 0.23)
  contrastive.py       contrastive_loss
  multi_similarity.py  multi_similarity_loss (Wang et al. 2019; cosine similarity only)
  margin.py            CosineClassifier, arcface_loss (Deng et al. 2019, 2020), cosface_loss (Wang et al. 2018):
                       class indices and cosines to class centres, not a batch's pairs
  schedule.py          the loss a phase configures, compiled; its margin schedule, epoch by epoch

The Keras losses (and CosineClassifier) are registered as "pvs>ClassName", the names saved
.keras models refer to: importing this package is what lets such a model load.
"""

from phases.losses.batch import check_distance_metric
from phases.losses.contrastive import ContrastiveLoss, contrastive_loss
from phases.losses.margin import (
    ArcFaceLoss,
    CosFaceLoss,
    CosineClassifier,
    arcface_loss,
    cosface_loss,
    make_margin_loss,
)
from phases.losses.multi_similarity import MultiSimilarityLoss, multi_similarity_loss
from phases.losses.schedule import compile_for_schedule, make_loss, schedule_plan
from phases.losses.triplet import TripletHardLoss, TripletSemiHardLoss, triplet_hard_loss, triplet_semihard_loss
from phases.phase_config import DISTANCE_METRICS

__all__ = [
    "DISTANCE_METRICS",
    "ArcFaceLoss",
    "ContrastiveLoss",
    "CosFaceLoss",
    "CosineClassifier",
    "MultiSimilarityLoss",
    "TripletHardLoss",
    "TripletSemiHardLoss",
    "arcface_loss",
    "check_distance_metric",
    "compile_for_schedule",
    "contrastive_loss",
    "cosface_loss",
    "make_loss",
    "make_margin_loss",
    "multi_similarity_loss",
    "schedule_plan",
    "triplet_hard_loss",
    "triplet_semihard_loss",
]
