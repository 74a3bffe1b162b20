"""Embed a split with a model and score query against index: the leaderboard of each epoch."""

from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from phases.metrics import retrieval_scores
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


def score_embeddings(query: SplitEmbeddings, index: SplitEmbeddings) -> dict[str, float]:
    """Retrieval scores of query against index, labels being the product ids."""
    return retrieval_scores(query.vectors, query.product_ids, index.vectors, index.product_ids)


def accuracy(splits: list[SplitEmbeddings], labels_of: str) -> float | None:
    """Classification accuracy over the given splits, when the model classifies and labels exist."""
    if any(split.probabilities is None for split in splits):
        return None
    labels = np.concatenate([getattr(split, labels_of) for split in splits])
    predicted = np.concatenate([split.probabilities.argmax(axis=1) for split in splits])
    return float(np.mean(predicted == labels))
