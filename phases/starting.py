"""What a phase starts from when no phase came before it: the classes phases 1-3 classify,
and the model before any training (the backbone as `model.weights` gives it, with a new
head); the `baseline` row scores that model."""

from pathlib import Path

import keras

from phases.config import PipelineConfig
from phases.distribute import set_precision
from phases.errors import ConfigError
from phases.model import build_backbone, build_classifier, calibrate_batch_norm, features_of
from phases.scoring import score_split
from phases.unit import seed_everything
from tfrecords.manifest import ImageManifest, read_manifest
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
    return build_classifier(backbone, classes, config.model.dropout, config.model.classifier)


def baseline_row(config: PipelineConfig, data_dir: Path) -> dict:
    """The `baseline` row: the untrained model's features (`model.features`) scored on val,
    and on the final split (`test_mar_at_10`, ...) when the data has its queries, as each
    phase's last row is: the run's verdict compares both ends. (A new head's
    BatchNormalization only scales the pooled features: the same ranking.)"""
    set_precision(config.runtime.precision)
    manifest = read_manifest(data_dir, ImageManifest)
    _, classes = class_labels(config, manifest)
    features = features_of(initial_classifier(config, data_dir, classes), config.model.features)
    row = {"phase": "baseline", "epoch": 0, **score_split(features, config, data_dir, config.evaluation.split, None)}
    final = config.evaluation.final_split
    if final != config.evaluation.split and manifest.has_queries(final):
        row.update({f"{final}_{name}": value for name, value in score_split(features, config, data_dir, final, None).items()})
    return row
