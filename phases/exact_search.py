"""Exact cosine search, a block of queries at a time, ranked the same whatever the block size.

`search_blocks` yields each query's top items, best first: the float32 block product finds
candidates, which are recomputed in a fixed order per pair (float64) and ranked by
(-similarity, position). `phases.metrics` scores and lists neighbours with it. NumPy only.
"""

from functools import partial

import numpy as np

from phases.errors import MetricInputError

SIMILARITY_BYTES = 4  # float32
# A [queries x index] float32 block of this size is computed at a time. The search
# needs about 1.3x the block (the >= masks add a byte per entry; 2.3x where heavy ties
# make _depth_th_largest partition the whole block, which copies it; _top_ranked's exact
# re-ranking adds ~1 MiB: 324 MiB traced peak on 2,000 x 100,000 x 512, 323 MiB without,
# benchmarks/retrieval.py): with 256 MiB, a 1M-item index is searched 67 queries at a
# time in about 0.33 GB on top of the index, where 10k queries at once would need 40 GB.
# The fewer the queries per block, the more often the whole index is read from memory:
# on 1,000 x 1M x 512 (2 cores, one run each, benchmarks/retrieval_scale.py --queries
# 1000 --block-mib N), nearest_neighbours took 34.0 CPU s with 128 MiB, 25.5 with 256 MiB
# (25% less), 22.0 with 512 MiB (35% less, for twice the memory). On 2,000 x 100,000 x
# 512, 256 MiB saved ~2% over 128 MiB, 32 MiB cost ~30%.
DEFAULT_BLOCK_BYTES = 256 * 2**20
# _top_ranked bounds each row's depth-th largest similarity by the maxima of groups of this many items.
PARTITION_GROUP = 256
# _top_ranked recomputes a row's candidates (the items within the float32 error bound of its depth-th
# largest similarity: on benchmarks/retrieval.py's data 10.06 a row for a depth of 10) at about 3-4 us
# each (dim 512, one core): ~3% of the search. A row with more than depth + this many (a collapsed
# model: everything within ~1e-4) keeps its float32 order instead, so that it costs at most ~4 ms more.
MAX_NEAR_TIES = 1024
# _exact_cosines' [pairs, dim] float64 blocks, about three alive at a time on top of the similarity
# block: 8 MiB ones kept ~20 MiB more resident on benchmarks/retrieval.py, 2 MiB ones ~4 MiB, as fast.
EXACT_BLOCK_BYTES = 2 * 2**20


