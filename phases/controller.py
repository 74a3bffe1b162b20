"""The phase controller: one loop for every phase kind. As in orbit, the trainer computes
(what it builds, the batches of an epoch, its scores, its final models) and the controller
loops, checkpoints and reports; a kind is a `Trainer` registered in `phases/kinds.py`.

Resume order, the same for every phase:
  1. the newest valid checkpoint of this phase in its work folder: the end of an epoch,
     or inside one (`runtime.checkpoint_every`), continued at the batch after it;
  2. the previous phase's final model (`previous`), which the trainer adapts (a new head,
     other trainable layers, a new optimizer);
  3. a new model from `model.weights`.
Each epoch: the trainer's batches (seeded per epoch, so the same in a resumed process),
`fit`, the NaN check, the scores of `evaluation.split`, the checkpoint, then the row is
reported. At the end the final models are saved and the final split is scored.

Roles are decided here, once. Under a tf.distribute strategy (`runtime.strategy`) the
model and its optimizer are made in the strategy's scope and `fit` splits each global
batch across the replicas; scoring runs outside it, on this process's device. Under a
multi-worker strategy every worker trains, and only the chief writes (checkpoints, final
models, into the shared work folder) and reports; the others read the chief's checkpoints
when they resume, and their result names the chief's model with no sha256 ("").
"""

import time
from collections.abc import Callable
from pathlib import Path

import keras
import numpy as np
import tensorflow as tf

from phases.checkpoints import Checkpoint, latest_checkpoint, save_checkpoint, save_model
from phases.config import PipelineConfig
from phases.distribute import is_chief, local_model, prepare, synchronize_batch_norm
from phases.kinds import phase_kinds
from phases.scoring import WhiteningMemo
from phases.unit import EMBEDDER_FILE, EpochPlan, FinalModels, PhaseContext, PhaseResult, check_loss
from tfrecords.manifest import ImageManifest, read_manifest


class Trainer:
    """One phase kind: given its phase section, the config, the context and `previous`
    (the (model path, sha256) it starts from, or None), it says what to build and how to
    score. It writes nothing and reports nothing: the controller does."""

    def __init__(self, phase, config: PipelineConfig, context: PhaseContext, previous: tuple[Path, str] | None):
        self.phase, self.config, self.context, self.previous = phase, config, context, previous
        self.whitenings = WhiteningMemo()  # one learned whitening per scorer weights (score_split)

    def prepare(self, is_chief: bool) -> None:
        """Read and check what the phase needs before its model exists (once per phase)."""

    def new_model(self) -> keras.Model:
        """The compiled model to train, from `previous` or from scratch (resume order 2 and 3).
        Called in the strategy's scope."""
        raise NotImplementedError

    def resumed_model(self, model: keras.Model) -> keras.Model:
        """A checkpoint's model (compiled, with its optimizer state), ready to train on."""
        return model

    def scorer(self, model: keras.Model) -> keras.Model:
        """What `score` predicts with: on this process's device, outside the strategy."""
        return local_model(model)

    def plan_epoch(self, model: keras.Model, epoch: int) -> EpochPlan:
        """What is set before epoch `epoch` (0-based): row fields and the advice for a NaN loss."""
        return EpochPlan()

    def batches(self, epoch: int, strategy: tf.distribute.Strategy):
        """Epoch `epoch`'s training batches (a tf.data.Dataset or a keras PyDataset), in an
        order that depends only on the run's seed, the phase and the epoch."""
        raise NotImplementedError

    def score(self, scorer: keras.Model, group: str) -> dict:
        """The scores of eval group `group` (val or test): retrieval and triplet accuracy."""
        raise NotImplementedError

    def final_models(self, model: keras.Model) -> FinalModels:
        return FinalModels(model=(EMBEDDER_FILE, model))

    def extra(self) -> dict:
        """Facts for the phase's result besides models and scores (e.g. how many train views)."""
        return {}

    def close(self) -> None:
        """Remove what the phase made for itself only (called whatever happened)."""


