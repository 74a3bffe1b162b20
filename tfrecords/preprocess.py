"""Image preprocessing of the seed recipe, in TensorFlow ops (runs inside tf.data).

* pad to square, filling with the mean colour of the image's border pixels, so a
  product photo on a plain background extends its own background instead of
  gaining black bars, then resize to `size` x `size`;
* the six-way augmentation: identity, flip up-down, flip left-right, and rotations
  by 90, 180 and 270 degrees counter-clockwise (`tf.image.rot90` with k = 1, 2, 3,
  the same as `numpy.rot90`). Views are numbered 0-5 in that order.
"""

import tensorflow as tf

VIEW_NAMES = ("identity", "flip_up_down", "flip_left_right", "rot90", "rot180", "rot270")
NUM_VIEWS = len(VIEW_NAMES)


def decode(encoded: tf.Tensor) -> tf.Tensor:
    """JPEG or PNG bytes -> uint8 [height, width, 3] (grey and alpha become RGB)."""
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False, dtype=tf.uint8)
    image.set_shape([None, None, 3])
    return image


def border_mean(image: tf.Tensor) -> tf.Tensor:
    """Mean colour (float32 [3]) of the outermost rows and columns of an image."""
    image = tf.cast(image, tf.float32)
    border = tf.concat([image[0], image[-1], image[:, 0], image[:, -1]], axis=0)
    return tf.reduce_mean(border, axis=0)


def pad_to_square(image: tf.Tensor) -> tf.Tensor:
    """Centre `image` on a square canvas of its longer side, filled with its border mean.

    uint8 or float [h, w, 3] -> float32 [max(h, w), max(h, w), 3], values unchanged.
    Built by concatenating fill blocks around the image: broadcasting the fill over
    the whole canvas (subtract, pad with zeros, add back) costs 3.5x more on CPU.
    """
    fill = border_mean(image)
    shape = tf.shape(image)
    height, width = shape[0], shape[1]
    side = tf.maximum(height, width)
    top, left = (side - height) // 2, (side - width) // 2

    def block(rows, columns):
        return tf.broadcast_to(fill, tf.stack([rows, columns, 3]))

    middle = tf.concat([block(height, left), tf.cast(image, tf.float32), block(height, side - width - left)], axis=1)
    return tf.concat([block(top, side), middle, block(side - height - top, side)], axis=0)


def prepare(encoded: tf.Tensor, size: int) -> tf.Tensor:
    """Encoded bytes -> float32 [size, size, 3] in [0, 255], ready for the model.

    Keras' EfficientNet rescales inside the model, so pixels stay in [0, 255].
    """
    square = pad_to_square(decode(encoded))
    resized = tf.image.resize(square, [size, size], method="bilinear", antialias=True)
    return tf.clip_by_value(resized, 0.0, 255.0)


def view(image: tf.Tensor, index: tf.Tensor) -> tf.Tensor:
    """View `index` (0-5, see VIEW_NAMES) of a square image [s, s, c]."""
    return tf.switch_case(
        tf.cast(index, tf.int32),
        [
            lambda: image,
            lambda: tf.image.flip_up_down(image),
            lambda: tf.image.flip_left_right(image),
            lambda: tf.image.rot90(image, 1),
            lambda: tf.image.rot90(image, 2),
            lambda: tf.image.rot90(image, 3),
        ],
    )


def all_views(image: tf.Tensor) -> tf.Tensor:
    """The six views of a square image, stacked in VIEW_NAMES order: [6, s, s, c]."""
    return tf.stack(
        [
            image,
            tf.image.flip_up_down(image),
            tf.image.flip_left_right(image),
            tf.image.rot90(image, 1),
            tf.image.rot90(image, 2),
            tf.image.rot90(image, 3),
        ]
    )
