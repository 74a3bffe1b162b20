"""Read ingested shards back as a tf.data pipeline of prepared images.

list shards (from the manifest, sha256 checked; or the URLs of a folder whose
shards stay in Cloud Storage: `shard_location`) -> [shuffle shard order] ->
parallel interleave -> [shuffle records, still encoded: cheap to buffer] ->
parallel parse, decode, orient, pad-to-square, resize -> [augment; with `all` and a
view_shuffle_buffer, shuffle the views] -> [batch] -> prefetch.

Each element is a dict: `image` float32 [size, size, 3] in [0, 255], `product_id`
and `category_id` int64 (-1 when the source had no categories), `image_id`
string and `view` int32 (which of the six views, 0 without augmentation).
"""

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import tensorflow as tf

from tfrecords.errors import UserError
from tfrecords.manifest import SHARDS_AT_NAME, ImageManifest, read_manifest, verify_shards
from tfrecords.options import ReadOptions
from tfrecords.preprocess import NUM_VIEWS, all_views, prepare, view

AUTOTUNE = tf.data.AUTOTUNE

RECORD_FEATURES = {
    "image/encoded": tf.io.FixedLenFeature([], tf.string),
    "image/format": tf.io.FixedLenFeature([], tf.string),
    # The EXIF orientation (1-8); shards written before it was stored read as 1, as stored.
    "image/orientation": tf.io.FixedLenFeature([], tf.int64, default_value=1),
    "image/id": tf.io.FixedLenFeature([], tf.string),
    "product/id": tf.io.FixedLenFeature([], tf.int64),
    "category/id": tf.io.FixedLenFeature([], tf.int64),
    "split": tf.io.FixedLenFeature([], tf.string),
}


def parse_record(serialized: tf.Tensor) -> dict[str, tf.Tensor]:
    """One serialized image record -> its raw features (bytes not decoded)."""
    return tf.io.parse_single_example(serialized, RECORD_FEATURES)


def shard_paths(
    data_dir: str | Path, splits: str | Sequence[str], verify: bool = True, shard_files: Sequence[str] | None = None
) -> list[str]:
    """Paths of the shards of `splits` (only the shard files named in `shard_files`, when given;
    in manifest order), checked against the manifest when `verify`; URLs when the folder's
    shards stay where they were ingested (`shard_location`)."""
    splits = [splits] if isinstance(splits, str) else list(splits)
    manifest = read_manifest(data_dir, ImageManifest)
    shards = [shard for split in splits for shard in manifest.shards_of(split)]
    if shard_files is not None:
        unknown = sorted(set(shard_files) - {shard.file for shard in shards})
        if unknown:
            raise UserError(f"{data_dir}: no shard {', '.join(unknown)} in split(s) {', '.join(splits)}")
        shards = [shard for shard in shards if shard.file in set(shard_files)]
    if not shards:
        raise UserError(
            f"{data_dir}: no images in split(s) {', '.join(splits)}; the manifest has "
            + ", ".join(f"{name} {count}" for name, count in manifest.counts.items())
        )
    location = shard_location(data_dir)
    if location is not None:  # read where they are, by TensorFlow: not verified (see shard_location)
        return [f"{location}/{shard.file}" for shard in shards]
    if verify:
        verify_shards(data_dir, shards)
    return [str(Path(data_dir) / shard.file) for shard in shards]


def shard_location(data_dir: str | Path) -> str | None:
    """The URL of the folder holding `data_dir`'s shards when they are not in it (its
    SHARDS_AT_NAME file, written by the pipeline with `storage.read_shards: direct`), else None.

    Such shards are read through TensorFlow's own file systems (gs:// on Cloud TPU VMs) and
    not sha256-checked first, which would read them all twice; TFRecord's CRC of each record
    still refuses a damaged one."""
    marker = Path(data_dir) / SHARDS_AT_NAME
    if not marker.is_file():
        return None
    return marker.read_text().strip().rstrip("/")


def _interleave(files: tf.data.Dataset, count: int, open_file, deterministic: bool) -> tf.data.Dataset:
    """The elements of `count` files, up to 8 open at a time, one element of each in turn."""
    return files.interleave(open_file, cycle_length=min(count, 8), num_parallel_calls=AUTOTUNE, deterministic=deterministic)


def read_order(records: Sequence[int]) -> np.ndarray:
    """The order in which `read_images` (deterministic, no shuffling) yields the records of
    shards holding `records` records each: [n, 2] rows of (shard position, record number)."""
    if not records:
        return np.zeros((0, 2), np.int64)
    counts = tf.constant(list(records), tf.int64)

    def numbered(shard):
        return tf.data.Dataset.range(counts[shard]).map(lambda record: tf.stack([shard, record]))

    rows = _interleave(tf.data.Dataset.range(len(records)), len(records), numbered, deterministic=True)
    return np.concatenate(list(rows.batch(65536).as_numpy_iterator()))


