"""Phases 1-3 of the recipe: train the classification head and more and more of the backbone.

Resume order, the same for every phase: (1) the newest valid checkpoint of this
phase in its work folder, (2) the previous phase's final model, (3) a new model
from `model.weights`. Each epoch: train, score `val` with the backbone's pooled
features, save a checkpoint, report the row.

Under a tf.distribute strategy (`runtime.strategy`) the model and its optimizer are made
in the strategy's scope and `fit` splits each global batch across the replicas; scoring
runs outside it, on this process's device (`phases.distribute.local_model`). Under a
multi-worker strategy every worker trains, and only the chief writes checkpoints and the
final model into the (shared) work folder and reports rows: the others read the
chief's checkpoints when they resume.
"""

import time
from functools import partial
from pathlib import Path

import keras

from phases.checkpoints import latest_checkpoint, load_model, save_model
from phases.config import ClassificationPhase, PipelineConfig
from phases.distribute import (
    alike_every_iteration,
    is_chief,
    needs_static_shapes,
    prepare,
    set_precision,
    several_workers,
    synchronize_batch_norm,
)
from phases.errors import ConfigError
from phases.model import build_backbone, build_classifier, calibrate_batch_norm, features_of, set_trainable
from phases.scoring import accuracy, embed_split, embedding_scores
from phases.unit import (
    EMBEDDER_FILE,
    PhaseContext,
    PhaseResult,
    check_loss,
    end_epoch,
    epoch_seed,
    seed_everything,
    seed_model_randomness,
)
from tfrecords.manifest import ImageManifest, read_manifest, verify_shards
from tfrecords.options import ReadOptions
from tfrecords.reader import read_images


def class_labels(config: PipelineConfig, manifest: ImageManifest) -> tuple[str, int]:
    """Which record field phases 1-3 classify, and how many classes there are."""
    classify = config.model.classify
    if classify == "auto":
        classify = "category" if manifest.categories else "product"
    if classify == "category":
        if not manifest.categories:
            raise ConfigError("model.classify is 'category' but the data has no categories; use 'product' or 'auto'")
        return "category_id", len(manifest.categories)
    return "product_id", len(manifest.products)


def score_split(
    scorer: keras.Model, config: PipelineConfig, data_dir: Path, group: str, labels_of: str | None, verify: bool = True
) -> dict:
    """Scores of `group` (val or test) for a scorer (images -> features, or -> [features,
    probabilities]): retrieval and triplet accuracy with the features, plus classification accuracy when the
    labels are categories (val and test products are never train products)."""
    size, batch = config.data.image_size, config.evaluation.batch_size
    query = embed_split(scorer, data_dir, f"{group}_query", size, batch, verify)
    index = embed_split(scorer, data_dir, f"{group}_index", size, batch, verify)
    scores = embedding_scores(
        query.vectors, query.product_ids, index.vectors, index.product_ids, config.evaluation.triplet_sample
    )
    if labels_of == "category_id":
        scores = {f"{group}_accuracy": accuracy([query, index], "category_ids"), **scores}
    return scores


def classifier_scorer(model: keras.Model, features: str = "head_batch_norm") -> keras.Model:
    """Images -> [the features it embeds with (`model.features`), class probabilities]: one pass gives both."""
    return keras.Model(model.input, [features_of(model, features).output, model.output])


def initial_classifier(config: PipelineConfig, data_dir: Path, classes: int) -> keras.Model:
    """The model before any training: the backbone as `model.weights` gives it (its
    BatchNormalization statistics calibrated when configured) and a new head.

    Seeded here, so the baseline row and the first phase start from the same weights.
    """
    seed_everything(config.runtime.seed)
    backbone = build_backbone(config.model, config.data.image_size)
    if config.model.batch_norm_calibration_batches:
        options = ReadOptions(
            image_size=config.data.image_size,
            batch_size=config.data.batch_size,
            shuffle_buffer=config.data.shuffle_buffer,
            seed=config.runtime.seed,
            deterministic=True,
            verify=False,
        )
        images = read_images(data_dir, "train", options).take(config.model.batch_norm_calibration_batches)
        calibrate_batch_norm(backbone, (element["image"] for element in images))
    return build_classifier(backbone, classes, config.model.dropout)


def baseline_row(config: PipelineConfig, data_dir: Path) -> dict:
    """The `baseline` row: the untrained model's features (`model.features`) scored on val.
    (A new head's BatchNormalization only scales the pooled features: the same ranking.)"""
    set_precision(config.runtime.precision)
    _, classes = class_labels(config, read_manifest(data_dir, ImageManifest))
    features = features_of(initial_classifier(config, data_dir, classes), config.model.features)
    return {"phase": "baseline", "epoch": 0, **score_split(features, config, data_dir, config.evaluation.split, None)}


