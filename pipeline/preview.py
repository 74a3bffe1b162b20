"""The input pipeline's figure: what the model will see, written as a PNG.

Top rows: images of each split as the reader prepares them (turned upright by
their EXIF orientation, pad-to-square with the border-mean fill, resized). Bottom
row: the six augmented views of one image, in the order the reader emits them.
"""

import math
import os
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on servers and CI
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from pipeline.charts import save_figure  # noqa: E402
from tfrecords.manifest import ImageManifest, read_manifest  # noqa: E402
from tfrecords.options import ReadOptions  # noqa: E402
from tfrecords.errors import UserError  # noqa: E402
from tfrecords.preprocess import VIEW_NAMES  # noqa: E402
from tfrecords.reader import read_images  # noqa: E402
from tfrecords.splits import SPLITS  # noqa: E402

COLUMNS = 6

# Peak memory per pixel of each image of the preview, measured with 29 images at 1,000-3,000
# px (0.7 GB a megapixel of size): the reader's float32 image (12 bytes), its 8-bit copy
# for Matplotlib, and Matplotlib's resampling.
PREVIEW_BYTES_PER_PIXEL = 24


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


def check_memory_for(size: int) -> None:
    """Refuse (UserError) a preview at `size` px a side whose images would not fit in the memory
    available now: at most a row per split and one of views, COLUMNS images each."""
    images = (len(SPLITS) + 1) * COLUMNS
    available = _available_memory()
    largest = math.isqrt(available // (images * PREVIEW_BYTES_PER_PIXEL))
    if size > largest:
        needed = images * PREVIEW_BYTES_PER_PIXEL * size**2
        raise UserError(f"--image-size {size}: the preview draws up to {images} images of {size}x{size} pixels, about "
                        f"{needed / 1e9:,.0f} GB of memory, and {available / 1e9:,.1f} GB are available; "
                        f"give at most {largest}")


def _available_memory() -> int:
    """Bytes of memory available to a new allocation: MemAvailable (Linux), else all of it."""
    try:
        with open("/proc/meminfo") as meminfo:
            return next(int(line.split()[1]) * 1024 for line in meminfo if line.startswith("MemAvailable:"))
    except (OSError, StopIteration):
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
