"""The phase sections of the config: one frozen pydantic model per phase kind.

A phase kind is registered once in `phases/kinds.py` with its section here (or in its
own module) and its trainer; `PipelineConfig.phases` accepts every registered kind.
"""

import math
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, PositiveFloat, PositiveInt, model_validator

# The distances the metric-learning losses and `triplet_accuracy` take: ||a - b||, ||a - b||^2, 1 - cosine(a, b).
DISTANCE_METRICS = ("L2", "squared-L2", "angular")
# The class-centre losses (phases/losses/margin.py): the cosine of a feature to each class's
# centre, the target class's with a margin, times a scale, into softmax cross-entropy. The head
# of phases 1-3 (`model.classifier.kind`) or the loss of an embedding phase (`loss`).
MARGIN_LOSSES = ("arcface", "subcenter_arcface", "cosface")
# What each one's paper uses, filled in where a config leaves `margin` or `centers` out:
# ArcFace (Deng et al. 2019) m = 0.5 rad; sub-center ArcFace (Deng et al. 2020) K = 3 centres
# per class, m = 0.5 rad; CosFace (Wang et al. 2018) m = 0.35, a cosine.
PAPER_DEFAULTS = {
    "arcface": {"margin": 0.5, "centers": 1},
    "subcenter_arcface": {"margin": 0.5, "centers": 3},
    "cosface": {"margin": 0.35, "centers": 1},
}


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


class MarginLossOptions(Section):
    """The class-centre losses' options besides the margin (MARGIN_LOSSES)."""

    # Multiplies the cosines before the softmax (the papers' feature norm s; unitless): 64 in
    # ArcFace (Deng et al. 2019) and CosFace (Wang et al. 2018).
    scale: PositiveFloat = 64.0
    # Centres per class: sub-center ArcFace's K (3 in Deng et al. 2020, filled in for
    # subcenter_arcface); a class's cosine is that of its nearest centre. 1 for the others.
    centers: PositiveInt = 1
    # ArcFace's only: the margin applies only where cos(theta) > 0 (insightface's `easy_margin`);
    # false: everywhere, with insightface's cos(theta) - m sin(m) where theta + m > pi.
    easy_margin: bool = False


def check_margin_options(kind: str, options: MarginLossOptions) -> None:
    """Raise ValueError, saying what to set, unless `options` fit loss `kind` (of MARGIN_LOSSES)."""
    if kind == "subcenter_arcface" and options.centers < 2:
        raise ValueError(
            f"subcenter_arcface needs centers >= 2 (3 in Deng et al. 2020; got {options.centers}); "
            "with one centre per class, use arcface"
        )
    if kind != "subcenter_arcface" and options.centers > 1:
        raise ValueError(
            f"centers: {options.centers}: several centres per class are sub-center ArcFace's; "
            f"use subcenter_arcface, or centers: 1 with {kind}"
        )
    if kind == "cosface" and options.easy_margin:
        raise ValueError("easy_margin is ArcFace's (its angular margin only where cos(theta) > 0); "
                         "cosface has none: set easy_margin: false")


def check_margin(kind: str, margin: float) -> None:
    """Raise ValueError unless `margin` is one that loss `kind` (of MARGIN_LOSSES) can apply."""
    # ArcFace's margin is an angle (theta + m beyond pi is handled up to m = pi); CosFace's is
    # subtracted from a cosine in [-1, 1]: from 2 on, a target can never beat any other class.
    limit, unit = (2.0, "a cosine, below 2") if kind == "cosface" else (math.pi, "an angle in radians, below pi")
    if not margin < limit:
        raise ValueError(f"{kind}'s margin is {unit} (the paper's: {PAPER_DEFAULTS[kind]['margin']}); got {margin}")


def with_paper_defaults(kind: str | None, data, section: str | None = None):
    """`data` (a config section as a dict) with the margin and centres of `kind`'s paper where
    it has none (PAPER_DEFAULTS); in its subsection `section` when given. Anything else as it is."""
    if kind not in PAPER_DEFAULTS or not isinstance(data, dict):
        return data
    if section is None:
        return {**PAPER_DEFAULTS[kind], **data}
    options = data.get(section, {})
    if not isinstance(options, dict):
        return data
    return {**data, section: {"centers": PAPER_DEFAULTS[kind]["centers"], **options}}


