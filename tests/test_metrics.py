"""Retrieval scores and triplet accuracy: hand-computed cases, ties, chunking, and brute-force references."""

import itertools

import numpy as np
import pytest

from phases import exact_search
from phases.metrics import MetricInputError, nearest_neighbours, retrieval_scores, triplet_accuracy
from phases.scoring import embedding_scores, triplet_sample_rows

SCORE_NAMES = ["mar_at_10", "map_at_10", "recall_at_1", "recall_at_5", "recall_at_10", "precision_at_1", "map_at_r"]


def on_unit_circle(cosines) -> np.ndarray:
    """[n, 2] vectors whose cosine with [1, 0] is each given value (and with [0, 1] its sine)."""
    cosines = np.asarray(cosines, dtype=np.float64)
    return np.stack([cosines, np.sqrt(1 - cosines**2)], axis=1)


def clustered_data(seed: int, n_query=40, n_index=200, products=15, dim=16, duplicates=20):
    """Random queries and index of `products` labels (~13 index items each), drawn near one centre per
    label so that rankings are neither perfect nor random; some queries have labels absent from the
    index, and `duplicates` index rows repeat others, to make ties."""
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((products + 3, dim))
    index_labels = rng.integers(0, products, n_index)
    query_labels = rng.integers(0, products + 3, n_query)  # labels >= products are not in the index
    index = centres[index_labels] + 1.5 * rng.standard_normal((n_index, dim))
    copies = rng.choice(n_index, duplicates, replace=False)
    index[copies] = index[rng.choice(n_index, duplicates, replace=False)]
    queries = centres[query_labels] + 1.5 * rng.standard_normal((n_query, dim))
    return queries, query_labels, index, index_labels


def brute_force_scores(queries, query_labels, index, index_labels) -> dict:
    """The definitions written plainly: full similarity matrix, a stable argsort per query, Python loops."""
    unit_queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    unit_index = index / np.linalg.norm(index, axis=1, keepdims=True)
    similarities = unit_queries @ unit_index.T
    per_query = {name: [] for name in SCORE_NAMES}
    skipped = 0
    for row, label in enumerate(query_labels):
        relevant_count = int(np.sum(index_labels == label))
        if relevant_count == 0:
            skipped += 1
            continue
        ranking = np.argsort(-similarities[row], kind="stable")
        relevant = [int(index_labels[position] == label) for position in ranking]

        def average_precision(cutoff, denominator, relevant=relevant):
            return sum(sum(relevant[:r]) / r * relevant[r - 1] for r in range(1, cutoff + 1)) / denominator

        per_query["mar_at_10"].append(sum(relevant[:10]) / min(10, relevant_count))
        per_query["map_at_10"].append(average_precision(min(10, len(relevant)), min(10, relevant_count)))
        per_query["recall_at_1"].append(float(any(relevant[:1])))
        per_query["recall_at_5"].append(float(any(relevant[:5])))
        per_query["recall_at_10"].append(float(any(relevant[:10])))
        per_query["precision_at_1"].append(float(relevant[0]))
        per_query["map_at_r"].append(average_precision(relevant_count, relevant_count))
    scores = {name: float(np.mean(values)) for name, values in per_query.items()}
    return scores | {"n_queries": len(query_labels) - skipped, "n_queries_without_relevant": skipped}


@pytest.fixture
def hand_case():
    """14 index items at cosines 1.00, 0.95, ..., 0.35 with [1, 0] (so rank i+1 for query [1, 0], and
    the reverse order for query [0, 1]): label 1 at positions 1, 4, 11; label 2 elsewhere (R = 11).
    Query A = [1, 0] of label 1, query B = [0, 1] of label 2, query C of label 3, absent from the index."""
    index = on_unit_circle(1 - 0.05 * np.arange(14))
    index_labels = np.full(14, 2)
    index_labels[[1, 4, 11]] = 1
    queries = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    return queries, np.array([1, 2, 3]), index, index_labels