def read_images(
    data_dir: str | Path, splits: str | Sequence[str], options: ReadOptions, shard_files: Sequence[str] | None = None
) -> tf.data.Dataset:
    """The reading pipeline for `splits` of an ingested folder (see module docstring);
    only the shard files named in `shard_files`, when given."""
    paths = shard_paths(data_dir, splits, options.verify, shard_files)
    deterministic = options.deterministic
    files = tf.data.Dataset.from_tensor_slices(paths)
    if options.shuffle_buffer:
        files = files.shuffle(len(paths), seed=options.seed, reshuffle_each_iteration=True)
    records = _interleave(files, len(paths), tf.data.TFRecordDataset, deterministic)
    if options.shuffle_buffer:
        records = records.shuffle(options.shuffle_buffer, seed=options.seed + 1, reshuffle_each_iteration=True)
    size = options.image_size

    def load(serialized):
        raw = parse_record(serialized)
        return {
            "image": prepare(raw["image/encoded"], size, raw["image/orientation"]),
            "product_id": raw["product/id"],
            "category_id": raw["category/id"],
            "image_id": raw["image/id"],
            "view": tf.constant(0, tf.int32),
        }

    images = records.map(load, num_parallel_calls=AUTOTUNE, deterministic=deterministic)
    images = _augment(images, options)
    if options.batch_size:
        images = images.batch(options.batch_size, drop_remainder=options.drop_remainder)
    dataset_options = tf.data.Options()
    dataset_options.deterministic = deterministic
    return images.prefetch(AUTOTUNE).with_options(dataset_options)


def read_view_groups(data_dir: str | Path, split: str, options: ReadOptions, views: int) -> tf.data.Dataset:
    """Each image of `split` as `views` distinct ones of its six views, one after another,
    for metric learning on images: a batch of `options.batch_size` (a multiple of `views`,
    remainder dropped) holds batch_size / views images with all their views. The views are
    a random choice per image and epoch, drawn from `options.seed`. Elements as in
    `read_images`, `view` telling which view each is."""
    if not 2 <= views <= NUM_VIEWS or not options.batch_size or options.batch_size % views:
        raise ValueError(f"views must be 2-{NUM_VIEWS} and divide the batch size; got {views}, {options.batch_size}")
    images = read_images(data_dir, split, options.model_copy(update={"augment": "none", "batch_size": None}))
    draws = tf.data.Dataset.random(seed=options.seed + 3, rerandomize_each_iteration=True)

    def expand(element, draw):
        chosen = tf.random.experimental.stateless_shuffle(tf.range(NUM_VIEWS), seed=[draw, 0])[:views]
        stacked = tf.gather(all_views(element["image"]), chosen)
        repeated = {key: tf.repeat(value[None], views, axis=0) for key, value in element.items() if key not in ("image", "view")}
        return tf.data.Dataset.from_tensor_slices({**repeated, "image": stacked, "view": chosen})

    groups = tf.data.Dataset.zip(images, draws).flat_map(expand)
    return groups.batch(options.batch_size, drop_remainder=True).prefetch(AUTOTUNE)


def _augment(images: tf.data.Dataset, options: ReadOptions) -> tf.data.Dataset:
    if options.augment == "all":

        def expand(element):
            repeated = {key: tf.repeat(value[None], NUM_VIEWS, axis=0) for key, value in element.items() if key != "image"}
            repeated["image"] = all_views(element["image"])
            repeated["view"] = tf.range(NUM_VIEWS, dtype=tf.int32)
            return tf.data.Dataset.from_tensor_slices(repeated)

        views = images.flat_map(expand)
        if options.shuffle_buffer and options.view_shuffle_buffer:
            # The seed's author shuffled after expanding (unbatch, shuffle, batch): six views of
            # one image in a row would make each batch six-fold correlated.
            views = views.shuffle(options.view_shuffle_buffer, seed=options.seed + 4, reshuffle_each_iteration=True)
        return views
    if options.augment == "random":
        draws = tf.data.Dataset.random(seed=options.seed + 2, rerandomize_each_iteration=True)

        def pick(element, draw):
            index = tf.cast(draw % NUM_VIEWS, tf.int32)
            return {**element, "image": view(element["image"], index), "view": index}

        return tf.data.Dataset.zip(images, draws).map(pick, num_parallel_calls=AUTOTUNE, deterministic=options.deterministic)
    return images
