"""Post-processing of embeddings at retrieval time: whitening, alpha-QE, DBA, k-reciprocal re-ranking.

NumPy only, on top of the exact search (phases/exact_search.py). `retrieve` is the one
function that applies the steps `RetrievalOptions` (the config's evaluation.retrieval)
sets, in one order (ranking.py); `retrieve_and_score` scores its ranking. Each step
lives in its own module: whitening.py, expansion.py, reranking.py.
"""

from phases.retrieval.expansion import augment_database, expand_queries
from phases.retrieval.options import NeighbourAveraging, RerankingOptions, RetrievalOptions, WhiteningOptions
from phases.retrieval.ranking import prepare_index, retrieve, retrieve_and_score, retrieve_prepared
from phases.retrieval.reranking import rerank
from phases.retrieval.whitening import Whitening, WhiteningFileError, WhiteningIntegrityError

__all__ = [
    "NeighbourAveraging",
    "RerankingOptions",
    "RetrievalOptions",
    "Whitening",
    "WhiteningFileError",
    "WhiteningIntegrityError",
    "WhiteningOptions",
    "augment_database",
    "expand_queries",
    "prepare_index",
    "rerank",
    "retrieve",
    "retrieve_and_score",
    "retrieve_prepared",
]
