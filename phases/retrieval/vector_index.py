"""The catalog's vector index: the exact search, or one of faiss' exact and approximate indexes, behind one interface.

Kinds (OPTIONS): `exact`, the project's search (phases.metrics.nearest_neighbours; NumPy, no faiss);
`flat`, faiss IndexFlatIP (exact, to compare faiss with ours); `ivf_flat`, `hnsw`, `ivf_pq` (approximate).
`VectorIndex` builds, searches as nearest_neighbours does, appends, saves and loads; `measure_recall`
scores its top 10 against the exact search's. faiss is imported on first use and runs on
set_faiss_threads' OpenMP threads. Costs at 1.1M x 256: benchmarks/vector_index_scale.py.
"""

import functools
import hashlib
import json
import math
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from pydantic import BaseModel, Field, PositiveInt, ValidationError

from phases.errors import ConfigError, MetricInputError
from phases.exact_search import inverse_norms, squared_norms
from phases.metrics import TOP_K, nearest_neighbours
from phases.phase_config import Section
from tfrecords.errors import IntegrityError, UserError
from tfrecords.files import atomic_writer, sha256_file, write_text_atomic

MANIFEST = "vector_index.json"  # kind, options (nlist as chosen), dim, count, seed
DATA_FILES = {"exact": "vectors.npz", "faiss": "vector_index.faiss"}
# faiss' k-means warns below 39 training vectors per centroid (faiss/Clustering.cpp).
MIN_TRAINING_PER_CENTROID = 39
# A vector whose squared norm is further than this from 1 (and not 0) is refused as not normalised:
# float32 normalisation leaves ~1e-6, an unnormalised embedding is off by far more.
UNIT_TOLERANCE = 1e-3


class ExactOptions(Section):
    """The project's exact search (phases/exact_search.py): nothing to choose."""


class FlatOptions(Section):
    """faiss IndexFlatIP: exact inner products over a copy of the vectors, to compare faiss with `exact`."""


class IvfFlatOptions(Section):
    """faiss IndexIVFFlat: k-means cells (inverted lists) of the full vectors; a query scans its nprobe nearest."""

    # Cells. null: 4 * sqrt(n) of the vectors at build time (the faiss wiki's "Guidelines to choose an
    # index": 4 sqrt(n) to 16 sqrt(n)), at most n / 39 so each centroid has 39 training vectors; the
    # saved manifest records the number chosen. More cells: faster queries, lower recall, longer training.
    nlist: PositiveInt | None = None
    # Cells scanned per query (faiss' default is 1): recall against time, linearly. 32 of ~4,000 cells
    # scans ~1% of a 1.1M-vector index (benchmarks/vector_index_scale.py measures what it recalls).
    nprobe: PositiveInt = 32
    # k-means trains on a seeded sample of at most this many vectors per cell (faiss wiki: 30 to 256
    # per cell; faiss warns below 39). Training costs about sample x nlist x dim x 10 iterations.
    training_per_list: int = Field(64, ge=MIN_TRAINING_PER_CENTROID, le=256)

    def training_size(self, nlist: int) -> int:
        """Vectors sampled to train an index of nlist cells."""
        return self.training_per_list * nlist


class HnswOptions(Section):
    """faiss IndexHNSWFlat: a navigable small-world graph over the full vectors; nothing to train."""

    # Links per vector (HNSW's M; faiss wiki: 4 to 64, "HNSW32" in its examples): higher recalls more
    # and costs m x 8 bytes a vector on top of its dim x 4.
    m: int = Field(32, ge=4, le=64)
    # Candidates kept while linking a new vector (faiss' default 40): a better graph, a longer build.
    ef_construction: PositiveInt = 40
    # Candidates kept while searching (faiss' default 16; at least depth is used): recall against time.
    ef_search: PositiveInt = 64


