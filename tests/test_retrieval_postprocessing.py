"""Post-processing at retrieval time (phases/retrieval/): whitening, alpha-QE, DBA and k-reciprocal
re-ranking against references written from their definitions (re-ranking's from its paper's equations),
the order `retrieve` applies them in, and planted data on which each one raises MAR@10."""

import pickle

import numpy as np
import pydantic
import pytest

from phases.config import EvaluationConfig
from phases.errors import ConfigError, MetricInputError
from phases.metrics import nearest_neighbours, ranking_depth, ranking_scores, retrieval_scores
from phases.retrieval import (
    RetrievalOptions,
    Whitening,
    WhiteningFileError,
    WhiteningIntegrityError,
    augment_database,
    expand_queries,
    expansion,
    rerank,
    retrieve,
    retrieve_and_score,
)
from phases.retrieval.options import RerankingOptions
from tfrecords.files import sha256_file

ALL_STEPS = {"whitening": {}, "database_augmentation": {}, "query_expansion": {}, "reranking": {}}


def products(seed: int, n_products=60, shots=8, dim=32, n_query=120, nuisance=0.0):
    """Queries [n_query, dim] and an index of n_products x shots items, each its product's random centre
    plus unit Gaussian noise, and `nuisance` x Gaussian noise on 3 directions shared by all products;
    plus 2,000 train embeddings of 200 other products drawn alike (to learn a whitening on)."""
    rng = np.random.default_rng(seed)

    def draw(labels, centres):
        vectors = centres[labels] + rng.standard_normal((len(labels), dim))
        vectors[:, :3] += nuisance * rng.standard_normal((len(labels), 3))
        return vectors.astype(np.float32)

    centres, train_centres = rng.standard_normal((n_products, dim)), rng.standard_normal((200, dim))
    index_labels, query_labels = np.repeat(np.arange(n_products), shots), rng.integers(0, n_products, n_query)
    train = draw(rng.integers(0, 200, 2000), train_centres)
    return draw(query_labels, centres), query_labels, draw(index_labels, centres), index_labels, train


def unit(vectors) -> np.ndarray:
    vectors = np.asarray(vectors, dtype=np.float64)
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


# --- whitening


def test_whitened_train_embeddings_have_identity_covariance_in_the_kept_dimensions():
    *_, train = products(0)
    whitening = Whitening.fit(train, dimensions=20, shrinkage=0)
    projected = (unit(train) - whitening.mean) @ whitening.projection  # before the final normalisation
    assert projected.shape == (len(train), 20)
    np.testing.assert_allclose(np.cov(projected, rowvar=False), np.eye(20), atol=1e-4)


def test_whitening_equals_an_svd_reference():
    queries, _, index, _, train = products(1)
    centred = unit(train) - unit(train).mean(axis=0)
    _, singular_values, directions = np.linalg.svd(centred, full_matrices=False)
    variances = singular_values[:24] ** 2 / (len(train) - 1)
    projection = directions[:24].T / np.sqrt(variances)
    whitening = Whitening.fit(train, dimensions=24, shrinkage=0)
    # Directions are defined up to sign: compare them in absolute value, and similarities.
    np.testing.assert_allclose(np.abs(whitening.projection), np.abs(projection), rtol=1e-4, atol=1e-4)
    reference_queries = unit((unit(queries) - unit(train).mean(axis=0)) @ projection)
    reference_index = unit((unit(index) - unit(train).mean(axis=0)) @ projection)
    np.testing.assert_allclose(
        whitening.apply(queries) @ whitening.apply(index).T, reference_queries @ reference_index.T, atol=1e-5
    )


def test_whitening_shrinkage_damps_the_directions_of_least_variance():
    *_, train = products(2)
    plain, shrunk = Whitening.fit(train, shrinkage=0), Whitening.fit(train, shrinkage=1.0)
    gains = np.linalg.norm(shrunk.projection, axis=0) / np.linalg.norm(plain.projection, axis=0)
    assert np.all(gains < 1) and gains[-1] < gains[0]  # the last direction has the least variance


def test_whitening_dimensions_beyond_the_train_set_are_a_config_error_naming_the_field():
    *_, train = products(3)
    with pytest.raises(ConfigError, match="whitening.dimensions is 33.*min\\(n_train - 1, dim\\) = 32"):
        Whitening.fit(train, dimensions=33)
    with pytest.raises(ConfigError, match="= 9.*train_images"):
        Whitening.fit(train[:10], dimensions=10)
    assert Whitening.fit(train[:10]).dimensions == 9


