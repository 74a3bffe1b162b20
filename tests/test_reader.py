"""The reading pipeline: pad-to-square, the six views in order, seeded determinism, batches."""

import numpy as np
import pytest
import tensorflow as tf

from conftest import image_bytes, write_image
from tfrecords.errors import UserError
from tfrecords.ingest import ingest
from tfrecords.options import IngestOptions, ReadOptions
from tfrecords.preprocess import VIEW_NAMES, border_mean, pad_rows
from tfrecords.reader import read_images


def test_padding_centres_the_image_on_its_border_mean():
    image = np.arange(2 * 4 * 3, dtype=np.uint8).reshape(2, 4, 3) * 5  # 2 rows, 4 columns
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]]).astype(np.float32)
    fill = border.mean(axis=0)
    np.testing.assert_allclose(border_mean(tf.constant(image)).numpy(), fill, atol=1e-4)
    padded = pad_rows(tf.constant(image), tf.constant(fill), 5).numpy()
    assert padded.shape == (5, 4, 3)
    np.testing.assert_allclose(padded[1:3], image, atol=1e-4)  # (5 - 2) // 2 = 1 row above, 2 below
    for row in (0, 3, 4):
        np.testing.assert_allclose(padded[row], np.broadcast_to(fill, (4, 3)), atol=1e-4)


def test_padding_to_the_images_own_height_leaves_it_unchanged():
    image = tf.constant(np.random.default_rng(0).integers(0, 255, (5, 5, 3), dtype=np.uint8))
    np.testing.assert_allclose(pad_rows(image, border_mean(image), 5).numpy(), image.numpy(), atol=1e-4)


@pytest.fixture(scope="module")
def one_square_image(tmp_path_factory):
    """An ingested folder with one 16x16 PNG (lossless, square: no resize, no padding)."""
    root = tmp_path_factory.mktemp("square")
    write_image(root / "src" / "p" / "x.png", image_bytes("PNG", size=(16, 16)))
    ingest(root / "src", root / "out", IngestOptions(val_fraction=0, test_fraction=0, workers=1), progress=False)
    original = tf.io.decode_png(image_bytes("PNG", size=(16, 16)), channels=3).numpy().astype(np.float32)
    return root / "out", original


def test_all_views_come_in_the_documented_order(one_square_image):
    data, original = one_square_image
    views = list(read_images(data, "train", ReadOptions(image_size=16, augment="all")).as_numpy_iterator())
    expected = [original, np.flipud(original), np.fliplr(original), np.rot90(original, 1), np.rot90(original, 2), np.rot90(original, 3)]
    assert len(views) == len(VIEW_NAMES) == 6
    for number, (element, reference) in enumerate(zip(views, expected)):
        assert element["view"] == number
        assert element["image_id"] == b"p/x.png"
        np.testing.assert_allclose(element["image"], reference, atol=0.5, err_msg=VIEW_NAMES[number])
    assert len({element["image"].tobytes() for element in views}) == 6


def test_random_views_are_the_view_they_claim_and_repeat_with_the_seed(one_square_image):
    data, original = one_square_image
    expected = [original, np.flipud(original), np.fliplr(original), np.rot90(original, 1), np.rot90(original, 2), np.rot90(original, 3)]
    options = ReadOptions(image_size=16, augment="random", seed=5, deterministic=True)
    dataset = read_images(data, "train", options).repeat(30)
    drawn = [(int(e["view"]), e["image"]) for e in dataset.as_numpy_iterator()]
    for number, image in drawn:
        np.testing.assert_allclose(image, expected[number], atol=0.5)
    assert len({number for number, _ in drawn}) == 6  # 30 draws reach all six views
    again = [int(e["view"]) for e in read_images(data, "train", options).repeat(30).as_numpy_iterator()]
    assert again == [number for number, _ in drawn]


def test_deterministic_shuffle_repeats_with_the_seed_and_changes_with_it(ingested):
    def order(seed):
        options = ReadOptions(image_size=16, shuffle_buffer=64, seed=seed, deterministic=True)
        return [e["image_id"] for e in read_images(ingested, "train", options).as_numpy_iterator()]

    first, again, other = order(1), order(1), order(2)
    assert first == again
    assert first != other and sorted(first) == sorted(other)


