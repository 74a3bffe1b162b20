"""Embed a split with a model and score query against index: the leaderboard of each epoch."""

import hashlib
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

from phases.metrics import triplet_accuracy
from phases.retrieval import RetrievalOptions, Whitening, retrieve_and_score
from phases.views import embed_views
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
    model: keras.Model, data_dir: Path, split: str, image_size: int, batch_size: int, verify: bool = True,
    augmentation: str = "none", limit: int | None = None,
) -> SplitEmbeddings:
    """Run `model` (images -> embeddings, or -> [embeddings, probabilities]) over a split.

    Images are read without training augmentation, in shard order; `augmentation` is the
    test-time augmentation (`evaluation.test_time_augmentation`: phases/views.py).
    `verify=False` skips the shards' sha256 check, for callers that checked them already
    (it reads every byte). `limit`: the first `limit` images only, in reader order.
    """
    options = ReadOptions(image_size=image_size, batch_size=batch_size, deterministic=True, verify=verify)
    batches = read_images(data_dir, split, options)
    if limit is not None:
        batches = batches.take(-(-limit // batch_size))
    vectors, probabilities, products, categories, ids = [], [], [], [], []
    for batch in batches.as_numpy_iterator():
        embeddings, probability = embed_views(model, batch["image"], augmentation)
        if probability is not None:
            probabilities.append(probability)
        vectors.append(embeddings)
        products.append(batch["product_id"])
        categories.append(batch["category_id"])
        ids.append(batch["image_id"])
    return SplitEmbeddings(
        vectors=np.concatenate(vectors)[:limit],
        product_ids=np.concatenate(products)[:limit],
        category_ids=np.concatenate(categories)[:limit],
        image_ids=np.concatenate(ids)[:limit],
        probabilities=np.concatenate(probabilities)[:limit] if probabilities else None,
    )


def embedding_scores(query_vectors, query_labels, index_vectors, index_labels, triplet_sample: int,
                     retrieval: RetrievalOptions | None = None, whitening: Whitening | None = None) -> dict[str, float]:
    """Retrieval scores of query against index, plus the triplet accuracy of both together.

    Args:
        query_vectors, index_vectors: [n_query, dim] and [n_index, dim] embeddings.
        query_labels, index_labels: [n_query] and [n_index] product ids.
        triplet_sample: most items `triplet_accuracy` is computed on (`evaluation.triplet_sample`).
        retrieval: `evaluation.retrieval` (None: the plain exact search), and `whitening` the
            one learned for it (`learn_whitening`), given exactly when it asks for one.

    Returns:
        `retrieval_scores`' dict of the ranking `phases.retrieval.retrieve` makes (the one
        retrieval of the submission and `pvs search` too), then `triplet_accuracy` (angular
        distance, as the retrieval's cosine) of the embeddings as searched (whitened, when
        configured; query expansion and re-ranking change rankings, not embeddings) on
        `triplet_sample_rows` of the query and index items together; left out when that
        sample has no valid triplet.
    """
    scores = retrieve_and_score(query_vectors, query_labels, index_vectors, index_labels,
                                retrieval or RetrievalOptions(), whitening)
    labels = np.concatenate([np.asarray(query_labels), np.asarray(index_labels)])
    rows = triplet_sample_rows(labels, triplet_sample)
    vectors = np.concatenate([np.asarray(query_vectors), np.asarray(index_vectors)])[rows]
    if whitening is not None:
        vectors = whitening.apply(vectors)
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


def score_split(scorer: keras.Model, config, data_dir: Path, group: str, labels_of: str | None, verify: bool = True,
                whitenings: "WhiteningMemo | None" = None) -> dict:
    """Scores of `group` (val or test) for a scorer (images -> features, or -> [features,
    probabilities]): retrieval and triplet accuracy with the features, plus classification
    accuracy when the labels are categories (val and test products are never train products).
    `config`: the PipelineConfig (its image size and evaluation settings). `whitenings`: a
    trainer's memo, so the last epoch's val and the final test share one learned whitening."""
    size, batch, views = config.data.image_size, config.evaluation.batch_size, config.evaluation.test_time_augmentation
    query = embed_split(scorer, data_dir, f"{group}_query", size, batch, verify, views)
    index = embed_split(scorer, data_dir, f"{group}_index", size, batch, verify, views)
    scores = embedding_scores(
        query.vectors, query.product_ids, index.vectors, index.product_ids, config.evaluation.triplet_sample,
        config.evaluation.retrieval,
        (whitenings or WhiteningMemo()).whitening(scorer, config, data_dir, verify),
    )
    if labels_of == "category_id":
        scores = {f"{group}_accuracy": accuracy([query, index], "category_ids"), **scores}
    return scores


def whitening_for(scorer: keras.Model, config, data_dir: Path, verify: bool = True) -> Whitening | None:
    """The whitening `evaluation.retrieval.whitening` asks for, learned on the scorer's embeddings
    (with the test-time augmentation) of the first `train_images` train images in reader order
    (the train shards interleaved, so several shards' products); None when it asks for none.
    Costs one embedding pass over those images, each time a split is scored."""
    options = config.evaluation.retrieval.whitening
    if options is None:
        return None
    train = embed_split(scorer, data_dir, "train", config.data.image_size, config.evaluation.batch_size, verify,
                        config.evaluation.test_time_augmentation, limit=options.train_images)
    return learn_whitening(train.vectors, config.evaluation.retrieval)


class WhiteningMemo:
    """`whitening_for` of the newest scorer weights seen, learned again only when they change.

    A phase scores val after its last epoch and then its final split with the same weights:
    one embedding pass over the whitening's train images serves both. The key is the sha256
    of the scorer's weights (about 20 MB for EfficientNet-B0: milliseconds, against seconds
    to embed the images). The config and data folder are a trainer's own, fixed in its life.
    """

    def __init__(self) -> None:
        self.key: str | None = None
        self.learned: Whitening | None = None

    def whitening(self, scorer: keras.Model, config, data_dir: Path, verify: bool = True) -> Whitening | None:
        if config.evaluation.retrieval.whitening is None:
            return None
        digest = hashlib.sha256()
        for weights in scorer.get_weights():
            digest.update(np.ascontiguousarray(weights).tobytes())
        key = f"{data_dir}:{digest.hexdigest()}"
        if key != self.key:
            self.learned, self.key = whitening_for(scorer, config, data_dir, verify), key
        return self.learned


def learn_whitening(train_vectors: np.ndarray, retrieval: RetrievalOptions) -> Whitening | None:
    """`Whitening.fit` of train embeddings [n, dim] with the options of `retrieval.whitening` (None: none)."""
    options = retrieval.whitening
    return None if options is None else Whitening.fit(train_vectors, options.dimensions, options.shrinkage)