def test_whitening_applied_to_embeddings_of_another_dim_is_refused():
    *_, train = products(4)
    with pytest.raises(MetricInputError, match="learned on \\[n, 32\\] embeddings; got \\[5, 16\\]"):
        Whitening.fit(train).apply(np.ones((5, 16)))


def test_a_zero_embedding_stays_zero_when_whitened():
    queries, *_, train = products(4)
    whitening = Whitening.fit(train)
    queries[3] = 0
    whitened = whitening.apply(queries)
    assert not whitened[3].any() and np.allclose(np.linalg.norm(np.delete(whitened, 3, axis=0), axis=1), 1)


def test_saved_whitening_loads_back_identical(tmp_path):
    queries, *_, train = products(5)
    whitening = Whitening.fit(train, dimensions=16)
    sha256 = whitening.save(tmp_path / "whitening.npz")
    loaded = Whitening.load(tmp_path / "whitening.npz", sha256)
    assert np.array_equal(loaded.mean, whitening.mean) and np.array_equal(loaded.projection, whitening.projection)
    assert np.array_equal(loaded.apply(queries), whitening.apply(queries))
    assert [path.name for path in tmp_path.iterdir()] == ["whitening.npz"]  # no temporary left


def test_tampered_whitening_file_is_refused(tmp_path):
    *_, train = products(6)
    path = tmp_path / "whitening.npz"
    sha256 = Whitening.fit(train).save(path)
    content = bytearray(path.read_bytes())
    content[len(content) // 2] ^= 1
    path.write_bytes(bytes(content))
    with pytest.raises(WhiteningIntegrityError, match="sha256 differs"):
        Whitening.load(path, sha256)


class _MarksWhenUnpickled:
    """Unpickling it creates the file `marker`: proof that code inside a pickle ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return open, (str(self.marker), "w")


@pytest.mark.parametrize("layout", ["object array in an npz", "plain pickle"])
def test_whitening_file_holding_a_pickle_is_refused_without_running_it(tmp_path, layout):
    path, marker = tmp_path / "whitening.npz", tmp_path / "unpickled"
    payload = np.array([_MarksWhenUnpickled(marker)], dtype=object)
    if layout == "plain pickle":
        path.write_bytes(pickle.dumps({"mean": payload, "projection": payload}))
    else:
        np.savez(path, mean=payload, projection=np.eye(2))  # numpy pickles object arrays
    with pytest.raises(WhiteningFileError, match="not a whitening"):
        Whitening.load(path, sha256_file(path))
    assert not marker.exists()


# --- alpha-QE and DBA


def weighted_means_reference(vectors, index, neighbours, alpha, own_weight):
    """The formula written plainly: full float64 similarity matrix, a stable argsort per row, then
    normalise(own_weight x v + sum of max(cos, 0)^alpha x neighbour) over unit vectors."""
    vectors, index = unit(vectors), unit(index)
    similarities = vectors @ index.T
    top = np.argsort(-similarities, axis=1, kind="stable")[:, :neighbours]
    weights = np.maximum(np.take_along_axis(similarities, top, axis=1), 0) ** alpha
    return unit(own_weight * vectors + np.einsum("rk,rkd->rd", weights, index[top]))


@pytest.mark.parametrize("neighbours, alpha", [(1, 3.0), (5, 3.0), (10, 0.0)])
def test_query_expansion_is_the_alpha_weighted_mean_of_the_query_and_its_neighbours(neighbours, alpha):
    queries, _, index, *_ = products(7)
    expanded = expand_queries(queries, index, neighbours, alpha)
    reference = weighted_means_reference(queries, index, neighbours, alpha, own_weight=1)
    assert expanded.dtype == np.float32
    np.testing.assert_allclose(expanded, reference, atol=2e-6)


@pytest.mark.parametrize("neighbours, alpha", [(1, 3.0), (5, 3.0), (10, 0.0)])
def test_database_augmentation_is_the_alpha_weighted_mean_of_an_items_neighbours_itself_included(neighbours, alpha):
    _, _, index, *_ = products(8)
    augmented = augment_database(index, neighbours, alpha)
    np.testing.assert_allclose(augmented, weighted_means_reference(index, index, neighbours, alpha, 0), atol=2e-6)
    if neighbours == 1:  # its own nearest neighbour: the item itself, normalised
        np.testing.assert_allclose(augmented, unit(index), atol=1e-6)


def test_database_augmentation_is_the_same_in_small_blocks(monkeypatch):
    _, _, index, *_ = products(9)
    whole = augment_database(index, 5, 3.0)
    monkeypatch.setattr(expansion, "GATHER_BLOCK_BYTES", 5 * index.shape[1] * 4 * 7)  # 7 rows a block
    assert np.array_equal(augment_database(index, 5, 3.0, max_block_bytes=len(index) * 4 * 3), whole)


# --- k-reciprocal re-ranking


def k_reciprocal_reference(probes, gallery, k1, k2, lambda_value):
    """[n_probe, n_gallery] final distances d* of k-reciprocal re-ranking, written from the paper
    (Zhong, Zheng, Cao, Li, "Re-ranking Person Re-identification with k-reciprocal Encoding", CVPR 2017)
    with full matrices over the pool of the probes and the gallery together, in float64 and plain loops.

    Where the paper leaves a detail open, its implementation practice settles it: distances are
    divided by their row's largest; N(p, k) holds p itself and its k nearest others; Eq. 4 takes
    R(q, k/2) with k/2 rounded to the nearest integer, halves to the even one, and adds it when
    the overlap exceeds 2/3 of it; each V_p is scaled to sum to 1; Eq. 11 averages k2 vectors, p's own
    among them.
    """
    pool = unit(np.concatenate([probes, gallery]))
    size = len(pool)

    # Eq. 1, original distance d(p, g): here the squared Euclidean distance of the unit vectors (the
    # paper's Mahalanobis distance with M = I), each row divided by its largest value.
    differences = pool[:, None, :] - pool[None, :, :]
    d = np.sum(differences**2, axis=2)
    d = d / d.max(axis=1, keepdims=True)

    # The initial ranking list of each item over the whole pool, nearest first (equal distances: by
    # position in the pool). An item is at distance 0 from itself: first in its own list.
    ranking = [sorted(range(size), key=lambda other, item=item: (d[item, other], other)) for item in range(size)]

    def nearest(p, k):
        """Eq. 2, N(p, k): the top-k of p's ranking list over the others, plus p itself (the pool holds
        p; keeping it makes p one of its own k-reciprocal neighbours, with weight e^-0 = 1 in Eq. 7)."""
        return set(ranking[p][: k + 1])

    def reciprocal(p, k):
        """Eq. 3, R(p, k) = {g in N(p, k) : p in N(g, k)}."""
        return {g for g in nearest(p, k) if p in nearest(g, k)}

    # Eq. 4: R*(p, k) = R(p, k) united with R(q, k/2) for each q in R(p, k) whose R(q, k/2) lies
    # mostly inside R(p, k).
    # - k/2 for odd k: rounded to the nearest integer, halves to the even one (Python's round:
    #   5 -> 2, 7 -> 4), as the authors' Python implementation; the paper's k = 20 needs none. (Their
    #   MATLAB implementation keeps floor(k/2) others, 7 -> 3: the k1 = 7 case below tells them apart.)
    # - "mostly": the paper writes |R(p, k) n R(q, k/2)| >= 2/3 |R(q, k/2)|; the authors' code
    #   (Python and MATLAB) tests strictly more than 2/3, and so does this, in integers.
    half_k1 = round(k1 / 2)
    expanded = []
    for p in range(size):
        neighbours = reciprocal(p, k1)
        grown = set(neighbours)
        for q in neighbours:
            candidate = reciprocal(q, half_k1)
            if 3 * len(neighbours & candidate) > 2 * len(candidate):
                grown |= candidate
        expanded.append(grown)

    # Eq. 7: V_p,g = exp(-d(p, g)) for g in R*(p, k1), 0 elsewhere; each V_p then scaled to sum to 1
    # (implementation practice; it changes Eq. 10's ratio, which is not scale-free).
    V = np.zeros((size, size))
    for p in range(size):
        for g in expanded[p]:
            V[p, g] = np.exp(-d[p, g])
        V[p] /= V[p].sum()

    # Eq. 11, local query expansion: V_p becomes the mean of V_g over the k2 nearest items g of p
    # in its ranking list, p itself the first of them (k2 = 1: V_p unchanged).
    V = np.array([np.mean([V[g] for g in ranking[p][:k2]], axis=0) for p in range(size)])

    # Eq. 10, Jaccard distance, and Eq. 12, d*(p, g) = (1 - lambda) d_J(p, g) + lambda d(p, g).
    n_probe = len(probes)
    final = np.empty((n_probe, size - n_probe))
    for p in range(n_probe):
        for column, g in enumerate(range(n_probe, size)):
            jaccard = 1 - np.minimum(V[p], V[g]).sum() / np.maximum(V[p], V[g]).sum()
            final[p, column] = (1 - lambda_value) * jaccard + lambda_value * d[p, g]
    return final


@pytest.mark.parametrize("k1, k2, lambda_value", [(20, 6, 0.3), (5, 1, 0.5), (7, 3, 0.1)])
def test_reranking_all_candidates_matches_the_papers_re_ranking_of_each_query_alone(k1, k2, lambda_value):
    queries, _, index, *_ = products(10, n_products=30, shots=5, dim=16, n_query=4)
    candidates, _ = nearest_neighbours(queries, index, len(index))  # the whole index, in the search's order
    order, distances = rerank(queries, index, candidates, k1=k1, k2=k2, lambda_value=lambda_value)
    ranked = np.take_along_axis(candidates, order, axis=1)
    for row, query in enumerate(queries):
        reference = k_reciprocal_reference(query[None], index, k1, k2, lambda_value)[0]
        assert np.array_equal(ranked[row], np.argsort(reference, kind="stable"))
        np.testing.assert_allclose(distances[row], reference[ranked[row]], atol=1e-6)


def test_reranking_reads_the_index_only_at_the_candidates():
    queries, _, index, *_ = products(11)
    candidates, _ = nearest_neighbours(queries, index, 40)
    order, distances = rerank(queries, index, candidates, k1=20, k2=6, lambda_value=0.3)
    elsewhere = np.setdiff1d(np.arange(len(index)), candidates)
    changed = index.copy()
    changed[elsewhere] = np.random.default_rng(0).standard_normal((len(elsewhere), index.shape[1]))
    changed_order, changed_distances = rerank(queries, changed, candidates, k1=20, k2=6, lambda_value=0.3)
    assert np.array_equal(changed_order, order) and np.array_equal(changed_distances, distances)


def test_reranking_is_the_same_one_query_at_a_time():
    queries, _, index, *_ = products(12)
    candidates, _ = nearest_neighbours(queries, index, 30)
    settings = {"k1": 10, "k2": 6, "lambda_value": 0.3}
    together = rerank(queries, index, candidates, **settings)
    alone = rerank(queries, index, candidates, **settings, max_block_bytes=1)
    assert all(np.array_equal(a, b) for a, b in zip(together, alone))


def test_retrieve_reranks_only_the_top_candidates_and_keeps_the_search_order_below():
    queries, _, index, *_ = products(13)
    plain_positions, plain_similarities = nearest_neighbours(queries, index, 60)
    options = RetrievalOptions(reranking={"k1": 10, "candidates": 25})
    positions, similarities = retrieve(queries, index, options, depth=60)
    assert np.array_equal(np.sort(positions[:, :25]), np.sort(plain_positions[:, :25]))
    assert not np.array_equal(positions[:, :25], plain_positions[:, :25])
    assert np.array_equal(positions[:, 25:], plain_positions[:, 25:])
    by_position, plain_by_position = np.argsort(positions, axis=1), np.argsort(plain_positions, axis=1)
    assert np.array_equal(  # each similarity moved with its item
        np.take_along_axis(similarities, by_position, axis=1),
        np.take_along_axis(plain_similarities, plain_by_position, axis=1),
    )
    shallow, _ = retrieve(queries, index, options, depth=10)
    assert np.array_equal(shallow, positions[:, :10])  # re-ranked before the cut to depth


# --- the options and their one order


def test_every_retrieval_step_is_off_by_default_in_the_evaluation_config():
    assert EvaluationConfig().retrieval == RetrievalOptions() and RetrievalOptions().is_plain
    assert not RetrievalOptions(query_expansion={}).is_plain


def test_retrieval_options_refuse_unknown_keys_and_too_few_candidates():
    with pytest.raises(pydantic.ValidationError, match=r"query_expansion\.k\s+Extra inputs are not permitted"):
        RetrievalOptions(query_expansion={"k": 3})
    with pytest.raises(pydantic.ValidationError, match="candidates \\(20\\) must exceed k1 \\(20\\)"):
        RerankingOptions(candidates=20)
    assert RerankingOptions() == RerankingOptions(k1=20, k2=6, lambda_value=0.3, candidates=100)  # the paper's


@pytest.mark.parametrize("depth", [1, 10, 480])
def test_with_every_option_off_retrieve_is_the_plain_search(depth):
    queries, _, index, *_ = products(14)
    expected = nearest_neighbours(queries, index, depth)
    positions, similarities = retrieve(queries, index, RetrievalOptions(), depth=depth)
    assert np.array_equal(positions, expected[0]) and np.array_equal(similarities, expected[1])


def test_neighbour_counts_beyond_a_small_index_take_the_whole_index():
    queries, _, index, _, train = products(20)
    options = RetrievalOptions(**ALL_STEPS)  # 5 neighbours, 100 candidates, for 4 index items
    positions, similarities = retrieve(queries, index[:4], options, Whitening.fit(train), depth=4)
    assert positions.shape == similarities.shape == (len(queries), 4)
    assert np.array_equal(np.sort(positions, axis=1), np.tile(np.arange(4), (len(queries), 1)))


def test_ranking_scores_of_the_plain_search_equal_retrieval_scores():
    queries, query_labels, index, index_labels, _ = products(15, shots=3)
    index_labels = index_labels.copy()
    index_labels[:40] = query_labels[0] = 0  # a query of a label with R = 40: MAP@R needs its top 40
    query_labels = np.concatenate([query_labels, [999]])  # a label absent from the index
    queries = np.concatenate([queries, queries[:1]])
    depth = ranking_depth(query_labels, index_labels)
    assert depth == 40
    positions, _ = nearest_neighbours(queries, index, depth)
    assert ranking_scores(positions, query_labels, index_labels) == retrieval_scores(
        queries, query_labels, index, index_labels
    )
    with pytest.raises(MetricInputError, match="MAP@R needs its top 40: rank ranking_depth"):
        ranking_scores(positions[:, :39], query_labels, index_labels)


def test_retrieve_and_score_with_every_option_off_is_retrieval_scores():
    queries, query_labels, index, index_labels, _ = products(16)
    plain = retrieval_scores(queries, query_labels, index, index_labels)
    assert retrieve_and_score(queries, query_labels, index, index_labels, RetrievalOptions()) == plain


def test_whitening_is_given_exactly_when_the_config_asks_for_it():
    queries, _, index, _, train = products(17)
    with pytest.raises(ConfigError, match="whitening is set, but no whitening was learned"):
        retrieve(queries, index, RetrievalOptions(whitening={}))
    with pytest.raises(ConfigError, match="whitening is null, but a whitening was given"):
        retrieve(queries, index, RetrievalOptions(), Whitening.fit(train))


@pytest.mark.parametrize(
    "step, nuisance",
    [("whitening", 6.0), ("database_augmentation", 0.0), ("query_expansion", 0.0), ("reranking", 0.0)],
)
def test_each_step_raises_mar_at_10_on_data_made_for_it(step, nuisance):
    # Whitening: 3 directions of large variance shared by all products swamp the cosine;
    # the others: products are clusters, whose neighbours pull queries and items to their centres.
    queries, query_labels, index, index_labels, train = products(18, nuisance=nuisance)
    whitening = Whitening.fit(train) if step == "whitening" else None
    plain = retrieval_scores(queries, query_labels, index, index_labels)["mar_at_10"]
    options = RetrievalOptions(**{step: ALL_STEPS[step]})
    scores = retrieve_and_score(queries, query_labels, index, index_labels, options, whitening)
    assert scores["mar_at_10"] > plain + 0.05


def test_the_later_steps_work_on_whitened_embeddings():
    queries, query_labels, index, index_labels, train = products(19, nuisance=6.0)
    whitening = Whitening.fit(train)
    data = (queries, query_labels, index, index_labels)
    whitened = retrieve_and_score(*data, RetrievalOptions(whitening={}), whitening)["mar_at_10"]
    every_step = retrieve_and_score(*data, RetrievalOptions(**ALL_STEPS), whitening)["mar_at_10"]
    # Here DBA, QE and re-ranking alone lower MAR@10 (the nuisance makes the neighbours wrong);
    # after whitening, they raise it.
    assert every_step > whitened + 0.05
