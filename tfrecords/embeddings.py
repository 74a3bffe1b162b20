"""Embedding shards: float32 vectors with their ids, written by phase 4 and extraction.

A folder holds one or more named sets (`train`, `val_query`, ...), each cut into
`<set>-NNNNN.tfrecord` shards, and a `manifest.json` (kind `embeddings`) with the
dimension, counts and sha256 of every shard. A record holds `embedding` (the
vector as raw little-endian float32 bytes: ~4x faster to parse than a float
list), `image/id`, `product/id`, `category/id` and `view`.

`merge_embeddings` gathers the folders of several parts (the extraction's, one per image
shard) into one such folder, their files hard-linked in and renumbered per set.
"""

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tfrecords.errors import ManifestError, UserError
from tfrecords.files import atomic_writer, link_into_place, raise_if_disk_error, sha256_file, temporary_name
from tfrecords.manifest import EmbeddingManifest, ShardEntry, read_manifest, verify_shards, write_manifest
from tfrecords.record_format import encode_example, write_record


@dataclass
class EmbeddingArrays:
    """One set of embeddings in memory: `vectors` [n, dim] float32, the rest [n]."""

    vectors: np.ndarray
    image_ids: np.ndarray
    product_ids: np.ndarray
    category_ids: np.ndarray
    views: np.ndarray


class EmbeddingWriter:
    """Stream embeddings into shards; `close()` (or leaving the `with`) writes the manifest.

    Example:
        with EmbeddingWriter(folder, dim=512) as writer:
            writer.add("val_query", vectors, image_ids, product_ids)
    """

    def __init__(self, folder: str | Path, dim: int, records_per_shard: int = 65536, metadata: dict | None = None):
        # 65,536 x 512-d float32 = 128 MiB of vectors (~143 MB with the ids), about the image shards' 128 MB.
        self.folder, self.dim, self.records_per_shard = Path(folder), dim, records_per_shard
        self.metadata = metadata or {}
        self.folder.mkdir(parents=True, exist_ok=True)
        self._shards: list[ShardEntry] = []
        self._pending: dict[str, list[bytes]] = {}

    def add(self, split, vectors, image_ids, product_ids, category_ids=None, views=None) -> None:
        """Add n embeddings of set `split`: vectors [n, dim], the id arrays [n]."""
        vectors = np.asarray(vectors, dtype="<f4")
        count = len(vectors)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim:
            raise ValueError(f"vectors must be [n, {self.dim}], got {list(vectors.shape)}")
        category_ids = np.full(count, -1) if category_ids is None else np.asarray(category_ids)
        views = np.zeros(count, dtype=int) if views is None else np.asarray(views)
        pending = self._pending.setdefault(split, [])
        for i in range(count):
            image_id = image_ids[i]
            pending.append(
                encode_example(
                    {
                        "embedding": vectors[i].tobytes(),
                        "image/id": image_id.decode() if isinstance(image_id, bytes) else str(image_id),
                        "product/id": int(product_ids[i]),
                        "category/id": int(category_ids[i]),
                        "view": int(views[i]),
                    }
                )
            )
            if len(pending) == self.records_per_shard:
                self._flush(split)
                pending = self._pending.setdefault(split, [])

    def _flush(self, split: str) -> None:
        records = self._pending.pop(split, [])
        if not records:
            return
        number = sum(1 for shard in self._shards if shard.split == split)
        name = f"{split}-{number:05d}.tfrecord"
        with atomic_writer(self.folder / name) as handle:
            size = sum(write_record(handle, record) for record in records)
        self._shards.append(
            ShardEntry(file=name, split=split, records=len(records), bytes=size, sha256=sha256_file(self.folder / name))
        )

    def close(self) -> EmbeddingManifest:
        for split in list(self._pending):
            self._flush(split)
        manifest = EmbeddingManifest(
            shards=self._shards, dim=self.dim, count=sum(s.records for s in self._shards), metadata=self.metadata
        )
        write_manifest(self.folder, manifest)
        return manifest

    def __enter__(self):
        return self

    def __exit__(self, kind, error, traceback):
        if kind is None:
            self.close()