def search_blocks(queries, index, rows, depths, max_block_bytes, chunk_size):
    """Rank the whole index for the query `rows`, a chunk of them at a time.

    Args:
        queries: [n_query, dim] float32; index: [n_index, dim] float32.
        rows: [n] query rows to search, in this order.
        depths: [n_query] how many top items each query needs.
        max_block_bytes, chunk_size: as in retrieval_scores.

    Yields:
        (start, chunk rows [c], ranked positions [c, depth] int64, their cosine
        similarities [c, depth] float32) where start is the chunk's offset in
        `rows` and depth is the largest of the chunk's depths (at most n_index).
    """
    query_scale = inverse_norms("query", queries)
    index_scale = inverse_norms("index", index)
    margin = _candidate_margin(index.shape[1])
    if chunk_size is None:
        chunk_size = max(1, max_block_bytes // (len(index) * SIMILARITY_BYTES))
    for start in range(0, len(rows), chunk_size):
        chunk = rows[start : start + chunk_size]
        similarities = (queries[chunk] * query_scale[chunk, None]) @ index.T
        similarities *= index_scale  # normalising after the product spares a copy of the index
        query_norms = _exact_norms(queries[chunk].astype(np.float64), query_scale[chunk])
        exact_cosines = partial(_exact_cosines, queries[chunk], query_norms, index, index_scale)
        depth = min(len(index), int(depths[chunk].max()))
        yield (start, chunk, *_top_ranked(similarities, depth, margin, exact_cosines))
        del similarities  # else the block stays alive while the next one is computed: twice the memory


def _candidate_margin(dim: int) -> float:
    """How far below a row's depth-th largest float32 similarity an item of its exact top depth can be.

    The block (u = 2^-24, gamma = dim u / (1 - dim u)): search_blocks computes S = fl(fl(fl(q r_q) . x) r_x)
    with inverse norms r from float32 squared norms. A float32 dot product of dim terms is within
    gamma * sum |a_k b_k| of the exact one whatever the summation order (gemv or any gemm kernel,
    with or without FMA; Higham, Accuracy and Stability of Numerical Algorithms, 3.1), a sum of
    squares within gamma relatively, and a square root and a division add a rounding each: r is
    1 / ||v|| times a factor within [(1 + gamma)^-1/2 (1 - u)/(1 + u), (1 - gamma)^-1/2 (1 + u)/(1 - u)].
    With the roundings of q r_q and of the product by r_x, S - cos = sum_k q_k x_k / (||q|| ||x||) (p_k - 1)
    with every p_k within [1/P, P], P = (1 + gamma)/(1 - gamma) * (1 + u)^4/(1 - u)^2, so by
    Cauchy-Schwarz |S - cos| <= P - 1, about (2 dim + 6) u: e32 = 6.2e-5 at dim 512. Underflow adds at
    most dim 2^-49, as inverse_norms zeroes norms below 2^-50. _exact_cosines (exact products, a
    float64 sum, two square roots, a product, a division) is within the same form with u = 2^-53: e64.

    The margin: the depth items with S >= t (the row's depth-th largest S) have recomputed cosines
    >= t - e32 - e64, so every item of the recomputed top depth has one too, a true cosine
    >= t - e32 - 2 e64 and an S >= t - 2 (e32 + e64).
    """

    def error_bound(unit_roundoff: float) -> float:
        gamma = dim * unit_roundoff / (1 - dim * unit_roundoff)
        return (1 + gamma) / (1 - gamma) * ((1 + unit_roundoff) / (1 - unit_roundoff)) ** 4 - 1

    return 2 * (error_bound(2.0**-24) + dim * 2.0**-49 + error_bound(2.0**-53))


def squared_norms(name: str, vectors: np.ndarray) -> np.ndarray:
    """[n] squared L2 norms of [n, dim] vectors; a NaN or inf entry is an error naming its rows."""
    squared = np.einsum("ij,ij->i", vectors, vectors)
    bad_rows = np.flatnonzero(~np.isfinite(squared))
    if len(bad_rows):
        raise MetricInputError(
            f"{len(bad_rows)} {name} embeddings are not finite (or too large to square), first rows "
            f"{bad_rows[:5].tolist()}: the model that made them probably diverged"
        )
    return squared


def inverse_norms(name: str, vectors: np.ndarray) -> np.ndarray:
    """[n] float32 1 / ||v||, and 0 for a zero vector so its cosine is 0, not NaN.

    Also 0 below a norm of 2^-50 (~1e-15), where float32 underflow in the squared norm and the
    products would void _candidate_margin's error bound: such vectors count as zero vectors.
    """
    squared = squared_norms(name, vectors)
    return np.divide(1, np.sqrt(squared), out=np.zeros_like(squared), where=squared >= 2.0**-100)


def _exact_norms(vectors: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """[n] float64 norms of float64 [n, dim] vectors (overwritten) summed in _fixed_order_sums' order,
    0 where the float32 inverse norm `scale` [n] is 0 (the vectors inverse_norms counts as zero)."""
    vectors *= vectors
    return np.where(scale != 0, np.sqrt(_fixed_order_sums(vectors)), 0)


def _fixed_order_sums(terms: np.ndarray) -> np.ndarray:
    """[p] float64 sums of the rows of terms [p, width] (overwritten), added in an order set by width alone.

    The right half of the columns is added to the left half until one column is left: each addition
    is one IEEE float64 addition of the same two partial sums whatever p, the memory layout or the
    CPU, which neither BLAS nor numpy's sum (pairwise or sequential by the array's shape) promises.
    """
    width = terms.shape[1]
    while width > 1:
        half = width // 2
        terms[:, :half] += terms[:, width - half : width]
        width -= half
    return terms[:, 0].copy()


def _exact_cosines(queries, query_norms, index, index_scale, rows, positions) -> np.ndarray:
    """[p] float64 cosine similarities of the pairs (queries[rows[i]], index[positions[i]]).

    Args:
        queries: [c, dim] float32; query_norms: their [c] _exact_norms.
        index: [n_index, dim] float32; index_scale: its [n_index] inverse_norms.
        rows: [p] rows of queries; positions: [p] rows of index.

    A pair's value depends on its two vectors alone, not on the pairs computed with it: float64
    products of float32 numbers are exact, and _fixed_order_sums adds them in an order set by dim.
    So duplicate index vectors tie exactly; the value is within ~(2 dim + 4) 2^-53 of the true cosine.
    Cost: about 4 us a pair at dim 512, EXACT_BLOCK_BYTES of pairs at a time.
    """
    cosines = np.zeros(len(rows))
    batch = max(1, EXACT_BLOCK_BYTES // (8 * index.shape[1]))
    for start in range(0, len(rows), batch):
        pairs = slice(start, start + batch)
        items = index[positions[pairs]].astype(np.float64)
        norm_products = query_norms[rows[pairs]] * _exact_norms(items.copy(), index_scale[positions[pairs]])
        items *= queries[rows[pairs]]
        np.divide(_fixed_order_sums(items), norm_products, out=cosines[pairs], where=norm_products > 0)
    return cosines


def _top_ranked(similarities, depth, margin, exact_cosines) -> tuple[np.ndarray, np.ndarray]:
    """Each row's `depth` most similar items, best first: positions [c, depth] int64, similarities [c, depth] float32.

    Args:
        similarities: [c, n_index] float32 block; depth: items wanted a row.
        margin: _candidate_margin; exact_cosines: (rows [p], positions [p]) -> [p] float64, as _exact_cosines.

    The float32 block only finds candidates: a row's items within `margin` of its depth-th largest
    similarity (found in O(n_index) by _depth_th_largest) hold its exact top depth. Their similarities
    are recomputed by exact_cosines, which gives a pair the same value in any block, ranked by
    (-similarity, position) and returned as float32. A row with more than depth + MAX_NEAR_TIES
    candidates (a collapsed model) keeps its float32 order (_float32_ranked): its cost stays bounded,
    but its near-ties may then be ordered differently with another block size.
    """
    threshold = _depth_th_largest(similarities, depth)
    # Rounded down to float32, so that rounding cannot lose a candidate.
    limit = np.nextafter((threshold.astype(np.float64) - margin).astype(np.float32), np.float32(-np.inf))
    candidates = similarities >= limit  # a byte per similarity
    counts = np.count_nonzero(candidates, axis=1)
    collapsed = np.flatnonzero(counts > depth + MAX_NEAR_TIES)
    candidates[collapsed], counts[collapsed] = False, 0
    rows, positions = np.nonzero(candidates)  # row by row, increasing positions within a row
    del candidates
    cosines = exact_cosines(rows, positions)
    order = np.lexsort((-cosines, rows))  # stable: equal similarities keep the lower position first
    ranked = np.empty((len(similarities), depth), dtype=np.int64)
    ranked_similarities = np.empty((len(similarities), depth), dtype=np.float32)
    exact_rows = np.flatnonzero(counts)
    top = order[(np.cumsum(counts) - counts)[exact_rows, None] + np.arange(depth)]
    ranked[exact_rows], ranked_similarities[exact_rows] = positions[top], cosines[top]
    for row in collapsed:
        ranked[row], ranked_similarities[row] = _float32_ranked(similarities[row], threshold[row], depth)
    return ranked, ranked_similarities


def _float32_ranked(similarities: np.ndarray, threshold: np.ndarray, depth: int) -> tuple[np.ndarray, np.ndarray]:
    """One row's top `depth` by its float32 similarities [n_index] (equal ones: lower position first),
    given threshold [1], its depth-th largest: positions [depth] and similarities [depth]."""
    above = np.flatnonzero(similarities > threshold)  # fewer than depth
    tied = np.flatnonzero(similarities == threshold)[: depth - len(above)]
    positions = np.sort(np.concatenate([above, tied]))
    order = np.argsort(-similarities[positions], kind="stable")
    return positions[order], similarities[positions[order]]


def _depth_th_largest(similarities: np.ndarray, depth: int) -> np.ndarray:
    """[c, 1] each row's depth-th largest similarity: np.partition's value, mostly at a fraction of its cost.

    np.partition copies the block and runs on one core, at about 15 ns an item
    on 1M-item rows: longer than the matrix product of those rows on 2 cores.
    Instead, the depth-th largest of the rows' group maxima (groups of
    PARTITION_GROUP items) bounds the answer from below, as depth groups hold
    an item at or above it; only the items at or above the bound, typically a
    few dozen a row, are partitioned. Where they would fill more than an
    eighth of the block (heavy ties), the whole block is partitioned.
    """
    n_rows, n_index = similarities.shape
    group_starts = np.arange(0, n_index, PARTITION_GROUP)
    if len(group_starts) >= depth:
        maxima = np.maximum.reduceat(similarities, group_starts, axis=1)
        bound = np.partition(maxima, len(group_starts) - depth, axis=1)[:, len(group_starts) - depth, None]
        candidates = similarities >= bound
        counts = np.count_nonzero(candidates, axis=1)
        width = int(counts.max())
        if n_rows * width <= similarities.size // 8:
            # Each row's candidates, left-aligned in a [c, width] block padded with -inf.
            row_of = np.repeat(np.arange(n_rows), counts)
            column_of = np.arange(len(row_of)) - np.repeat(np.cumsum(counts) - counts, counts)
            padded = np.full((n_rows, width), -np.inf, dtype=similarities.dtype)
            padded[row_of, column_of] = similarities[candidates]
            similarities = padded
    n_index = similarities.shape[1]
    return np.partition(similarities, n_index - depth, axis=1)[:, n_index - depth, None]
