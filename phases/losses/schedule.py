"""The loss an embedding phase configures, compiled with Adam, and its margin schedule per epoch."""

import keras

from phases.losses.contrastive import ContrastiveLoss
from phases.losses.margin import make_margin_loss
from phases.losses.multi_similarity import MultiSimilarityLoss
from phases.losses.triplet import TripletHardLoss, TripletSemiHardLoss
from phases.unit import EpochPlan


def make_loss(phase, margin: float) -> keras.losses.Loss:
    """The Keras loss an embedding phase (`phases.config.MetricLearning`) configures, at `margin`
    (a class-centre loss takes the cosines of the phase's training head, not the embeddings)."""
    if phase.has_class_centers:
        options = phase.margin_loss
        return make_margin_loss(phase.loss, options.scale, margin, options.easy_margin)
    if phase.loss == "triplet_semihard":
        return TripletSemiHardLoss(margin=margin, distance_metric=phase.distance_metric)
    if phase.loss == "triplet_hard":
        return TripletHardLoss(margin=margin, distance_metric=phase.distance_metric)
    if phase.loss == "multi_similarity":
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


def schedule_plan(model: keras.Model, phase, epoch: int) -> EpochPlan:
    """Set the compiled loss's margin and the optimizer's learning rate to those of the
    schedule step of `epoch` (0-based); the epoch's plan: its row shows that margin and rate."""
    step = phase.step(epoch)
    model.loss.margin = step.margin
    model.optimizer.learning_rate.assign(step.learning_rate)
    return EpochPlan(fields={"margin": step.margin, "learning_rate": step.learning_rate},
                     advice=f"Lower this epoch's learning rate ({step.learning_rate}) and run again.")
