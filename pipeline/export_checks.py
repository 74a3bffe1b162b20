"""What `pvs export` checks an export against: the run's own embeddings of its final split.

The run's extraction embedded the query and index images of its final split with the
final model (`RUN_DIR/run.json` names the embeddings folder); an export must give the same
vectors from the same image bytes. `parity` embeds a sample of those images, read from the
run's ingested shards as stored (bytes and recorded EXIF orientation), and measures the
largest cosine distance (1 - cos) to the run's vectors. `quantisation_costs` embeds the
whole final split with a quantised TFLite model and scores it as the run scores
(`evaluation.retrieval`, its whitening): MAR@10 of the run's float32 vectors and of the
quantised ones, and how many of each query's top 10 the two share.
"""

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import tensorflow as tf

from phases.metrics import TOP_K
from phases.retrieval import retrieve, retrieve_and_score
from phases.views import view_numbers
from pipeline.search import FinishedRun
from tfrecords.embeddings import EmbeddingArrays, load_embeddings
from tfrecords.options import ReadOptions
from tfrecords.preprocess import prepare
from tfrecords.reader import parse_record, read_images, shard_paths


@dataclass
class FinalSplit:
    """A run's final split: its ingested data, its sets (`<split>_query`, `<split>_index`)
    and the run's embeddings of them (float32 [n, dim], in the embeddings folder's order)."""

    run: FinishedRun
    queries: EmbeddingArrays
    items: EmbeddingArrays

    @classmethod
    def of(cls, run: FinishedRun, embeddings_dir: Path) -> "FinalSplit":
        """The final split of `run` (opened by `pipeline.search.open_run`, which checked its
        embeddings folder `embeddings_dir`)."""
        return cls(run, load_embeddings(embeddings_dir, f"{run.index.split}_query", verify=False), run.index.items)

    @property
    def images_per_call(self) -> int:
        """Images an exported model embeds at a time: its test-time views go through the model as
        one batch, so the run's `evaluation.batch_size` shared among the views (as much memory
        as one of the extraction's passes)."""
        return max(1, self.run.batch_size // len(view_numbers(self.run.test_time_augmentation)))

    @property
    def sets(self) -> list[str]:
        return [f"{self.run.index.split}_query", f"{self.run.index.split}_index"]

    @cached_property
    def _rows(self) -> dict[bytes, int]:
        """Each image id's row in `_vectors`: the query set's, then the index set's."""
        image_ids = [*self.queries.image_ids, *self.items.image_ids]
        return {image_id: row for row, image_id in enumerate(image_ids)}

    @cached_property
    def _vectors(self) -> np.ndarray:
        return np.concatenate([self.queries.vectors, self.items.vectors])

    def vectors_of(self, image_ids) -> np.ndarray:
        """The run's embeddings [n, dim] of these image ids (bytes or str)."""
        return self._vectors[[self._rows[image_id if isinstance(image_id, bytes) else image_id.encode()]
                              for image_id in image_ids]]


@dataclass
class Sample:
    """Images of the final split: their ids, their encoded bytes as stored, and as the run's
    reader prepared them (float32 [n, size, size, 3] in [0, 255], upright by their recorded
    EXIF orientation)."""

    image_ids: list[bytes]
    encoded: list[bytes]
    prepared: np.ndarray


def sample(final: FinalSplit, count: int, size: int) -> Sample:
    """`count` images spread evenly over the final split's records (query set, then index
    set, in shard order), or all of them when it has fewer."""
    total = len(final.queries.image_ids) + len(final.items.image_ids)
    chosen = tf.constant(np.unique(np.linspace(0, total - 1, min(count, total)).round().astype(np.int64)))
    records = tf.data.TFRecordDataset(shard_paths(final.run.index.data_dir, final.sets)).enumerate()
    picked = records.filter(lambda position, _: tf.reduce_any(tf.equal(position, chosen))).map(
        lambda _, serialized: parse_record(serialized))
    image_ids, encoded, prepared = [], [], []
    for record in picked:
        image_ids.append(record["image/id"].numpy())
        encoded.append(record["image/encoded"].numpy())
        prepared.append(prepare(record["image/encoded"], size, record["image/orientation"]).numpy())
    return Sample(image_ids, encoded, np.stack(prepared))


def cosine_distances(vectors: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """1 - cos of each row pair of [n, dim] arrays (0 for the same direction, 2 for opposite)."""
    vectors, reference = np.asarray(vectors, np.float64), np.asarray(reference, np.float64)
    norms = np.linalg.norm(vectors, axis=1) * np.linalg.norm(reference, axis=1)
    return 1.0 - np.sum(vectors * reference, axis=1) / np.maximum(norms, 1e-30)


def parity(embed: Callable, inputs, final: FinalSplit, images: Sample) -> float:
    """The largest 1 - cos between the run's embeddings of `images` and an export's: `embed`
    (a chunk of `inputs`, the sample's encoded bytes or prepared images -> embeddings
    [chunk, dim]) called on `final.images_per_call` of them at a time."""
    step = final.images_per_call
    vectors = np.concatenate([np.asarray(embed(inputs[start:start + step])) for start in range(0, len(inputs), step)])
    return float(cosine_distances(vectors, final.vectors_of(images.image_ids)).max())


def split_batches(final: FinalSplit, split: str, size: int, verify: bool = True) -> Iterator[dict]:
    """Set `split` of the run's data as its extraction read it: batches of prepared images
    with their ids; its shards sha256-checked first when `verify`."""
    options = ReadOptions(image_size=size, batch_size=final.images_per_call, deterministic=True, verify=verify)
    return read_images(final.run.index.data_dir, split, options).as_numpy_iterator()


def quantisation_costs(embed: Callable[[np.ndarray], np.ndarray], final: FinalSplit, size: int) -> dict:
    """What a quantised model costs, on the whole final split: `embed` (prepared images ->
    embeddings) against the run's float32 embeddings, both retrieved as the run retrieves.

    Returns: {"images": how many were embedded, "mar_at_10": {"float32": ..., "quantised": ...},
    "recall_at_10_against_float32": the mean share of each query's top 10 (fewer when the
    index is smaller) that the quantised embeddings retrieve too, "max_cosine_distance"}.
    """
    (query_ids, query_labels, queries), (item_ids, item_labels, items) = (
        _embedded(embed, final, split, size) for split in final.sets)
    float_queries, float_items = final.vectors_of(query_ids), final.vectors_of(item_ids)
    index = final.run.index

    def score(query_vectors, item_vectors):
        return retrieve_and_score(query_vectors, query_labels, item_vectors, item_labels, index.retrieval,
                                  index.whitening)

    depth = min(TOP_K, len(items))
    quantised_top, _ = retrieve(queries, items, index.retrieval, index.whitening, depth)
    float_top, _ = retrieve(float_queries, float_items, index.retrieval, index.whitening, depth)
    shared = [len(set(mine) & set(theirs)) / depth for mine, theirs in zip(quantised_top, float_top)]
    distances = cosine_distances(np.concatenate([queries, items]), np.concatenate([float_queries, float_items]))
    return {
        "images": len(queries) + len(items),
        "mar_at_10": {"float32": score(float_queries, float_items)["mar_at_10"],
                      "quantised": score(queries, items)["mar_at_10"]},
        "recall_at_10_against_float32": float(np.mean(shared)),
        "max_cosine_distance": float(distances.max()),
    }


def _embedded(embed: Callable[[np.ndarray], np.ndarray], final: FinalSplit, split: str, size: int):
    """`embed`'s embeddings of set `split`, in the reader's order: (image ids, product ids [n], vectors [n, dim])."""
    image_ids, product_ids, vectors = [], [], []
    for batch in split_batches(final, split, size):
        image_ids.extend(batch["image_id"])
        product_ids.append(batch["product_id"])
        vectors.append(embed(batch["image"]))
    return image_ids, np.concatenate(product_ids), np.concatenate(vectors)
