"""The batch losses match a plain NumPy reference written from their definitions (= tensorflow-addons 0.23)."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from phases.config import SiamesePhase
from phases.losses import (
    DISTANCE_METRICS,
    ContrastiveLoss,
    MultiSimilarityLoss,
    TripletHardLoss,
    TripletSemiHardLoss,
    contrastive_loss,
    make_loss,
    multi_similarity_loss,
    triplet_hard_loss,
    triplet_semihard_loss,
)

LOSS_FUNCTIONS = [triplet_semihard_loss, triplet_hard_loss, contrastive_loss]  # those taking every distance metric
EVERY_LOSS_FUNCTION = [*LOSS_FUNCTIONS, multi_similarity_loss]  # multi-similarity: "angular" only


# ---- NumPy reference, one anchor / pair at a time -------------------------------------------------------------


def reference_distances(embeddings, metric):
    """Distance of every ordered pair, in float64, straight from the definition."""
    x = np.asarray(embeddings, dtype=np.float64)
    distances = np.zeros((len(x), len(x)))
    for i in range(len(x)):
        for j in range(len(x)):
            if metric == "angular":
                cosine = x[i] @ x[j] / (np.linalg.norm(x[i]) * np.linalg.norm(x[j]))
                distances[i, j] = max(1.0 - cosine, 0.0)
            else:
                distances[i, j] = np.linalg.norm(x[i] - x[j]) ** (2 if metric == "squared-L2" else 1)
    return distances


def reference_semihard(labels, embeddings, margin, metric):
    d = reference_distances(embeddings, metric)
    total, pairs = 0.0, 0
    for a in range(len(labels)):
        negatives = [d[a, k] for k in range(len(labels)) if labels[k] != labels[a]]
        for p in range(len(labels)):
            if p == a or labels[p] != labels[a]:
                continue
            farther = [distance for distance in negatives if distance > d[a, p]]
            if farther:
                negative = min(farther)  # the semi-hard negative
            elif negatives:
                negative = max(negatives)  # none farther than the positive: the farthest negative
            else:
                negative = min(d[a])  # no negative at all: TFA uses the row minimum (0, the anchor itself)
            total += max(margin + d[a, p] - negative, 0.0)
            pairs += 1
    return total / pairs if pairs else 0.0


def reference_hard(labels, embeddings, margin, soft, metric):
    d = reference_distances(embeddings, metric)
    total = 0.0
    for a in range(len(labels)):
        positives = [d[a, p] for p in range(len(labels)) if p != a and labels[p] == labels[a]]
        negatives = [d[a, n] for n in range(len(labels)) if labels[n] != labels[a]]
        hardest_positive = max(positives) if positives else min(d[a])
        hardest_negative = min(negatives) if negatives else max(d[a])
        gap = hardest_positive - hardest_negative
        total += math.log1p(math.exp(gap)) if soft else max(gap + margin, 0.0)
    return total / len(labels)


def reference_contrastive(labels, embeddings, margin, metric):
    d = reference_distances(embeddings, metric)
    terms = []
    for i in range(len(labels)):
        for j in range(i + 1, len(labels)):
            if labels[i] == labels[j]:
                terms.append(d[i, j] ** 2)
            else:
                terms.append(max(margin - d[i, j], 0.0) ** 2)
    return sum(terms) / len(terms) if terms else 0.0


def reference_multi_similarity(labels, embeddings, margin, alpha, beta, threshold):
    """As the authors' research-ms-loss, but leaving out the anchor itself rather than every S >= 1 - 1e-5."""
    x = np.asarray(embeddings, dtype=np.float64)
    s = 1.0 - reference_distances(x, "angular")  # cosine similarity
    total = 0.0
    for a in range(len(labels)):
        positives = [s[a, p] for p in range(len(labels)) if p != a and labels[p] == labels[a]]
        negatives = [s[a, n] for n in range(len(labels)) if labels[n] != labels[a]]
        kept_positives = [value for value in positives if negatives and value - margin < max(negatives)]
        kept_negatives = [value for value in negatives if positives and value + margin > min(positives)]
        if not kept_positives or not kept_negatives:
            continue  # the anchor adds nothing but still counts in the mean
        total += math.log1p(sum(math.exp(-alpha * (value - threshold)) for value in kept_positives)) / alpha
        total += math.log1p(sum(math.exp(beta * (value - threshold)) for value in kept_negatives)) / beta
    return total / len(labels)


def random_batch(seed, size=12, dim=5, classes=4):
    rng = np.random.default_rng(seed)
    return rng.integers(0, classes, size=size), rng.normal(size=(size, dim)).astype(np.float32)


