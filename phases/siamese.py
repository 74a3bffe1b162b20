"""Phase 4: a projection trained on cached features with a triplet loss.

The features are those of the model phase 3 ends with (`model.features`: by default
the output of its head's BatchNormalization, as in the seed), frozen here, so they are
computed once (the six views of every train image, and the eval splits without
augmentation) and cached as embedding shards: an epoch then costs a few matrix products instead of a pass
through EfficientNet. The train features are read back memory-mapped
(`load_embeddings(mapped_in=...)`), so they need not fit in memory. The
projection, Dense then L2 normalisation, trains on batches of `labels_per_batch`
labels x `views_per_label` members, following the margin schedule: each step sets
the loss margin and the learning rate for its epochs. Resume order as in every
phase: this phase's checkpoint, then the previous phase's model, then a new
backbone.

Under a tf.distribute strategy only the projection is distributed: it and its optimizer
are made in the strategy's scope, and Keras splits each batch of `LabelBalancedBatches`
across the replicas (its rows are grouped by label, so with `labels_per_batch` a
multiple of the replica count each replica gets whole labels, and mines its triplets
among them). The backbone caches features and the projection is scored outside it, on
this process's device. Under a multi-worker strategy only the chief writes into the
work folder and reports; the other workers cache features in a temporary folder.
"""

import math
import shutil
import tempfile
import time
from pathlib import Path

import keras
import numpy as np

from phases.checkpoints import latest_checkpoint, load_model, save_model
from phases.classification import class_labels, initial_classifier
from phases.config import PipelineConfig, SiamesePhase
from phases.distribute import is_chief, local_model, prepare
from phases.losses import apply_schedule_step, compile_for_schedule
from phases.model import build_embedder, build_projection, features_of
from phases.scoring import embed_split, embedding_scores
from phases.unit import (
    EMBEDDER_FILE,
    PhaseContext,
    PhaseResult,
    check_loss,
    end_epoch,
    epoch_seed,
    seed_model_randomness,
)
from tfrecords.embeddings import EmbeddingArrays, EmbeddingWriter, load_embeddings
from tfrecords.errors import ManifestError
from tfrecords.manifest import EmbeddingManifest, ImageManifest, read_manifest
from tfrecords.options import ReadOptions
from tfrecords.reader import read_images


