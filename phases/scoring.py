"""Embed a split with a model and score query against index: the leaderboard of each epoch."""

from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from phases.metrics import retrieval_scores, triplet_accuracy
from tfrecords.options import ReadOptions
from tfrecords.reader import read_images


@dataclass
class SplitEmbeddings:
    """A split's embeddings [n, dim] with ids [n]; `probabilities` [n, classes] for classifiers."""

    vectors: np.ndarray
    product_ids: np.ndarray
    category_ids: np.ndarray
    image_ids: np.ndarray
    probabilities: np.ndarray | None = None


def embed_split(
    model: keras.Model, data_dir: Path, split: str, image_size: int, batch_size: int, verify: bool = True
) -> SplitEmbeddings:
    """Run `model` (images -> embeddings, or -> [embeddings, probabilities]) over a split.

    Images are read without augmentation, in shard order. `verify=False` skips the
    shards' sha256 check, for callers that checked them already (it reads every byte).
    """
    options = ReadOptions(image_size=image_size, batch_size=batch_size, deterministic=True, verify=verify)
    vectors, probabilities, products, categories, ids = [], [], [], [], []
    for batch in read_images(data_dir, split, options).as_numpy_iterator():
        output = model.predict_on_batch(batch["image"])
        if isinstance(output, (list, tuple)):
            output, probability = output
            probabilities.append(np.asarray(probability))
        vectors.append(np.asarray(output, dtype=np.float32))
        products.append(batch["product_id"])
        categories.append(batch["category_id"])
        ids.append(batch["image_id"])
    return SplitEmbeddings(
        vectors=np.concatenate(vectors),
        product_ids=np.concatenate(products),
        category_ids=np.concatenate(categories),
        image_ids=np.concatenate(ids),
        probabilities=np.concatenate(probabilities) if probabilities else None,
    )


def embedding_scores(query_vectors, query_labels, index_vectors, index_labels, triplet_sample: int) -> dict[str, float]:
    """Retrieval scores of query against index, plus the triplet accuracy of both together.

    Args:
        query_vectors, index_vectors: [n_query, dim] and [n_index, dim] embeddings.
        query_labels, index_labels: [n_query] and [n_index] product ids.
        triplet_sample: most items `triplet_accuracy` is computed on (`evaluation.triplet_sample`).

    Returns:
        `retrieval_scores`' dict, then `triplet_accuracy` (angular distance, as the
        retrieval's cosine) on `triplet_sample_rows` of the query and index items
        together; left out when that sample has no valid triplet.
    """
    scores = retrieval_scores(query_vectors, query_labels, index_vectors, index_labels)
    labels = np.concatenate([np.asarray(query_labels), np.asarray(index_labels)])
    rows = triplet_sample_rows(labels, triplet_sample)
    vectors = np.concatenate([np.asarray(query_vectors), np.asarray(index_vectors)])[rows]
    triplet = triplet_accuracy(labels[rows], vectors, "angular")
    if not np.isnan(triplet):
        scores["triplet_accuracy"] = triplet
    return scores


def triplet_sample_rows(labels: np.ndarray, limit: int) -> np.ndarray:
    """Increasing rows of at most `limit` items: all of them when they fit, else whole products.

    Products are taken in a fixed random order (seed 0, so every epoch and run scores
    the same items) while their items fit. Whole products, not single items: a uniform
    sample of 2,000 of 100,000 index images would hold almost no two images of one
    product, hence almost no valid triplet. Triplet accuracy costs O(limit^2 log limit).
    """
    if len(labels) <= limit:
        return np.arange(len(labels))
    _, product_of_row, sizes = np.unique(labels, return_inverse=True, return_counts=True)
    order = np.random.default_rng(0).permutation(len(sizes))
    taken = order[np.cumsum(sizes[order]) <= limit]
    return np.flatnonzero(np.isin(product_of_row, taken))


def accuracy(splits: list[SplitEmbeddings], labels_of: str) -> float | None:
    """Classification accuracy over the given splits, when the model classifies and labels exist."""
    if any(split.probabilities is None for split in splits):
        return None
    labels = np.concatenate([getattr(split, labels_of) for split in splits])
    predicted = np.concatenate([split.probabilities.argmax(axis=1) for split in splits])
    return float(np.mean(predicted == labels))


def score_split(scorer: keras.Model, config, data_dir: Path, group: str, labels_of: str | None, verify: bool = True) -> dict:
    """Scores of `group` (val or test) for a scorer (images -> features, or -> [features,
    probabilities]): retrieval and triplet accuracy with the features, plus classification
    accuracy when the labels are categories (val and test products are never train products).
    `config`: the PipelineConfig (its image size and evaluation settings)."""
    size, batch = config.data.image_size, config.evaluation.batch_size
    query = embed_split(scorer, data_dir, f"{group}_query", size, batch, verify)
    index = embed_split(scorer, data_dir, f"{group}_index", size, batch, verify)
    scores = embedding_scores(
        query.vectors, query.product_ids, index.vectors, index.product_ids, config.evaluation.triplet_sample
    )
    if labels_of == "category_id":
        scores = {f"{group}_accuracy": accuracy([query, index], "category_ids"), **scores}
    return scores