def test_hand_computed_scores_for_a_known_ranking(hand_case):
    # Query A: relevant at ranks 2, 5 and 12, R = 3: two of three in the top 10.
    a = {
        "mar_at_10": 2 / 3,
        "map_at_10": (1 / 2 + 2 / 5) / 3,
        "recall_at_1": 0,
        "recall_at_5": 1,
        "recall_at_10": 1,
        "precision_at_1": 0,
        "map_at_r": (1 / 2) / 3,  # ranks 1..3 hold one relevant item, at rank 2
    }
    # Query B sees the reverse order: positions 11, 4, 1 (label 1) are its ranks 3, 10, 13; R = 11 > 10.
    b = {
        "mar_at_10": 8 / 10,
        "map_at_10": (1 + 1 + 3 / 4 + 4 / 5 + 5 / 6 + 6 / 7 + 7 / 8 + 8 / 9) / 10,
        "recall_at_1": 1,
        "recall_at_5": 1,
        "recall_at_10": 1,
        "precision_at_1": 1,
        "map_at_r": (1 + 1 + 3 / 4 + 4 / 5 + 5 / 6 + 6 / 7 + 7 / 8 + 8 / 9 + 9 / 11) / 11,
    }
    expected = {name: (a[name] + b[name]) / 2 for name in SCORE_NAMES}
    scores = retrieval_scores(*hand_case)
    assert list(scores) == SCORE_NAMES + ["n_queries", "n_queries_without_relevant"]
    assert scores == pytest.approx(expected | {"n_queries": 2, "n_queries_without_relevant": 1}, abs=1e-12)


def test_query_without_relevant_items_is_left_out_and_counted(hand_case):
    queries, query_labels, index, index_labels = hand_case
    with_absent = retrieval_scores(queries, query_labels, index, index_labels)
    without = retrieval_scores(queries[:2], query_labels[:2], index, index_labels)
    assert with_absent == without | {"n_queries_without_relevant": 1}


def test_equal_similarities_rank_the_lower_index_position_first():
    index = np.ones((12, 3))  # all at the same similarity to any query
    query = np.array([[1.0, 2.0, 3.0]])
    for relevant_position, in_top_10 in [(0, 1.0), (9, 1.0), (10, 0.0), (11, 0.0)]:
        labels = np.zeros(12, dtype=int)
        labels[relevant_position] = 1
        scores = retrieval_scores(query, [1], index, labels)
        assert scores["precision_at_1"] == float(relevant_position == 0)
        assert scores["mar_at_10"] == in_top_10
        assert scores["map_at_r"] == float(relevant_position == 0)  # R = 1: only rank 1 counts


def test_zero_vectors_have_similarity_zero_not_nan():
    index = np.array([[-1.0, 0.2], [0.0, 0.0], [1.0, 0.1]])  # cosines with [1, 0]: negative, 0, positive
    labels = np.array([1, 2, 3])
    # Ranked [3, 2, 1]: the zero vector sits between the positive and the negative cosine.
    assert retrieval_scores([[1.0, 0.0]], [2], index, labels)["map_at_r"] == 0
    assert retrieval_scores([[1.0, 0.0]], [2], index, labels)["mar_at_10"] == 1
    # A zero query is at similarity 0 to everything: ties, ranked by position.
    zero_query = retrieval_scores([[0.0, 0.0]], [1], index, labels)
    assert zero_query["precision_at_1"] == 1
    assert not any(np.isnan(value) for value in zero_query.values())


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_scores_match_a_brute_force_full_matrix_reference(seed):
    data = clustered_data(seed)
    expected = brute_force_scores(*data)
    assert 0.1 < expected["mar_at_10"] < 0.9, "the data should rank neither perfectly nor randomly"
    assert retrieval_scores(*data) == pytest.approx(expected, rel=1e-12)


