"""How a catalog index is built: the search structure and how its recall is measured."""

from typing import Any, Literal

from pydantic import Field, model_validator

from phases.phase_config import Section

Kind = Literal["exact", "flat", "ivf_flat", "hnsw", "ivf_pq"]


class CatalogSettings(Section):
    """`pvs index build --kind ... --param NAME=VALUE`: the structure searched, and its recall check."""

    # `exact`: the project's exact blocked search (phases/exact_search.py), no faiss; the
    # others are faiss indexes (the `faiss` extra): `flat` exact too, `ivf_flat`, `hnsw` and
    # `ivf_pq` approximate, for catalogs where the exact search is too slow (BENCHMARKS.md,
    # "Catalog indexes at scale", has their time, memory and recall at 1.1M images).
    kind: Kind = "exact"
    # The kind's parameters (phases/retrieval/vector_index.py names them and their defaults).
    parameters: dict[str, Any] = Field(default_factory=dict)
    # Catalog images searched for, as queries, to measure the recall@10 of an approximate
    # kind against the exact search at build time (stored in index.json); seeded.
    recall_queries: int = Field(1000, ge=1)
    seed: int = 0
    # faiss' threads (OpenMP); null: faiss' default, every core.
    threads: int | None = Field(None, ge=1)

    @model_validator(mode="after")
    def _parameters_fit_the_kind(self):
        from phases.retrieval.vector_index import index_options

        index_options(self.kind, self.parameters)  # a ConfigError naming the parameter that cannot work
        return self
