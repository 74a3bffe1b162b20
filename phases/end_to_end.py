"""An embedding phase on images: the backbone and an embedding head trained together with a
metric loss, as MILDNet trained its network (instead of the seed's phase 4 on cached features).

Each batch holds `labels_per_batch` train images x `views_per_label` of their six views;
labels are the source image (`labels: view`) or its product (`labels: product`). The
model is the embedder itself (images -> unit vectors), so its final model serves the
extraction directly. Resume order as in every phase: this phase's checkpoint, then the
previous phase's model (its backbone gets a new head), then a new backbone. Under a
tf.distribute strategy, as in classification.py: model and optimizer in its scope, each
replica's loss mined on its share of the batch (`labels_per_batch` should be a multiple
of the replica count, so that no image's views are split), scoring outside it, and only
the chief writes and reports.
"""

import time
from functools import partial
from pathlib import Path

import keras
import tensorflow as tf

from phases.checkpoints import latest_checkpoint, load_model
from phases.classification import class_labels, finish_phase, initial_classifier, score_split
from phases.config import EndToEndPhase, PipelineConfig
from phases.distribute import (
    alike_every_iteration,
    is_chief,
    local_model,
    prepare,
    several_workers,
    synchronize_batch_norm,
)
from phases.errors import ConfigError
from phases.losses import apply_schedule_step, compile_for_schedule
from phases.model import backbone_of, build_embedder, build_projection, set_trainable
from phases.unit import (
    EMBEDDER_FILE,
    PhaseContext,
    PhaseResult,
    check_loss,
    end_epoch,
    epoch_seed,
    seed_model_randomness,
)
from tfrecords.manifest import ImageManifest, read_manifest, verify_shards
from tfrecords.options import ReadOptions
from tfrecords.reader import read_view_groups

# Labels of `labels: view`: a hash of the image id (int64; a collision in a batch of
# 2**62 buckets is as good as impossible).
VIEW_LABEL_BUCKETS = 2**62


def run_end_to_end_phase(
    phase: EndToEndPhase,
    config: PipelineConfig,
    context: PhaseContext,
    previous: tuple[Path, str] | None = None,
) -> PhaseResult:
    """Train the embedder; its final model is `embedder.keras` in the work folder."""
    strategy = prepare(config.runtime)
    chief = is_chief(strategy)
    manifest = read_manifest(context.data_dir, ImageManifest)
    verify_shards(context.data_dir, manifest.shards)  # once per phase; epochs read unverified
    if manifest.counts.get("train", 0) < phase.labels_per_batch:
        raise ConfigError(
            f"phase {phase.name!r}: a batch needs labels_per_batch = {phase.labels_per_batch} train images, "
            f"the data has {manifest.counts.get('train', 0)}; lower labels_per_batch"
        )
    checkpoints = context.work_dir / "checkpoints"
    with strategy.scope():  # the model's and the optimizer's variables
        checkpoint = latest_checkpoint(checkpoints)
        if checkpoint is not None:
            model, start, rows = checkpoint.model, checkpoint.epoch + 1, checkpoint.state["rows"]
            set_trainable(model, phase, config.model.freeze_batch_norm, config.model.architecture)
        else:
            model = _initial_embedder(phase, config, context.data_dir, manifest, previous)
            compile_for_schedule(model, phase, config.runtime.jit_compile)
            start, rows = 0, []
        synchronize_batch_norm(model, strategy)
    scorer = local_model(model)  # predicts on this process's device, every row in order
    for epoch in range(start, phase.epochs):
        step = apply_schedule_step(model, phase, epoch)
        started = time.perf_counter()
        history = model.fit(
            alike_every_iteration(
                partial(_training_batches, phase, config, context.data_dir, epoch, several_workers(strategy)), strategy
            ),
            epochs=epoch + 1,
            initial_epoch=epoch,
            verbose=0,
            shuffle=False,  # the data is shuffled by tf.data with this epoch's seed
            callbacks=[keras.callbacks.TerminateOnNaN(), *context.callbacks],
        )
        loss = history.history["loss"][-1]
        check_loss(phase.name, epoch, loss, f"Lower this epoch's learning rate ({step.learning_rate}) and run again.")
        row = {"phase": phase.name, "epoch": epoch + 1, "loss": float(loss), "margin": step.margin,
               "learning_rate": step.learning_rate, "train_seconds": round(time.perf_counter() - started, 3)}
        row.update(score_split(scorer, config, context.data_dir, config.evaluation.split, None, verify=False))
        end_epoch(context, checkpoints, epoch, model, rows, row, chief)
    return finish_phase(phase.name, config, context, model, EMBEDDER_FILE, (scorer, None), rows, checkpoint, chief)


def _initial_embedder(phase: EndToEndPhase, config: PipelineConfig, data_dir: Path, manifest, previous) -> keras.Model:
    """The previous phase's backbone (or a new one) with a new embedding head."""
    if previous is not None:
        # Seeded here, as in every phase that loads its start: see classification.py.
        seed_model_randomness(epoch_seed(config.runtime.seed, phase.name, -1))
        backbone = backbone_of(load_model(previous[0], previous[1], compile=False))
    else:
        _, classes = class_labels(config, manifest)
        backbone = backbone_of(initial_classifier(config, data_dir, classes))
        seed_model_randomness(epoch_seed(config.runtime.seed, phase.name, -1))
    head = build_projection(backbone.output_shape[-1], phase.projection_dim, phase.head, phase.hidden_dim, phase.head_dropout)
    model = build_embedder(backbone, head)
    set_trainable(model, phase, config.model.freeze_batch_norm, config.model.architecture)
    return model


def _training_batches(phase: EndToEndPhase, config: PipelineConfig, data_dir: Path, epoch: int,
                      several_workers: bool = False) -> tf.data.Dataset:
    """This epoch's view groups; read deterministically under several workers (each keeps its share)."""
    options = ReadOptions(
        image_size=config.data.image_size,
        shuffle_buffer=config.data.shuffle_buffer,
        batch_size=phase.labels_per_batch * phase.views_per_label,
        seed=epoch_seed(config.runtime.seed, phase.name, epoch),
        deterministic=config.runtime.deterministic or several_workers,
        verify=False,
    )

    def labelled(element):
        if phase.labels == "product":
            return element["image"], element["product_id"]
        return element["image"], tf.strings.to_hash_bucket_fast(element["image_id"], VIEW_LABEL_BUCKETS)

    # read_view_groups always drops the last, partial batch: static batch shapes, as TPUs need.
    return read_view_groups(data_dir, "train", options, phase.views_per_label).map(labelled)
