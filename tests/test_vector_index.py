"""The catalog's vector index (phases/retrieval/vector_index.py): every kind keeps nearest_neighbours'
contract, the exact kinds agree with it, the approximate ones recall most of its top 10 on clustered
data, builds are reproducible, and saved indexes load only when unaltered."""

import importlib.util
import sys

import numpy as np
import pytest

from phases.errors import ConfigError, MetricInputError
from phases.metrics import nearest_neighbours
from phases.retrieval import vector_index
from phases.retrieval.vector_index import (
    DATA_FILES,
    MANIFEST,
    IvfPqOptions,
    VectorIndex,
    VectorIndexFileError,
    VectorIndexIntegrityError,
    measure_recall,
    recall_at,
    sample_rows,
    set_faiss_threads,
)

needs_faiss = pytest.mark.skipif(importlib.util.find_spec("faiss") is None, reason="faiss-cpu is not installed")
# Options small enough for 3,000 vectors of dim 48 (nlist null: 76 cells of ~40 vectors).
KINDS = {
    "exact": None,
    "flat": None,
    "ivf_flat": {"nprobe": 32},
    "hnsw": {},
    "ivf_pq": {"nprobe": 32, "m": 16, "nbits": 6},
}
# The recall@10 each approximate kind must reach on clustered_vectors' queries (measured: ivf_flat
# 0.98, hnsw 1.00, ivf_pq 0.76): ivf_pq is held lower, as its similarities are those of 12-byte codes.
MIN_RECALL = {"ivf_flat": 0.9, "hnsw": 0.9, "ivf_pq": 0.6}
ALL_KINDS = [pytest.param(kind, marks=[] if kind == "exact" else [needs_faiss]) for kind in KINDS]
FAISS_KINDS = ALL_KINDS[1:]
APPROXIMATE_KINDS = ALL_KINDS[2:]


@pytest.fixture(scope="module", autouse=True)
def one_faiss_thread():
    """faiss on one OpenMP thread here: its threads spin while they wait, so with two other busy processes
    on 2 cores (other tests, xdist) these tests took 16 s on two threads and 5 s on one (2 s when idle)."""
    if importlib.util.find_spec("faiss") is None:
        yield
        return
    set_faiss_threads(1)
    yield
    set_faiss_threads(None)


def unit(vectors: np.ndarray) -> np.ndarray:
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


@pytest.fixture(scope="module")
def clustered_vectors() -> tuple[np.ndarray, np.ndarray]:
    """An index of 600 products x 5 unit vectors of dim 48 (its product's random centre plus noise of
    half its scale) and 300 queries drawn alike, 5 products per 100 of them not in the index."""
    rng = np.random.default_rng(3)
    centres = rng.standard_normal((630, 48))
    index = unit(centres[np.repeat(np.arange(600), 5)] + 0.5 * rng.standard_normal((3000, 48)))
    queries = unit(centres[rng.integers(0, 630, 300)] + 0.5 * rng.standard_normal((300, 48)))
    return index, queries


@pytest.fixture(scope="module")
def built(clustered_vectors) -> dict[str, VectorIndex]:
    """Each kind of KINDS that can be built here, built once on the clustered index, seed 0."""
    kinds = KINDS if importlib.util.find_spec("faiss") else ["exact"]
    return {kind: VectorIndex.build(clustered_vectors[0], kind, KINDS[kind]) for kind in kinds}


def test_exact_kind_returns_nearest_neighbours_exactly(clustered_vectors, built):
    index, queries = clustered_vectors
    positions, similarities = built["exact"].search(queries, 10)
    expected_positions, expected_similarities = nearest_neighbours(queries, index, 10)
    np.testing.assert_array_equal(positions, expected_positions)
    np.testing.assert_array_equal(similarities, expected_similarities)
    assert positions.dtype == np.int64 and similarities.dtype == np.float32


@needs_faiss
def test_flat_kind_agrees_with_the_exact_search_up_to_ties(clustered_vectors, built):
    index, queries = clustered_vectors
    positions, similarities = built["flat"].search(queries, 10)
    expected_positions, expected_similarities = nearest_neighbours(queries, index, 10)
    np.testing.assert_allclose(similarities, expected_similarities, atol=1e-5)
    differing = positions != expected_positions
    assert np.abs(similarities - expected_similarities)[differing].max(initial=0) <= 1e-5  # ties only
    assert differing.mean() < 0.01


