"""A run's final model as others serve it: images in, L2-normalised embeddings out, with the
run's test-time augmentation inside.

`embedding_model` wraps the embedder in two of our layers: `AugmentedViews` stacks the
views of `evaluation.test_time_augmentation` along the batch, the embedder embeds them in
one pass, and `MeanOfViews` averages each image's views and L2-normalises the mean, as
`phases.views.embed_views` does in the pipeline. That one Keras model is the `.keras`
export, the TFLite export's graph and the SavedModel's core; `serving_archive` adds the
SavedModel's encoded-bytes signature: decode, stand upright by the EXIF orientation
(read in the graph: `phases.exif`), pad to square and resize (`tfrecords.preprocess.prepare`).

The views go through the embedder as one batch of views x images rather than one pass a
view: memory grows with the views (6x with `six_views`), and the embeddings equal the
pipeline's within float32 rounding (a batch of another size may take another kernel).
"""

import keras
import tensorflow as tf
from keras import ops

from phases.exif import exif_orientation
from phases.views import view_numbers
from tfrecords.preprocess import prepare

PREPARED_SIGNATURE = "embed_prepared"  # the SavedModel signature taking prepared float images
INPUT, OUTPUT = "images", "embeddings"  # the signatures' input and output names


@keras.saving.register_keras_serializable(package="pvs")
class AugmentedViews(keras.layers.Layer):
    """Square images [batch, s, s, c] -> their views [len(views) x batch, s, s, c], view after
    view, each as `tfrecords.preprocess.view` makes it (numbers 0-5 of VIEW_NAMES).

    Args:
        views: view numbers, e.g. (0, 2): the image and its left-right mirror.

    Example:
        views = AugmentedViews(views=(0, 2))(keras.Input((96, 96, 3)))  # [2 x batch, 96, 96, 3]
    """

    def __init__(self, views=(0,), **kwargs):
        super().__init__(**kwargs)
        self.views = tuple(int(number) for number in views)

    def call(self, images):
        return ops.concatenate([_view(images, number) for number in self.views], axis=0)

    def compute_output_shape(self, input_shape):
        batch = None if input_shape[0] is None else input_shape[0] * len(self.views)
        return (batch, *input_shape[1:])

    def get_config(self):
        return {**super().get_config(), "views": list(self.views)}


def _view(images, number: int):
    """View `number` of square images [batch, s, s, c], as tf.image's flips and counter-clockwise rot90."""
    rows, columns, swapped = 1, 2, (0, 2, 1, 3)
    if number == 0:
        return images
    if number in (1, 2):  # flip up-down, left-right
        return ops.flip(images, axis=rows if number == 1 else columns)
    if number == 3:
        return ops.transpose(ops.flip(images, axis=columns), swapped)
    if number == 4:
        return ops.flip(ops.flip(images, axis=rows), axis=columns)
    return ops.flip(ops.transpose(images, swapped), axis=columns)


@keras.saving.register_keras_serializable(package="pvs")
class MeanOfViews(keras.layers.Layer):
    """Embeddings of `views` views [views x batch, dim], view after view (`AugmentedViews`)
    -> [batch, dim]: each image's mean, L2-normalised (a zero mean stays zero), as
    `phases.views.mean_of_views`; with one view, the embedding L2-normalised.

    Args:
        views: how many views each image has.
    """

    def __init__(self, views: int = 1, **kwargs):
        kwargs.setdefault("dtype", "float32")
        super().__init__(**kwargs)
        self.views = int(views)

    def call(self, embeddings):
        embeddings = ops.cast(embeddings, self.compute_dtype)
        mean = ops.mean(ops.reshape(embeddings, (self.views, -1, ops.shape(embeddings)[-1])), axis=0)
        return mean / ops.sqrt(ops.maximum(ops.sum(ops.square(mean), axis=1, keepdims=True), 1e-12))

    def compute_output_shape(self, input_shape):
        batch = None if input_shape[0] is None else input_shape[0] // self.views
        return (batch, input_shape[-1])

    def get_config(self):
        return {**super().get_config(), "views": self.views}


def embedding_model(embedder: keras.Model, augmentation: str) -> keras.Model:
    """Prepared images float32 [batch, size, size, 3] in [0, 255] -> embeddings float32
    [batch, dim], the mean of the views of `augmentation` (`none`, `flip`, `six_views`),
    L2-normalised. `embedder`: images -> embeddings, or -> [embeddings, probabilities]."""
    images = keras.Input(embedder.input_shape[1:], name=INPUT)
    numbers = view_numbers(augmentation)
    embeddings = embedder(AugmentedViews(numbers, name="test_time_views")(images))
    if isinstance(embeddings, (list, tuple)):
        embeddings = embeddings[0]
    outputs = MeanOfViews(len(numbers), name=OUTPUT)(embeddings)
    return keras.Model(images, outputs, name="exported_embedder")


def prepare_encoded(images: tf.Tensor, size: int) -> tf.Tensor:
    """Encoded JPEG or PNG bytes, tf.string [batch] -> prepared float32 [batch, size, size, 3],
    each as the pipeline reads it (`tfrecords.preprocess.prepare`), upright by the EXIF
    orientation read from its bytes in the graph (`phases.exif.exif_orientation`)."""
    return tf.map_fn(lambda data: prepare(data, size, exif_orientation(data)), images,
                     fn_output_signature=tf.TensorSpec([size, size, 3], tf.float32))


def serving_archive(model: keras.Model, encoded: bool = True):
    """A `keras.export.ExportArchive` of `embedding_model`'s `model` (write it out with
    `write_out(folder)`). Its signatures, with `encoded`:

    * `serving_default`: `images` tf.string [batch] of encoded JPEG or PNG bytes ->
      `embeddings` float32 [batch, dim];
    * `embed_prepared` (PREPARED_SIGNATURE): `images` float32 [batch, size, size, 3] in
      [0, 255], prepared by the client -> `embeddings`.

    Without `encoded`, the prepared images' signature alone, as `serving_default` (what
    TFLite converts: it has no JPEG decoder). Writing it out traces the model once per
    signature (~10 s for EfficientNetB0 on 2 CPU cores).
    """
    size = model.input_shape[1]
    archive = keras.export.ExportArchive()
    archive.track(model)
    prepared = tf.TensorSpec([None, size, size, 3], tf.float32, name=INPUT)
    if encoded:
        archive.add_endpoint(
            "serving_default", lambda images: {OUTPUT: model(prepare_encoded(images, size), training=False)},
            input_signature=[tf.TensorSpec([None], tf.string, name=INPUT)])
    archive.add_endpoint(PREPARED_SIGNATURE if encoded else "serving_default",
                         lambda images: {OUTPUT: model(images, training=False)}, input_signature=[prepared])
    return archive
