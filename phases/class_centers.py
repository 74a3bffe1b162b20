"""The training model of an embedding phase with a class-centre loss (`loss: arcface`,
`subcenter_arcface` or `cosface`): its embedder followed by a `CosineClassifier` of one or
more centres per product, trained with the margin loss on the cosines.

The centres exist only while the phase trains: they are in its checkpoints (a resumed phase
goes on with them), but the scores of each epoch, the final model and the extraction use
the embedder alone (`without_class_centers`), which ends with the L2-normalised embedding.
"""

import keras

from phases.losses.margin import CosineClassifier
from tfrecords.manifest import ImageManifest

CENTERS_LAYER = "head_classes"  # a head layer (phases/model.py HEAD_LAYERS): it trains in every phase
_SUFFIX = "_with_class_centers"


def product_classes(manifest: ImageManifest) -> int:
    """The classes of `labels: product`: every product id of the ingested data (its manifest).

    Ingestion numbers the products 0 .. n - 1 over all splits (sorted names), so a product id
    is its class index. Val and test products get centres too, which no example pulls (the
    softmax only pushes them away): cheaper than renumbering the train products in every
    batch, at the cost of their share of the centres' memory."""
    return len(manifest.products)


def with_class_centers(embedder: keras.Model, classes: int, centers: int = 1) -> keras.Model:
    """`embedder` (inputs -> embeddings [batch, dim]) followed by CosineClassifier(classes,
    centers) named `head_classes`: inputs -> cosines [batch, classes], float32. The embedder's
    layers are the new model's (not a copy), so training it trains them."""
    cosines = CosineClassifier(classes, centers, name=CENTERS_LAYER)(embedder.outputs[0])
    return keras.Model(embedder.inputs[0], cosines, name=f"{embedder.name}{_SUFFIX}")


def without_class_centers(model: keras.Model) -> keras.Model:
    """The embedder of a `with_class_centers` model (its inputs -> the centres' input, the
    same layers and variables, under the embedder's name); any other model as it is."""
    if not model.name.endswith(_SUFFIX):
        return model
    return keras.Model(model.input, model.get_layer(CENTERS_LAYER).input, name=model.name.removesuffix(_SUFFIX))