class LabelBalancedBatches(keras.utils.PyDataset):
    """One epoch of batches, each of `labels_per_batch` labels x `per_label` members.

    Labels are visited in a seeded random order, so every label is an anchor about
    once per epoch; members are drawn without replacement (with replacement only
    for labels with fewer than `per_label` members). Yields (features, labels).
    """

    def __init__(self, features: np.ndarray, labels: np.ndarray, labels_per_batch: int, per_label: int, seed: int):
        super().__init__()
        self.features, self.labels = features, labels
        rng = np.random.default_rng(seed)
        order = np.argsort(labels, kind="stable")
        unique, starts = np.unique(labels[order], return_index=True)
        members = np.split(order, starts[1:])
        batches = max(1, len(features) // (labels_per_batch * per_label))
        needed = batches * labels_per_batch
        visit = np.concatenate([rng.permutation(len(unique)) for _ in range(math.ceil(needed / len(unique)))])[:needed]
        picks = [
            rng.choice(members[label], per_label, replace=len(members[label]) < per_label) for label in visit
        ]
        self.batches = np.asarray(picks).reshape(batches, labels_per_batch * per_label)

    def __len__(self) -> int:
        return len(self.batches)

    def __getitem__(self, number: int):
        rows = self.batches[number]
        return np.asarray(self.features[rows]), self.labels[rows]  # features may be memory-mapped


def cache_features(backbone: keras.Model, backbone_sha256: str, config: PipelineConfig, data_dir: Path, folder: Path) -> Path:
    """Backbone features of the six views of every train image and of the eval splits.

    Reused when the cache was made by the same backbone (sha256) from the same data.
    """
    manifest = read_manifest(data_dir, ImageManifest)
    stamp = {"backbone_sha256": backbone_sha256, "data": sorted(shard.sha256 for shard in manifest.shards)}
    try:
        if read_manifest(folder, EmbeddingManifest).metadata == stamp:
            return folder
    except ManifestError:
        pass
    size, batch = config.data.image_size, config.evaluation.batch_size
    with EmbeddingWriter(folder, dim=backbone.output_shape[-1], metadata=stamp) as writer:
        views = read_images(data_dir, "train", ReadOptions(image_size=size, augment="all", batch_size=batch, deterministic=True))
        for element in views.as_numpy_iterator():
            vectors = backbone.predict_on_batch(element["image"])
            writer.add("train", vectors, element["image_id"], element["product_id"], element["category_id"], element["view"])
        for split, count in manifest.counts.items():
            if split != "train" and count:
                embedded = embed_split(backbone, data_dir, split, size, batch)
                writer.add(split, embedded.vectors, embedded.image_ids, embedded.product_ids, embedded.category_ids)
    return folder


def train_labels(train: EmbeddingArrays, labels: str) -> np.ndarray:
    """Int labels of the cached train views: one per source image, or the product id."""
    if labels == "product":
        return train.product_ids.astype(np.int64)
    return np.unique(train.image_ids, return_inverse=True)[1].astype(np.int64)


def load_group(features: Path, group: str) -> tuple[EmbeddingArrays, EmbeddingArrays]:
    """The cached query and index features of an eval group (read and checked once per phase)."""
    return load_embeddings(features, f"{group}_query"), load_embeddings(features, f"{group}_index")


def project_scores(
    projection: keras.Model, query: EmbeddingArrays, index: EmbeddingArrays, triplet_sample: int
) -> dict:
    """Retrieval scores and triplet accuracy (`embedding_scores`) of the projected query and index features.

    `projection` must predict outside any strategy (`local_model`): every row, in order."""
    return embedding_scores(
        projection.predict(query.vectors, verbose=0, batch_size=4096),
        query.product_ids,
        projection.predict(index.vectors, verbose=0, batch_size=4096),
        index.product_ids,
        triplet_sample,
    )


def run_siamese_phase(
    phase: SiamesePhase,
    config: PipelineConfig,
    context: PhaseContext,
    previous: tuple[Path, str] | None = None,
) -> PhaseResult:
    """Train the projection; the final models are `projection.keras` and `embedder.keras`."""
    strategy = prepare(config.runtime)
    chief = is_chief(strategy)
    # A worker that is not the chief caches its features in a folder of its own, deleted at the end.
    scratch = None if chief else Path(tempfile.mkdtemp(prefix="pvs-worker-features-"))
    try:
        return _train_projection(phase, config, context, previous, strategy, chief, scratch)
    finally:
        if scratch is not None:
            shutil.rmtree(scratch, ignore_errors=True)


def _train_projection(phase, config, context, previous, strategy, chief: bool, scratch: Path | None) -> PhaseResult:
    # The features of the model before (`model.features`: its head's BatchNormalization output
    # by default, as the seed), which the projection trains on and the embedder starts with.
    if previous is not None:
        classifier, backbone_sha256 = load_model(previous[0], previous[1], compile=False), previous[1]
    else:
        _, classes = class_labels(config, read_manifest(context.data_dir, ImageManifest))
        classifier = initial_classifier(config, context.data_dir, classes)
        backbone_sha256 = f"initial:{config.model.model_dump_json()}:{config.runtime.seed}"
    backbone = features_of(classifier, config.model.features)
    backbone_sha256 = f"{backbone_sha256}:{config.model.features}"
    features_dir = context.work_dir / "features" if scratch is None else scratch / "features"
    features = cache_features(backbone, backbone_sha256, config, context.data_dir, features_dir)
    train = load_embeddings(features, "train", mapped_in=features)  # memory-mapped: 40 GB at eProduct scale
    labels = train_labels(train, phase.labels)
    evaluation = load_group(features, config.evaluation.split)
    checkpoints = context.work_dir / "checkpoints"
    with strategy.scope():  # the projection's and the optimizer's variables
        checkpoint = latest_checkpoint(checkpoints)
        if checkpoint is not None:
            projection, start, rows = checkpoint.model, checkpoint.epoch + 1, checkpoint.state["rows"]
        else:
            # Seeded here: the projection's initial weights must not depend on what ran
            # before in this process (a run that reused phases 1-3 draws the same ones).
            seed_model_randomness(epoch_seed(config.runtime.seed, phase.name, -1))
            projection = build_projection(train.vectors.shape[1], phase.projection_dim, phase.head, phase.hidden_dim, phase.head_dropout)
            compile_for_schedule(projection, phase, config.runtime.jit_compile)
            start, rows = 0, []
    scorer = local_model(projection)  # predicts on this process's device, every row in order
    for epoch in range(start, phase.epochs):
        step = apply_schedule_step(projection, phase, epoch)
        batches = LabelBalancedBatches(
            train.vectors, labels, phase.labels_per_batch, phase.views_per_label, epoch_seed(config.runtime.seed, phase.name, epoch)
        )
        # shuffle=False: the sampler already orders batches by this epoch's seed; Keras would
        # reshuffle them with the global RNG, which a resumed process does not share.
        started = time.perf_counter()
        history = projection.fit(
            batches,
            epochs=epoch + 1,
            initial_epoch=epoch,
            verbose=0,
            shuffle=False,
            callbacks=[keras.callbacks.TerminateOnNaN(), *context.callbacks],
        )
        loss = history.history["loss"][-1]
        check_loss(phase.name, epoch, loss, f"Lower this epoch's learning rate ({step.learning_rate}) and run again.")
        row = {"phase": phase.name, "epoch": epoch + 1, "loss": float(loss), "margin": step.margin,
               "learning_rate": step.learning_rate, "train_seconds": round(time.perf_counter() - started, 3)}
        row.update(project_scores(scorer, *evaluation, config.evaluation.triplet_sample))
        end_epoch(context, checkpoints, epoch, projection, rows, row, chief)
    embedder_path = context.work_dir / EMBEDDER_FILE
    digest = ""  # a worker that is not the chief writes no model: see finish_phase
    if chief:
        save_model(projection, context.work_dir / "projection.keras")
        digest = save_model(build_embedder(backbone, projection), embedder_path)
    final_group = config.evaluation.final_split
    final_scores = None
    if read_manifest(context.data_dir, ImageManifest).has_queries(final_group):
        final_scores = project_scores(scorer, *load_group(features, final_group), config.evaluation.triplet_sample)
    return PhaseResult(
        name=phase.name,
        model_path=embedder_path,
        model_sha256=digest,
        rows=rows,
        final_scores=final_scores,
        resumed_after_epoch=checkpoint.epoch + 1 if checkpoint is not None else None,
        extra={"train_views": len(labels)} if chief else {"train_views": len(labels), "chief": False},
    )