def merge_embeddings(parts: Sequence[str | Path], folder: str | Path, metadata: dict | None = None) -> EmbeddingManifest:
    """One embeddings folder of the shards of the folders `parts`, in that order (rows of a
    set: the parts' rows one part after the other). Each part's shards are checked against
    its manifest, then hard-linked into `folder` (copied across file systems) as
    `<set>-NNNNN.tfrecord`, numbered per set; the manifest, with `metadata`, is written last."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    shards: list[ShardEntry] = []
    dims = set()
    for part in map(Path, parts):
        manifest = read_manifest(part, EmbeddingManifest)
        verify_shards(part, manifest.shards)
        dims.add(manifest.dim)
        for shard in manifest.shards:
            name = f"{shard.split}-{sum(1 for entry in shards if entry.split == shard.split):05d}.tfrecord"
            link_into_place(part / shard.file, folder / name)
            shards.append(shard.model_copy(update={"file": name}))
    if len(dims) != 1:
        raise ValueError(f"cannot merge embeddings of dimensions {sorted(dims)}" if dims else "no embeddings to merge")
    manifest = EmbeddingManifest(shards=shards, dim=dims.pop(), count=sum(s.records for s in shards), metadata=metadata or {})
    write_manifest(folder, manifest)
    return manifest


def read_embeddings(folder: str | Path, split: str, batch_size: int | None = None, verify: bool = True):
    """A tf.data pipeline of one set's records: dicts of `embedding` [dim] and ids."""
    import tensorflow as tf

    manifest = read_manifest(folder, EmbeddingManifest)
    shards = manifest.shards_of(split)
    if not shards:
        raise UserError(f"{folder}: no embeddings of set {split!r}; it has {sorted({s.split for s in manifest.shards})}")
    if verify:
        verify_shards(folder, shards)
    features = {
        "embedding": tf.io.FixedLenFeature([], tf.string),
        "image/id": tf.io.FixedLenFeature([], tf.string),
        "product/id": tf.io.FixedLenFeature([], tf.int64),
        "category/id": tf.io.FixedLenFeature([], tf.int64),
        "view": tf.io.FixedLenFeature([], tf.int64),
    }
    dim = manifest.dim

    def parse(serialized):
        raw = tf.io.parse_example(serialized, features)  # batched parse: one op per batch
        vectors = tf.io.decode_raw(raw["embedding"], tf.float32, little_endian=True)
        return {
            "embedding": tf.reshape(vectors, [-1, dim]),
            "image_id": raw["image/id"],
            "product_id": raw["product/id"],
            "category_id": raw["category/id"],
            "view": raw["view"],
        }

    records = tf.data.TFRecordDataset([str(Path(folder) / shard.file) for shard in shards])
    dataset = records.batch(batch_size or 4096).map(parse, num_parallel_calls=tf.data.AUTOTUNE)
    return dataset if batch_size else dataset.unbatch()


def load_embeddings(folder: str | Path, split: str, verify: bool = True, mapped_in: str | Path | None = None) -> EmbeddingArrays:
    """All embeddings of one set as NumPy arrays (rows in shard order).

    With `mapped_in` (a folder), the vectors are streamed into a temporary `.npy` file
    there and come back memory-mapped, read-only: a set larger than memory loads (phase 4's
    cached train features are 1.3M images x 6 views x 1280 x 4 B = 40 GB at eProduct
    scale), the pages it reads stay in the OS' cache while memory allows. The file is
    unlinked once mapped, so its space is freed with the array; a process killed while
    writing it leaves a `.*.tmp`, which the next run sweeps. The ids are in memory."""
    dataset = read_embeddings(folder, split, batch_size=4096, verify=verify)
    if mapped_in is None:
        parts = list(dataset.as_numpy_iterator())
        columns = {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}
    else:
        columns = _stream_vectors(dataset, read_manifest(folder, EmbeddingManifest), split, Path(mapped_in))
    return EmbeddingArrays(
        vectors=columns["embedding"],
        image_ids=columns["image_id"],
        product_ids=columns["product_id"],
        category_ids=columns["category_id"],
        views=columns["view"],
    )


def _stream_vectors(dataset, manifest: EmbeddingManifest, split: str, folder: Path) -> dict[str, np.ndarray]:
    """`load_embeddings(mapped_in=folder)`'s columns: the vectors written batch by batch
    after a .npy header (plain writes: a full disk is an OSError, not a fault in a mapping)."""
    count = sum(shard.records for shard in manifest.shards_of(split))
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype("<f4")), "fortran_order": False, "shape": (count, manifest.dim)}
    folder.mkdir(parents=True, exist_ok=True)
    path = temporary_name(folder / f"{split}-vectors.npy")
    ids: dict[str, list[np.ndarray]] = {"image_id": [], "product_id": [], "category_id": [], "view": []}
    try:
        written = 0
        with open(path, "wb") as handle:
            np.lib.format.write_array_header_2_0(handle, header)
            for part in dataset.as_numpy_iterator():
                handle.write(np.ascontiguousarray(part["embedding"], dtype="<f4").tobytes())
                written += len(part["embedding"])
                for key, chunks in ids.items():
                    chunks.append(part[key])
        if written != count:
            raise ManifestError(f"set {split!r}: {written} records read, the manifest counts {count}")
        vectors = np.load(path, mmap_mode="r")
    except BaseException as error:
        raise_if_disk_error(folder, error)
        raise
    finally:
        path.unlink(missing_ok=True)  # a mapping outlives its file's name
    return {"embedding": vectors, **{key: np.concatenate(chunks) for key, chunks in ids.items()}}