# ---- values against the reference ------------------------------------------------------------------------------


@pytest.mark.parametrize("metric", DISTANCE_METRICS)
@pytest.mark.parametrize("margin", [0.2, 1.0, 3.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_semihard_loss_matches_reference(metric, margin, seed):
    labels, embeddings = random_batch(seed)
    value = triplet_semihard_loss(labels, embeddings, margin=margin, distance_metric=metric)
    expected = reference_semihard(labels, embeddings, margin, metric)
    np.testing.assert_allclose(float(value), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("metric", DISTANCE_METRICS)
@pytest.mark.parametrize("margin", [0.2, 1.0, 3.0])
@pytest.mark.parametrize("soft", [False, True])
def test_hard_loss_matches_reference(metric, margin, soft):
    labels, embeddings = random_batch(seed=3)  # label 2 occurs once: an anchor without positive
    value = triplet_hard_loss(labels, embeddings, margin=margin, soft=soft, distance_metric=metric)
    expected = reference_hard(labels, embeddings, margin, soft, metric)
    np.testing.assert_allclose(float(value), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("metric", DISTANCE_METRICS)
@pytest.mark.parametrize("margin", [0.2, 1.0, 3.0])
def test_contrastive_loss_matches_reference(metric, margin):
    labels, embeddings = random_batch(seed=2)
    value = contrastive_loss(labels, embeddings, margin=margin, distance_metric=metric)
    np.testing.assert_allclose(float(value), reference_contrastive(labels, embeddings, margin, metric), rtol=1e-4)


def test_semihard_loss_matches_the_tfa_docstring_example():
    # tfa.losses.triplet_semihard_loss([0, 0], [[0, 1], [1, 0]], distance_metric="L2") == 2.4142137
    assert float(triplet_semihard_loss([0, 0], [[0.0, 1.0], [1.0, 0.0]])) == pytest.approx(2.4142137, abs=1e-6)


# ---- hand-made cases -------------------------------------------------------------------------------------------


def test_semihard_falls_back_to_the_farthest_negative_when_none_is_farther_than_the_positive():
    # On a line: anchor 0 and positive 3 (label 0), negatives at 1 and -1.5.
    # (0 -> 3): negatives at distance 1 and 1.5, none beyond 3: the farthest, 1.5: 1 + 3 - 1.5 = 2.5
    # (3 -> 0): negatives at distance 2 and 4.5: the semi-hard one is 4.5:   max(1 + 3 - 4.5, 0) = 0
    # The negatives have labels of their own, so they are no anchors: the loss is (2.5 + 0) / 2.
    labels = [0, 0, 1, 2]
    embeddings = [[0.0, 0.0], [3.0, 0.0], [1.0, 0.0], [-1.5, 0.0]]
    assert float(triplet_semihard_loss(labels, embeddings, margin=1.0)) == pytest.approx(1.25)


def test_semihard_loss_of_a_batch_without_positive_pair_is_zero_not_nan():
    labels, embeddings = [0, 1, 2, 3], np.eye(4, dtype=np.float32)
    for metric in DISTANCE_METRICS:
        assert float(triplet_semihard_loss(labels, embeddings, distance_metric=metric)) == 0.0


def test_hard_loss_without_positive_pairs_still_pushes_negatives_apart_like_tfa():
    # TFA takes 0 as the hardest positive of an anchor without positive: loss = mean(max(margin - nearest negative, 0)).
    labels, embeddings = [0, 1, 2], [[0.0, 0.0], [0.5, 0.0], [3.0, 0.0]]
    expected = (max(1 - 0.5, 0) + max(1 - 0.5, 0) + max(1 - 2.5, 0)) / 3
    assert float(triplet_hard_loss(labels, embeddings, margin=1.0)) == pytest.approx(expected)


@pytest.mark.parametrize("metric", DISTANCE_METRICS)
def test_identical_embeddings_cost_the_margin(metric):
    labels, embeddings = [0, 0, 1, 1], np.ones((4, 3), dtype=np.float32)
    # All distances are 0: every triplet costs the margin; 4 of the 6 pairs are negatives, each costing margin^2.
    assert float(triplet_semihard_loss(labels, embeddings, margin=0.5, distance_metric=metric)) == pytest.approx(0.5)
    assert float(triplet_hard_loss(labels, embeddings, margin=0.5, distance_metric=metric)) == pytest.approx(0.5)
    contrastive = contrastive_loss(labels, embeddings, margin=0.5, distance_metric=metric)
    assert float(contrastive) == pytest.approx(4 / 6 * 0.5**2)


def test_contrastive_loss_of_fewer_than_two_embeddings_is_zero():
    assert float(contrastive_loss([7], [[1.0, 2.0]])) == 0.0
    assert float(contrastive_loss(np.zeros([0], np.int64), np.zeros([0, 2], np.float32))) == 0.0


@pytest.mark.parametrize("loss_function", EVERY_LOSS_FUNCTION)
def test_labels_shaped_batch_by_one_give_the_same_loss(loss_function):
    labels, embeddings = random_batch(seed=4)
    flat = loss_function(labels, embeddings)
    column = loss_function(labels.reshape(-1, 1).astype(np.int32), embeddings)
    assert float(column) == pytest.approx(float(flat))


@pytest.mark.parametrize("loss_function", EVERY_LOSS_FUNCTION)
@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_low_precision_embeddings_are_measured_in_float32(loss_function, dtype):
    labels, embeddings = random_batch(seed=5)
    low = tf.constant(embeddings, dtype=dtype)
    value = loss_function(labels, low)
    assert value.dtype == "float32" and value.shape == ()
    # Same value as the float32 loss of the rounded embeddings: only the input was rounded.
    assert float(value) == pytest.approx(float(loss_function(labels, tf.cast(low, "float32"))), rel=1e-6)


@pytest.mark.parametrize("loss_function", EVERY_LOSS_FUNCTION)
def test_numpy_and_tensor_inputs_give_the_same_float32_scalar(loss_function):
    labels, embeddings = random_batch(seed=6)
    from_numpy = loss_function(labels, embeddings, margin=0.7)
    from_tensors = loss_function(tf.constant(labels), tf.constant(embeddings), margin=tf.constant(0.7))
    assert from_numpy.dtype == from_tensors.dtype == "float32"
    assert float(from_numpy) == float(from_tensors)


@pytest.mark.parametrize("loss_function", EVERY_LOSS_FUNCTION)
def test_invalid_distance_metric_names_the_valid_ones(loss_function):
    with pytest.raises(ValueError, match="'L2', 'squared-L2', 'angular'; got 'L_2'"):
        loss_function([0, 0], [[0.0, 1.0], [1.0, 0.0]], distance_metric="L_2")
    with pytest.raises(ValueError, match="'L2', 'squared-L2', 'angular'"):
        TripletSemiHardLoss(distance_metric="cosine")


@pytest.mark.parametrize("loss_function", LOSS_FUNCTIONS)
@pytest.mark.parametrize("metric", DISTANCE_METRICS)
def test_gradients_are_finite_even_for_coincident_embeddings(loss_function, metric):
    labels = np.array([0, 0, 1, 1, 2])
    # Rows 0 and 1 coincide (distance exactly 0: sqrt's gradient there is infinite), row 4 is zero.
    embeddings = tf.Variable([[1.0, 2.0], [1.0, 2.0], [0.5, -1.0], [2.0, 0.0], [0.0, 0.0]])
    with tf.GradientTape() as tape:
        loss = loss_function(labels, embeddings, distance_metric=metric)
    gradient = tape.gradient(loss, embeddings)
    assert np.isfinite(float(loss)) and np.all(np.isfinite(gradient.numpy()))


def test_semihard_gradient_of_a_batch_without_positive_pair_is_zero():
    embeddings = tf.Variable(np.eye(3, dtype=np.float32))
    with tf.GradientTape() as tape:
        loss = triplet_semihard_loss([0, 1, 2], embeddings)
    np.testing.assert_array_equal(tape.gradient(loss, embeddings).numpy(), np.zeros((3, 3)))


# ---- Keras Loss classes ----------------------------------------------------------------------------------------

LOSS_OBJECTS = [
    (TripletSemiHardLoss(margin=0.3, distance_metric="angular", name="semihard"), triplet_semihard_loss, {}),
    (TripletHardLoss(margin=0.4, soft=True, distance_metric="squared-L2"), triplet_hard_loss, {"soft": True}),
    (ContrastiveLoss(margin=0.6), contrastive_loss, {}),
    (
        MultiSimilarityLoss(margin=0.2, alpha=3.0, beta=40.0, threshold=0.4),
        multi_similarity_loss,
        {"alpha": 3.0, "beta": 40.0, "threshold": 0.4},
    ),
]


@pytest.mark.parametrize(("loss", "function", "extra"), LOSS_OBJECTS)
def test_loss_object_returns_its_function_value_unreduced(loss, function, extra):
    labels, embeddings = random_batch(seed=7)
    value = loss(labels.reshape(-1, 1), embeddings)
    expected = function(labels, embeddings, margin=loss.margin, distance_metric=loss.distance_metric, **extra)
    assert value.shape == () and float(value) == pytest.approx(float(expected), rel=1e-6)


@pytest.mark.parametrize(("loss", "function", "extra"), LOSS_OBJECTS)
def test_loss_object_survives_serialization_with_its_arguments(loss, function, extra):
    config = loss.get_config()
    assert set(config) == {"name", "margin", "distance_metric", *extra}
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(restored) is type(loss) and restored.get_config() == config


def test_loss_object_keeps_product_ids_above_2_to_the_24_apart():
    # Keras casts y_true to float32, where 2**24 and 2**24 + 1 are the same number. Kept apart, the
    # two well-separated products cost nothing; merged, there would be no negative and the loss would be the margin.
    labels = np.array([2**24, 2**24, 2**24 + 1, 2**24 + 1], dtype=np.int64)
    embeddings = np.array([[0.0, 0.0], [0.0, 0.1], [5.0, 0.0], [5.0, 0.1]], dtype=np.float32)
    assert float(TripletHardLoss(margin=1.0)(labels, embeddings)) == 0.0


def test_margin_can_be_a_variable_shared_with_a_schedule():
    margin = keras.Variable(0.5, trainable=False)
    loss = TripletSemiHardLoss(margin=margin)
    margin.assign(0.25)
    assert loss.margin == 0.25
    loss.margin = 2.0
    assert float(margin) == 2.0 and loss.get_config()["margin"] == 2.0


def test_margin_set_on_the_loss_is_returned_by_get_config():
    loss = ContrastiveLoss(margin=1.0)
    loss.margin = 0.1
    assert loss.margin == 0.1 and loss.get_config()["margin"] == 0.1


@pytest.mark.parametrize(
    ("loss_class", "function"),
    [(TripletSemiHardLoss, triplet_semihard_loss), (MultiSimilarityLoss, multi_similarity_loss)],
)
def test_margin_changed_between_epochs_is_seen_by_the_compiled_train_step(loss_class, function):
    # Inputs near one direction per label and these weights: the multi-similarity mining at margin 0.1 drops
    # pairs that 2.0 keeps (on random inputs it keeps nearly all pairs at both, and the losses barely differ).
    labels, inputs = random_batch(seed=8, size=16, dim=6)
    inputs += 2 * np.eye(6, dtype=np.float32)[labels]
    model = keras.Sequential([keras.Input((6,)), keras.layers.Dense(4)])
    # Weights from this test's own generator: Keras' global seeding depends on what ran before in the process.
    model.layers[0].set_weights([np.random.default_rng(2).normal(size=(6, 4)).astype(np.float32), np.zeros(4, np.float32)])
    loss = loss_class(margin=0.1)
    margins = [0.1, 2.0]
    history = fit_at_each_margin(model, loss, inputs, labels, margins)
    embeddings = model.predict(inputs, verbose=0)
    expected = [float(function(labels, embeddings, margin=margin)) for margin in margins]
    assert expected[0] != pytest.approx(expected[1], rel=0.03)  # else the test could not tell the margins apart
    np.testing.assert_allclose(history.history["loss"], expected, rtol=1e-5)


def test_tiny_model_learns_with_angular_semihard_loss_and_reloads_in_safe_mode(tmp_path):
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 8)
    inputs = (rng.normal(size=(4, 8))[labels] + 0.3 * rng.normal(size=(32, 8))).astype(np.float32)
    model = keras.Sequential([keras.Input((8,)), keras.layers.Dense(4), keras.layers.UnitNormalization()])
    loss = TripletSemiHardLoss(margin=0.5, distance_metric="angular")
    model.compile(optimizer=keras.optimizers.Adam(0.05), loss=loss)
    history = model.fit(inputs, labels, batch_size=16, epochs=2, verbose=0)
    assert history.history["loss"][1] < history.history["loss"][0]

    path = tmp_path / "model.keras"
    model.save(path)
    loaded = keras.saving.load_model(path, safe_mode=True)
    assert isinstance(loaded.loss, TripletSemiHardLoss)
    assert loaded.loss.get_config() == model.loss.get_config()
    before = model.evaluate(inputs, labels, batch_size=32, verbose=0)
    assert loaded.evaluate(inputs, labels, batch_size=32, verbose=0) == pytest.approx(before, rel=1e-5)


# ---- multi-similarity loss -------------------------------------------------------------------------------------


@pytest.mark.parametrize("margin", [0.05, 0.1, 0.5])
@pytest.mark.parametrize(("alpha", "beta", "threshold"), [(2.0, 50.0, 0.5), (1.0, 10.0, 0.0)])
@pytest.mark.parametrize("seed", [0, 3])  # seed 3: label 2 occurs once, an anchor without positive
def test_multi_similarity_loss_matches_reference(margin, alpha, beta, threshold, seed):
    labels, embeddings = random_batch(seed)
    value = multi_similarity_loss(labels, embeddings, margin=margin, alpha=alpha, beta=beta, threshold=threshold)
    expected = reference_multi_similarity(labels, embeddings, margin, alpha, beta, threshold)
    np.testing.assert_allclose(float(value), expected, rtol=1e-4, atol=1e-6)


def test_multi_similarity_anchors_without_mined_pairs_add_nothing_but_count_in_the_mean():
    # On the unit circle: anchors 0 (at 0 deg) and 1 (at 60 deg) share label 0, S = 0.5; the negative at
    # 30 deg is mined for both (S = cos 30 > 0.5 - margin), the one at 180 deg for neither. Labels 1 and 2
    # have no positive: their anchors add 0 to the sum, which is divided by all 4.
    degrees = np.radians([0.0, 60.0, 30.0, 180.0])
    embeddings = np.stack([np.cos(degrees), np.sin(degrees)], axis=1).astype(np.float32)
    per_anchor = math.log(2) / 2 + math.log1p(math.exp(50 * (math.sqrt(3) / 2 - 0.5))) / 50
    assert float(multi_similarity_loss([0, 0, 1, 2], embeddings, margin=0.1)) == pytest.approx(2 * per_anchor / 4)


def test_multi_similarity_loss_of_a_batch_without_positive_pair_is_zero_with_zero_gradient():
    embeddings = tf.Variable(np.eye(3, dtype=np.float32))
    with tf.GradientTape() as tape:
        loss = multi_similarity_loss([0, 1, 2], embeddings)
    assert float(loss) == 0.0
    np.testing.assert_array_equal(tape.gradient(loss, embeddings).numpy(), np.zeros((3, 3)))


def test_multi_similarity_gradients_are_finite_for_coincident_zero_and_far_embeddings():
    # Rows 0 and 1 coincide (S = 1), row 4 is zero; beta = 200 puts exp(beta * (S - threshold)) far past float32.
    labels = np.array([0, 0, 1, 1, 2])
    embeddings = tf.Variable([[1.0, 2.0], [1.0, 2.0], [0.5, -1.0], [2.0, 0.0], [0.0, 0.0]])
    with tf.GradientTape() as tape:
        loss = multi_similarity_loss(labels, embeddings, margin=2.0, beta=200.0, threshold=-0.9)
    gradient = tape.gradient(loss, embeddings)
    assert np.isfinite(float(loss)) and np.all(np.isfinite(gradient.numpy()))


def test_multi_similarity_takes_only_the_angular_metric():
    with pytest.raises(ValueError, match="must be 'angular'; got 'L2'"):
        multi_similarity_loss([0, 0, 1], np.eye(3, dtype=np.float32), distance_metric="L2")
    with pytest.raises(ValueError, match="must be 'angular'; got 'squared-L2'"):
        MultiSimilarityLoss(distance_metric="squared-L2")


def test_make_loss_builds_the_multi_similarity_loss_a_phase_configures():
    phase = SiamesePhase(
        name="projection",
        loss="multi_similarity",
        multi_similarity={"alpha": 3.0, "beta": 40.0, "threshold": 0.4},
        margin_schedule=[{"margin": 0.2, "learning_rate": 0.001, "epochs": 1}],
    )
    loss = make_loss(phase, margin=0.2)
    assert isinstance(loss, MultiSimilarityLoss)
    assert loss.get_config() == {
        "name": "multi_similarity_loss", "margin": 0.2, "distance_metric": "angular",
        "alpha": 3.0, "beta": 40.0, "threshold": 0.4,
    }


def fit_at_each_margin(model, loss, inputs, labels, margins: list[float]):
    """Fit `model` with `loss` for one epoch at each margin, its weights frozen (learning rate 0),
    the margin set between epochs as a margin schedule sets it; Keras' History. Compiled with XLA,
    as `jit_compile: auto` picks on a GPU: the traced step must read the margin afresh too."""
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.0), loss=loss, jit_compile=True)
    set_margin = keras.callbacks.LambdaCallback(on_epoch_begin=lambda epoch, logs: setattr(loss, "margin", margins[epoch]))
    return model.fit(inputs, labels, batch_size=16, epochs=len(margins), verbose=0, callbacks=[set_margin])
