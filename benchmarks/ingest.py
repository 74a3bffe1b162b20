"""How close the reading pipeline comes to bare JPEG decoding, measured in one run.

Generates demo JPEGs, ingests them into TFRecords (train only), then measures
images/second of:

  (a) bare decode+resize: the JPEG bytes are read into memory first (not timed),
      then a Python loop calls one compiled tf.function per image doing
      tf.io.decode_jpeg + tf.image.resize (the reader's method: bilinear,
      antialias) to the model size: no padding, batching or tf.data;
  (b) the full reader: read_images(..., "train", ReadOptions(augment="random",
      shuffle, batches)) iterated to exhaustion; the dataset is built (and the
      shards' sha256 checked) once, outside the timing;
  (c) the same reader restricted to one thread, to show the per-core overhead.

Each variant is warmed up once (graph compilation), then the best of --repeats
passes is kept, the variants interleaved in each repeat so machine noise hits all
alike. CPU ms/image (the process's CPU time over the fastest pass) shows the work
per image apart from how many cores the variant got: (a) runs on one core, (b) needs
both, so (b)/(a) drops when other jobs load the machine. The last line is the
ratio (b)/(a); the target is >= 0.8.

    .venv/bin/python benchmarks/ingest.py [--products 300 --shots 8 --image-size 256 --size 224]
"""

import argparse
import csv
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import tensorflow as tf  # noqa: E402

from tfrecords.demo_data import DemoOptions, write_demo_data  # noqa: E402
from tfrecords.ingest import ingest  # noqa: E402
from tfrecords.options import IngestOptions, ReadOptions  # noqa: E402
from tfrecords.reader import read_images  # noqa: E402

TARGET = 0.8


def jpeg_source(images_dir: Path, csv_path: Path) -> list[Path]:
    """Write a CSV source naming only the JPEGs of the demo data; returns their paths."""
    jpegs = sorted(images_dir.rglob("*.jpg"))
    with open(csv_path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "product_id", "category"])
        for path in jpegs:
            writer.writerow([path.relative_to(csv_path.parent).as_posix(), path.parent.name, path.parent.parent.name])
    return jpegs


def bare_loop(blobs: list[bytes], size: int):
    @tf.function(input_signature=[tf.TensorSpec([], tf.string)])
    def decode_resize(data):
        image = tf.io.decode_jpeg(data, channels=3)
        return tf.image.resize(image, [size, size], method="bilinear", antialias=True)

    tensors = [tf.constant(blob) for blob in blobs]  # host tensors made outside the timing

    def run() -> int:
        for data in tensors:
            decode_resize(data)
        return len(tensors)

    return run


def pipeline_loop(dataset: tf.data.Dataset):
    def run() -> int:
        return sum(int(batch["image"].shape[0]) for batch in dataset)

    return run


def single_threaded(dataset: tf.data.Dataset) -> tf.data.Dataset:
    options = tf.data.Options()
    options.threading.private_threadpool_size = 1
    options.threading.max_intra_op_parallelism = 1
    return dataset.with_options(options)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--products", type=int, default=300)
    parser.add_argument("--shots", type=int, default=8, help="images per product (every 4th is a PNG, left out)")
    parser.add_argument("--image-size", type=int, default=256, help="longer side of the source photos")
    parser.add_argument("--size", type=int, default=224, help="model input side")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--shuffle-buffer", type=int, default=1000)
    parser.add_argument("--shards", type=int, default=16, help="about this many shards")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="pvs-bench-") as tmp:
        root = Path(tmp)
        demo = DemoOptions(products=args.products, shots=args.shots, image_size=args.image_size)
        write_demo_data(root / "images", demo)
        jpegs = jpeg_source(root / "images", root / "jpegs.csv")
        blobs = [path.read_bytes() for path in jpegs]
        shard_size = sum(map(len, blobs)) // args.shards + 1
        options = IngestOptions(shard_size=shard_size, val_fraction=0, test_fraction=0)  # untimed
        manifest = ingest(root / "jpegs.csv", root / "data", options, progress=False)
        assert manifest.counts["train"] == len(blobs), manifest.counts

        read_options = ReadOptions(
            image_size=args.size, batch_size=args.batch_size, shuffle_buffer=args.shuffle_buffer, augment="random"
        )
        dataset = read_images(root / "data", "train", read_options)  # sha256 checks happen here, untimed
        variants = {
            "(a) bare decode+resize": bare_loop(blobs, args.size),
            "(b) reader": pipeline_loop(dataset),
            "(c) reader, 1 thread": pipeline_loop(single_threaded(dataset)),
        }
        print(
            f"{len(blobs)} JPEGs of up to {args.image_size} px -> {args.size} px, "
            f"{len(manifest.shards)} shards, batch {args.batch_size}, shuffle {args.shuffle_buffer}, "
            f"{os.cpu_count()} CPUs, TensorFlow {tf.__version__}"
        )
        for name, run in variants.items():  # warm-up: traces and compiles the graphs
            assert run() == len(blobs), name
        best = {name: (float("inf"), 0.0) for name in variants}  # (wall, CPU) seconds of the fastest pass
        for _ in range(args.repeats):
            for name, run in variants.items():
                wall, cpu = time.perf_counter(), time.process_time()
                count = run()
                best[name] = min(best[name], (time.perf_counter() - wall, time.process_time() - cpu))
                assert count == len(blobs), (name, count)

    rate = {name: len(blobs) / wall for name, (wall, _) in best.items()}
    print(f"\n{'variant':<26}{'images':>8}{'seconds':>10}{'images/s':>10}{'CPU ms/image':>14}")
    for name, (wall, cpu) in best.items():
        print(f"{name:<26}{len(blobs):>8}{wall:>10.2f}{rate[name]:>10.1f}{1000 * cpu / len(blobs):>14.2f}")
    print("load average over the run: {:.1f} (1 min), {:.1f} (5 min)".format(*os.getloadavg()[:2]))
    a, b, c = rate.values()
    print(f"\nratio (c)/(a) = {c / a:.2f} (one thread)")
    if b / a < TARGET:
        print(f"below target: the reader reaches {b / a:.0%} of bare decode+resize")
    print(f"ratio (b)/(a) = {b / a:.2f} (target >= {TARGET})")


if __name__ == "__main__":
    main()
