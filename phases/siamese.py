"""Phase 4: a projection trained on cached features with a triplet loss.

The features are those of the model phase 3 ends with (`model.features`: by default
the output of its head's BatchNormalization, as in the seed), frozen here, so they are
computed once (the six views of every train image, and the eval splits' images, or each
of their test-time views) and cached as embedding shards: an epoch then costs a few matrix products instead of a pass
through EfficientNet. The train features are read back memory-mapped
(`load_embeddings(mapped_in=...)`), so they need not fit in memory. The
projection, Dense then L2 normalisation, trains on batches of `labels_per_batch`
labels x `views_per_label` members, following the margin schedule: each step sets
the loss margin and the learning rate for its epochs. Resume order as in every
phase (`phases/controller.py`): this phase's checkpoint, then the previous phase's model,
then a new backbone.

Under a tf.distribute strategy only the projection is distributed (`phases/controller.py`:
it and its optimizer are made in the strategy's scope), and Keras splits each batch of `LabelBalancedBatches`
across the replicas (its rows are grouped by label, so with `labels_per_batch` a
multiple of the replica count each replica gets whole labels, and mines its triplets
among them). The backbone caches features and the projection is scored outside it, on
this process's device. Under a multi-worker strategy only the chief writes into the
work folder and reports; the other workers cache features in a temporary folder.
"""

import dataclasses
import math
import shutil
import tempfile
from pathlib import Path

import keras
import numpy as np

from phases.checkpoints import load_model
from phases.class_centers import product_classes, with_class_centers, without_class_centers
from phases.config import PipelineConfig
from phases.controller import Trainer
from phases.distribute import local_model
from phases.losses import compile_for_schedule, schedule_plan
from phases.model import build_embedder, build_projection, features_of
from phases.scoring import embedding_scores, learn_whitening
from phases.starting import class_labels, initial_classifier
from phases.unit import EMBEDDER_FILE, EpochPlan, FinalModels, epoch_seed, seed_model_randomness
from phases.views import mean_of_views, predict_views, view_numbers
from tfrecords.embeddings import EmbeddingArrays, EmbeddingWriter, load_embeddings
from tfrecords.errors import ManifestError
from tfrecords.manifest import EmbeddingManifest, ImageManifest, read_manifest
from tfrecords.options import ReadOptions
from tfrecords.preprocess import VIEW_NAMES
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
    """Backbone features of the six views of every train image and of the eval splits (of
    each view of `evaluation.test_time_augmentation`, which `project_views` averages: with
    `six_views`, six times the eval features).

    Reused when the cache was made by the same backbone (sha256) from the same data.
    """
    manifest = read_manifest(data_dir, ImageManifest)
    stamp = {"backbone_sha256": backbone_sha256, "data": sorted(shard.sha256 for shard in manifest.shards)}
    augmentation = config.evaluation.test_time_augmentation
    if augmentation != "none":  # absent without it: caches made before the setting existed stay valid
        stamp["eval_views"] = list(view_numbers(augmentation))
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
        evaluation = ReadOptions(image_size=size, batch_size=batch, deterministic=True)  # as embed_split reads
        for split, count in manifest.counts.items():
            if split != "train" and count:
                # Per batch, each view's rows in turn (the `view` column says which): a view's rows
                # taken alone are the split in reader order, as `project_views` reads them.
                for element in read_images(data_dir, split, evaluation).as_numpy_iterator():
                    outputs = predict_views(backbone, element["image"], augmentation)
                    for number, vectors in zip(view_numbers(augmentation), outputs):
                        writer.add(split, vectors, element["image_id"], element["product_id"], element["category_id"],
                                   np.full(len(vectors), number))
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
    projection: keras.Model, query: EmbeddingArrays, index: EmbeddingArrays, train: EmbeddingArrays, config: PipelineConfig
) -> dict:
    """Retrieval scores and triplet accuracy (`embedding_scores`, with `evaluation.retrieval`) of
    the projected query and index features (`project_views`): the scores the extraction gives
    the final embedder. A whitening is learned on the projected train features of the images
    `whitening_for` embeds (the same first ones in reader order, their test-time views).

    `projection` must predict outside any strategy (`local_model`): every row, in order."""
    whitening = None
    options = config.evaluation.retrieval.whitening
    if options is not None:
        # The cache holds each train image's six views one after the other, in reader order.
        first = rows_of(train, slice(0, options.train_images * len(VIEW_NAMES)))
        tested = rows_of(first, np.isin(first.views, view_numbers(config.evaluation.test_time_augmentation)))
        whitening = learn_whitening(project_views(projection, tested)[0], config.evaluation.retrieval)
    return embedding_scores(*project_views(projection, query), *project_views(projection, index),
                            config.evaluation.triplet_sample, config.evaluation.retrieval, whitening)