def test_all_views_are_shuffled_after_expansion_so_a_batch_mixes_many_images(ingested):
    def batches(view_shuffle_buffer):
        options = ReadOptions(image_size=16, augment="all", shuffle_buffer=64, view_shuffle_buffer=view_shuffle_buffer,
                              batch_size=12, seed=4, deterministic=True)
        return list(read_images(ingested, "train", options).as_numpy_iterator())

    in_order, shuffled = batches(0), batches(96)
    assert all(len(set(batch["image_id"])) == 2 for batch in in_order[:-1])  # six views of one image, then the next
    assert np.mean([len(set(batch["image_id"])) for batch in shuffled[:-1]]) > 6
    views = lambda batches: sorted((i, v) for b in batches for i, v in zip(b["image_id"], b["view"]))  # noqa: E731
    assert views(shuffled) == views(in_order)  # every view of every image, once
    assert [b["image_id"].tolist() for b in batches(96)] == [b["image_id"].tolist() for b in shuffled]  # seeded


def test_batches_have_the_configured_shape(ingested):
    options = ReadOptions(image_size=24, batch_size=8, drop_remainder=True)
    assert read_images(ingested, "train", options).element_spec["image"].shape == (8, 24, 24, 3)  # known to Keras
    batches = list(read_images(ingested, "train", options).as_numpy_iterator())
    assert batches and all(b["image"].shape == (8, 24, 24, 3) for b in batches)
    assert all(b["product_id"].shape == (8,) and b["image_id"].shape == (8,) for b in batches)
    assert all(0.0 <= b["image"].min() and b["image"].max() <= 255.0 for b in batches)


def test_several_splits_read_together(ingested):
    both = list(read_images(ingested, ["val_query", "val_index"], ReadOptions(image_size=16)).as_numpy_iterator())
    query = list(read_images(ingested, "val_query", ReadOptions(image_size=16)).as_numpy_iterator())
    assert len(both) > len(query) > 0


def test_reading_a_split_with_no_images_says_what_there_is(one_square_image):
    data, _ = one_square_image
    with pytest.raises(UserError, match="no images in split\\(s\\) test_query; the manifest has train 1"):
        read_images(data, "test_query", ReadOptions(image_size=16))


def test_shards_left_where_they_were_ingested_are_read_through_tensorflows_file_systems(ingested, tmp_path):
    """`storage.read_shards: direct`: the folder holds the manifest and a shards-at.txt naming
    where the shards are; the reader hands TensorFlow their URLs. TensorFlow's in-memory ram://
    file system stands in for gs:// (which TensorFlow reads the same way, but cannot be pointed
    at a local emulator), and a damaged record there is refused by its CRC."""
    import shutil

    from tfrecords.manifest import MANIFEST_NAME, SHARDS_AT_NAME, ImageManifest, read_manifest
    from tfrecords.reader import shard_location, shard_paths

    url = f"ram://direct-read/{tmp_path.name}"
    shards = read_manifest(ingested, ImageManifest).shards
    for shard in shards:
        tf.io.gfile.copy(str(ingested / shard.file), f"{url}/{shard.file}", overwrite=True)
    folder = tmp_path / "data"
    folder.mkdir()
    shutil.copy(ingested / MANIFEST_NAME, folder)
    (folder / SHARDS_AT_NAME).write_text(url + "/\n")

    assert shard_location(folder) == url and shard_location(ingested) is None
    assert shard_paths(folder, "train") == [f"{url}/{shard.file}" for shard in shards if shard.split == "train"]
    options = ReadOptions(image_size=16, batch_size=8, deterministic=True)
    for split in ("train", "test_index"):
        there, here = (list(read_images(data, split, options).as_numpy_iterator()) for data in (folder, ingested))
        assert [batch["image_id"].tolist() for batch in there] == [batch["image_id"].tolist() for batch in here]
        for ours, theirs in zip(there, here):
            np.testing.assert_array_equal(ours["image"], theirs["image"])

    damaged = next(shard for shard in shards if shard.split == "train")
    data = bytearray((ingested / damaged.file).read_bytes())
    data[len(data) // 2] ^= 0xFF  # a flipped byte inside a record
    with tf.io.gfile.GFile(f"{url}/{damaged.file}", "wb") as handle:
        handle.write(bytes(data))
    with pytest.raises(tf.errors.DataLossError):
        list(read_images(folder, "train", options).as_numpy_iterator())
