"""ArcFace, sub-center ArcFace and CosFace: the cosine layer and the losses match a NumPy
reference written from the papers' formulas (with arccos, not the cos(a + b) identity the
code uses), and they serve as the head of phases 1-3 and the loss of an embedding phase."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from conftest import tiny_pipeline
from test_losses import fit_at_each_margin

from phases.checkpoints import latest_checkpoint, save_checkpoint
from phases.class_centers import with_class_centers, without_class_centers
from phases.classification import classification_loss, classifier_scorer
from phases.config import ClassifierHead, PipelineConfig, SiamesePhase
from phases.losses import (
    ArcFaceLoss,
    CosFaceLoss,
    CosineClassifier,
    arcface_loss,
    compile_for_schedule,
    cosface_loss,
    make_loss,
    schedule_plan,
)
from phases.model import build_classifier, build_projection
from phases.unit import seed_everything

# ---- NumPy reference, one example at a time, in float64 ----------------------------------------------------------


def reference_loss(labels, cosines, scale, target_logit):
    """Mean softmax cross-entropy of scale * cosines with the target's cosine c replaced by target_logit(c)."""
    total = 0.0
    for row, label in zip(np.asarray(cosines, dtype=np.float64), labels):
        logits = scale * row
        logits[label] = scale * target_logit(row[label])
        top = logits.max()
        total += top + math.log(np.exp(logits - top).sum()) - logits[label]
    return total / len(labels)


def arcface_target(margin, easy_margin=False):
    """cos(theta + m) from the angle itself; insightface's cos(theta) - m sin(m) where theta + m > pi."""

    def target(cosine):
        theta = math.acos(cosine)
        if easy_margin:
            return math.cos(theta + margin) if cosine > 0 else cosine
        return math.cos(theta + margin) if theta + margin <= math.pi else cosine - margin * math.sin(margin)

    return target


def cosface_target(margin):
    return lambda cosine: cosine - margin


def random_cosines(seed, size=12, classes=5):
    """Labels [size] covering every class, cosines [size, classes] spread over (-1, 1)."""
    rng = np.random.default_rng(seed)
    labels = np.arange(size) % classes
    return labels, rng.uniform(-0.99, 0.99, size=(size, classes)).astype(np.float32)


def unit(x, axis):
    x = np.asarray(x, dtype=np.float64)
    return x / np.linalg.norm(x, axis=axis, keepdims=True)


# ---- the losses against the reference ----------------------------------------------------------------------------


@pytest.mark.parametrize("margin", [0.2, 0.5, 1.2])  # 1.2: a third of the targets have theta + m > pi
@pytest.mark.parametrize("scale", [64.0, 16.0])
@pytest.mark.parametrize("seed", [0, 1])
def test_arcface_loss_matches_the_papers_formula(margin, scale, seed):
    labels, cosines = random_cosines(seed)
    expected = reference_loss(labels, cosines, scale, arcface_target(margin))
    assert float(arcface_loss(labels, cosines, scale=scale, margin=margin)) == pytest.approx(expected, rel=1e-5)


def test_arcface_target_beyond_pi_falls_linearly_as_insightface_does():
    # theta = arccos(-0.95) = 2.82 rad, + 0.5 > pi: cos(theta + m) would rise again; insightface uses c - m sin(m).
    labels, cosines = np.array([0]), np.array([[-0.95, 0.3, -0.2]], dtype=np.float32)
    target = -0.95 - 0.5 * math.sin(0.5)
    logits = 64.0 * np.array([target, 0.3, -0.2])
    expected = math.log(np.exp(logits - logits.max()).sum()) + logits.max() - logits[0]
    assert float(arcface_loss(labels, cosines, margin=0.5)) == pytest.approx(expected, rel=1e-5)
    # The target logit keeps falling with the angle through the switch, so the loss keeps rising.
    losses = [float(arcface_loss(labels, np.array([[c, 0.3, -0.2]], np.float32), margin=0.5))
              for c in (-0.8, -0.9, -0.99)]
    assert losses == sorted(losses)


