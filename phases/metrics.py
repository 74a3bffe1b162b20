"""Retrieval and triplet metrics on embeddings, scored as in the eProduct benchmark.

`retrieval_scores` searches every query embedding against an index by cosine
similarity (the exact search of phases/exact_search.py) and returns MAR@10 (the
eProduct leaderboard metric) with MAP@10, recall@k, precision@1 and MAP@R;
`nearest_neighbours` returns the same search's top k (for a submission);
`ranking_scores` scores a ranking made elsewhere (phases.retrieval's post-processed
one). `triplet_accuracy` is MILDNet's share of triplets that an embedding orders
correctly. NumPy only: TensorFlow tensors (and anything else np.asarray takes) are
accepted as inputs.
"""

import numpy as np

from phases.errors import MetricInputError
from phases.exact_search import (
    DEFAULT_BLOCK_BYTES,
    SIMILARITY_BYTES,
    inverse_norms,
    search_blocks,
    squared_norms,
)
from phases.phase_config import DISTANCE_METRICS

TOP_K = 10  # the leaderboard cut-off of MAR@10, MAP@10 and recall@10
# ranking_scores scores this many queries at a time: ~30 bytes a ranked item each.
RANKING_CHUNK = 4096
# triplet_accuracy's [anchors x items] distance blocks, a few of them alive at a time.
TRIPLET_BLOCK_BYTES = 128 * 2**20
# The keys of retrieval_scores, in the order score tables show them.
SCORE_NAMES = (
    "mar_at_10", "map_at_10", "recall_at_1", "recall_at_5", "recall_at_10", "precision_at_1", "map_at_r",
    "n_queries", "n_queries_without_relevant",
)


def retrieval_scores(
    query_embeddings,
    query_labels,
    index_embeddings,
    index_labels,
    *,
    max_block_bytes: int = DEFAULT_BLOCK_BYTES,
    chunk_size: int | None = None,
) -> dict[str, float]:
    """Search each query against the index by cosine similarity and score the ranking.

    Args:
        query_embeddings: [n_query, dim] floats (NumPy array or TensorFlow tensor).
        query_labels: [n_query] int product ids.
        index_embeddings: [n_index, dim] floats.
        index_labels: [n_index] int product ids.
        max_block_bytes: bytes of the [chunk, n_index] float32 similarity block
            computed at a time; peak working memory is about 1.3x this (2.3x
            with heavy ties), plus a float32 copy of the index when it is not
            float32 already.
        chunk_size: queries per block; by default as many as fit max_block_bytes.

    Returns:
        A dict with, per query averaged over the `n_queries` scored ones (R is
        the number of index items sharing the query's label, rel(r) is 1 when
        the item at rank r does, P@r is the share of relevant items in ranks 1..r):
          mar_at_10: (relevant items in the top 10) / min(10, R), the eProduct
              leaderboard metric.
          map_at_10: sum over r <= 10 of P@r * rel(r), divided by min(10, R).
          recall_at_1, recall_at_5, recall_at_10: share of queries with at least
              one relevant item in the top 1, 5, 10 (recall_at_1 equals
              precision_at_1; papers report one or the other).
          precision_at_1: share of queries whose first result is relevant.
          map_at_r: MAP@R of Musgrave et al. 2020, "A Metric Learning Reality
              Check": sum over r <= R of P@r * rel(r), divided by R.
          n_queries: queries scored (int).
          n_queries_without_relevant: queries left out because no index item
              shares their label (int).

    Similarity is the cosine: both sides are normalised, a zero vector (or
    one of norm below 2^-50) has similarity 0 to everything. The ranking is
    by similarities computed in a fixed order for each pair (phases/exact_search.py),
    equal ones ranking the lower index position first, so it does not depend
    on max_block_bytes or chunk_size, and duplicate index vectors tie. A
    query with R relevant items needs its top max(10, R) ranked, which costs
    chunk x R x about 40 bytes and R x about 4 us (dim 512): nothing for
    product data (R ~ 5), a lot if R nears n_index.

    Raises:
        MetricInputError (a ValueError): empty sets, mismatched shapes,
            non-finite embeddings, or no query with a relevant item.
    """
    queries, index = _checked_search(query_embeddings, index_embeddings)
    query_labels = _checked_labels("query", query_labels, queries)
    index_labels = _checked_labels("index", index_labels, index)
    relevant_counts, scored = _scored_queries(query_labels, index_labels)
    depths = np.maximum(relevant_counts, TOP_K)
    chunks = search_blocks(queries, index, scored, depths, max_block_bytes, chunk_size)
    ranked_chunks = ((start, rows, ranked) for start, rows, ranked, _ in chunks)
    return _mean_scores(ranked_chunks, query_labels, index_labels, relevant_counts, scored)