class ClassifierHead(MarginLossOptions):
    """The classification head of phases 1-3 (`model.classifier`): after BatchNormalization and
    Dropout, softmax over Dense logits, or the cosines to class centres with a margin loss."""

    # `softmax`: Dense(classes, softmax) and cross-entropy, the seed's (bit for bit). Or one of
    # MARGIN_LOSSES: `arcface` (an angular margin, Deng et al. 2019), `subcenter_arcface`
    # (`centers` per class, robust to noisy labels, Deng et al. 2020), `cosface` (a cosine
    # margin, Wang et al. 2018). Their model outputs cosines, not probabilities; accuracy
    # is the argmax either way.
    kind: Literal[("softmax", *MARGIN_LOSSES)] = "softmax"
    # The margin heads' margin: an angle in radians for arcface and subcenter_arcface (0.5 in
    # their papers), a cosine for cosface (0.35); filled in from the paper for the kind.
    margin: PositiveFloat = 0.5

    @model_validator(mode="before")
    @classmethod
    def _paper_defaults(cls, data):
        return with_paper_defaults(data.get("kind") if isinstance(data, dict) else None, data)

    @model_validator(mode="after")
    def _options_fit_the_kind(self):
        if self.kind != "softmax":
            check_margin_options(self.kind, self)
            check_margin(self.kind, self.margin)
            return self
        changed = [name for name in ("scale", "margin", "centers", "easy_margin")
                   if getattr(self, name) != type(self).model_fields[name].default]
        if changed:
            raise ValueError(
                f"{', '.join(changed)} set, but kind is softmax: they are options of the margin heads; "
                f"set kind to one of {', '.join(MARGIN_LOSSES)}, or leave them out"
            )
        return self


class MarginStep(Section):
    """One step of the siamese phase's schedule: this margin and rate for these epochs."""

    # The loss's margin: for the triplet and contrastive losses in units of the distance
    # metric; multi-similarity's mining margin (a cosine); ArcFace's angular margin (radians),
    # CosFace's cosine margin.
    margin: PositiveFloat
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
    # Pair and triplet losses over the batch, or a class-centre loss (MARGIN_LOSSES): the
    # embedding then feeds cosines to centres of every product (`margin_loss.centers` each; a
    # training head that the final embedder leaves out), so it needs `labels: product`.
    loss: Literal[("triplet_semihard", "triplet_hard", "contrastive", "multi_similarity", *MARGIN_LOSSES)] = (
        "triplet_semihard")
    # Distances of the triplet and contrastive losses; multi-similarity and the class-centre
    # losses work on cosine similarity, so they take `angular` only.
    distance_metric: Literal[DISTANCE_METRICS] = "angular"
    multi_similarity: MultiSimilarityOptions = MultiSimilarityOptions()
    # Scale, centres and easy_margin of `loss: arcface | subcenter_arcface | cosface`; their
    # margin is the schedule's.
    margin_loss: MarginLossOptions = MarginLossOptions()
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

    @property
    def has_class_centers(self) -> bool:
        """Whether the loss is a class-centre loss: the model trains with a head of class centres."""
        return self.loss in MARGIN_LOSSES

    @model_validator(mode="before")
    @classmethod
    def _paper_defaults(cls, data):
        return with_paper_defaults(data.get("loss") if isinstance(data, dict) else None, data, "margin_loss")

    @model_validator(mode="after")
    def _loss_fits_the_metric(self):
        if self.loss in ("multi_similarity", *MARGIN_LOSSES) and self.distance_metric != "angular":
            raise ValueError(
                f"phase {self.name!r}: {self.loss} works on cosine similarity; set distance_metric: angular "
                f"(got {self.distance_metric})"
            )
        if self.has_class_centers:
            if self.labels != "product":
                raise ValueError(
                    f"phase {self.name!r}: {self.loss} learns a class centre per product: set labels: product "
                    f"(`view` labels are per source image, hashed in end_to_end: no class indices)"
                )
            try:
                check_margin_options(self.loss, self.margin_loss)
            except ValueError as error:
                raise ValueError(f"phase {self.name!r}, margin_loss: {error}") from None
            for number, step in enumerate(self.margin_schedule):
                try:
                    check_margin(self.loss, step.margin)
                except ValueError as error:
                    raise ValueError(f"phase {self.name!r}, margin_schedule.{number}.margin: {error}") from None
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
