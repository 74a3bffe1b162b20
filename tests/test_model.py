"""Which layers each phase trains: the head, from block7a on, or everything; BatchNormalization frozen."""

import keras
import pytest

from phases.config import ClassificationPhase, ModelConfig
from phases.errors import ConfigError
from phases.model import backbone_of, block_names, build_backbone, build_classifier, build_projection, set_trainable

HEAD = ["head_batch_norm", "head_classes"]


@pytest.fixture(scope="module")
def classifier():
    return build_classifier(build_backbone(ModelConfig(weights="none"), 32), classes=7, dropout=0.2)


def phase(unfreeze, prefix=None):
    return ClassificationPhase(name="p", unfreeze=unfreeze, unfreeze_from=prefix, learning_rate=1e-3, epochs=1)


def trainable_backbone_layers(model):
    return [layer for layer in model.layers if layer.trainable and layer.trainable_weights and layer.name not in HEAD]


def test_phase_top_trains_the_head_only(classifier):
    assert set_trainable(classifier, phase("none")) == HEAD
    assert trainable_backbone_layers(classifier) == []


def test_phase_block7a_trains_from_the_first_block7a_layer_on_except_batch_norm(classifier):
    set_trainable(classifier, phase("from", "block7a"))
    names = [layer.name for layer in classifier.layers]
    first = names.index("block7a_expand_conv")
    trained = trainable_backbone_layers(classifier)
    assert trained[0].name == "block7a_expand_conv"
    expected = [
        layer for layer in classifier.layers[first:]
        if layer.trainable_weights and layer.name not in HEAD and not isinstance(layer, keras.layers.BatchNormalization)
    ]
    assert trained == expected
    assert "top_conv" in [layer.name for layer in trained]
    assert all(not layer.trainable for layer in classifier.layers[:first] if layer.weights)


def test_phase_full_trains_every_layer_but_batch_norm(classifier):
    set_trainable(classifier, phase("all"))
    for layer in classifier.layers:
        if isinstance(layer, keras.layers.BatchNormalization) and layer.name != "head_batch_norm":
            assert not layer.trainable, layer.name
        elif layer.trainable_weights or layer.weights and not isinstance(layer, keras.layers.Normalization):
            assert layer.trainable, layer.name
    assert classifier.get_layer("stem_conv").trainable


def test_batch_norm_may_train_when_the_config_says_so(classifier):
    set_trainable(classifier, phase("all"), freeze_batch_norm=False)
    assert classifier.get_layer("stem_bn").trainable and classifier.get_layer("top_bn").trainable


def test_unknown_block_prefix_lists_the_valid_blocks(classifier):
    with pytest.raises(ConfigError, match="unfreeze_from 'block9a' matches no layer; valid blocks: stem, block1a, block2a, .*block7a, top"):
        set_trainable(classifier, phase("from", "block9a"))


def test_the_config_knows_the_blocks_of_the_architecture(classifier):
    from phases.config import LAYER_GROUPS

    assert list(LAYER_GROUPS["EfficientNetB0"]) == block_names(classifier)
    assert classifier.get_layer("stem_conv") and classifier.get_layer("top_conv")


def test_backbone_of_a_classifier_gives_the_pooled_features(classifier):
    assert backbone_of(classifier).output_shape == (None, 1280)


def test_projection_outputs_unit_vectors_and_loads_in_safe_mode(tmp_path):
    import numpy as np

    projection = build_projection(1280, 64)
    vectors = projection.predict(np.random.default_rng(0).normal(size=(5, 1280)).astype("float32"), verbose=0)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    projection.save(tmp_path / "p.keras")
    loaded = keras.saving.load_model(tmp_path / "p.keras", safe_mode=True)
    assert [layer.__class__.__name__ for layer in loaded.layers] == ["InputLayer", "Dense", "UnitNormalization"]


def test_weights_file_that_does_not_exist_or_does_not_fit_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="neither 'imagenet', 'none' nor an existing weights file"):
        build_backbone(ModelConfig(weights=str(tmp_path / "missing.weights.h5")), 32)
    other = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
    other.save_weights(tmp_path / "other.weights.h5")
    with pytest.raises(ConfigError, match="does not fit EfficientNetB0"):
        build_backbone(ModelConfig(weights=str(tmp_path / "other.weights.h5")), 32)


