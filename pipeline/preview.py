"""The input pipeline's figure: what the model will see, written as a PNG.

Top rows: images of each split as the reader prepares them (pad-to-square with
the border-mean fill, resized). Bottom row: the six augmented views of one image,
in the order the reader emits them.
"""

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from pipeline.charts import save_figure  # noqa: E402
from tfrecords.manifest import ImageManifest, read_manifest  # noqa: E402
from tfrecords.options import ReadOptions  # noqa: E402
from tfrecords.preprocess import VIEW_NAMES  # noqa: E402
from tfrecords.reader import read_images  # noqa: E402

COLUMNS = 6


def write_preview(data_dir: str | Path, out_path: str | Path, image_size: int = 96) -> Path:
    """Draw the figure for an ingested folder into `out_path` (PNG)."""
    manifest = read_manifest(data_dir, ImageManifest)
    product_names = {number: name for name, number in manifest.products.items()}
    splits = [split for split, count in manifest.counts.items() if count]
    rows = [(split, _take(data_dir, split, ReadOptions(image_size=image_size), COLUMNS)) for split in splits]
    views = _take(data_dir, splits[0], ReadOptions(image_size=image_size, augment="all"), len(VIEW_NAMES))
    figure, axes = plt.subplots(len(rows) + 1, COLUMNS, figsize=(COLUMNS * 1.6, (len(rows) + 1) * 1.8), squeeze=False)
    for row, (split, elements) in enumerate(rows):
        for column, axis in enumerate(axes[row]):
            axis.axis("off")
            if column < len(elements):
                element = elements[column]
                axis.imshow(element["image"].astype(np.uint8))
                axis.set_title(f"{split}\n{product_names[int(element['product_id'])]}", fontsize=7)
    for column, axis in enumerate(axes[-1]):
        axis.axis("off")
        if column < len(views):
            axis.imshow(views[column]["image"].astype(np.uint8))
            axis.set_title(f"view {column}\n{VIEW_NAMES[column]}", fontsize=7)
    figure.suptitle(f"{Path(data_dir).name}: reader output at {image_size} px", fontsize=9)
    return save_figure(figure, out_path)


def _take(data_dir, split, options: ReadOptions, count: int) -> list[dict]:
    return list(read_images(data_dir, split, options).take(count).as_numpy_iterator())