def run_phase(phase, config: PipelineConfig, context: PhaseContext, previous: tuple[Path, str] | None = None) -> PhaseResult:
    """Train one phase of any registered kind; `previous` is the (model path, sha256) it starts from."""
    trainer = phase_kinds()[phase.kind].trainer_class()(phase, config, context, previous)
    try:
        return _train(trainer, phase, config, context)
    finally:
        trainer.close()


def _train(trainer: Trainer, phase, config: PipelineConfig, context: PhaseContext) -> PhaseResult:
    strategy = prepare(config.runtime)
    chief = is_chief(strategy)
    trainer.prepare(chief)
    checkpoints = context.work_dir / "checkpoints"
    with strategy.scope():  # the model's, the optimizer's and the metrics' variables
        checkpoint = latest_checkpoint(checkpoints)
        model = trainer.resumed_model(checkpoint.model) if checkpoint is not None else trainer.new_model()
        synchronize_batch_norm(model, strategy)
    scorer = trainer.scorer(model)  # made outside the scope: it predicts on this process's device
    rows = list(checkpoint.state["rows"]) if checkpoint is not None else []
    start = checkpoint.next_epoch if checkpoint is not None else 0
    if checkpoint is not None:
        context.resuming(start, checkpoint.step, phase.epochs)
    for epoch in range(start, phase.epochs):
        resumed = checkpoint if checkpoint is not None and epoch == start and checkpoint.step is not None else None
        plan = trainer.plan_epoch(model, epoch)
        started = time.perf_counter() - (resumed.state["train_seconds"] if resumed else 0.0)

        def save_inside(step: int, metrics: list, epoch: int = epoch, started: float = started) -> None:
            state = {"rows": rows, "metrics": metrics, "train_seconds": time.perf_counter() - started}
            save_checkpoint(checkpoints, epoch, model, state, step=step)

        skip = resumed.batches_done if resumed else 0
        in_epoch = InEpochCheckpoints(config.runtime.checkpoint_steps, config.runtime.checkpoint_seconds, skip,
                                      resumed.state["metrics"] if resumed else None, save_inside if chief else None)
        model.fit(
            skip_batches(trainer.batches(epoch, strategy), skip),
            epochs=epoch + 1,
            initial_epoch=epoch,
            verbose=0,
            shuffle=False,  # the batches are in the order of this epoch's seed
            callbacks=[keras.callbacks.TerminateOnNaN(), in_epoch, *context.callbacks],
        )
        metrics = in_epoch.epoch_metrics()  # the whole epoch's, a resumed one's included
        check_loss(phase.name, epoch, metrics["loss"], plan.advice)
        row = {"phase": phase.name, "epoch": epoch + 1, **metrics, **plan.fields,
               "train_seconds": round(time.perf_counter() - started, 3)}
        row.update(trainer.score(scorer, config.evaluation.split))
        rows.append(row)
        if chief:  # the checkpoint, rows included, then the report (which may push the work folder)
            save_checkpoint(checkpoints, epoch, model, {"rows": rows})
            context.report(row)
    return _finish(trainer, model, scorer, rows, checkpoint, chief)