@pytest.mark.parametrize("margin", [0.3, 0.5])
def test_easy_margin_applies_the_margin_only_where_the_target_cosine_is_positive(margin):
    labels, cosines = random_cosines(seed=2)
    value = arcface_loss(labels, cosines, scale=32.0, margin=margin, easy_margin=True)
    assert float(value) == pytest.approx(reference_loss(labels, cosines, 32.0, arcface_target(margin, True)), rel=1e-5)
    negative = np.array([[-0.4, 0.1]], dtype=np.float32)  # target cosine < 0: no margin, plain softmax
    plain = math.log(np.exp(32.0 * negative[0]).sum()) - 32.0 * -0.4
    value = arcface_loss([0], negative, scale=32.0, margin=margin, easy_margin=True)
    assert float(value) == pytest.approx(plain, rel=1e-5)


@pytest.mark.parametrize("margin", [0.1, 0.35])
@pytest.mark.parametrize("seed", [0, 3])
def test_cosface_loss_matches_the_papers_formula(margin, seed):
    labels, cosines = random_cosines(seed)
    expected = reference_loss(labels, cosines, 64.0, cosface_target(margin))
    assert float(cosface_loss(labels, cosines, scale=64.0, margin=margin)) == pytest.approx(expected, rel=1e-5)


@pytest.mark.parametrize(
    ("loss", "function", "arguments"),
    [(ArcFaceLoss(scale=30.0, margin=0.4, easy_margin=True), arcface_loss, {"easy_margin": True}),
     (CosFaceLoss(scale=30.0, margin=0.2), cosface_loss, {})],
)
def test_loss_object_is_its_function_for_labels_of_either_shape(loss, function, arguments):
    labels, cosines = random_cosines(seed=4)
    expected = float(function(labels, cosines, scale=30.0, margin=loss.margin, **arguments))
    for given in (labels, labels.reshape(-1, 1), tf.constant(labels, tf.int64)):
        value = loss(given, cosines)
        assert value.dtype == "float32" and value.shape == () and float(value) == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("loss", [ArcFaceLoss(scale=32.0, margin=0.3, easy_margin=True), CosFaceLoss(margin=0.25)])
def test_loss_object_survives_serialization_with_its_arguments(loss):
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert type(restored) is type(loss) and restored.get_config() == loss.get_config()
    assert loss.get_config()["margin"] == loss.margin and loss.get_config()["scale"] == loss.scale


def test_gradients_are_finite_where_a_feature_lies_on_its_centre_or_opposite_it():
    cosines = tf.Variable([[1.0, 0.2], [-1.0, 0.1], [1.0000001, 0.0]])
    for loss in (lambda c: arcface_loss([0, 0, 0], c), lambda c: cosface_loss([0, 0, 0], c)):
        with tf.GradientTape() as tape:
            value = loss(cosines)
        assert np.isfinite(float(value)) and np.all(np.isfinite(tape.gradient(value, cosines).numpy()))


@pytest.mark.parametrize("loss_class", [ArcFaceLoss, CosFaceLoss])
def test_margin_changed_between_epochs_is_seen_by_the_compiled_train_step(loss_class):
    rng = np.random.default_rng(5)
    labels, inputs = np.arange(16) % 4, rng.normal(size=(16, 6)).astype(np.float32)
    model = keras.Sequential([keras.Input((6,)), CosineClassifier(4)])
    model.layers[0].set_weights([rng.normal(size=(6, 4)).astype(np.float32)])
    loss = loss_class(margin=0.1)
    margins = [0.1, 0.6]
    history = fit_at_each_margin(model, loss, inputs, labels, margins)
    cosines = model.predict(inputs, verbose=0)
    function = arcface_loss if loss_class is ArcFaceLoss else cosface_loss
    expected = [float(function(labels, cosines, margin=margin)) for margin in margins]
    np.testing.assert_allclose(history.history["loss"], expected, rtol=1e-5)


