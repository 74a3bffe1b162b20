"""What the pipeline knows of each backbone, without building one.

The backbones are `keras.applications`' and EfficientNetLite0 (phases/applications.py).

Per architecture: the pattern that names a layer's group (its stem, block or top),
the groups in layer order, and how images in [0, 255] RGB become the input the
network was trained on. Known here, so that a typo in `unfreeze_from` or
`feature_blocks` is refused when the config loads, not when its phase starts hours
into a run; `tests/test_model.py` builds every architecture and checks the lists.
"""

import re

# Group of a layer: the first capture of its family's pattern (exact, so that
# MobileNetV3's `expanded_conv_1` is not `expanded_conv_10`).
GROUP_PATTERNS = {
    "EfficientNet": r"^(stem|block\d+[a-z]|top)_",
    "MobileNetV2": r"^(Conv1|bn_Conv1|expanded_conv|block_\d+|Conv_1|out_relu)(_|$)",
    "MobileNetV3": r"^(conv|expanded_conv(?:_\d+)?)(_|$)",
    "VGG16": r"^(block\d+)_",
    "ResNet50": r"^(conv1|pool1|conv\d_block\d+)_",
}

_EFFICIENTNET_B0 = (
    "stem", "block1a", "block2a", "block2b", "block3a", "block3b", "block4a", "block4b", "block4c",
    "block5a", "block5b", "block5c", "block6a", "block6b", "block6c", "block6d", "block7a", "top",
)
_EFFICIENTNET_B1 = (
    "stem", "block1a", "block1b", "block2a", "block2b", "block2c", "block3a", "block3b", "block3c",
    "block4a", "block4b", "block4c", "block4d", "block5a", "block5b", "block5c", "block5d",
    "block6a", "block6b", "block6c", "block6d", "block6e", "block7a", "block7b", "top",
)
LAYER_GROUPS = {
    "EfficientNetB0": _EFFICIENTNET_B0,
    "EfficientNetB1": _EFFICIENTNET_B1,
    "EfficientNetB2": _EFFICIENTNET_B1,  # wider than B1, same depth
    "EfficientNetB3": (
        "stem", "block1a", "block1b", "block2a", "block2b", "block2c", "block3a", "block3b", "block3c",
        "block4a", "block4b", "block4c", "block4d", "block4e", "block5a", "block5b", "block5c", "block5d", "block5e",
        "block6a", "block6b", "block6c", "block6d", "block6e", "block6f", "block7a", "block7b", "top",
    ),
    "EfficientNetLite0": _EFFICIENTNET_B0,  # B0's blocks without squeeze-excitation, ReLU6
    "MobileNetV2": (
        "Conv1", "bn_Conv1", "expanded_conv", *(f"block_{n}" for n in range(1, 17)), "Conv_1", "out_relu",
    ),
    "MobileNetV3Small": ("conv", "expanded_conv", *(f"expanded_conv_{n}" for n in range(1, 11))),
    "MobileNetV3Large": ("conv", "expanded_conv", *(f"expanded_conv_{n}" for n in range(1, 15))),
    "VGG16": ("block1", "block2", "block3", "block4", "block5"),
    "ResNet50": (
        "conv1", "pool1", "conv2_block1", "conv2_block2", "conv2_block3",
        *(f"conv3_block{n}" for n in range(1, 5)), *(f"conv4_block{n}" for n in range(1, 7)),
        "conv5_block1", "conv5_block2", "conv5_block3",
    ),
}
ARCHITECTURES = tuple(LAYER_GROUPS)

# What turns [0, 255] RGB into the network's input. EfficientNet and MobileNetV3 carry
# their own rescaling layers (EfficientNetLite0's: (x - 127) / 128, phases/applications.py);
# MobileNetV2 wants [-1, 1]; VGG16 and ResNet50 were trained on Caffe's BGR images minus
# the ImageNet mean.
PREPROCESSING = {
    "EfficientNetB0": "built_in", "EfficientNetB1": "built_in", "EfficientNetB2": "built_in",
    "EfficientNetB3": "built_in", "EfficientNetLite0": "built_in",
    "MobileNetV3Small": "built_in", "MobileNetV3Large": "built_in",
    "MobileNetV2": "tanh_range", "VGG16": "caffe", "ResNet50": "caffe",
}


def family(architecture: str) -> str:
    return next(name for name in GROUP_PATTERNS if architecture.startswith(name))


def layer_group(architecture: str, layer_name: str) -> str | None:
    """The stem, block or top a layer belongs to (None for inputs, pooling, rescaling)."""
    match = re.match(GROUP_PATTERNS[family(architecture)], layer_name)
    return match.group(1) if match else None


def starts_a_layer(prefix: str, architecture: str) -> bool:
    """Whether `prefix` begins a group's name (`block6` -> block6a) or a layer inside a group
    (`block7a_expand_conv`; that layer's existence is checked when the model is built)."""
    groups = LAYER_GROUPS[architecture]
    return bool(prefix) and any(group.startswith(prefix) or prefix.startswith(f"{group}_") for group in groups)