def test_chunk_size_does_not_change_any_score():
    data = clustered_data(seed=3)
    all_at_once = retrieval_scores(*data, chunk_size=len(data[0]))
    assert retrieval_scores(*data, chunk_size=1) == all_at_once
    assert retrieval_scores(*data, chunk_size=3) == all_at_once
    assert retrieval_scores(*data, max_block_bytes=1) == all_at_once  # the budget's floor: one query per chunk


def test_scaling_a_vector_changes_nothing():
    # No duplicates: two copies scaled apart would differ by rounding and no longer tie.
    queries, query_labels, index, index_labels = clustered_data(seed=4, duplicates=0)
    rng = np.random.default_rng(4)
    scaled_queries = queries * rng.uniform(0.1, 10, (len(queries), 1))
    scaled_index = index * rng.uniform(0.1, 10, (len(index), 1))
    assert retrieval_scores(scaled_queries, query_labels, scaled_index, index_labels) == retrieval_scores(
        queries, query_labels, index, index_labels
    )


def test_tensorflow_tensors_are_accepted():
    tf = pytest.importorskip("tensorflow")
    data = clustered_data(seed=5)
    tensors = [tf.constant(array) for array in data]
    assert retrieval_scores(*tensors) == retrieval_scores(*data)
    labels, embeddings = data[3], data[2]
    assert triplet_accuracy(tf.constant(labels), tf.constant(embeddings)) == triplet_accuracy(labels, embeddings)


@pytest.mark.parametrize(
    "arguments, message",
    [
        ((np.zeros((0, 4)), [], np.ones((3, 4)), [1, 2, 3]), "query set is empty"),
        ((np.ones((2, 4)), [1, 2], np.zeros((0, 4)), []), "index set is empty"),
        ((np.ones((2, 4)), [1, 2], np.ones((3, 5)), [1, 2, 3]), r"query embeddings \[2, 4\] and index .* \[3, 5\]"),
        ((np.ones((2, 4)), [1, 2, 3], np.ones((3, 4)), [1, 2, 3]), r"got labels \[3\] for embeddings \[2, 4\]"),
        ((np.ones(4), [1], np.ones((3, 4)), [1, 2, 3]), r"query embeddings must be \[n, dim\]; got \[4\]"),
        ((np.ones((2, 4)), [7, 8], np.ones((3, 4)), [1, 2, 3]), "no query label occurs in the index"),
        (
            (np.ones((2, 4)), [1, 2], np.full((3, 4), np.nan), [1, 2, 3]),
            r"3 index embeddings are not finite .* rows \[0, 1, 2\]",
        ),
    ],
)
def test_unscorable_input_is_a_value_error_saying_what_is_wrong(arguments, message):
    with pytest.raises(MetricInputError, match=message) as error:
        retrieval_scores(*arguments)
    assert isinstance(error.value, ValueError)


def test_nearest_neighbours_are_the_stable_full_sort_of_cosine_similarities():
    queries, _, index, _ = clustered_data(seed=7)  # duplicated index rows make ties
    unit_queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    unit_index = index / np.linalg.norm(index, axis=1, keepdims=True)
    similarities = unit_queries @ unit_index.T
    expected = np.argsort(-similarities, axis=1, kind="stable")[:, :7]
    positions, found_similarities = nearest_neighbours(queries, index, k=7, chunk_size=3)
    np.testing.assert_array_equal(positions, expected)
    np.testing.assert_allclose(found_similarities, np.take_along_axis(similarities, expected, axis=1), atol=1e-6)


def test_nearest_neighbours_needs_k_between_1_and_the_index_size():
    with pytest.raises(MetricInputError, match="k must be between 1 and the index size 3; got 4"):
        nearest_neighbours(np.ones((2, 4)), np.ones((3, 4)), k=4)


