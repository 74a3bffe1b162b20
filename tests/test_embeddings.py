"""Embedding shards give back the exact vectors and ids, and a damaged shard is caught."""

import numpy as np
import pytest

from tfrecords.embeddings import EmbeddingWriter, load_embeddings, read_embeddings
from tfrecords.errors import ShardIntegrityError, UserError
from tfrecords.manifest import EmbeddingManifest, read_manifest


def write_sets(folder, rng):
    sets = {}
    with EmbeddingWriter(folder, dim=7, records_per_shard=10) as writer:
        for split, count in (("val_query", 13), ("val_index", 25)):
            vectors = rng.normal(size=(count, 7)).astype(np.float32)
            ids = [f"{split}/{i}.jpg" for i in range(count)]
            products = rng.integers(0, 5, count)
            writer.add(split, vectors[:4], ids[:4], products[:4], views=np.arange(4) % 6)
            writer.add(split, vectors[4:], ids[4:], products[4:], views=np.arange(4, count) % 6)
            sets[split] = (vectors, ids, products)
    return sets


def test_embeddings_round_trip_across_shards(tmp_path):
    sets = write_sets(tmp_path, np.random.default_rng(0))
    manifest = read_manifest(tmp_path, EmbeddingManifest)
    assert manifest.dim == 7 and manifest.count == 38
    assert [s.file for s in manifest.shards_of("val_index")] == [f"val_index-0000{i}.tfrecord" for i in range(3)]
    for split, (vectors, ids, products) in sets.items():
        loaded = load_embeddings(tmp_path, split)
        np.testing.assert_array_equal(loaded.vectors, vectors)  # bit-exact, float32
        assert [i.decode() for i in loaded.image_ids] == ids
        np.testing.assert_array_equal(loaded.product_ids, products)
        np.testing.assert_array_equal(loaded.category_ids, -1)
        np.testing.assert_array_equal(loaded.views, np.arange(len(ids)) % 6)


def test_embedding_dataset_yields_one_vector_per_element(tmp_path):
    write_sets(tmp_path, np.random.default_rng(1))
    first = next(read_embeddings(tmp_path, "val_query").as_numpy_iterator())
    assert first["embedding"].shape == (7,) and first["image_id"] == b"val_query/0.jpg"


def test_damaged_embedding_shard_is_refused(tmp_path):
    write_sets(tmp_path, np.random.default_rng(2))
    path = tmp_path / "val_query-00001.tfrecord"
    data = bytearray(path.read_bytes())
    data[40] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(ShardIntegrityError, match="val_query-00001.tfrecord"):
        load_embeddings(tmp_path, "val_query")


def test_wrong_dimension_and_unknown_set_are_errors(tmp_path):
    write_sets(tmp_path, np.random.default_rng(3))
    with pytest.raises(UserError, match="no embeddings of set 'train'"):
        load_embeddings(tmp_path, "train")
    with pytest.raises(ValueError, match=r"vectors must be \[n, 7\], got \[2, 3\]"):
        EmbeddingWriter(tmp_path / "other", dim=7).add("x", np.zeros((2, 3)), ["a", "b"], [0, 1])


def test_a_set_larger_than_what_it_may_hold_in_memory_loads_memory_mapped(tmp_path):
    """Phase 4's train features at eProduct scale (40 GB) must not be held in memory: with
    `mapped_in`, loading a set holds a few batches, not the set (traced by tracemalloc, which
    sees NumPy's buffers), gives back the same rows, and leaves no file behind."""
    import tracemalloc

    rng = np.random.default_rng(2)
    count, dim = 24_000, 1280  # 123 MB of vectors
    vectors = rng.normal(size=(count, dim)).astype(np.float32)
    products = rng.integers(0, 1000, count)
    with EmbeddingWriter(tmp_path / "features", dim=dim, records_per_shard=8192) as writer:
        writer.add("train", vectors, [f"{i}.jpg" for i in range(count)], products, views=np.arange(count) % 6)
    peaks = {}
    for mapped in (False, True):
        tracemalloc.start()
        loaded = load_embeddings(tmp_path / "features", "train", mapped_in=tmp_path / "features" if mapped else None)
        peaks[mapped] = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        np.testing.assert_array_equal(loaded.vectors, vectors)
        np.testing.assert_array_equal(loaded.product_ids, products)
        np.testing.assert_array_equal(loaded.views, np.arange(count) % 6)
        assert isinstance(loaded.vectors, np.memmap) == mapped
        del loaded
    assert peaks[False] > vectors.nbytes  # the in-memory load holds the set (and its parts)
    assert peaks[True] < vectors.nbytes / 4, peaks
    assert sorted(path.name for path in (tmp_path / "features").iterdir() if "vectors" in path.name) == []