def _finish(trainer: Trainer, model: keras.Model, scorer: keras.Model, rows: list[dict], checkpoint: Checkpoint | None,
            chief: bool) -> PhaseResult:
    """Save the final models (the chief only: Keras' save reads the variables' local values, no
    collective op) and score the final split, when the data has one."""
    config, work_dir = trainer.config, trainer.context.work_dir
    final = trainer.final_models(model)
    for name, other in final.others if chief else ():
        save_model(other, work_dir / name)
    digests = {}
    for name, saved in [final.model, *([final.embedder] if final.embedder else [])]:
        digests[name] = save_model(saved, work_dir / name) if chief else ""
    final_group = config.evaluation.final_split
    final_scores = None
    if read_manifest(trainer.context.data_dir, ImageManifest).has_queries(final_group):
        final_scores = trainer.score(scorer, final_group)
    embedder_name = final.embedder[0] if final.embedder else None
    return PhaseResult(
        name=trainer.phase.name,
        model_path=work_dir / final.model[0],
        model_sha256=digests[final.model[0]],
        embedder_path=work_dir / embedder_name if embedder_name else None,
        embedder_sha256=digests.get(embedder_name, ""),
        rows=rows,
        final_scores=final_scores,
        resumed_after_epoch=checkpoint.next_epoch if checkpoint is not None else None,
        resumed_at_step=checkpoint.step if checkpoint is not None else None,
        extra={**trainer.extra(), **({} if chief else {"chief": False})},
    )


class InEpochCheckpoints(keras.callbacks.Callback):
    """Checkpoints inside an epoch, every `steps` batches or `seconds` of training (neither:
    never), through `save(step, metrics)`: `step` counts the epoch's batches trained,
    `metrics` the state of the model's metrics over them (the loss's running sum and count,
    the accuracy's). Resumed after `skip` batches whose metric state was `before`, it adds
    that state to what the rest of the epoch accumulates, so the epoch's loss and accuracy
    are those of the whole epoch, as in an uninterrupted run (the pipeline's metrics are
    means: their states add up). `save` None (a worker that is not the chief): nothing is saved."""

    def __init__(self, steps: int | None, seconds: float | None, skip: int, before: list | None,
                 save: Callable[[int, list], None] | None):
        super().__init__()
        self.steps, self.seconds, self.skip, self.before, self.save = steps, seconds, skip, before, save
        self.last = time.monotonic()

    def on_epoch_begin(self, epoch, logs=None):
        self.last = time.monotonic()

    def on_train_batch_begin(self, batch, logs=None):
        # Saved when the next batch begins, so never just before the epoch's own checkpoint
        # (an epoch's length is unknown to Keras when the dataset shuffles or interleaves).
        step = self.skip + batch  # batches of the epoch trained so far
        if self.save is None or batch == 0 or self.model.stop_training:  # stopped: the last good checkpoint stays
            return
        due = (self.steps is not None and step % self.steps == 0) or (
            self.seconds is not None and time.monotonic() - self.last >= self.seconds)
        if due:
            self.save(step, self._state())
            self.last = time.monotonic()

    def _state(self) -> list:
        """The metrics' variables over every batch of the epoch trained so far."""
        state = [np.array(variable.numpy()) for variable in self.model.metrics_variables]
        if self.before is not None:
            state = [mine + np.asarray(theirs, dtype=mine.dtype) for mine, theirs in zip(state, self.before, strict=True)]
        return [value.tolist() for value in state]

    def epoch_metrics(self) -> dict[str, float]:
        """The finished epoch's metrics by name (`loss`, then the compiled ones, e.g. `accuracy`)."""
        if self.before is not None:
            for variable, value in zip(self.model.metrics_variables, self._state(), strict=True):
                variable.assign(np.asarray(value, dtype=variable.dtype))
        return {name: float(value) for name, value in self.model.get_metrics_result().items()}


def skip_batches(batches, count: int):
    """`batches` without its first `count` (a resumed epoch: those were trained). A dataset
    still reads them (skipping costs reading, not training); a PyDataset does not."""
    if not count:
        return batches
    if isinstance(batches, tf.data.Dataset):
        return batches.skip(count)
    return _Skipped(batches, count)


class _Skipped(keras.utils.PyDataset):
    """A PyDataset from its batch `offset` on."""

    def __init__(self, batches: keras.utils.PyDataset, offset: int):
        super().__init__()
        self.batches, self.offset = batches, offset

    def __len__(self) -> int:
        return max(0, len(self.batches) - self.offset)

    def __getitem__(self, number: int):
        return self.batches[number + self.offset]
