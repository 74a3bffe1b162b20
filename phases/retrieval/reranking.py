"""k-reciprocal re-ranking (Zhong et al. 2017, "Re-ranking Person Re-identification with k-reciprocal
Encoding"), on each query's local set: the query and its top candidates from the exact search.

The paper's method works on a [queries + gallery]^2 distance matrix (so does the authors'
code): 4 TB of float32 for a 1M-item index, and as much again for its ranks and its
features. Here each query gets its own, over the query and its `m` candidates only, and the
loops over items are products of boolean masks over a block of queries. With m at least the
index size, a query's result is the whole method's for that query alone (a probe of size
1): tests/test_retrieval_postprocessing.py checks it against a reference written from the
paper's equations. Where the equations leave a detail open, the authors' Python code is
followed: R(q, k/2) with k/2 rounded half to even, and an expansion when the overlap is
over (not at) 2/3.
"""

import numpy as np

from phases.errors import MetricInputError
from phases.exact_search import DEFAULT_BLOCK_BYTES, inverse_norms

# A query's share of a block's traced peak: this many bytes per pair of its local set (ranks,
# distances, weights, masks; 30 measured at 300 candidates x dim 16) plus this many per value of
# its local vectors (gathered, float64 copies; 20 measured at 30 x dim 1024). Their peaks do not
# coincide: at 100 x dim 256 a block's traced peak is ~65% of max_block_bytes.
BYTES_PER_LOCAL_PAIR = 32
BYTES_PER_LOCAL_VALUE = 20


