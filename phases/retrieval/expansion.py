"""alpha-weighted query expansion and database-side augmentation (Radenovic et al. 2018, "Fine-tuning
CNN Image Retrieval with No Human Annotation", section 5: alpha-QE and DBA).

Both replace a vector by the L2-normalised sum of its nearest index neighbours' unit
vectors, each weighted by max(cosine, 0)^alpha; the neighbours come from the exact
search (phases.metrics.nearest_neighbours), so the result does not depend on block sizes.
"""

import numpy as np

from phases.exact_search import DEFAULT_BLOCK_BYTES, inverse_norms
from phases.metrics import nearest_neighbours

# The [rows, neighbours, dim] float32 gather of neighbour vectors, a block of rows at a time.
GATHER_BLOCK_BYTES = 64 * 2**20


def expand_queries(queries, index, neighbours: int, alpha: float, *, max_block_bytes: int = DEFAULT_BLOCK_BYTES,
                   search=None):
    """alpha-QE: each query becomes the weighted mean of itself (weight 1) and its `neighbours` nearest index items.

    Args:
        queries: [n_query, dim] floats; index: [n_index, dim] floats (both compared by cosine).
        neighbours: k, 1 to n_index; alpha: weight exponent, >= 0.
        max_block_bytes: the exact search's similarity block (phases.metrics.nearest_neighbours).
        search: `search(vectors, k) -> (positions, similarities)` of `index` (an approximate
            index's); None: the exact search.

    Returns:
        [n_query, dim] float32 unit vectors (a zero query with no positive neighbour stays zero).
    Cost: one exact search of the queries for k items, and n_query x k x dim to average.
    """
    return _neighbour_means(queries, index, neighbours, alpha, max_block_bytes, own_weight=1.0, search=search)


def augment_database(index, neighbours: int, alpha: float, *, max_block_bytes: int = DEFAULT_BLOCK_BYTES):
    """DBA: each index item becomes the weighted mean of its `neighbours` nearest index items, itself among them.

    Args:
        index: [n_index, dim] floats; neighbours: k, 1 to n_index; alpha: weight exponent, >= 0.
        max_block_bytes: the exact search's similarity block.

    Returns:
        [n_index, dim] float32 unit vectors: a new index, the input is left as it is.
    Cost: an exact search of the whole index against itself, O(n_index^2 x dim): 100 times
    the search of 10,000 queries in a 1M-item index. Memory: the new index, plus a block
    of rows at a time (the search's similarity block and GATHER_BLOCK_BYTES).
    """
    return _neighbour_means(index, index, neighbours, alpha, max_block_bytes, own_weight=0.0)


def _neighbour_means(vectors, index, neighbours, alpha, max_block_bytes, own_weight, search=None) -> np.ndarray:
    """[n, dim] float32: normalise(own_weight x unit(v) + sum over v's k nearest index items j of
    max(cos(v, j), 0)^alpha x unit(j)) for each row v of vectors [n, dim], a block of rows at a time."""
    vectors, index = np.asarray(vectors, dtype=np.float32), np.asarray(index, dtype=np.float32)
    vector_scale = inverse_norms("query", vectors)
    index_scale = inverse_norms("index", index)  # scaling gathered rows spares a normalised copy of the index
    means = np.empty(vectors.shape, dtype=np.float32)
    rows_per_block = max(1, GATHER_BLOCK_BYTES // (neighbours * index.shape[1] * 4))
    for start in range(0, len(vectors), rows_per_block):
        rows = slice(start, start + rows_per_block)
        if search is None:
            positions, similarities = nearest_neighbours(vectors[rows], index, neighbours, max_block_bytes=max_block_bytes)
        else:
            positions, similarities = search(vectors[rows], neighbours)
        weights = np.maximum(similarities, 0) ** np.float32(alpha) * index_scale[positions]
        sums = (weights[:, None, :] @ index[positions])[:, 0]  # [rows, 1, k] @ [rows, k, dim]
        sums += own_weight * vector_scale[rows, None] * vectors[rows]
        means[rows] = sums * inverse_norms("expanded", sums)[:, None]
    return means
