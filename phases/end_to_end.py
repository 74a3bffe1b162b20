"""An embedding phase on images: the backbone and an embedding head trained together with a
metric loss, as MILDNet trained its network (instead of the seed's phase 4 on cached features).

Each batch holds `labels_per_batch` train images x `views_per_label` of their six views;
labels are the source image (`labels: view`) or its product (`labels: product`). The
model is the embedder itself (images -> unit vectors), so its final model serves the
extraction directly. Resume order as in every phase (`phases/controller.py`): this phase's
checkpoint, then the previous phase's model (its backbone gets a new head), then a new
backbone. Under a tf.distribute strategy each replica's loss is mined on its share of the
batch (`labels_per_batch` should be a multiple of the replica count, so that no image's
views are split).
"""

from functools import partial
from pathlib import Path

import keras
import tensorflow as tf

from phases.checkpoints import load_model
from phases.class_centers import product_classes, with_class_centers, without_class_centers
from phases.controller import Trainer
from phases.distribute import alike_every_iteration, local_model, several_workers
from phases.errors import ConfigError
from phases.losses import compile_for_schedule, schedule_plan
from phases.model import backbone_of, build_embedder, build_projection, set_trainable
from phases.scoring import score_split
from phases.starting import class_labels, initial_classifier
from phases.unit import EMBEDDER_FILE, EpochPlan, FinalModels, epoch_seed, seed_model_randomness
from tfrecords.manifest import ImageManifest, read_manifest, verify_shards
from tfrecords.options import ReadOptions
from tfrecords.reader import read_view_groups

# Labels of `labels: view`: a hash of the image id (int64; a collision in a batch of
# 2**62 buckets is as good as impossible).
VIEW_LABEL_BUCKETS = 2**62


class EndToEndTrainer(Trainer):
    """The trainer of kind `end_to_end`; its final model is `embedder.keras`. With a class-centre
    loss it trains the embedder followed by product centres, which only its checkpoints keep
    (phases/class_centers.py)."""

    def prepare(self, is_chief: bool) -> None:
        self.manifest = read_manifest(self.context.data_dir, ImageManifest)
        verify_shards(self.context.data_dir, self.manifest.shards)  # once per phase; epochs read unverified
        train = self.manifest.counts.get("train", 0)
        if train < self.phase.labels_per_batch:
            raise ConfigError(
                f"phase {self.phase.name!r}: a batch needs labels_per_batch = {self.phase.labels_per_batch} train images, "
                f"the data has {train}; lower labels_per_batch"
            )

    def new_model(self) -> keras.Model:
        """The previous phase's backbone (or a new one) with a new embedding head, compiled."""
        phase, config = self.phase, self.config
        if self.previous is not None:
            # Seeded here, as in every phase that loads its start: see classification.py.
            seed_model_randomness(epoch_seed(config.runtime.seed, phase.name, -1))
            backbone = backbone_of(load_model(self.previous[0], self.previous[1], compile=False))
        else:
            _, classes = class_labels(config, self.manifest)
            backbone = backbone_of(initial_classifier(config, self.context.data_dir, classes))
            seed_model_randomness(epoch_seed(config.runtime.seed, phase.name, -1))
        head = build_projection(backbone.output_shape[-1], phase.projection_dim, phase.head, phase.hidden_dim,
                                phase.head_dropout)
        model = build_embedder(backbone, head)
        if phase.has_class_centers:
            model = with_class_centers(model, product_classes(self.manifest), phase.margin_loss.centers)
        set_trainable(model, phase, config.model.freeze_batch_norm, config.model.architecture)
        compile_for_schedule(model, phase, config.runtime.jit_compile)
        return model

    def resumed_model(self, model: keras.Model) -> keras.Model:
        set_trainable(model, self.phase, self.config.model.freeze_batch_norm, self.config.model.architecture)
        return model

    def scorer(self, model: keras.Model) -> keras.Model:
        return local_model(without_class_centers(model))

    def plan_epoch(self, model: keras.Model, epoch: int) -> EpochPlan:
        return schedule_plan(model, self.phase, epoch)

    def batches(self, epoch: int, strategy):
        return alike_every_iteration(
            partial(training_batches, self.phase, self.config, self.context.data_dir, epoch, several_workers(strategy)),
            strategy,
        )

    def score(self, scorer: keras.Model, group: str) -> dict:
        return score_split(scorer, self.config, self.context.data_dir, group, None, verify=False,
                           whitenings=self.whitenings)

    def final_models(self, model: keras.Model) -> FinalModels:
        return FinalModels(model=(EMBEDDER_FILE, without_class_centers(model)))


def training_batches(phase, config, data_dir: Path, epoch: int, several_workers: bool = False) -> tf.data.Dataset:
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
