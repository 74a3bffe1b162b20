"""The phase sections of the config: one frozen pydantic model per phase kind.

A phase kind is registered once in `phases/kinds.py` with its section here (or in its
own module) and its trainer; `PipelineConfig.phases` accepts every registered kind.
"""

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, model_validator

# The distances the metric-learning losses and `triplet_accuracy` take: ||a - b||, ||a - b||^2, 1 - cosine(a, b).
DISTANCE_METRICS = ("L2", "squared-L2", "angular")


class Section(BaseModel):
    """A section of the config: frozen once loaded; an unknown key is an error naming it."""

    model_config = ConfigDict(frozen=True, extra="forbid")


class ClassificationPhase(Section):
    """A phase training the classification head, and the backbone from a given layer on."""

    kind: Literal["classification"] = "classification"
    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    # `none`: backbone frozen (head only); `from`: every non-BatchNormalization layer
    # from the first one whose name starts with `unfreeze_from`; `all`: every
    # non-BatchNormalization layer. Backbone BatchNormalization always stays frozen.
    unfreeze: Literal["none", "from", "all"]
    unfreeze_from: str | None = None
    learning_rate: PositiveFloat  # Adam
    epochs: PositiveInt
    # Six-way augmentation: `random` picks one of the six views per image and epoch;
    # `all` trains on all six (an epoch is then 6x longer); `none` turns it off.
    augment: Literal["none", "random", "all"] = "random"

    @model_validator(mode="after")
    def _prefix_given_when_needed(self):
        _check_unfreeze(self)
        return self


def _check_unfreeze(phase) -> None:
    if (phase.unfreeze == "from") != (phase.unfreeze_from is not None):
        raise ValueError(
            f"phase {phase.name!r}: unfreeze_from is needed with unfreeze: from, and only then "
            f"(got unfreeze: {phase.unfreeze}, unfreeze_from: {phase.unfreeze_from!r})"
        )


class MarginStep(Section):
    """One step of the siamese phase's schedule: this margin and rate for these epochs."""

    margin: PositiveFloat  # triplet margin, in units of the distance metric
    learning_rate: PositiveFloat
    epochs: PositiveInt


class MultiSimilarityOptions(Section):
    """Multi-similarity loss (Wang et al. 2019); its mining margin is the schedule's margin."""

    alpha: PositiveFloat = 2.0  # weight of positive pairs' similarity
    beta: PositiveFloat = 50.0  # weight of negative pairs' similarity
    threshold: float = Field(0.5, gt=-1, lt=1)  # the similarity that separates pulling from pushing (lambda)


class MetricLearning(Section):
    """What the two embedding phases share: the head, the loss, its schedule, the batches."""

    # The embedding head: `dense` (Dense(projection_dim) then L2 normalisation, the seed's
    # projection) or `mildnet` (Dense(hidden_dim, relu), Dropout(head_dropout),
    # Dense(projection_dim), L2 normalisation, as MILDNet's).
    head: Literal["dense", "mildnet"] = "dense"
    projection_dim: PositiveInt = 512
    hidden_dim: PositiveInt = 1024
    head_dropout: float = Field(0.5, ge=0, lt=1)
    # What shares a label: `view` (the augmented views of one source image, as in the
    # seed) or `product` (every view of every image of one product).
    labels: Literal["view", "product"] = "view"
    loss: Literal["triplet_semihard", "triplet_hard", "contrastive", "multi_similarity"] = "triplet_semihard"
    # Distances of the triplet and contrastive losses; multi-similarity works on cosine
    # similarity, so it takes `angular` only.
    distance_metric: Literal[DISTANCE_METRICS] = "angular"
    multi_similarity: MultiSimilarityOptions = MultiSimilarityOptions()
    margin_schedule: list[MarginStep] = Field(min_length=1)
    # Batches hold `labels_per_batch` labels x `views_per_label` members each, so
    # every anchor has positives (a random batch of a million images has almost none).
    labels_per_batch: int = Field(16, ge=2)
    views_per_label: int = Field(4, ge=2)

    @property
    def epochs(self) -> int:
        return sum(step.epochs for step in self.margin_schedule)

    def step(self, epoch: int) -> MarginStep:
        """The margin-schedule step that `epoch` (0-based, over the whole phase) belongs to."""
        end = 0
        for step in self.margin_schedule:
            end += step.epochs
            if epoch < end:
                return step
        raise ValueError(f"phase {self.name!r} has {self.epochs} epochs; there is no epoch {epoch + 1}")

    @model_validator(mode="after")
    def _loss_fits_the_metric(self):
        if self.loss == "multi_similarity" and self.distance_metric != "angular":
            raise ValueError(
                f"phase {self.name!r}: multi_similarity works on cosine similarity; set distance_metric: angular "
                f"(got {self.distance_metric})"
            )
        return self


class SiamesePhase(MetricLearning):
    """A projection trained on cached backbone features with a metric loss (the seed's phase 4)."""

    kind: Literal["siamese"] = "siamese"
    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")


class EndToEndPhase(MetricLearning):
    """The backbone and an embedding head trained together on images with a metric loss
    (MILDNet's training). Each batch holds `labels_per_batch` images x `views_per_label`
    of their six augmented views; with `labels: product`, views of two images of one
    product in a batch share a label too."""

    kind: Literal["end_to_end"] = "end_to_end"
    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    unfreeze: Literal["none", "from", "all"] = "all"
    unfreeze_from: str | None = None
    views_per_label: int = Field(2, ge=2, le=6)

    @model_validator(mode="after")
    def _prefix_given_when_needed(self):
        _check_unfreeze(self)
        return self