@pytest.mark.parametrize(
    "labels, embeddings, metric, expected",
    [
        # Anchors 0, 1, 3 each order one of their two triplets correctly, anchor 2 none: 3 of 8.
        ([0, 0, 1, 1], [[0.0], [2.0], [1.0], [5.0]], "L2", 3 / 8),
        ([0, 0, 1, 1], [[0.0], [2.0], [1.0], [5.0]], "squared-L2", 3 / 8),
        # At 0, 60 and 90 degrees: anchor 0 is right (0.5 < 1), anchor 1 wrong (0.5 > 1 - cos 30).
        ([0, 0, 1], [[1.0, 0.0], [0.5, 0.75**0.5], [0.0, 3.0]], "angular", 1 / 2),
        # Anchor 0 is as far from its positive as from its negative: a tie counts as wrong.
        ([0, 0, 1], [[0.0], [1.0], [-1.0]], "L2", 1 / 2),
    ],
)
def test_triplet_accuracy_on_hand_computed_cases(labels, embeddings, metric, expected):
    assert triplet_accuracy(labels, embeddings, metric) == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("labels", [[1, 2, 3], [4, 4, 4], []])
def test_triplet_accuracy_without_valid_triplet_is_nan(labels):
    assert np.isnan(triplet_accuracy(labels, np.ones((len(labels), 2))))


@pytest.mark.parametrize("metric", ["L2", "squared-L2", "angular"])
def test_triplet_accuracy_matches_an_all_triplets_brute_force(metric):
    rng = np.random.default_rng(6)
    labels = rng.integers(0, 3, 15)
    embeddings = rng.standard_normal((15, 3))
    distance = {
        "L2": lambda a, b: np.linalg.norm(a - b),
        "squared-L2": lambda a, b: np.sum((a - b) ** 2),
        "angular": lambda a, b: 1 - a @ b / (np.linalg.norm(a) * np.linalg.norm(b)),
    }[metric]
    outcomes = [
        distance(embeddings[a], embeddings[p]) < distance(embeddings[a], embeddings[n])
        for a, p, n in itertools.product(range(15), repeat=3)
        if a != p and labels[a] == labels[p] and labels[a] != labels[n]
    ]
    assert triplet_accuracy(labels, embeddings, metric) == pytest.approx(np.mean(outcomes), abs=1e-12)


def test_unknown_distance_metric_is_a_value_error_listing_the_choices():
    with pytest.raises(ValueError, match="L2, squared-L2, angular"):
        triplet_accuracy([0, 0, 1], np.ones((3, 2)), "cosine")


# ---- the scores of a phase row: retrieval and triplet accuracy ------------------------------------------------


def test_scored_row_adds_the_triplet_accuracy_of_query_and_index_items_together():
    queries, query_labels, index, index_labels = clustered_data(seed=8)
    scores = embedding_scores(queries, query_labels, index, index_labels, triplet_sample=2000)
    labels, vectors = np.concatenate([query_labels, index_labels]), np.concatenate([queries, index])
    together = triplet_accuracy(labels, vectors, "angular")
    assert scores == {**retrieval_scores(queries, query_labels, index, index_labels), "triplet_accuracy": together}


def test_triplet_sample_takes_whole_products_the_same_way_every_time():
    queries, query_labels, index, index_labels = clustered_data(seed=9)
    labels = np.concatenate([query_labels, index_labels])
    rows = triplet_sample_rows(labels, 60)
    np.random.seed(1)  # the global generator plays no part
    assert np.array_equal(rows, triplet_sample_rows(labels, 60))
    assert 0 < len(rows) <= 60 and np.all(np.diff(rows) > 0)
    sampled = np.unique(labels[rows])
    assert np.array_equal(np.sort(rows), np.flatnonzero(np.isin(labels, sampled)))  # no product is cut
    assert len(sampled) < len(np.unique(labels))
    scores = embedding_scores(queries, query_labels, index, index_labels, triplet_sample=60)
    vectors = np.concatenate([queries, index])
    assert scores["triplet_accuracy"] == triplet_accuracy(labels[rows], vectors[rows], "angular")