# ---- the cosine layer ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("centers", [1, 3])
def test_cosine_classifier_gives_each_class_the_cosine_of_its_nearest_centre(centers):
    rng = np.random.default_rng(6)
    features, centres = rng.normal(size=(7, 5)), rng.normal(size=(5, 4 * centers))
    layer = CosineClassifier(4, centers)
    layer.build((None, 5))
    layer.set_weights([centres.astype(np.float32)])
    all_cosines = unit(features, axis=1) @ unit(centres, axis=0)  # [7, 4 * K], class c's centres at c*K .. c*K+K-1
    expected = all_cosines.reshape(7, 4, centers).max(axis=2)
    cosines = layer(3.0 * features.astype(np.float32))  # the features' length does not matter
    assert cosines.shape == (7, 4)
    np.testing.assert_allclose(np.asarray(cosines), expected, atol=1e-6)


def test_mixed_precision_gives_float32_cosines_and_losses():
    keras.mixed_precision.set_dtype_policy("mixed_float16")
    try:
        backbone_input = keras.Input((8,))
        backbone = keras.Model(backbone_input, keras.layers.Dense(6)(backbone_input))
        model = build_classifier(backbone, 3, 0.2, ClassifierHead(kind="subcenter_arcface"))
        assert backbone.output.dtype == "float16"
        cosines = model(np.ones((2, 8), np.float32))
        assert cosines.dtype == "float32" and CosineClassifier(3).compute_dtype == "float32"
        assert ArcFaceLoss()(np.array([0, 1]), tf.cast(cosines, "float16")).dtype == "float32"
    finally:
        keras.mixed_precision.set_dtype_policy("float32")


def test_saved_model_with_a_cosine_head_reloads_in_safe_mode_with_the_same_outputs_and_loss(tmp_path):
    seed_everything(0)
    features = keras.Input((5,))
    model = keras.Model(features, CosineClassifier(4, centers=3, name="head_classes")(keras.layers.Dense(6)(features)))
    model.compile(optimizer="adam", loss=ArcFaceLoss(scale=32.0, margin=0.3, easy_margin=True), metrics=["accuracy"])
    inputs, labels = np.random.default_rng(7).normal(size=(8, 5)).astype(np.float32), np.arange(8) % 4
    model.fit(inputs, labels, epochs=1, verbose=0)
    model.save(tmp_path / "model.keras")
    loaded = keras.saving.load_model(tmp_path / "model.keras", safe_mode=True)
    assert loaded.get_layer("head_classes").get_config() == model.get_layer("head_classes").get_config()
    assert isinstance(loaded.loss, ArcFaceLoss) and loaded.loss.get_config() == model.loss.get_config()
    np.testing.assert_array_equal(loaded.predict(inputs, verbose=0), model.predict(inputs, verbose=0))
    before = model.evaluate(inputs, labels, verbose=0)
    assert loaded.evaluate(inputs, labels, verbose=0) == pytest.approx(before, rel=1e-6)


# ---- the head of phases 1-3 ----------------------------------------------------------------------------------------


def toy_backbone(dim=8):
    images = keras.Input((dim,), name="images")
    return keras.Model(images, keras.layers.Dense(16, activation="relu", name="toy_features")(images), name="backbone")


def test_default_head_is_the_seeds_dense_softmax_with_cross_entropy():
    head = ClassifierHead()
    model = build_classifier(toy_backbone(), 3, 0.2, head)
    last = model.get_layer("head_classes")
    assert type(last) is keras.layers.Dense and last.activation.__name__ == "softmax"
    assert type(classification_loss(head)) is keras.losses.SparseCategoricalCrossentropy
    assert [layer.name for layer in model.layers[-3:]] == ["head_batch_norm", "head_dropout", "head_classes"]