def ranking_scores(ranked_positions, query_labels, index_labels) -> dict[str, float]:
    """retrieval_scores of a ranking made elsewhere (e.g. post-processed: phases.retrieval.retrieve).

    Args:
        ranked_positions: [n_query, depth] int index positions per query, best first; a
            query with R relevant items needs depth >= min(max(10, R), n_index), which
            ranking_depth gives for the whole set.
        query_labels: [n_query] int product ids; index_labels: [n_index] int product ids.

    Returns:
        The dict of retrieval_scores, same names and definitions. For the plain
        search's ranking (nearest_neighbours, ranking_depth deep) it equals
        retrieval_scores'.

    Raises:
        MetricInputError: mismatched shapes, positions outside the index, a ranking
            too shallow for some query's MAP@R, or no query with a relevant item.
    """
    positions, query_labels, index_labels = map(np.asarray, (ranked_positions, query_labels, index_labels))
    fits = positions.ndim == 2 and query_labels.shape == positions.shape[:1] and index_labels.ndim == 1
    if not fits or not positions.size or not np.issubdtype(positions.dtype, np.integer) or positions.min() < 0:
        raise MetricInputError(
            f"a ranking is [n_query, depth >= 1] int positions in the index, with [n_query] query and [n_index] "
            f"index labels; got {positions.dtype} positions {list(positions.shape)}, query labels "
            f"{list(query_labels.shape)}, index labels {list(index_labels.shape)}"
        )
    if positions.max() >= len(index_labels):
        raise MetricInputError(f"ranked positions go up to {positions.max()}, past the {len(index_labels)} index items")
    relevant_counts, scored = _scored_queries(query_labels, index_labels)
    needed = np.minimum(np.maximum(relevant_counts[scored], TOP_K), len(index_labels))
    too_shallow = np.flatnonzero(needed > positions.shape[1])
    if len(too_shallow):
        row = scored[too_shallow[0]]
        raise MetricInputError(
            f"the ranking holds {positions.shape[1]} items a query, but query row {row} has R = "
            f"{relevant_counts[row]} relevant index items and MAP@R needs its top {needed[too_shallow[0]]}: "
            f"rank ranking_depth(query_labels, index_labels) = {needed.max()} items a query"
        )
    chunks = (
        (start, scored[start : start + RANKING_CHUNK], positions[scored[start : start + RANKING_CHUNK]])
        for start in range(0, len(scored), RANKING_CHUNK)
    )
    return _mean_scores(chunks, query_labels, index_labels, relevant_counts, scored)


def ranking_depth(query_labels, index_labels) -> int:
    """How many items a query ranking_scores needs: the largest min(max(10, R), n_index) over the queries
    with relevant items (R: index items sharing the query's label)."""
    index_labels = np.asarray(index_labels)
    relevant_counts, scored = _scored_queries(np.asarray(query_labels), index_labels)
    return int(min(max(relevant_counts[scored].max(), TOP_K), len(index_labels)))