def run_classification_phase(
    phase: ClassificationPhase,
    config: PipelineConfig,
    context: PhaseContext,
    previous: tuple[Path, str] | None = None,
) -> PhaseResult:
    """Train one classification phase; `previous` is the (model path, sha256) it starts from."""
    strategy = prepare(config.runtime)
    chief = is_chief(strategy)
    manifest = read_manifest(context.data_dir, ImageManifest)
    verify_shards(context.data_dir, manifest.shards)  # once per phase; epochs read unverified
    labels_of, classes = class_labels(config, manifest)
    checkpoints = context.work_dir / "checkpoints"
    with strategy.scope():  # the model's, the optimizer's and the metrics' variables
        checkpoint = latest_checkpoint(checkpoints)
        if checkpoint is not None:
            model, start, rows = checkpoint.model, checkpoint.epoch + 1, checkpoint.state["rows"]
            set_trainable(model, phase, config.model.freeze_batch_norm, config.model.architecture)  # the same flags as saved: the optimizer state still fits
        else:
            if previous is not None:
                # Seeded here: loading draws the seeds of the model's Dropout layers (Keras does
                # not save them), which must not depend on what ran before in this process. A
                # run resumed at this phase's start must draw what an uninterrupted one did.
                seed_model_randomness(epoch_seed(config.runtime.seed, phase.name, -1))
                model = load_model(previous[0], previous[1], compile=False)
            else:
                model = initial_classifier(config, context.data_dir, classes)
            set_trainable(model, phase, config.model.freeze_batch_norm, config.model.architecture)
            model.compile(
                optimizer=keras.optimizers.Adam(phase.learning_rate),
                loss=keras.losses.SparseCategoricalCrossentropy(),  # in float32, as the probabilities
                metrics=["accuracy"],
                jit_compile=config.runtime.jit_compile,
            )
            start, rows = 0, []
        synchronize_batch_norm(model, strategy)
    scorer = classifier_scorer(model, config.model.features)  # made outside the scope: it predicts on this process's device
    for epoch in range(start, phase.epochs):
        started = time.perf_counter()
        history = model.fit(
            alike_every_iteration(
                partial(_training_batches, phase, config, context.data_dir, labels_of, epoch, needs_static_shapes(strategy),
                        several_workers(strategy)),
                strategy,
            ),
            epochs=epoch + 1,
            initial_epoch=epoch,
            verbose=0,
            shuffle=False,  # the data is shuffled by tf.data with this epoch's seed
            callbacks=[keras.callbacks.TerminateOnNaN(), *context.callbacks],
        )
        loss = history.history["loss"][-1]
        check_loss(phase.name, epoch, loss, f"Lower the learning rate ({phase.learning_rate}) and run again.")
        row = {"phase": phase.name, "epoch": epoch + 1, "loss": float(loss), "accuracy": float(history.history["accuracy"][-1]),
               "train_seconds": round(time.perf_counter() - started, 3)}
        row.update(score_split(scorer, config, context.data_dir, config.evaluation.split, labels_of, verify=False))
        end_epoch(context, checkpoints, epoch, model, rows, row, chief)
    return finish_phase(phase.name, config, context, model, "model.keras", (scorer, labels_of), rows, checkpoint, chief,
                        embedder=features_of(model, config.model.features))


def finish_phase(name: str, config: PipelineConfig, context: PhaseContext, model: keras.Model, file_name: str,
                 scoring: tuple[keras.Model, str | None], rows: list[dict], checkpoint, chief: bool = True,
                 embedder: keras.Model | None = None) -> PhaseResult:
    """Save a trained phase's final model in its work folder and score the final split with
    `scoring` (a scorer and the labels it classifies, as `score_split` takes them). A
    classifier's `embedder` (images -> the features it was scored with) is saved beside it
    as `embedder.keras`: what extraction and search use when this phase is the last.

    A worker that is not the chief saves nothing (Keras' save reads the variables' local
    values, no collective op): its result names the chief's model, with no sha256 ("")."""
    model_path = context.work_dir / file_name
    digest = save_model(model, model_path) if chief else ""
    embedder_path = None if embedder is None else context.work_dir / EMBEDDER_FILE
    embedder_digest = save_model(embedder, embedder_path) if chief and embedder is not None else ""
    final_group = config.evaluation.final_split
    final_scores = None
    if read_manifest(context.data_dir, ImageManifest).has_queries(final_group):
        final_scores = score_split(scoring[0], config, context.data_dir, final_group, scoring[1], verify=False)
    return PhaseResult(
        name=name,
        model_path=model_path,
        model_sha256=digest,
        embedder_path=embedder_path,
        embedder_sha256=embedder_digest,
        rows=rows,
        final_scores=final_scores,
        resumed_after_epoch=checkpoint.epoch + 1 if checkpoint is not None else None,
        extra={} if chief else {"chief": False},
    )


def _training_batches(phase, config: PipelineConfig, data_dir: Path, labels_of: str, epoch: int, static_shapes: bool = False,
                      several_workers: bool = False):
    """This epoch's (images, labels) batches of `data.batch_size` (the global batch: Keras
    splits it across the replicas). `static_shapes` (TPUs, several workers) drops the last,
    partial batch; `several_workers` reads deterministically (each worker keeps its share)."""
    options = ReadOptions(
        image_size=config.data.image_size,
        augment=phase.augment,
        shuffle_buffer=config.data.shuffle_buffer,
        view_shuffle_buffer=config.data.view_shuffle_buffer,
        batch_size=config.data.batch_size,
        drop_remainder=static_shapes,
        seed=epoch_seed(config.runtime.seed, phase.name, epoch),
        deterministic=config.runtime.deterministic or several_workers,
        verify=False,
    )
    return read_images(data_dir, "train", options).map(lambda element: (element["image"], element[labels_of]))