def test_a_weights_file_of_the_architecture_is_loaded(tmp_path):
    import numpy as np

    source = build_backbone(ModelConfig(weights="none"), 32)
    source.save_weights(tmp_path / "b0.weights.h5")
    loaded = build_backbone(ModelConfig(weights=str(tmp_path / "b0.weights.h5")), 32)
    for mine, theirs in zip(source.weights, loaded.weights):
        np.testing.assert_array_equal(mine.numpy(), theirs.numpy())


def test_phases_classify_categories_or_else_the_products(ingested, tmp_path):
    from conftest import write_image

    from phases.starting import class_labels
    from phases.config import PipelineConfig
    from tfrecords.ingest import ingest
    from tfrecords.manifest import ImageManifest, read_manifest
    from tfrecords.options import IngestOptions

    def config(classify):
        return PipelineConfig.model_validate({
            "data": {"source": "x"}, "model": {"classify": classify},
            "phases": [{"name": "top", "kind": "classification", "unfreeze": "none", "learning_rate": 0.01, "epochs": 1}],
        })

    with_categories = read_manifest(ingested, ImageManifest)
    assert class_labels(config("auto"), with_categories) == ("category_id", 3)
    assert class_labels(config("product"), with_categories) == ("product_id", 24)
    for product in ("a", "b", "c"):
        write_image(tmp_path / "src" / product / "1.jpg")
    ingest(tmp_path / "src", tmp_path / "out", IngestOptions(val_fraction=0, test_fraction=0, workers=1), progress=False)
    without = read_manifest(tmp_path / "out", ImageManifest)
    assert class_labels(config("auto"), without) == ("product_id", 3)
    with pytest.raises(ConfigError, match="model.classify is 'category' but the data has no categories"):
        class_labels(config("category"), without)


@pytest.mark.parametrize("architecture", list(__import__("phases.architectures", fromlist=["x"]).LAYER_GROUPS))
def test_every_architecture_builds_with_the_blocks_the_config_knows(architecture):
    from phases.architectures import LAYER_GROUPS

    backbone = build_backbone(ModelConfig(architecture=architecture, weights="none"), 32)
    assert list(LAYER_GROUPS[architecture]) == block_names(backbone, architecture)
    assert len(backbone.inputs) == 1 and len(backbone.output_shape) == 2


@pytest.mark.parametrize("architecture, preprocess", [("VGG16", "vgg16"), ("MobileNetV2", "mobilenet_v2")])  # ResNet50 shares VGG16's
def test_the_architectures_preprocessing_is_part_of_the_saved_model(architecture, preprocess, tmp_path):
    """Images enter as [0, 255] RGB; the model applies keras.applications' preprocess_input
    itself, and still loads in safe mode."""
    import numpy as np

    images = np.random.default_rng(0).uniform(0, 255, size=(2, 32, 32, 3)).astype("float32")
    backbone = build_backbone(ModelConfig(architecture=architecture, weights="none"), 32)
    first = backbone.layers[1]
    expected = getattr(keras.applications, preprocess).preprocess_input(images.copy())
    np.testing.assert_allclose(keras.ops.convert_to_numpy(first(images)), expected, rtol=1e-5, atol=1e-3)
    backbone.save(tmp_path / "backbone.keras")
    loaded = keras.saving.load_model(tmp_path / "backbone.keras", safe_mode=True)
    np.testing.assert_allclose(loaded.predict(images, verbose=0), backbone.predict(images, verbose=0), atol=1e-5)


def test_feature_blocks_concatenate_the_pooled_block_outputs_with_the_final_features():
    backbone = build_backbone(ModelConfig(weights="none", feature_blocks=["block3b", "block4c", "block5c", "block6d"]), 32)
    assert backbone.output_shape == (None, 40 + 80 + 112 + 192 + 1280)
    assert backbone.get_layer("features_pool_block3b").input is backbone.get_layer("block3b_add").output


def test_the_mildnet_head_is_dense_dropout_dense_and_unit_vectors():
    import numpy as np

    head = build_projection(64, 8, head="mildnet", hidden_dim=32, dropout=0.5)
    assert [layer.name for layer in head.layers] == ["features", "projection_hidden", "projection_dropout", "projection_dense", "projection_l2"]
    vectors = head.predict(np.random.default_rng(0).normal(size=(4, 64)).astype("float32"), verbose=0)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
