"""How hard the demo dataset is for features that know nothing of products.

Retrieval as in the runs: one shot per product (its first) is the query, the
product's other shots are in the index with every other product's, scored by
MAR@10 (phases.metrics.retrieval_scores, cosine similarity) for features made
without a neural network:
  (a) colour histogram: joint RGB, 8x8x8 bins, of the whole image, square-rooted
      so that the cosine is the Bhattacharyya coefficient of the two histograms;
  (b) centre histogram: the same over the central half of each side, where the
      product usually is;
  (c) tiny image: the image squeezed to 8x8 RGB, minus its mean (layout and colour);
  (d) random vectors: the floor (about 10 / index size per relevant item).
A dataset a pretrained backbone should score 0.2-0.6 on must leave these clearly
lower: colours alone must not tell the product. With no FOLDER, a dataset is
generated first (the time it took is printed: the target for 500 products x 6
shots at 128 px is well under 30 s) into a temporary folder. --sheet writes a
contact sheet: 4 categories x 3 products x 4 shots, one row per category.

    .venv/bin/python benchmarks/demo_difficulty.py [FOLDER] [--products 500 --shots 6 --categories 5
        --image-size 128 --similarity 0.6 --clutter 0.5 --seed 0] [--sheet docs/images/demo-products.png]
"""

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from phases.metrics import retrieval_scores  # noqa: E402
from tfrecords.demo_data import CATEGORIES, DemoOptions, write_demo_data  # noqa: E402

BINS = 8  # per channel: 512 histogram bins
SHEET_CELL = 128  # pixels of one shot on the contact sheet


def histogram(image: np.ndarray) -> np.ndarray:
    """[512] square roots of the share of pixels in each joint RGB bin of uint8 [h, w, 3]."""
    bins = (image.astype(np.int32) * BINS) // 256
    counts = np.bincount(((bins[..., 0] * BINS + bins[..., 1]) * BINS + bins[..., 2]).ravel(), minlength=BINS**3)
    return np.sqrt(counts / counts.sum())


def features(path: Path) -> dict[str, np.ndarray]:
    """The three hand-made features of one image file."""
    image = np.asarray(Image.open(path).convert("RGB"))
    height, width = image.shape[:2]
    centre = image[height // 4 : height - height // 4, width // 4 : width - width // 4]
    tiny = np.asarray(Image.fromarray(image).resize((8, 8), Image.BILINEAR), np.float32).ravel()
    return {
        "colour histogram": histogram(image), "centre histogram": histogram(centre), "tiny image": tiny - tiny.mean(),
    }


def difficulty(folder: Path) -> dict[str, float]:
    """MAR@10 of each feature, and of random vectors, on the images under `folder` (category/product/shot)."""
    products = sorted(p for p in folder.glob("*/*") if p.is_dir())
    rows: dict[str, list] = {}
    query_labels, index_labels = [], []
    for label, product in enumerate(products):
        for number, shot in enumerate(sorted(product.iterdir())):
            side = "query" if number == 0 else "index"
            (query_labels if number == 0 else index_labels).append(label)
            for name, vector in features(shot).items():
                rows.setdefault((name, side), []).append(vector)
    rng = np.random.default_rng(0)
    rows["random vectors", "query"] = rng.standard_normal((len(query_labels), 64))
    rows["random vectors", "index"] = rng.standard_normal((len(index_labels), 64))
    names = sorted({name for name, _ in rows})
    scores = {}
    for name in names:
        queries, index = np.array(rows[name, "query"]), np.array(rows[name, "index"])
        scores[name] = retrieval_scores(queries, query_labels, index, index_labels)["mar_at_10"]
    return scores


def contact_sheet(folder: Path, out: Path, categories: int = 4, products: int = 3, shots: int = 4) -> None:
    """One row per category (the first `categories` in CATEGORIES' order): `products` x `shots`
    images, each fitted into a SHEET_CELL square."""
    sheet = Image.new("RGB", (products * shots * SHEET_CELL, categories * SHEET_CELL), "white")
    present = [folder / name for name in CATEGORIES if (folder / name).is_dir()][:categories]
    for row, category in enumerate(present):
        for number, product in enumerate(sorted(category.iterdir())[:products]):
            for shot_number, shot in enumerate(sorted(product.iterdir())[:shots]):
                image = Image.open(shot).convert("RGB")
                image.thumbnail((SHEET_CELL, SHEET_CELL))
                left = (number * shots + shot_number) * SHEET_CELL + (SHEET_CELL - image.width) // 2
                sheet.paste(image, (left, row * SHEET_CELL + (SHEET_CELL - image.height) // 2))
    # 256 colours: a tenth of the bytes of full colour, and hardly visible in a README.
    sheet.quantize(256, method=Image.Quantize.MEDIANCUT).save(out, optimize=True)
    print(f"contact sheet: {out} ({out.stat().st_size / 1024:.0f} KiB)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("folder", type=Path, nargs="?", help="images from `pvs demo-data` (default: generate them)")
    parser.add_argument("--products", type=int, default=500)
    parser.add_argument("--shots", type=int, default=6)
    parser.add_argument("--categories", type=int, default=5)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--similarity", type=float, default=DemoOptions.similarity)
    parser.add_argument("--clutter", type=float, default=DemoOptions.clutter)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--sheet", type=Path, default=None, help="also write a contact sheet PNG here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as temporary:
        folder = args.folder
        if folder is None:
            folder = Path(temporary) / "images"
            options = DemoOptions(args.products, args.shots, args.categories, args.image_size, args.seed,
                                  args.similarity, args.clutter)
            start, cpu = time.perf_counter(), time.process_time()
            count = write_demo_data(folder, options)
            # CPU seconds too: on a shared machine the wall time says as much about the neighbours.
            seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu
            print(f"generated {count} images in {seconds:.1f} s ({cpu_seconds:.1f} s CPU): {options}")
        if args.sheet:
            contact_sheet(folder, args.sheet)
        for name, score in difficulty(folder).items():
            print(f"MAR@10 {name:17s} {score:.3f}")


if __name__ == "__main__":
    main()
