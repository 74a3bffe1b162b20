"""An exported embedding model (`phases.serving.embedding_model`) as a TFLite flatbuffer,
and TFLite's interpreter as an embedder, to measure what it changes.

TFLite has no JPEG decoder: its model takes prepared float32 images [batch, size, size, 3]
in [0, 255] (`tfrecords.preprocess.prepare`) and gives L2-normalised embeddings, through
its one signature `serving_default` (input `images`, output `embeddings`).

Precisions: `float32` (the model as it is); `float16` (weights stored in 16 bits, half
the file, computed in float32 on CPUs); `int8` (weights and activations in 8 bits, a
quarter of the file, scaled by ranges measured on `calibration` images, each through all
the test-time views; an op without an int8 kernel stays float: inputs and outputs are
float32).
"""

import shutil
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import tensorflow as tf

from phases.serving import INPUT, OUTPUT, serving_archive

PRECISIONS = ("float32", "float16", "int8")


def convert(model, precision: str, work_dir: Path,
            calibration: Callable[[], Iterable[np.ndarray]] | None = None) -> bytes:
    """The TFLite flatbuffer of `model` (prepared images -> embeddings) at `precision`.

    Args:
        model: `phases.serving.embedding_model`'s Keras model.
        precision: one of PRECISIONS.
        work_dir: a folder for the SavedModel converted (written, then deleted; Keras 3 models
            convert through a SavedModel: from a concrete function their variables stay unfrozen).
        calibration: for `int8`, a function giving prepared images float32 [size, size, 3], one at a time.
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}; got {precision!r}")
    if precision == "int8" and calibration is None:
        raise ValueError("int8 needs calibration images")
    saved = Path(work_dir) / "prepared-savedmodel"
    try:
        serving_archive(model, encoded=False).write_out(saved, verbose=False)
        converter = tf.lite.TFLiteConverter.from_saved_model(str(saved))
        if precision != "float32":
            converter.optimizations = [tf.lite.Optimize.DEFAULT]
        if precision == "float16":
            converter.target_spec.supported_types = [tf.float16]
        if precision == "int8":
            converter.representative_dataset = lambda: ([image[None]] for image in calibration())
        return converter.convert()
    finally:
        shutil.rmtree(saved, ignore_errors=True)


def tflite_embedder(flatbuffer: bytes) -> Callable[[np.ndarray], np.ndarray]:
    """A function: prepared images float32 [batch, size, size, 3] -> embeddings float32
    [batch, dim], by TFLite's interpreter (XNNPACK on CPU) running `flatbuffer`."""
    with warnings.catch_warnings():
        # tf.lite.Interpreter warns that LiteRT's package (ai-edge-litert, not a dependency)
        # replaces it; TensorFlow 2.21 still ships it, and it runs the same flatbuffer.
        warnings.simplefilter("ignore", UserWarning)
        interpreter = tf.lite.Interpreter(model_content=flatbuffer)
    runner = interpreter.get_signature_runner("serving_default")
    return lambda images: np.asarray(runner(**{INPUT: np.asarray(images, np.float32)})[OUTPUT])