def test_classifier_with_an_arcface_head_learns_a_separable_toy_set():
    seed_everything(0)
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(4), 16)
    inputs = (3 * rng.normal(size=(4, 8))[labels] + 0.3 * rng.normal(size=(64, 8))).astype(np.float32)
    head = ClassifierHead(kind="arcface")
    model = build_classifier(toy_backbone(), 4, 0.2, head)
    assert isinstance(model.get_layer("head_classes"), CosineClassifier)
    model.compile(optimizer=keras.optimizers.Adam(0.01), loss=classification_loss(head), metrics=["accuracy"])
    history = model.fit(inputs, labels, batch_size=16, epochs=6, verbose=0).history
    assert history["loss"][-1] < history["loss"][0] and history["accuracy"][-1] > history["accuracy"][0]
    _, cosines = classifier_scorer(model).predict(inputs, verbose=0)  # what the phase scores accuracy with
    assert np.all(np.abs(cosines) <= 1 + 1e-6) and np.mean(cosines.argmax(axis=1) == labels) >= 0.9


def test_margin_head_options_are_checked_against_its_kind():
    assert (ClassifierHead(kind="cosface").margin, ClassifierHead(kind="subcenter_arcface").centers) == (0.35, 3)
    refused = {
        (("margin", 0.3),): "margin set, but kind is softmax",
        (("kind", "arcface"), ("centers", 3)): "several centres per class are sub-center ArcFace's",
        (("kind", "subcenter_arcface"), ("centers", 1)): "subcenter_arcface needs centers >= 2",
        (("kind", "cosface"), ("easy_margin", True)): "cosface has none: set easy_margin: false",
        (("kind", "arcface"), ("margin", 3.2)): "an angle in radians, below pi",
    }
    for settings, message in refused.items():
        with pytest.raises(ValueError, match=message):
            ClassifierHead(**dict(settings))


# ---- the loss of an embedding phase ----------------------------------------------------------------------------------


def arcface_phase(**changes) -> SiamesePhase:
    return SiamesePhase(**{"name": "projection", "loss": "arcface", "labels": "product", "margin_schedule": [
        {"margin": 0.2, "learning_rate": 0.01, "epochs": 1}, {"margin": 0.5, "learning_rate": 0.001, "epochs": 1}],
        **changes})


def test_embedding_phase_margin_losses_need_product_labels_and_angular_cosines():
    assert arcface_phase(loss="subcenter_arcface").margin_loss.centers == 3
    with pytest.raises(ValueError, match="learns a class centre per product: set labels: product"):
        arcface_phase(labels="view")
    with pytest.raises(ValueError, match="works on cosine similarity; set distance_metric: angular"):
        arcface_phase(distance_metric="L2")
    with pytest.raises(ValueError, match=r"margin_schedule.0.margin: cosface's margin is a cosine, below 2"):
        arcface_phase(loss="cosface", margin_schedule=[{"margin": 2.5, "learning_rate": 0.01, "epochs": 1}])


def test_embedding_phase_trains_centres_but_scores_and_keeps_only_the_embedder(tmp_path):
    seed_everything(0)
    phase = arcface_phase(loss="subcenter_arcface", margin_loss={"scale": 32.0, "centers": 2})
    projection = build_projection(8, 4)
    model = with_class_centers(projection, classes=5, centers=phase.margin_loss.centers)
    compile_for_schedule(model, phase)
    expected = {"name": "arcface_loss", "scale": 32.0, "margin": 0.2, "easy_margin": False}
    assert make_loss(phase, 0.2).get_config() == expected
    assert schedule_plan(model, phase, 1).fields["margin"] == 0.5 and model.loss.margin == 0.5
    rng = np.random.default_rng(1)
    inputs, labels = rng.normal(size=(20, 8)).astype(np.float32), np.arange(20) % 5
    model.fit(inputs, labels, batch_size=10, epochs=1, verbose=0)

    embedder = without_class_centers(model)
    assert (embedder.name, embedder.output_shape) == ("projection", (None, 4))
    assert "head_classes" not in [layer.name for layer in embedder.layers]
    np.testing.assert_allclose(embedder.predict(inputs, verbose=0), projection.predict(inputs, verbose=0))
    np.testing.assert_allclose(np.linalg.norm(embedder.predict(inputs, verbose=0), axis=1), 1.0, rtol=1e-5)
    assert without_class_centers(projection) is projection


