"""`pvs demo-data`: a generated product-photo dataset, so everything runs offline.

A product is a shaded 3D-ish object of its category (bottle, box, can, shoe, mug,
...; demo_products.py) with a print of its own: brand name, logo, layout, colours.
Products of one category share a shape family and, as `similarity` rises, their
proportions, palette and layout (demo_traits.py): telling the category is easy,
telling the product takes its details. Each shot of a product changes what changes
between real photos (demo_scenes.py): pose, scale, position and cropping, backdrop
and clutter, objects in front, light, white balance, focus, noise, JPEG quality.
Written as `OUT/<category>/<product_id>/<shot>.jpg` (every fourth shot a PNG),
which `pvs ingest` reads as a folder source. Same options, same bytes (on one kind
of CPU: NumPy's vectorised sin and exp may differ in the last bit between CPUs).

How hard it is with the defaults (6 shots of 128 px, 5 categories) for ImageNet
EfficientNet-Lite0's average-pooled features (images resized to 224 px), a product's
first shot the query and the other shots of all products the index: MAR@10 0.52
among 30 products, 0.35 among 100, 0.26 among 200, 0.17 among 500, while the nearest
image is of the right category 98% of the time. Colour histograms: MAR@10 0.07 at
best among 500 products (benchmarks/demo_difficulty.py).
"""

import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from tfrecords.demo_products import BUILDERS, CATEGORIES
from tfrecords.demo_scenes import photograph
from tfrecords.demo_traits import Traits
from tfrecords.files import write_bytes_atomic

__all__ = ["CATEGORIES", "DemoOptions", "write_demo_data"]


@dataclass(frozen=True)
class DemoOptions:
    products: int = 60
    shots: int = 6  # images per product
    categories: int = 5  # at most len(CATEGORIES), 16
    image_size: int = 96  # pixels of the longer side of each shot
    seed: int = 0
    # How alike the products of one category are, 0 to 1: at 0 they share only their
    # shape family, at 1 also proportions, palette and layout (accent colours, brand,
    # logo and small print still differ). Higher is harder to retrieve.
    similarity: float = 0.5
    # Share of shots in a cluttered scene (wall, textured table, other objects, some in
    # front of the product) rather than a studio backdrop, 0 to 1. Higher is harder.
    clutter: float = 0.3


def write_demo_data(out_dir: str | Path, options: DemoOptions = DemoOptions()) -> int:
    """Write the dataset into `out_dir`; returns the number of images written.

    Product number n is of category CATEGORIES[n % options.categories]. Costs about 4 ms
    of one core per 128 px shot, file included: 500 products x 6 shots in ~13 s
    (benchmarks/demo_difficulty.py prints the time)."""
    _check(options)
    rng = np.random.default_rng(options.seed)
    shared: list[dict] = [{} for _ in range(options.categories)]  # each category's traits, by name
    out = Path(out_dir)
    written = 0
    for number in range(options.products):
        index = number % options.categories
        category = CATEGORIES[index]
        product = BUILDERS[category](Traits(options.seed, index, rng, options.similarity, shared[index]))
        for shot in range(options.shots):
            pixels = photograph(product, rng, options.image_size, options.clutter)
            kind = "png" if shot % 4 == 3 else "jpg"
            buffer = io.BytesIO()
            # JPEG quality varies as between cameras and shops; PNG shots are lossless, at
            # compress_level 1: the default (6) costs twice the time for 5% fewer bytes.
            quality, encoding = int(rng.integers(40, 96)), {"jpg": "JPEG", "png": "PNG"}[kind]
            Image.fromarray(pixels).save(buffer, format=encoding, quality=quality, compress_level=1)
            write_bytes_atomic(out / category / f"p{number:04d}" / f"shot{shot:02d}.{kind}", buffer.getvalue())
            written += 1
    return written


def _check(options: DemoOptions) -> None:
    if not 1 <= options.categories <= len(CATEGORIES):
        raise ValueError(f"categories must be between 1 and {len(CATEGORIES)}, got {options.categories}")
    if options.products < 1 or options.shots < 1 or options.image_size < 16:
        raise ValueError("products and shots must be >= 1 and image_size >= 16")
    if not (0 <= options.similarity <= 1 and 0 <= options.clutter <= 1):
        raise ValueError(
            f"similarity and clutter must be between 0 and 1, got {options.similarity} and {options.clutter}"
        )
