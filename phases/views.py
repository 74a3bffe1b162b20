"""Test-time augmentation: an image's embedding made from the embeddings of several views of it.

`evaluation.test_time_augmentation` names the views, those of the training augmentation
(tfrecords/preprocess.py, `VIEW_NAMES`): `none` the image alone, `flip` the image and its
left-right mirror, `six_views` all six. The per-epoch scores (phases/scoring.py), the
extraction, phase 4's scores on cached features and `pvs search` all average views here,
so an image gets the same embedding wherever it is embedded.
"""

import numpy as np

from tfrecords.preprocess import VIEW_NAMES, view

# The views of each setting, identity first: a classifier's probabilities are the unaugmented image's.
TEST_TIME_VIEWS = {
    "none": ("identity",),
    "flip": ("identity", "flip_left_right"),
    "six_views": VIEW_NAMES,
}


def view_numbers(augmentation: str) -> tuple[int, ...]:
    """The views of `augmentation` as `tfrecords.preprocess.view` numbers them (0-5), in increasing order."""
    return tuple(VIEW_NAMES.index(name) for name in TEST_TIME_VIEWS[augmentation])


def predict_views(model, images, augmentation: str, eager: bool = False) -> list:
    """The model's output for each view of `images` (float32 [batch, size, size, 3]), in
    `view_numbers` order: one pass a view, each of the batch's size (memory as without
    augmentation; time once per view). `eager`: the model is called as it is, not through its
    traced predict step (`pvs search`: tracing costs more than embedding a few images)."""
    predict = (lambda batch: model(batch, training=False)) if eager else model.predict_on_batch
    return [predict(images if number == 0 else view(images, number)) for number in view_numbers(augmentation)]


def mean_of_views(embeddings: np.ndarray) -> np.ndarray:
    """Embeddings [views, n, dim] -> [n, dim]: one view's as they are (no augmentation: the
    model's output untouched), else their mean, L2-normalised.

    Retrieval is by cosine, so the norm changes no ranking; averaging normalised vectors and
    normalising the mean is the standard way (an embedder's views are unit vectors already),
    and it keeps extracted embeddings unit vectors, as the projection makes them."""
    if len(embeddings) == 1:
        return embeddings[0]
    mean = embeddings.mean(axis=0)
    # As keras' UnitNormalization: a zero vector stays zero instead of becoming NaN.
    return mean / np.sqrt(np.maximum(np.sum(np.square(mean), axis=1, keepdims=True), 1e-12))


def embed_views(model, images, augmentation: str, eager: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """Embed a batch of images with test-time augmentation.

    Args:
        model: images -> embeddings [batch, dim], or -> [embeddings, probabilities [batch, classes]]
            (a classifier's scorer).
        images: float32 [batch, size, size, 3] in [0, 255], as the reader yields them.
        augmentation: `evaluation.test_time_augmentation` (`none`, `flip`, `six_views`).
        eager: see `predict_views`.

    Returns:
        (embeddings float32 [batch, dim]: the views' mean, L2-normalised (`mean_of_views`);
        the probabilities of the unaugmented images, or None for a model without them).
    """
    embeddings, probabilities = [], None
    for output in predict_views(model, images, augmentation, eager):
        if isinstance(output, (list, tuple)):
            output, probability = output
            probabilities = np.asarray(probability) if probabilities is None else probabilities
        embeddings.append(np.asarray(output, dtype=np.float32))
    return mean_of_views(np.stack(embeddings)), probabilities