def test_triplet_accuracy_is_left_out_when_the_sample_has_no_valid_triplet():
    # Two products of two items each, at most 3 sampled: one whole product fits, a single label has no negative.
    scores = embedding_scores([[1.0, 0.0], [0.0, 1.0]], [5, 6], [[1.0, 0.1], [0.1, 1.0]], [5, 6], triplet_sample=3)
    assert "triplet_accuracy" not in scores and scores["mar_at_10"] == 1.0


# ---- the search at scale: the partition shortcut, agreement with faiss -----------------------------------------


def test_the_partition_shortcut_ranks_exactly_as_a_full_partition(monkeypatch):
    queries, _, index, _ = clustered_data(seed=11, n_query=40, n_index=5000, dim=8, duplicates=1000)
    queries[3] = 0  # ties everything: its chunk falls back to partitioning the whole block
    shortcut = nearest_neighbours(queries, index, k=12, chunk_size=8)
    monkeypatch.setattr(exact_search, "PARTITION_GROUP", len(index))  # a single group: no shortcut
    full_partition = nearest_neighbours(queries, index, k=12, chunk_size=8)
    np.testing.assert_array_equal(shortcut[0], full_partition[0])
    np.testing.assert_array_equal(shortcut[1], full_partition[1])


def faiss_neighbours(queries, index, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions and similarities of faiss' exact IndexFlatIP search over L2-normalised float32 vectors."""
    faiss = pytest.importorskip("faiss")
    unit_queries, unit_index = np.array(queries, dtype=np.float32), np.array(index, dtype=np.float32)
    faiss.normalize_L2(unit_queries)
    faiss.normalize_L2(unit_index)
    flat = faiss.IndexFlatIP(unit_index.shape[1])
    flat.add(unit_index)
    similarities, positions = flat.search(unit_queries, k)
    return positions, similarities


def listed_cosines(queries, index, positions) -> np.ndarray:
    """[n_query, k] float64 cosine similarity of each query with the index rows listed for it."""
    queries, listed = np.asarray(queries, dtype=np.float32), np.asarray(index, dtype=np.float32)[positions]
    dots = np.einsum("qd,qkd->qk", queries.astype(np.float64), listed.astype(np.float64))
    return dots / np.linalg.norm(queries, axis=1)[:, None] / np.linalg.norm(listed, axis=2)


def assert_same_up_to_ties(queries, index, ours, theirs, tolerance=1e-5):
    """Two exact top-k results (positions, similarities) agree: each reports its items' true similarities,
    and at every rank the two items are equally similar to the query, so their positions differ only by ties."""
    for positions, similarities in (ours, theirs):
        np.testing.assert_allclose(similarities, listed_cosines(queries, index, positions), atol=tolerance)
    ours_exact, theirs_exact = listed_cosines(queries, index, ours[0]), listed_cosines(queries, index, theirs[0])
    np.testing.assert_allclose(ours_exact, theirs_exact, atol=tolerance)


def mar_at_10_of(positions, query_labels, index_labels) -> float:
    """MAR@10 of ranked neighbours, as retrieval_scores defines it; queries without relevant items left out."""
    relevant_counts = (index_labels == query_labels[:, None]).sum(axis=1)
    hits = (index_labels[positions[:, :10]] == query_labels[:, None]).sum(axis=1)
    scored = relevant_counts > 0
    return float(np.mean(hits[scored] / np.minimum(relevant_counts[scored], 10)))


def test_nearest_neighbours_agree_with_faiss_exact_search():
    queries, query_labels, index, index_labels = clustered_data(
        seed=12, n_query=500, n_index=20_000, products=4000, dim=64, duplicates=0
    )
    ours = nearest_neighbours(queries, index, k=10)
    theirs = faiss_neighbours(queries, index, 10)
    assert_same_up_to_ties(queries, index, ours, theirs)
    assert np.mean(ours[0] == theirs[0]) > 0.99, "without duplicates, ties within rounding should be rare"
    mar_at_10 = retrieval_scores(queries, query_labels, index, index_labels)["mar_at_10"]
    assert 0.1 < mar_at_10 < 0.9, "the data should rank neither perfectly nor randomly"
    assert mar_at_10_of(theirs[0], query_labels, index_labels) == pytest.approx(mar_at_10, abs=1e-12)


def test_nearest_neighbours_agree_with_faiss_on_exact_ties_and_rank_the_lower_position_first():
    queries, _, index, _ = clustered_data(seed=13, n_query=500, n_index=20_000, products=4000, dim=64, duplicates=5000)
    ours = nearest_neighbours(queries, index, k=10)
    theirs = faiss_neighbours(queries, index, 10)
    assert_same_up_to_ties(queries, index, ours, theirs)  # faiss 1.15 lists tied items highest position first
    positions, similarities = ours
    tied = np.diff(similarities, axis=1) == 0
    assert tied.sum() > 100, "duplicated index rows should put exact ties in many top 10s"
    assert np.all(np.diff(positions, axis=1)[tied] > 0)


# ---- rankings that do not depend on the block size ----------------------------------------------------------


def near_tie_data(seed: int, dim: int, moved_by=1e-5, products=300, n_query=64):
    """float32 queries [n_query, dim], their labels, index [3 * products, dim] and its labels: each product's
    random vector twice, and a copy moved by `moved_by` x Gaussian noise (~1e-5: similarities a few float32 ulps
    apart; 0: a third exact copy) labelled as the next product, a look-alike; shuffled, so that copies sit at
    scattered positions. Queries are noisy products. Float32 products of different block shapes round such
    near-ties, and even exact copies, differently."""
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((products, dim), dtype=np.float32)
    moved = vectors + np.float32(moved_by) * rng.standard_normal((products, dim), dtype=np.float32)
    index_labels = np.concatenate([np.arange(products), (np.arange(products) + 1) % products, np.arange(products)])
    shuffle = rng.permutation(len(index_labels))
    index, index_labels = np.concatenate([vectors, moved, vectors])[shuffle], index_labels[shuffle]
    query_labels = rng.integers(0, products, n_query)
    queries = vectors[query_labels] + np.float32(0.5) * rng.standard_normal((n_query, dim), dtype=np.float32)
    return queries, query_labels, index, index_labels


def stable_exact_ranking(queries, index, k: int) -> np.ndarray:
    """[n_query, k] positions by decreasing float64 cosine of the float32 inputs, equal ones lower position first.

    Each distinct index vector gets one value, so exact copies tie here whatever BLAS does; near-ties ~1e-7 apart
    are far wider than float64 rounding (~1e-16)."""
    vectors, copy_of = np.unique(np.asarray(index, dtype=np.float64), axis=0, return_inverse=True)
    unit_queries = queries / np.linalg.norm(np.asarray(queries, dtype=np.float64), axis=1, keepdims=True)
    similarities = (unit_queries @ (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).T)[:, copy_of.ravel()]
    return np.argsort(-similarities, axis=1, kind="stable")[:, :k]


def assert_copies_adjacent_in_position_order(index, positions, similarities):
    """In every ranked row, exact copies of an index vector form one run, in increasing positions, equally similar."""
    for row_positions, row_similarities in zip(positions, similarities):
        keys = [index[position].tobytes() for position in row_positions]
        runs = [key for rank, key in enumerate(keys) if rank == 0 or key != keys[rank - 1]]
        assert len(runs) == len(set(runs)), "copies of a vector separated by another item"
        same = np.array([keys[rank] == keys[rank - 1] for rank in range(1, len(keys))], dtype=bool)
        assert np.all(np.diff(row_positions)[same] > 0) and np.all(np.diff(row_similarities)[same] == 0)


@pytest.mark.parametrize("dim", [512, 768, 1280])
def test_ranking_is_the_exact_stable_sort_whatever_the_block_or_chunk_size(dim):
    queries, _, index, _ = near_tie_data(seed=14, dim=dim)
    expected = stable_exact_ranking(queries, index, k=12)
    results = [
        nearest_neighbours(queries, index, k=12, **size)
        for size in ({"chunk_size": 1}, {"chunk_size": 7}, {"chunk_size": 64}, {"max_block_bytes": 1}, {})
    ]
    for positions, similarities in results:
        np.testing.assert_array_equal(positions, expected)
        np.testing.assert_array_equal(similarities, results[0][1])
        assert_copies_adjacent_in_position_order(index, positions, similarities)


def test_exact_copies_tie_even_when_a_single_query_goes_through_another_blas_kernel():
    # Found on OpenBLAS 0.3.31 (Haswell): one query (gemv) gives some copies a similarity 1 ulp
    # apart from the others, so that ranking by float32 listed them out of position order.
    queries, _, index, _ = near_tie_data(seed=0, dim=768, moved_by=0)
    one_at_a_time = nearest_neighbours(queries, index, k=9, chunk_size=1)
    all_at_once = nearest_neighbours(queries, index, k=9, chunk_size=len(queries))
    np.testing.assert_array_equal(one_at_a_time[0], all_at_once[0])
    assert_copies_adjacent_in_position_order(index, *one_at_a_time)


def test_retrieval_scores_do_not_depend_on_the_block_size_with_near_ties_and_copies():
    data = near_tie_data(seed=15, dim=768)
    all_at_once = retrieval_scores(*data, chunk_size=len(data[0]))
    for size in ({"chunk_size": 1}, {"chunk_size": 5}, {"max_block_bytes": 1}, {}):
        assert retrieval_scores(*data, **size) == all_at_once


def test_a_collapsed_model_keeps_its_float32_order_without_recomputing_every_item(monkeypatch):
    recomputed_pairs = []
    exact_cosines = exact_search._exact_cosines

    def counted_exact_cosines(queries, query_norms, index, index_scale, rows, positions):
        recomputed_pairs.append(len(rows))
        return exact_cosines(queries, query_norms, index, index_scale, rows, positions)

    monkeypatch.setattr(exact_search, "_exact_cosines", counted_exact_cosines)
    rng = np.random.default_rng(16)
    queries = rng.standard_normal((6, 64))
    index = 1 + 1e-6 * rng.standard_normal((3000, 64))  # all within the error bound: 3000 candidates a row
    positions, similarities = nearest_neighbours(queries, index, k=10, chunk_size=4)
    assert sum(recomputed_pairs) == 0, "rows over depth + MAX_NEAR_TIES candidates are not recomputed"
    assert all(len(set(row)) == 10 for row in positions) and np.all(np.diff(similarities, axis=1) <= 0)
    np.testing.assert_allclose(similarities, listed_cosines(queries, index, positions), atol=1e-6)
    # Exact ties still rank the lower position first.
    tied_positions, _ = nearest_neighbours(queries, np.ones((3000, 64)), k=10)
    np.testing.assert_array_equal(tied_positions, np.tile(np.arange(10), (6, 1)))


def test_rows_with_up_to_depth_plus_max_near_ties_candidates_are_recomputed_exactly(monkeypatch):
    monkeypatch.setattr(exact_search, "MAX_NEAR_TIES", 3000)
    index = np.ones((3000, 64))  # every item tied: 3000 candidates, now within the cap
    positions, similarities = nearest_neighbours(np.ones((2, 64)), index, k=10)
    np.testing.assert_array_equal(positions, np.tile(np.arange(10), (2, 1)))
    np.testing.assert_array_equal(similarities, 1)


def test_vectors_too_small_for_float32_error_bounds_count_as_zero_vectors():
    index = np.array([[1.0, 0.0], [1e-16, 1e-16], [-1.0, 0.0]], dtype=np.float32)  # norm 1.4e-16 < 2^-50
    positions, similarities = nearest_neighbours([[1.0, 0.0]], index, k=3)
    np.testing.assert_array_equal(positions, [[0, 1, 2]])
    np.testing.assert_array_equal(similarities, [[1, 0, -1]])
