"""Phases 1-3 of the recipe: train the classification head and more and more of the backbone.

The trainer of kind `classification` (`phases/kinds.py`); the controller
(`phases/controller.py`) runs its epochs. It starts from the previous phase's model (its
trainable layers set for this phase, a new Adam) or from a new model (`phases/starting.py`),
and scores `val` each epoch with the features the model embeds with (`model.features`).
Its final models are `model.keras` (the classifier, what the next phase starts from) and
`embedder.keras` (images -> those features: what extraction and search use when this
phase is the last).
"""

from functools import partial

import keras

from phases.checkpoints import load_model
from phases.config import ClassifierHead
from phases.controller import Trainer
from phases.distribute import alike_every_iteration, needs_static_shapes, several_workers
from phases.losses import make_margin_loss
from phases.model import features_of, set_trainable
from phases.scoring import score_split
from phases.starting import class_labels, initial_classifier
from phases.unit import EMBEDDER_FILE, EpochPlan, FinalModels, epoch_seed, seed_model_randomness
from tfrecords.manifest import ImageManifest, read_manifest, verify_shards
from tfrecords.options import ReadOptions
from tfrecords.reader import read_images


def classifier_scorer(model: keras.Model, features: str = "head_batch_norm") -> keras.Model:
    """Images -> [the features it embeds with (`model.features`), class scores]: one pass gives
    both. The class scores are probabilities, or a margin head's cosines: their argmax is the class."""
    return keras.Model(model.input, [features_of(model, features).output, model.output])


def classification_loss(head: ClassifierHead) -> keras.losses.Loss:
    """The loss of the head `model.classifier` configures: cross-entropy of the softmax head's
    probabilities (in float32, as they are), or the margin loss of the cosine head's cosines."""
    if head.kind == "softmax":
        return keras.losses.SparseCategoricalCrossentropy()
    return make_margin_loss(head.kind, head.scale, head.margin, head.easy_margin)


class ClassificationTrainer(Trainer):
    def prepare(self, is_chief: bool) -> None:
        manifest = read_manifest(self.context.data_dir, ImageManifest)
        verify_shards(self.context.data_dir, manifest.shards)  # once per phase; epochs read unverified
        self.labels_of, self.classes = class_labels(self.config, manifest)

    def new_model(self) -> keras.Model:
        config = self.config
        if self.previous is not None:
            # Seeded here: loading draws the seeds of the model's Dropout layers (Keras does
            # not save them), which must not depend on what ran before in this process. A
            # run resumed at this phase's start must draw what an uninterrupted one did.
            seed_model_randomness(epoch_seed(config.runtime.seed, self.phase.name, -1))
            model = load_model(self.previous[0], self.previous[1], compile=False)
        else:
            model = initial_classifier(config, self.context.data_dir, self.classes)
        set_trainable(model, self.phase, config.model.freeze_batch_norm, config.model.architecture)
        model.compile(
            optimizer=keras.optimizers.Adam(self.phase.learning_rate),
            loss=classification_loss(config.model.classifier),
            metrics=["accuracy"],
            jit_compile=config.runtime.jit_compile,
        )
        return model

    def resumed_model(self, model: keras.Model) -> keras.Model:
        # The same flags as when it was saved: the optimizer state still fits.
        set_trainable(model, self.phase, self.config.model.freeze_batch_norm, self.config.model.architecture)
        return model

    def scorer(self, model: keras.Model) -> keras.Model:
        return classifier_scorer(model, self.config.model.features)

    def plan_epoch(self, model: keras.Model, epoch: int) -> EpochPlan:
        return EpochPlan(advice=f"Lower the learning rate ({self.phase.learning_rate}) and run again.")

    def batches(self, epoch: int, strategy):
        return alike_every_iteration(
            partial(training_batches, self.phase, self.config, self.context.data_dir, self.labels_of, epoch,
                    needs_static_shapes(strategy), several_workers(strategy)),
            strategy,
        )

    def score(self, scorer: keras.Model, group: str) -> dict:
        return score_split(scorer, self.config, self.context.data_dir, group, self.labels_of, verify=False,
                           whitenings=self.whitenings)

    def final_models(self, model: keras.Model) -> FinalModels:
        return FinalModels(model=("model.keras", model), embedder=(EMBEDDER_FILE, features_of(model, self.config.model.features)))


def training_batches(phase, config, data_dir, labels_of: str, epoch: int, static_shapes: bool = False,
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