class IvfPqOptions(IvfFlatOptions):
    """faiss IndexIVFPQ: k-means cells of vectors compressed by product quantisation to m x nbits bits each.
    The similarities it returns are those of the compressed vectors, so they are approximate too."""

    # Sub-quantisers (PQ's M): each codes dim / m dimensions, so m must divide dim. 32 at 8 bits is
    # 32 bytes a vector (1/32 of dim 256 float32); more recalls more and costs more.
    m: PositiveInt = 32
    # Bits per sub-quantiser code (faiss' default 8, its fastest): 2^nbits centroids each.
    nbits: int = Field(8, ge=1, le=16)

    def training_size(self, nlist: int) -> int:
        """Vectors sampled to train nlist cells and the sub-quantisers' 2^nbits centroids each."""
        return max(self.training_per_list * nlist, MIN_TRAINING_PER_CENTROID * 2**self.nbits)


OPTIONS = {"exact": ExactOptions, "flat": FlatOptions, "ivf_flat": IvfFlatOptions, "hnsw": HnswOptions,
           "ivf_pq": IvfPqOptions}
_FAISS_CLASSES = {"flat": "IndexFlatIP", "ivf_flat": "IndexIVFFlat", "hnsw": "IndexHNSWFlat", "ivf_pq": "IndexIVFPQ"}


class VectorIndexIntegrityError(IntegrityError):
    """A saved vector index file is missing or altered: its sha256 differs from the one recorded for it."""


class VectorIndexFileError(UserError):
    """A file that is not a vector index as `VectorIndex.save` writes it."""


@functools.cache
def _faiss_and_default_threads():
    """faiss, and its OpenMP threads before anyone set them (OMP_NUM_THREADS, else one per core)."""
    try:
        import faiss
    except ImportError:
        raise ConfigError(
            'vector index kinds other than "exact" need faiss: pip install "product-visual-search[faiss]"'
        ) from None
    return faiss, faiss.omp_get_max_threads()


def _faiss():
    return _faiss_and_default_threads()[0]


def set_faiss_threads(threads: int | None = None) -> None:
    """Set the OpenMP threads of every faiss build and search in this process (faiss' setting is global).

    None restores faiss' default: OMP_NUM_THREADS when set, else one per core. The `exact`
    kind runs on NumPy's BLAS threads instead, which this does not change.
    """
    faiss, default = _faiss_and_default_threads()
    faiss.omp_set_num_threads(default if threads is None else threads)


def index_options(kind: str, values: BaseModel | dict | None = None) -> BaseModel:
    """The options of `kind` from `values`: its options model, a dict of its fields, or None (the defaults)."""
    if kind not in OPTIONS:
        raise ConfigError(f"vector index kind {kind!r} is unknown; choose one of {', '.join(OPTIONS)}")
    model = OPTIONS[kind]
    if isinstance(values, BaseModel):
        if type(values) is not model:
            raise ConfigError(f"vector index kind {kind!r} takes {model.__name__}; got {type(values).__name__}")
        return values
    try:
        return model.model_validate(values or {})
    except ValidationError as error:
        raise ConfigError(f"vector index kind {kind!r}: {error}") from None


def sample_rows(count: int, size: int, seed: int) -> np.ndarray:
    """min(size, count) distinct rows of range(count), increasing, drawn with `seed`: [size] int64."""
    return np.sort(np.random.default_rng(seed).choice(count, min(size, count), replace=False))