@pytest.mark.parametrize("kind", APPROXIMATE_KINDS)
def test_approximate_kinds_recall_most_of_the_exact_top_10_on_clustered_data(clustered_vectors, built, kind):
    index, queries = clustered_vectors
    exact, _ = nearest_neighbours(queries, index, 10)
    positions, similarities = built[kind].search(queries, 10)
    assert recall_at(exact, positions) >= MIN_RECALL[kind]
    assert positions.min() >= 0 and (np.diff(similarities, axis=1) <= 0).all()  # best first, no -1


@pytest.mark.parametrize("kind", APPROXIMATE_KINDS)
def test_measure_recall_reports_recall_at_of_the_same_search(clustered_vectors, built, kind):
    index, _ = clustered_vectors
    queries = index[sample_rows(len(index), 400, seed=5)]
    expected = recall_at(nearest_neighbours(queries, index, 10)[0], built[kind].search(queries, 10)[0])
    assert measure_recall(built[kind], index, 400, seed=5) == expected
    assert expected >= MIN_RECALL[kind]


def test_recall_at_is_the_mean_share_of_the_exact_top_k_found():
    exact = np.array([[0, 1, 2], [3, 4, 5]])
    approx = np.array([[0, 2, 9], [6, 7, 3]])  # 2 of 3, then 1 of 3: the order within the top k does not matter
    assert recall_at(exact, approx, k=3) == pytest.approx(0.5)
    assert recall_at(exact, approx, k=1) == 0.5  # 0 is found first, 3 is not
    with pytest.raises(MetricInputError, match="recall@10"):
        recall_at(exact, approx)


@pytest.mark.parametrize("kind", FAISS_KINDS)
def test_build_is_deterministic_for_a_seed(clustered_vectors, kind):
    index, queries = clustered_vectors
    first, second = (VectorIndex.build(index, kind, KINDS[kind], seed=7).search(queries, 10) for _ in range(2))
    np.testing.assert_array_equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])


@needs_faiss
def test_ivf_training_depends_on_the_seed(clustered_vectors):
    index, queries = clustered_vectors
    first, second = (VectorIndex.build(index, "ivf_pq", KINDS["ivf_pq"], seed=seed).search(queries, 10)[1]
                     for seed in (1, 2))
    assert not np.array_equal(first, second)


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_added_vectors_take_the_next_positions_and_are_found_first(clustered_vectors, kind):
    index, _ = clustered_vectors
    vector_index = VectorIndex.build(index[:2000], kind, KINDS[kind])
    vector_index.add(index[2000:])
    assert len(vector_index) == 3000
    added = np.array([2000, 2500, 2999])
    positions, similarities = vector_index.search(index[added], 5)
    np.testing.assert_array_equal(positions[:, 0], added)
    if kind != "ivf_pq":  # whose similarities are those of the compressed vectors (here 0.89 to 1.00)
        np.testing.assert_allclose(similarities[:, 0], 1, atol=1e-5)


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_saved_index_loads_to_the_same_search_results(clustered_vectors, built, kind, tmp_path):
    index, queries = clustered_vectors
    sha256s = built[kind].save(tmp_path)
    assert sorted(sha256s) == sorted([MANIFEST, DATA_FILES["exact" if kind == "exact" else "faiss"]])
    loaded = VectorIndex.load(tmp_path, sha256s)
    assert loaded.description == built[kind].description
    for got, expected in zip(loaded.search(queries, 10), built[kind].search(queries, 10)):
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("kind", [pytest.param("hnsw", marks=needs_faiss), pytest.param("ivf_pq", marks=needs_faiss)])
def test_adding_after_a_load_builds_what_adding_before_the_save_does(clustered_vectors, kind, tmp_path):
    index, queries = clustered_vectors
    kept = VectorIndex.build(index[:2000], kind, KINDS[kind])
    loaded = VectorIndex.load(tmp_path, kept.save(tmp_path))
    for vector_index in (kept, loaded):
        vector_index.add(index[2000:])
    for got, expected in zip(loaded.search(queries, 10), kept.search(queries, 10)):
        np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("kind", ALL_KINDS)
