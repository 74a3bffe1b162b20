"""The `evaluation.retrieval` section of the config: how embeddings are post-processed at retrieval time.

Every step is off (null) by default, so a config without the section retrieves
and scores exactly as the plain exact search does. `phases.retrieval.retrieve`
applies the steps that are set, always in the order of the fields below.
"""

from pydantic import Field, PositiveInt, model_validator

from phases.phase_config import Section


class WhiteningOptions(Section):
    """PCA whitening learned on train embeddings (Radenovic et al. 2018; Jegou & Chum 2012)."""

    # Principal directions kept: the size of the whitened embedding. null: every direction
    # the train sample supports, min(train_images - 1, embedding dim), as the papers do;
    # fewer drops the directions of least variance, which are mostly noise.
    dimensions: PositiveInt | None = None
    # Train images embedded to learn the whitening: the first ones in reader order (its shards
    # interleaved, so several shards' products), the same ones every time. Its dim x dim
    # covariance needs many more samples than dims: 10,000 is ~20 per dim at 512.
    train_images: int = Field(10_000, ge=2)
    # Added to every eigenvalue, as a fraction of their mean, before dividing by its square
    # root: keeps directions of (almost) no variance from being blown up into noise. 0 is
    # plain whitening; 1e-3 changes a direction of average variance by 0.05%.
    shrinkage: float = Field(1e-3, ge=0)


class NeighbourAveraging(Section):
    """alpha-weighted averaging with nearest neighbours (Radenovic et al. 2018, alpha-QE and DBA):
    a vector becomes the normalised sum of the neighbours' vectors weighted by max(cosine, 0)^alpha."""

    # Query expansion: the query itself (weight 1) plus its `neighbours` nearest index items.
    # Database augmentation: an index item's `neighbours` nearest index items, itself among
    # them (its own nearest). Radenovic et al. took 50 for landmarks, which have hundreds of
    # relevant images; a product has ~5 in eProduct's index, and more neighbours mostly add
    # other products (damped, not removed, by alpha).
    neighbours: PositiveInt = 5
    # Exponent of the cosine weights: 0 is a plain mean; the larger, the more the nearest
    # neighbours dominate. 3 in the paper.
    alpha: float = Field(3.0, ge=0)


class RerankingOptions(Section):
    """k-reciprocal re-ranking (Zhong et al. 2017), over each query's top `candidates` only."""

    # Neighbours whose reciprocal ones form the k-reciprocal set (paper: 20).
    k1: PositiveInt = 20
    # Neighbours averaged in the local query expansion of the k-reciprocal features
    # (paper: 6; 1 turns it off).
    k2: PositiveInt = 6
    # Weight of the original (squared, normalised) distance against the Jaccard distance
    # of the k-reciprocal sets (paper: 0.3; 0: Jaccard only, 1: no re-ranking).
    lambda_value: float = Field(0.3, ge=0, le=1)
    # Each query's top items from the exact search that are re-ranked: the local set of
    # the query and these stands in for the whole index, so the cost stays O(n_query x
    # candidates^2 x (dim + candidates)) at any index size. Beyond it, the search's order stays.
    candidates: PositiveInt = 100

    @model_validator(mode="after")
    def _candidates_exceed_k1(self):
        if self.candidates <= self.k1:
            raise ValueError(
                f"candidates ({self.candidates}) must exceed k1 ({self.k1}): in a local set of the query and "
                f"{self.candidates} items every item is among everyone's {self.k1} nearest, so nothing would be "
                "re-ranked; raise candidates (e.g. 5 x k1) or lower k1"
            )
        return self


class RetrievalOptions(Section):
    """Post-processing of the query and index embeddings before, and of the ranking after, the exact search."""

    whitening: WhiteningOptions | None = None
    database_augmentation: NeighbourAveraging | None = None
    query_expansion: NeighbourAveraging | None = None
    reranking: RerankingOptions | None = None

    @property
    def is_plain(self) -> bool:
        """True when no step is set: retrieval is the plain exact search."""
        return self == RetrievalOptions()