def test_embedding_phase_with_centres_resumes_from_its_checkpoint_as_an_uninterrupted_run(tmp_path):
    def trained_for_two_epochs(interrupted: bool) -> list[np.ndarray]:
        seed_everything(0)
        phase = arcface_phase()
        model = with_class_centers(build_projection(8, 4), classes=5)
        compile_for_schedule(model, phase)
        inputs, labels = np.random.default_rng(2).normal(size=(20, 8)).astype(np.float32), np.arange(20) % 5
        for epoch in range(2):
            schedule_plan(model, phase, epoch)
            model.fit(inputs, labels, batch_size=10, epochs=1, verbose=0, shuffle=False)
            if interrupted and epoch == 0:
                save_checkpoint(tmp_path, epoch, model, {"rows": []})
                model = latest_checkpoint(tmp_path).model  # as a new process would
        return model.get_weights()

    for resumed, straight in zip(trained_for_two_epochs(True), trained_for_two_epochs(False), strict=True):
        np.testing.assert_allclose(resumed, straight, atol=1e-6)


def test_a_config_can_put_margin_heads_in_phases_1_to_3_and_a_margin_loss_in_phase_4(tmp_path):
    config = PipelineConfig(
        data={"source": str(tmp_path)},
        model={"classifier": {"kind": "cosface", "scale": 30.0}},
        phases=[{"name": "top", "kind": "classification", "unfreeze": "none", "learning_rate": 0.01, "epochs": 1},
                arcface_phase().model_dump()],
    )
    assert (config.model.classifier.margin, config.phases[-1].margin_loss.centers) == (0.35, 1)
    assert PipelineConfig.model_validate(config.model_dump(mode="json")) == config  # a run's dumped config reloads


@pytest.mark.slow
def test_end_to_end_phase_with_cosface_trains_product_centres_and_saves_the_embedder_alone(ingested, tmp_path):
    """An end_to_end phase with CosFace on product labels, in graph mode: its rows are scored and its
    final model is the embedder (unit vectors, no centres); killed before its last checkpoint, it resumes."""
    from phases.checkpoints import load_model
    from phases.controller import run_phase
    from phases.unit import PhaseContext

    config = PipelineConfig.model_validate(tiny_pipeline(ingested, {
        "model": {"architecture": "VGG16", "batch_norm_calibration_batches": 0},
        "phases": [{
            "name": "cosface", "kind": "end_to_end", "projection_dim": 8, "labels": "product", "loss": "cosface",
            "labels_per_batch": 4, "views_per_label": 2, "margin_loss": {"scale": 16.0},
            "margin_schedule": [{"margin": 0.2, "learning_rate": 1e-3, "epochs": 1},
                                {"margin": 0.35, "learning_rate": 1e-4, "epochs": 1}],
        }],
        "runtime": {"seed": 2, "deterministic": False, "eager": False},
    }, phases=("cosface",)))
    work = tmp_path / "work"
    result = run_phase(config.phases[0], config, PhaseContext(data_dir=ingested, work_dir=work))
    assert [(row["epoch"], row["margin"]) for row in result.rows] == [(1, 0.2), (2, 0.35)]
    assert all(np.isfinite(row["loss"]) and 0 <= row["mar_at_10"] <= 1 for row in result.rows)
    checkpoint = latest_checkpoint(work / "checkpoints")
    assert isinstance(checkpoint.model.loss, CosFaceLoss) and checkpoint.model.get_layer("head_classes")
    model = load_model(result.model_path, result.model_sha256, compile=False)
    assert model.name == "embedder" and "head_classes" not in [layer.name for layer in model.layers]
    vectors = model.predict(np.full((2, 32, 32, 3), 100.0, dtype="float32"), verbose=0)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)

    (work / "checkpoints" / "epoch-0001.json").unlink()  # as if killed during the last epoch's save
    resumed = run_phase(config.phases[0], config, PhaseContext(data_dir=ingested, work_dir=work))
    assert resumed.resumed_after_epoch == 1 and [row["epoch"] for row in resumed.rows] == [1, 2]
