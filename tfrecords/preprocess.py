"""Image preprocessing of the seed recipe, in TensorFlow ops (runs inside tf.data).

* turn the stored pixels upright by the file's EXIF orientation (1-8), as
  PIL's `ImageOps.exif_transpose` does: phones store a portrait photo sideways
  and tag it, and TensorFlow's decoders ignore the tag;
* pad to square, filling with the mean colour of the image's border pixels, so a
  product photo on a plain background extends its own background instead of
  gaining black bars, then resize to `size` x `size` (bilinear, antialiased);
* the six-way augmentation: identity, flip up-down, flip left-right, and rotations
  by 90, 180 and 270 degrees counter-clockwise (`tf.image.rot90` with k = 1, 2, 3,
  the same as `numpy.rot90`). Views are numbered 0-5 in that order.
"""

import tensorflow as tf

VIEW_NAMES = ("identity", "flip_up_down", "flip_left_right", "rot90", "rot180", "rot270")
NUM_VIEWS = len(VIEW_NAMES)


def decode(encoded: tf.Tensor) -> tf.Tensor:
    """JPEG or PNG bytes -> uint8 [height, width, 3] as stored (grey and alpha become RGB;
    the EXIF orientation is not applied: see `orient`)."""
    image = tf.io.decode_image(encoded, channels=3, expand_animations=False, dtype=tf.uint8)
    image.set_shape([None, None, 3])
    return image


# How to stand stored pixels upright for EXIF orientations 1-8, as PIL's ImageOps.exif_transpose
# does: whether to transpose, then which axes to reverse (rows, columns); 5-8 transpose, then
# reverse as 1-4 do.
_REVERSED_AXES = [[False, False], [False, True], [True, True], [True, False]] * 2
_TRANSPOSED = [False] * 4 + [True] * 4


def orient(image: tf.Tensor, orientation: tf.Tensor | int) -> tf.Tensor:
    """Stored pixels [h, w, c] -> upright ([h, w, c] for orientations 1-4, [w, h, c] for 5-8).

    `orientation` is the EXIF tag (int, 1-8: `tfrecords.images.orientation`): 2 mirror
    left-right, 3 turn 180 degrees, 4 mirror up-down, 5 mirror across the main diagonal,
    6 turn 90 degrees clockwise (a phone's portrait photo), 7 mirror across the other
    diagonal, 8 turn 90 degrees counter-clockwise; 1 and any other value leave the image
    as stored. A reverse and a transpose whose axes are data, not branches: tf.switch_case
    costs ~0.3 ms an image inside tf.data. Copies the uint8 image when it turns, else none.
    """
    orientation = tf.cast(orientation, tf.int32)
    index = tf.where((orientation >= 1) & (orientation <= 8), orientation - 1, 0)
    axes = tf.where(tf.gather(_REVERSED_AXES, index))[:, 0]
    return tf.reverse(tf.transpose(image, _transposition(tf.gather(_TRANSPOSED, index))), axes)


def _transposition(swap: tf.Tensor) -> tf.Tensor:
    """The permutation of [h, w, c] that swaps rows and columns when `swap`, else none."""
    return tf.where(swap, [1, 0, 2], [0, 1, 2])


def border_mean(image: tf.Tensor) -> tf.Tensor:
    """Mean colour (float32 [3]) of the outermost rows and columns of an image."""
    border = tf.concat([image[0], image[-1], image[:, 0], image[:, -1]], axis=0)
    return tf.reduce_mean(tf.cast(border, tf.float32), axis=0)  # cast after slicing: not the whole image


def pad_rows(image: tf.Tensor, fill: tf.Tensor, height: tf.Tensor) -> tf.Tensor:
    """Centre `image` [h, w, 3] on `height` rows (at least h) filled with `fill` (float32 [3]):
    float32 [height, w, 3], the image's values unchanged; an odd margin puts its extra
    row below.

    Built by concatenating two fill blocks with the image (the result and the blocks: twice
    the result's memory): broadcasting the fill over the whole canvas (subtract, pad with
    zeros, add back) costs 3.5x more on CPU.
    """
    shape = tf.shape(image)
    top = (height - shape[0]) // 2

    def block(rows):
        return tf.broadcast_to(fill, tf.stack([rows, shape[1], 3]))

    return tf.concat([block(top), tf.cast(image, tf.float32), block(height - shape[0] - top)], axis=0)


def resize_rows(image: tf.Tensor, height: tf.Tensor | int) -> tf.Tensor:
    """The recipe's resize (bilinear, antialiased: a triangle filter as wide as the
    downscaling) along the rows only: uint8 or float [h, w, c] -> float32 [height, w, c].

    Seen as one column of w * c channels: TensorFlow's resize makes a pass along each
    axis, rows first, and its pass along the other then covers one column instead of
    copying the whole image as floats (12 bytes a pixel, and 40% more time in `prepare`).
    """
    shape = tf.shape(image)
    column = tf.reshape(image, tf.stack([1, shape[0], 1, shape[1] * shape[2]]))
    resized = tf.image.resize(column, tf.stack([height, 1]), method="bilinear", antialias=True)
    return tf.reshape(resized, tf.stack([height, shape[1], shape[2]]))


def prepare(encoded: tf.Tensor, size: int, orientation: tf.Tensor | int) -> tf.Tensor:
    """Encoded bytes and their EXIF orientation -> float32 [size, size, 3] in [0, 255],
    upright, ready for the model.

    The upright image padded to a square of its longer side, centred and filled with its
    border mean, then resized; Keras' EfficientNet rescales inside the model, so pixels
    stay in [0, 255]. A wide image is prepared transposed, standing tall, so that one
    computation serves both (`pad_and_resize_tall`): a transpose whose permutation is
    data costs a copy of the uint8 image, a tf.cond ~0.5 ms an image inside tf.data (as
    much as the rest of `prepare` for a small image).
    """
    image = orient(decode(encoded), orientation)
    height, width = tf.shape(image)[0], tf.shape(image)[1]
    # pad_and_resize_tall gives the square transposed: a wide image comes back upright.
    square = pad_and_resize_tall(tf.transpose(image, _transposition(width > height)), size)
    return tf.ensure_shape(tf.transpose(square, _transposition(height >= width)), [size, size, 3])


def pad_and_resize_tall(image: tf.Tensor, size: int) -> tf.Tensor:
    """A tall image (uint8 [h, w, 3], h >= w) padded left and right to a square with its
    border mean and resized, transposed: float32 [size, size, 3] (rows for its columns),
    clipped to [0, 255].

    Computed without the square: the antialiased resize is separable and resizing a
    constant fill along the other axis leaves it constant, so the rows are resized first
    and only then the columns padded (the same values within float rounding, ~3e-4), as
    rows of the transpose (w x `size`, small), then resized as rows too.
    Memory: the canvas is h x `size`, not h x h (~55 MB for a 10000 x 3 image at 224, not
    ~3.7 GB), and the image is never copied as floats: the peak is a few bytes a pixel
    plus the canvas (~80 MB for a 12-megapixel photo, ~400 MB at the 64-megapixel
    ingestion limit; 390 MB and 1.7 GB through the square).
    """
    fill = border_mean(image)
    lying = tf.transpose(resize_rows(image, size), [1, 0, 2])  # [w, size]
    return tf.clip_by_value(resize_rows(pad_rows(lying, fill, tf.shape(image)[0]), size), 0.0, 255.0)


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