def rows_of(arrays: EmbeddingArrays, rows) -> EmbeddingArrays:
    """These rows (a slice or a mask) of every column, in memory (the train features are memory-mapped)."""
    return EmbeddingArrays(*(np.asarray(getattr(arrays, field.name)[rows]) for field in dataclasses.fields(arrays)))


def project_views(projection: keras.Model, features: EmbeddingArrays) -> tuple[np.ndarray, np.ndarray]:
    """Cached eval features [views x n, dim] -> (embeddings [n, dim], product ids [n]): each
    view's rows projected, then averaged as `embed_views` averages an embedder's views
    (`mean_of_views`), so that an image's row is what the extraction embeds it as."""
    numbers = np.unique(features.views)  # increasing, as `view_numbers` orders them
    projected = [projection.predict(features.vectors[features.views == number], verbose=0, batch_size=4096)
                 for number in numbers]
    return mean_of_views(np.stack(projected)), features.product_ids[features.views == numbers[0]]


class SiameseTrainer(Trainer):
    """The trainer of kind `siamese`. Its final models are `projection.keras` (the projection
    alone) and `embedder.keras` (the features of the model before, then the projection). With
    a class-centre loss it trains the projection followed by product centres, which only its
    checkpoints keep (phases/class_centers.py)."""

    def prepare(self, is_chief: bool) -> None:
        config, context = self.config, self.context
        # A worker that is not the chief caches its features in a folder of its own, deleted at the end.
        self.scratch = None if is_chief else Path(tempfile.mkdtemp(prefix="pvs-worker-features-"))
        # The features of the model before (`model.features`: its head's BatchNormalization output
        # by default, as the seed), which the projection trains on and the embedder starts with.
        if self.previous is not None:
            classifier, backbone_sha256 = load_model(self.previous[0], self.previous[1], compile=False), self.previous[1]
        else:
            _, classes = class_labels(config, read_manifest(context.data_dir, ImageManifest))
            classifier = initial_classifier(config, context.data_dir, classes)
            backbone_sha256 = f"initial:{config.model.model_dump_json()}:{config.runtime.seed}"
        self.backbone = features_of(classifier, config.model.features)
        backbone_sha256 = f"{backbone_sha256}:{config.model.features}"
        features_dir = (context.work_dir if self.scratch is None else self.scratch) / "features"
        self.features = cache_features(self.backbone, backbone_sha256, config, context.data_dir, features_dir)
        self.train = load_embeddings(self.features, "train", mapped_in=self.features)  # memory-mapped: 40 GB at eProduct scale
        self.labels = train_labels(self.train, self.phase.labels)
        self.groups = {config.evaluation.split: load_group(self.features, config.evaluation.split)}

    def new_model(self) -> keras.Model:
        phase = self.phase
        # Seeded here: the projection's initial weights must not depend on what ran
        # before in this process (a run that reused phases 1-3 draws the same ones).
        seed_model_randomness(epoch_seed(self.config.runtime.seed, phase.name, -1))
        projection = build_projection(self.train.vectors.shape[1], phase.projection_dim, phase.head, phase.hidden_dim,
                                      phase.head_dropout)
        model = projection
        if phase.has_class_centers:  # trained through cosines to product centres (phases/class_centers.py)
            classes = product_classes(read_manifest(self.context.data_dir, ImageManifest))
            model = with_class_centers(projection, classes, phase.margin_loss.centers)
        compile_for_schedule(model, phase, self.config.runtime.jit_compile)
        return model

    def scorer(self, model: keras.Model) -> keras.Model:
        return local_model(without_class_centers(model))

    def plan_epoch(self, model: keras.Model, epoch: int) -> EpochPlan:
        return schedule_plan(model, self.phase, epoch)

    def batches(self, epoch: int, strategy) -> LabelBalancedBatches:
        return LabelBalancedBatches(self.train.vectors, self.labels, self.phase.labels_per_batch, self.phase.views_per_label,
                                    epoch_seed(self.config.runtime.seed, self.phase.name, epoch))

    def score(self, scorer: keras.Model, group: str) -> dict:
        if group not in self.groups:
            self.groups[group] = load_group(self.features, group)
        return project_scores(scorer, *self.groups[group], self.train, self.config)

    def final_models(self, model: keras.Model) -> FinalModels:
        projection = without_class_centers(model)
        return FinalModels(model=(EMBEDDER_FILE, build_embedder(self.backbone, projection)),
                           others=(("projection.keras", projection),))

    def extra(self) -> dict:
        return {"train_views": len(self.labels)}

    def close(self) -> None:
        if getattr(self, "scratch", None) is not None:
            shutil.rmtree(self.scratch, ignore_errors=True)