def rerank(
    queries, index, candidates, *, k1: int, k2: int, lambda_value: float, max_block_bytes: int = DEFAULT_BLOCK_BYTES
) -> tuple[np.ndarray, np.ndarray]:
    """Re-order each query's candidates by the k-reciprocal final distance.

    Args:
        queries: [n_query, dim] floats; index: [n_index, dim] floats (compared by cosine).
        candidates: [n_query, m] int index positions per query, m >= 1, none repeated in a row
            (the exact search's top m).
        k1, k2, lambda_value: as RerankingOptions (paper: 20, 6, 0.3).
        max_block_bytes: about the working memory of one block of queries.

    Returns:
        order: [n_query, m] int64 columns of `candidates`, best first (equal distances: the
            candidates' order), so np.take_along_axis(candidates, order, 1) is the new ranking.
        distances: [n_query, m] float32 final distances in that order, in [0, 1]:
            (1 - lambda) x Jaccard distance + lambda x squared Euclidean distance of the unit
            vectors, divided by the largest one from the query within its local set.

    Cost: O(n_query x m^2 x (dim + m)) time; memory, queries in blocks of at most max_block_bytes
    (BYTES_PER_LOCAL_PAIR and _VALUE); the index is read only at the candidates.
    """
    queries, index = np.asarray(queries, dtype=np.float32), np.asarray(index, dtype=np.float32)
    candidates = np.asarray(candidates)
    if candidates.ndim != 2 or len(candidates) != len(queries) or not candidates.shape[1]:
        raise MetricInputError(
            f"candidates must be [n_query, m >= 1] index positions, a row per query; got {list(candidates.shape)} "
            f"for {len(queries)} queries"
        )
    local_size = candidates.shape[1] + 1
    query_bytes = local_size * (local_size * BYTES_PER_LOCAL_PAIR + index.shape[1] * BYTES_PER_LOCAL_VALUE)
    block = max(1, max_block_bytes // query_bytes)
    order = np.empty(candidates.shape, dtype=np.int64)
    distances = np.empty(candidates.shape, dtype=np.float32)
    for start in range(0, len(queries), block):
        rows = slice(start, start + block)
        local = np.concatenate([queries[rows, None], index[candidates[rows]]], axis=1)
        final = _final_distances(local, k1, k2, lambda_value)[:, 1:]
        order[rows] = np.argsort(final, axis=1, kind="stable")
        distances[rows] = np.take_along_axis(final, order[rows], axis=1)
    return order, distances


def _final_distances(local: np.ndarray, k1: int, k2: int, lambda_value: float) -> np.ndarray:
    """[b, n] float32 final distances from item 0 (the query) of each local set local [b, n, dim] to all n.

    The paper's steps (Eqs. 3-4, 7, 10-12), with the loops over items as products of boolean
    masks; only the summation orders of the float32 sums differ from a direct computation
    (~1e-7), and equal distances rank by position in the local set (a stable sort).
    """
    original = _normalised_squared_distances(local)
    rank = np.argsort(original, axis=2, kind="stable")  # N(p, k) for every k, per local set
    reciprocal = _k_reciprocal(rank, k1 + 1)
    half = _k_reciprocal(rank, int(np.around(k1 / 2)) + 1).astype(np.float32)
    # A reciprocal neighbour c adds its own half-size reciprocal set when over 2/3 of it is
    # already in the item's: overlap[i, c] = |R(i) n R_half(c)|, counts exact in float32.
    overlap = _products(reciprocal.astype(np.float32), half.transpose(0, 2, 1))
    added = reciprocal & (3 * overlap > 2 * half.sum(axis=2)[:, None, :])
    expanded = reciprocal | (_products(added.astype(np.float32), half) > 0)
    del overlap, added, half
    weights = np.where(expanded, np.exp(-original), np.float32(0))
    features = weights / weights.sum(axis=2, keepdims=True)  # V, Eq. 7, scaled to sum to 1
    if k2 != 1:  # local query expansion: the mean feature of an item's k2 nearest
        features = _products(_top_k_mask(rank, k2).astype(np.float32), features) / np.float32(min(k2, rank.shape[2]))
    shared = np.minimum(features[:, :1, :], features).sum(axis=2)
    jaccard = 1 - shared / (2.0 - shared)
    return jaccard * (1 - lambda_value) + original[:, 0, :] * lambda_value


def _normalised_squared_distances(local: np.ndarray) -> np.ndarray:
    """[b, n, n] float32 squared Euclidean distances of the unit vectors of local [b, n, dim], each row
    divided by its largest (as the authors' code does); a row of zeros stays zero.

    Computed in float64 and symmetrised, so that a pair's value does not depend on the BLAS kernel
    or on which local set holds it (to float32 rounding)."""
    flat = local.reshape(-1, local.shape[2])
    unit = (flat.astype(np.float64) * inverse_norms("re-ranked", flat)[:, None]).reshape(local.shape)
    gram = _products(unit, unit.transpose(0, 2, 1))
    squared = np.maximum(2 - (gram + gram.transpose(0, 2, 1)), 0).astype(np.float32)
    largest = squared.max(axis=2, keepdims=True)
    return np.divide(squared, largest, out=np.zeros_like(squared), where=largest > 0)


def _products(left: np.ndarray, right: np.ndarray) -> np.ndarray:
    """[b, n, m] left[i] @ right[i] for left [b, n, k] and right [b, k, m], one BLAS call a pair: numpy's
    matmul of stacks did not use BLAS for these (~30x slower on 200 x 101 x 101 x 101, numpy 2.4)."""
    products = np.empty((len(left), left.shape[1], right.shape[2]), dtype=np.result_type(left, right))
    for pair, (a, b) in enumerate(zip(left, right)):
        np.matmul(a, b, out=products[pair])
    return products


def _top_k_mask(rank: np.ndarray, k: int) -> np.ndarray:
    """[b, n, n] bool: item j is among item i's k nearest (rank [b, n, n], nearest first)."""
    mask = np.zeros(rank.shape, dtype=bool)
    np.put_along_axis(mask, rank[:, :, :k], True, axis=2)
    return mask


def _k_reciprocal(rank: np.ndarray, k: int) -> np.ndarray:
    """[b, n, n] bool: j is among i's k nearest and i among j's (the k-reciprocal neighbours, i itself included)."""
    forward = _top_k_mask(rank, k)
    return forward & forward.transpose(0, 2, 1)
