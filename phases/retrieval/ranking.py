"""The one retrieval of the pipeline: post-process the embeddings, search, re-rank; and its scores.

Scoring, the submission and the search all call `retrieve` (or `retrieve_and_score`),
so the steps of `evaluation.retrieval` run in one order everywhere:
  1. whitening of the queries and the index (learned beforehand on train embeddings);
  2. database-side augmentation of the index (DBA);
  3. alpha query expansion of the queries, against the augmented index (alpha-QE);
  4. the exact cosine search (phases.metrics.nearest_neighbours);
  5. k-reciprocal re-ranking of each query's top `candidates`; deeper ranks keep 4.'s order.
Steps 1-2 on the index are `prepare_index`, the rest `retrieve_prepared`: a catalog index
(pipeline/catalog/) prepares its vectors once, and may search them approximately in 3-4.
"""

from collections.abc import Callable

import numpy as np

from phases.errors import ConfigError
from phases.exact_search import DEFAULT_BLOCK_BYTES
from phases.metrics import TOP_K, nearest_neighbours, ranking_depth, ranking_scores, retrieval_scores
from phases.retrieval.expansion import augment_database, expand_queries
from phases.retrieval.options import RetrievalOptions
from phases.retrieval.reranking import rerank
from phases.retrieval.whitening import Whitening

Search = Callable[[np.ndarray, int], tuple[np.ndarray, np.ndarray]]


def retrieve(
    query_embeddings,
    index_embeddings,
    options: RetrievalOptions,
    whitening: Whitening | None = None,
    depth: int = TOP_K,
    *,
    max_block_bytes: int = DEFAULT_BLOCK_BYTES,
) -> tuple[np.ndarray, np.ndarray]:
    """Each query's `depth` best index items after the post-processing `options` set.

    Args:
        query_embeddings: [n_query, dim] floats; index_embeddings: [n_index, dim] floats.
        options: the evaluation.retrieval section; whitening: the one learned for it
            (given exactly when options.whitening is set).
        depth: items per query, 1 to n_index.
        max_block_bytes: the exact search's similarity block (and re-ranking's working memory).

    Returns:
        positions: [n_query, depth] int64 index rows, best first. With every option off,
            nearest_neighbours' exactly.
        similarities: [n_query, depth] float32 cosine similarities of the post-processed
            query and index item at each rank: sorted with the search's order, but not
            within the re-ranked top `candidates` (their order is the re-ranked distance's).

    Cost: the plain search, plus, when set, whitening (n x dim x dimensions), DBA (a search
    of the index against itself, and a second index in memory), alpha-QE (a search of the
    queries), re-ranking (n_query x candidates^2 x (dim + candidates)).

    It is `prepare_index` then `retrieve_prepared`: a catalog index does the first once.
    """
    check_whitening(options, whitening)
    index = prepare_index(index_embeddings, options, whitening, max_block_bytes=max_block_bytes)
    return retrieve_prepared(query_embeddings, index, options, whitening, depth, max_block_bytes=max_block_bytes)


def check_whitening(options: RetrievalOptions, whitening: Whitening | None) -> None:
    if (options.whitening is None) != (whitening is None):
        raise ConfigError(
            "evaluation.retrieval.whitening is "
            + ("set, but no whitening was learned for it" if whitening is None else "null, but a whitening was given")
            + ": learn one (Whitening.fit) exactly when the config asks for it"
        )


def prepare_index(index_embeddings, options: RetrievalOptions, whitening: Whitening | None = None, *,
                  max_block_bytes: int = DEFAULT_BLOCK_BYTES) -> np.ndarray:
    """The index side of `retrieve`: [n_index, dim'] float32, whitened, then augmented (DBA),
    as `options` ask. What a catalog index stores and searches, computed once."""
    check_whitening(options, whitening)
    index = np.asarray(index_embeddings, dtype=np.float32)
    if whitening is not None:
        index = whitening.apply(index)
    augmentation = options.database_augmentation
    if augmentation is not None:  # a config cannot know the index's size: beyond it, the whole index
        index = augment_database(index, min(augmentation.neighbours, len(index)), augmentation.alpha,
                                 max_block_bytes=max_block_bytes)
    return index


def retrieve_prepared(
    query_embeddings,
    prepared_index: np.ndarray,
    options: RetrievalOptions,
    whitening: Whitening | None = None,
    depth: int = TOP_K,
    *,
    search: Search | None = None,
    max_block_bytes: int = DEFAULT_BLOCK_BYTES,
) -> tuple[np.ndarray, np.ndarray]:
    """The query side of `retrieve`, against an index `prepare_index` made: the queries
    whitened, expanded (alpha-QE), searched, re-ranked. Returns as `retrieve`.

    `search(queries [n, dim'] float32, depth) -> (positions, similarities)`, best first: how the
    prepared index is searched, for the expansion's neighbours and the ranking alike (an
    approximate index's, phases/retrieval/vector_index.py); None: the exact search. The
    re-ranking reads the prepared vectors of each query's candidates only."""
    check_whitening(options, whitening)
    block = {"max_block_bytes": max_block_bytes}
    if search is None:
        def search(vectors, count):
            return nearest_neighbours(vectors, prepared_index, count, **block)
    queries = np.asarray(query_embeddings, dtype=np.float32)
    if whitening is not None:
        queries = whitening.apply(queries)
    expansion, reranking = options.query_expansion, options.reranking
    if expansion is not None:
        queries = expand_queries(queries, prepared_index, min(expansion.neighbours, len(prepared_index)),
                                 expansion.alpha, search=search, **block)
    candidates = 0 if reranking is None else min(reranking.candidates, len(prepared_index))
    positions, similarities = search(queries, max(depth, candidates))
    if candidates:
        settings = {"k1": reranking.k1, "k2": reranking.k2, "lambda_value": reranking.lambda_value}
        order, _ = rerank(queries, prepared_index, positions[:, :candidates], **settings, **block)
        for ranked in (positions, similarities):
            ranked[:, :candidates] = np.take_along_axis(ranked[:, :candidates], order, axis=1)
    return positions[:, :depth], similarities[:, :depth]


def retrieve_and_score(
    query_embeddings,
    query_labels,
    index_embeddings,
    index_labels,
    options: RetrievalOptions,
    whitening: Whitening | None = None,
    *,
    max_block_bytes: int = DEFAULT_BLOCK_BYTES,
) -> dict[str, float]:
    """phases.metrics.retrieval_scores of `retrieve`'s ranking: MAR@10 and the rest, same names.

    Args: as retrieval_scores (embeddings [n, dim], labels [n]) and retrieve (options, whitening).

    With every option off this is retrieval_scores itself, which searches each chunk of
    queries only as deep as its largest R; otherwise every query is retrieved
    ranking_depth deep (the largest min(max(10, R), n_index)): n_query x that x 12 bytes.
    """
    if options.is_plain and whitening is None:
        return retrieval_scores(
            query_embeddings, query_labels, index_embeddings, index_labels, max_block_bytes=max_block_bytes
        )
    depth = ranking_depth(query_labels, index_labels)
    positions, _ = retrieve(
        query_embeddings, index_embeddings, options, whitening, depth, max_block_bytes=max_block_bytes
    )
    return ranking_scores(positions, query_labels, index_labels)