def test_altered_or_missing_files_are_refused(built, kind, tmp_path):
    sha256s = built[kind].save(tmp_path)
    for name in sha256s:
        path = tmp_path / name
        original = path.read_bytes()
        path.write_bytes(original[:-1] + bytes([original[-1] ^ 1]))
        with pytest.raises(VectorIndexIntegrityError, match=f"{name}: sha256 differs"):
            VectorIndex.load(tmp_path, sha256s)
        path.unlink()
        with pytest.raises(VectorIndexIntegrityError, match=f"{name}: missing"):
            VectorIndex.load(tmp_path, sha256s)
        path.write_bytes(original)
    VectorIndex.load(tmp_path, sha256s)


def test_a_pickle_is_refused_even_with_its_sha256_recorded(built, tmp_path):
    sha256s = built["exact"].save(tmp_path)
    with open(tmp_path / DATA_FILES["exact"], "wb") as handle:
        np.save(handle, np.array([{"code": "run me"}], dtype=object), allow_pickle=True)
    sha256s[DATA_FILES["exact"]] = vector_index.sha256_file(tmp_path / DATA_FILES["exact"])
    with pytest.raises(VectorIndexFileError, match="not a exact index saved by VectorIndex.save"):
        VectorIndex.load(tmp_path, sha256s)


@needs_faiss
@pytest.mark.parametrize(
    ("kind", "options", "message"),
    [
        ("ivf_pq", {"m": 10}, r"ivf_pq m is 10, but it must divide the vectors' dim 48: choose one of \[1, 2, 3"),
        ("ivf_flat", {"nlist": 5000}, "nlist is 5000, more cells than the 3000 vectors indexed"),
        ("hnsw", {"m": 2}, "kind 'hnsw': 1 validation error for HnswOptions\nm\n  Input should be greater than"),
        ("hnsw", {"links": 8}, "for HnswOptions\nlinks\n  Extra inputs are not permitted"),
        ("ivf_flat", IvfPqOptions(), "kind 'ivf_flat' takes IvfFlatOptions; got IvfPqOptions"),
        ("annoy", None, "vector index kind 'annoy' is unknown; choose one of exact, flat, ivf_flat, hnsw, ivf_pq"),
    ],
)
def test_invalid_options_are_refused_with_a_clear_message(clustered_vectors, kind, options, message):
    with pytest.raises(ConfigError, match=message):
        VectorIndex.build(clustered_vectors[0], kind, options)


def test_vectors_that_are_not_normalised_are_refused(clustered_vectors):
    vectors = clustered_vectors[0].copy()
    vectors[[4, 9]] *= 2
    with pytest.raises(MetricInputError, match=r"2 vectors are not L2-normalised \(first rows \[4, 9\]"):
        VectorIndex.build(vectors, "exact")


@needs_faiss
def test_a_search_finding_fewer_rows_than_asked_raises_instead_of_returning_minus_one(clustered_vectors, built):
    index, queries = clustered_vectors
    narrow = VectorIndex.build(index, "ivf_flat", {"nprobe": 1})  # one cell of ~40 vectors a query
    with pytest.raises(ConfigError, match="found fewer than 200 rows for .* raise nprobe \\(now 1\\)"):
        narrow.search(queries, 200)


@needs_faiss
def test_faiss_threads_are_settable_and_restored_to_the_default():
    faiss = pytest.importorskip("faiss")
    default = vector_index._faiss_and_default_threads()[1]
    set_faiss_threads(2)
    assert faiss.omp_get_max_threads() == 2
    set_faiss_threads(None)
    assert faiss.omp_get_max_threads() == default
    set_faiss_threads(1)  # one_faiss_thread's, for the tests after this one


def test_missing_faiss_is_a_config_error_saying_what_to_install(clustered_vectors, monkeypatch):
    monkeypatch.setitem(sys.modules, "faiss", None)  # import faiss now raises ImportError
    vector_index._faiss_and_default_threads.cache_clear()
    try:
        with pytest.raises(ConfigError, match=r'pip install "product-visual-search\[faiss\]"'):
            VectorIndex.build(clustered_vectors[0], "hnsw")
        VectorIndex.build(clustered_vectors[0], "exact")  # needs no faiss
    finally:
        vector_index._faiss_and_default_threads.cache_clear()