class VectorIndex:
    """Vectors indexed for cosine search, by one of the OPTIONS kinds; build with `build` or `load`.

    Attributes: kind; options (nlist as chosen at build); dim; seed.
    Example: `VectorIndex.build(unit_vectors, "hnsw", {"ef_search": 128}).search(queries, 10)`.
    """

    def __init__(self, kind: str, options: BaseModel, dim: int, seed: int, data):
        self.kind, self.options, self.dim, self.seed = kind, options, dim, seed
        self._data = data  # the read-only [n, dim] float32 vectors (exact), else the faiss index
        if kind in ("ivf_flat", "ivf_pq"):
            data.nprobe = options.nprobe  # faiss scans min(nprobe, nlist) cells
        elif kind == "hnsw":
            data.hnsw.efSearch = options.ef_search

    def __len__(self) -> int:
        return len(self._data) if self.kind == "exact" else self._data.ntotal

    @property
    def description(self) -> dict:
        """What decides the index: kind, options (nlist as chosen), dim, count and seed (the saved manifest)."""
        return {"kind": self.kind, "options": self.options.model_dump(), "dim": self.dim, "count": len(self),
                "seed": self.seed}

    @classmethod
    def build(cls, vectors, kind: str = "exact", options: BaseModel | dict | None = None, *,
              seed: int = 0) -> "VectorIndex":
        """Index [n, dim] float32 L2-normalised `vectors` (copied; zero vectors are allowed).

        k-means (IVF cells, PQ codebooks) trains on sample_rows(n, options.training_size(nlist), seed)
        with faiss' clustering seeded by `seed`, and HNSW's levels are drawn with it: the same vectors,
        options, seed and faiss version give the same index. Cost: ivf_* train in about training_size x
        nlist x dim x 10 iterations (a few minutes at 1.1M x 256 on 2 cores); hnsw adds vectors in
        about n x ef_construction x log(n) distances.
        """
        options = index_options(kind, options)
        vectors = _unit_vectors(vectors)
        n, dim = vectors.shape
        if kind == "exact":
            vectors.setflags(write=False)
            return cls(kind, options, dim, seed, vectors)
        if kind in ("ivf_flat", "ivf_pq"):
            options = options.model_copy(update={"nlist": _checked_lists(options, n, dim)})
        index = cls(kind, options, dim, seed, _new_faiss_index(kind, options, dim, seed))
        if kind in ("ivf_flat", "ivf_pq"):
            index._data.train(vectors[sample_rows(n, options.training_size(options.nlist), seed)])
        index.add(vectors)
        return index

    def add(self, vectors) -> None:
        """Append [n, dim] L2-normalised vectors as rows len(self) .. len(self) + n - 1, without retraining.
        The exact kind copies its whole array to grow it."""
        vectors = _unit_vectors(vectors, self.dim)
        if self.kind == "exact":
            self._data = np.concatenate([self._data, vectors])
            self._data.setflags(write=False)
            return
        if self.kind == "hnsw":  # levels drawn from (seed, rows so far): the same after a save and load
            state = np.random.SeedSequence([self.seed, len(self)]).generate_state(1)[0]
            self._data.hnsw.rng = _faiss().RandomGenerator(int(state) % 2**31)
        self._data.add(vectors)

    def search(self, queries, depth: int = TOP_K) -> tuple[np.ndarray, np.ndarray]:
        """The `depth` indexed rows most cosine-similar to each of [n_query, dim] `queries` (any norm).

        Returns positions [n_query, depth] int64 rows, best first, equal similarities lower position
        first, and their similarities [n_query, depth] float32: nearest_neighbours' own for `exact`,
        faiss' float32 inner products otherwise (of the PQ-compressed vectors for ivf_pq). An approximate
        kind that finds fewer than depth rows for a query (nprobe cells holding fewer) raises ConfigError
        rather than returning -1 positions.
        """
        queries = np.asarray(queries, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dim:
            raise MetricInputError(f"this index holds [n, {self.dim}] vectors; got queries of {list(queries.shape)}")
        if not 1 <= depth <= len(self):
            raise MetricInputError(f"depth must be between 1 and the index size {len(self)}; got {depth}")
        if self.kind == "exact":
            return nearest_neighbours(queries, self._data, depth)
        similarities, positions = self._data.search(queries * inverse_norms("query", queries)[:, None], depth)
        short = np.flatnonzero((positions < 0).any(axis=1))
        if len(short):
            knob = "ef_search" if self.kind == "hnsw" else "nprobe"
            raise ConfigError(
                f"the {self.kind} index found fewer than {depth} rows for {len(short)} queries (first rows "
                f"{short[:5].tolist()}): raise {knob} (now {getattr(self.options, knob)}) or search less deep"
            )
        order = np.lexsort((positions, -similarities))  # row by row: faiss lists ties highest position first
        return np.take_along_axis(positions, order, 1), np.take_along_axis(similarities, order, 1)

    def save(self, folder: str | Path) -> dict[str, str]:
        """Write the index into `folder` (each file atomically; .npz without pickles for `exact`, faiss'
        own format otherwise) and the manifest; returns {file name: sha256} for `load`."""
        folder = Path(folder)
        data_file = DATA_FILES["exact" if self.kind == "exact" else "faiss"]
        with atomic_writer(folder / data_file) as handle:
            if self.kind == "exact":
                np.savez(handle, allow_pickle=False, vectors=self._data)
            else:
                _faiss().write_index(self._data, _faiss().PyCallbackIOWriter(handle.write))
        write_text_atomic(folder / MANIFEST, json.dumps(self.description, indent=1) + "\n")
        return {name: sha256_file(folder / name) for name in (data_file, MANIFEST)}

    @classmethod
    def load(cls, folder: str | Path, sha256s: dict[str, str]) -> "VectorIndex":
        """Read an index written by `save`, each file checked against `sha256s` (save's answer) first.

        Raises VectorIndexIntegrityError for a missing or altered file, VectorIndexFileError for one that is
        not what `save` writes. Nothing is unpickled; the checked open file is the one read.
        """
        folder = Path(folder)
        with _checked_file(folder / MANIFEST, sha256s) as handle:
            description = _described(folder / MANIFEST, handle.read())
        kind, dim, count = description["kind"], description["dim"], description["count"]
        path = folder / DATA_FILES["exact" if kind == "exact" else "faiss"]
        with _checked_file(path, sha256s) as handle:
            try:
                if kind == "exact":
                    with np.load(handle, allow_pickle=False) as stored:
                        data = stored["vectors"]
                    fits = data.dtype == np.float32 and data.shape == (count, dim)
                else:
                    data = _faiss().read_index(_faiss().PyCallbackIOReader(handle.read))
                    fits = type(data).__name__ == _FAISS_CLASSES[kind] and (data.d, data.ntotal) == (dim, count)
            except (ValueError, OSError, KeyError, RuntimeError) as error:  # numpy's or faiss' refusal
                raise VectorIndexFileError(f"{path}: not a {kind} index saved by VectorIndex.save ({error})") from None
        if not fits:
            raise VectorIndexFileError(f"{path}: does not hold the {count} x {dim} {kind} index {MANIFEST} describes")
        if kind == "exact":
            data.setflags(write=False)
        return cls(kind, description["options"], dim, description["seed"], data)


def recall_at(exact_positions, approx_positions, k: int = TOP_K) -> float:
    """The mean share of each row's exact top k ([n, >= k] positions) found in its approximate top k."""
    exact, approx = np.asarray(exact_positions), np.asarray(approx_positions)
    if exact.ndim != 2 or approx.ndim != 2 or len(exact) != len(approx) or min(exact.shape[1], approx.shape[1]) < k:
        raise MetricInputError(f"recall@{k} needs two [n, >= {k}] position arrays; got {exact.shape}, {approx.shape}")
    exact, approx = exact[:, :k], approx[:, :k]
    return float((exact[:, :, None] == approx[:, None, :]).any(axis=2).mean())


def measure_recall(index: VectorIndex, vectors, sample: int, depth: int = TOP_K, seed: int = 0) -> float:
    """recall_at(depth) of `index` against the exact search, the queries being sample_rows(n, sample, seed)
    of the [n, dim] `vectors` it indexes. Each query finds itself, so this is recall on known items; an
    item tied with the exact depth-th one but not listed by it counts as a miss. Cost: the exact search of
    `sample` queries (~2 s per 100 at 1.1M x 256 on 2 cores)."""
    vectors = np.asarray(vectors, dtype=np.float32)
    if len(vectors) != len(index):
        raise MetricInputError(f"the index holds {len(index)} vectors; got {len(vectors)} to measure its recall on")
    queries = vectors[sample_rows(len(vectors), sample, seed)]
    exact, _ = nearest_neighbours(queries, vectors, depth)
    return recall_at(exact, index.search(queries, depth)[0], depth)


def _unit_vectors(vectors, dim: int | None = None) -> np.ndarray:
    """A C-contiguous float32 copy of [n, dim] vectors, refused unless each is L2-normalised (or zero)."""
    vectors = np.array(vectors, dtype=np.float32, order="C")
    if vectors.ndim != 2 or not len(vectors) or (dim is not None and vectors.shape[1] != dim):
        raise MetricInputError(f"expected [n >= 1, {dim or 'dim'}] vectors; got shape {list(vectors.shape)}")
    squared = squared_norms("index", vectors)
    rows = np.flatnonzero((np.abs(squared - 1) > UNIT_TOLERANCE) & (squared != 0))
    if len(rows):
        raise MetricInputError(
            f"{len(rows)} vectors are not L2-normalised (first rows {rows[:5].tolist()}, squared norms "
            f"{squared[rows[:5]].tolist()}): divide them by their norms first (phases.exact_search.inverse_norms)"
        )
    return vectors


def _checked_lists(options: IvfFlatOptions, n: int, dim: int) -> int:
    """The number of cells for n vectors (options.nlist, or chosen from n); ConfigError for options that cannot work."""
    nlist = options.nlist or max(1, min(round(4 * math.sqrt(n)), n // MIN_TRAINING_PER_CENTROID))
    if nlist > n:
        raise ConfigError(f"nlist is {nlist}, more cells than the {n} vectors indexed: lower it (null chooses one)")
    if isinstance(options, IvfPqOptions):
        if dim % options.m:
            divisors = [m for m in range(1, dim + 1) if dim % m == 0 and m <= 64]
            raise ConfigError(f"ivf_pq m is {options.m}, but it must divide the vectors' dim {dim}: choose one of "
                              f"{divisors}")
        if n < 2**options.nbits:
            raise ConfigError(f"ivf_pq nbits {options.nbits} needs {2**options.nbits} vectors or more; got {n}")
    return nlist


def _new_faiss_index(kind: str, options: BaseModel, dim: int, seed: int):
    """An empty faiss index of `kind` for inner products, its k-means seeded with `seed`."""
    faiss = _faiss()
    if kind == "flat":
        return faiss.IndexFlatIP(dim)
    if kind == "hnsw":
        index = faiss.IndexHNSWFlat(dim, options.m, faiss.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = options.ef_construction
        return index
    quantizer = faiss.IndexFlatIP(dim)  # the wrapper keeps it alive as long as the index
    if kind == "ivf_flat":
        index = faiss.IndexIVFFlat(quantizer, dim, options.nlist, faiss.METRIC_INNER_PRODUCT)
    else:
        index = faiss.IndexIVFPQ(quantizer, dim, options.nlist, options.m, options.nbits, faiss.METRIC_INNER_PRODUCT)
        index.pq.cp.seed = seed
    index.cp.seed = seed
    return index


@contextmanager
def _checked_file(path: Path, sha256s: dict[str, str]):
    """`path` open for reading, after its content's sha256 matched sha256s[its name]; the same open file is
    read after the check, so a file swapped in meanwhile is never read."""
    try:
        with open(path, "rb") as handle:
            if hashlib.file_digest(handle, "sha256").hexdigest() != sha256s.get(path.name):
                raise VectorIndexIntegrityError(
                    f"{path}: sha256 differs from the recorded one (or none is recorded): the index was altered. "
                    "Delete the folder and build the index again"
                )
            handle.seek(0)
            yield handle
    except FileNotFoundError:
        raise VectorIndexIntegrityError(f"{path}: missing; build the index again") from None


def _described(path: Path, text: bytes) -> dict:
    """The manifest's content, its options validated for its kind (VectorIndexFileError otherwise)."""
    try:
        description = json.loads(text)
        kind = description["kind"]
        description["options"] = OPTIONS[kind].model_validate(description["options"])
        if not all(isinstance(description[key], int) for key in ("dim", "count", "seed")):
            raise ValueError("dim, count and seed must be integers")
    except (ValueError, KeyError, TypeError) as error:  # pydantic's ValidationError is a ValueError
        raise VectorIndexFileError(f"{path}: not a manifest written by VectorIndex.save ({error!r})") from None
    return description