def nearest_neighbours(
    query_embeddings,
    index_embeddings,
    k: int = TOP_K,
    *,
    max_block_bytes: int = DEFAULT_BLOCK_BYTES,
    chunk_size: int | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The k index items most cosine-similar to each query, best first: retrieval_scores' search.

    Args:
        query_embeddings: [n_query, dim] floats (NumPy array or TensorFlow tensor).
        index_embeddings: [n_index, dim] floats.
        k: neighbours per query, 1 to n_index.
        max_block_bytes, chunk_size: as in retrieval_scores.

    Returns:
        positions: [n_query, k] int64 index rows, nearest first (equal
            similarities: lower position first), the same whatever
            max_block_bytes and chunk_size (phases/exact_search.py: the exception).
        similarities: [n_query, k] float32 cosine similarities of those rows.
    """
    queries, index = _checked_search(query_embeddings, index_embeddings)
    if not 1 <= k <= len(index):
        raise MetricInputError(f"k must be between 1 and the index size {len(index)}; got {k}")
    positions = np.empty((len(queries), k), dtype=np.int64)
    similarities = np.empty((len(queries), k), dtype=np.float32)
    chunks = search_blocks(queries, index, np.arange(len(queries)), np.full(len(queries), k), max_block_bytes, chunk_size)
    for _, rows, ranked, ranked_similarities in chunks:
        positions[rows], similarities[rows] = ranked, ranked_similarities
    return positions, similarities


def triplet_accuracy(labels, embeddings, distance_metric: str = "angular") -> float:
    """MILDNet's triplet accuracy: the share of valid triplets ordered correctly.

    A valid triplet (a, p, n) has an anchor a, a positive p != a with a's label
    and a negative n with another label; it is correct when d(a, p) < d(a, n)
    strictly (a tie counts as wrong). Every valid triplet of the set counts.

    Args:
        labels: [n] int product ids.
        embeddings: [n, dim] floats (NumPy array or TensorFlow tensor).
        distance_metric: "L2", "squared-L2" or "angular" (1 - cosine; a zero
            vector is at distance 1 from everything). L2 and squared-L2 order
            pairs alike, so they give the same accuracy.

    Returns:
        The accuracy in [0, 1], or NaN when the set has no valid triplet (no
        label with two items, or a single label): undefined, not zero.

    Cost: O(n^2 log n) time (per anchor, the negative distances are sorted and
    each positive distance looked up), and anchor blocks of TRIPLET_BLOCK_BYTES.
    """
    embeddings = _checked_embeddings("triplet", embeddings)
    labels = _checked_labels("triplet", labels, embeddings)
    if distance_metric not in DISTANCE_METRICS:
        raise MetricInputError(f"distance_metric must be one of {', '.join(DISTANCE_METRICS)}; got {distance_metric!r}")
    distances_from = _distance_rows(embeddings, distance_metric)
    correct = total = 0
    block_rows = max(1, TRIPLET_BLOCK_BYTES // (max(1, len(labels)) * SIMILARITY_BYTES))
    for start in range(0, len(labels), block_rows):
        anchors = np.arange(start, min(start + block_rows, len(labels)))
        for anchor, distances in zip(anchors, distances_from(anchors)):
            same_label = labels == labels[anchor]
            negatives = np.sort(distances[~same_label])
            same_label[anchor] = False
            positives = distances[same_label]
            triplets = len(positives) * len(negatives)
            # Negatives at or below a positive's distance make that triplet wrong.
            correct += triplets - int(np.searchsorted(negatives, positives, side="right").sum())
            total += triplets
    return correct / total if total else float("nan")


def _checked_embeddings(name: str, embeddings) -> np.ndarray:
    """embeddings as float32 [n, dim], or a MetricInputError naming the shape."""
    embeddings = np.asarray(embeddings, dtype=np.float32)
    if embeddings.ndim != 2:
        raise MetricInputError(f"{name} embeddings must be [n, dim]; got {list(embeddings.shape)}")
    return embeddings


def _checked_labels(name: str, labels, embeddings: np.ndarray) -> np.ndarray:
    """labels as [n], one per embedding, or a MetricInputError naming both shapes."""
    labels = np.asarray(labels)
    if labels.shape != embeddings.shape[:1]:
        raise MetricInputError(
            f"{name} labels must be [n], one per {name} embedding; "
            f"got labels {list(labels.shape)} for embeddings {list(embeddings.shape)}"
        )
    return labels


def _checked_search(query_embeddings, index_embeddings) -> tuple[np.ndarray, np.ndarray]:
    """Both sets as float32 [n, dim]: non-empty and of one dimension, or a MetricInputError."""
    queries = _checked_embeddings("query", query_embeddings)
    index = _checked_embeddings("index", index_embeddings)
    for name, embeddings in (("query", queries), ("index", index)):
        if not len(embeddings):
            raise MetricInputError(f"the {name} set is empty: retrieval needs at least one {name} embedding")
    if queries.shape[1] != index.shape[1]:
        raise MetricInputError(
            f"query embeddings {list(queries.shape)} and index embeddings {list(index.shape)} differ in dimension"
        )
    return queries, index


def _relevant_counts(query_labels: np.ndarray, index_labels: np.ndarray) -> np.ndarray:
    """[n_query] number of index items sharing each query's label (R)."""
    labels, counts = np.unique(index_labels, return_counts=True)
    positions = np.searchsorted(labels, query_labels).clip(max=len(labels) - 1)
    return np.where(labels[positions] == query_labels, counts[positions], 0)


def _scored_queries(query_labels: np.ndarray, index_labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """R [n_query] per query, and the rows of the queries with R > 0, by increasing R (stable).

    Sorted by R, the few queries with many relevant items share chunks, so the depth
    of every other chunk of retrieval_scores (its largest R, at least 10) stays small."""
    relevant_counts = _relevant_counts(query_labels, index_labels)
    scored = np.flatnonzero(relevant_counts > 0)
    if not len(scored):
        raise MetricInputError("no query label occurs in the index: check that both sets come from the same products")
    return relevant_counts, scored[np.argsort(relevant_counts[scored], kind="stable")]


def _mean_scores(ranked_chunks, query_labels, index_labels, relevant_counts, scored) -> dict[str, float]:
    """The dict of retrieval_scores from ranked_chunks: (start, rows [c], ranked positions [c, depth]) covering
    `scored` in order (start: the chunk's offset in it), R per query relevant_counts [n_query]."""
    per_query: dict[str, np.ndarray] = {}
    for start, rows, ranked in ranked_chunks:
        relevant = index_labels[ranked] == query_labels[rows, None]
        for name, values in _query_scores(relevant, relevant_counts[rows]).items():
            per_query.setdefault(name, np.empty(len(scored)))[start : start + len(rows)] = values

    scores: dict[str, float] = {name: float(values.mean()) for name, values in per_query.items()}
    scores["n_queries"] = len(scored)
    scores["n_queries_without_relevant"] = len(query_labels) - len(scored)
    return {name: scores[name] for name in SCORE_NAMES}


def _query_scores(relevant: np.ndarray, counts: np.ndarray) -> dict[str, np.ndarray]:
    """Per-query scores from relevant [chunk, depth] bool (ranked) and R [chunk]; see retrieval_scores."""
    ranks = np.arange(1, relevant.shape[1] + 1)
    precision = np.cumsum(relevant, axis=1) / ranks  # P@r for r = 1..depth
    top = relevant[:, :TOP_K]
    cutoff = np.minimum(counts, TOP_K)
    return {
        "mar_at_10": top.sum(axis=1) / cutoff,
        "map_at_10": (precision[:, :TOP_K] * top).sum(axis=1) / cutoff,
        "recall_at_1": relevant[:, :1].any(axis=1),
        "recall_at_5": relevant[:, :5].any(axis=1),
        "recall_at_10": top.any(axis=1),
        "precision_at_1": relevant[:, 0],
        "map_at_r": (precision * relevant * (ranks <= counts[:, None])).sum(axis=1) / counts,
    }


def _distance_rows(embeddings: np.ndarray, distance_metric: str):
    """A function from anchor positions [c] to their float32 distances [c, n] to every embedding."""
    if distance_metric == "angular":
        unit = embeddings * inverse_norms("triplet", embeddings)[:, None]
        return lambda anchors: 1 - unit[anchors] @ unit.T
    norms_squared = squared_norms("triplet", embeddings)

    def distances(anchors: np.ndarray) -> np.ndarray:
        # |a - b|^2 = |a|^2 + |b|^2 - 2 a.b, clipped: rounding can make it slightly negative.
        squared = np.maximum(norms_squared[anchors, None] + norms_squared - 2 * (embeddings[anchors] @ embeddings.T), 0)
        return squared if distance_metric == "squared-L2" else np.sqrt(squared)

    return distances
