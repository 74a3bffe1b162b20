"""What embedding a catalog costs per image: the `embed_shard` task of `pvs index build` (and of a
run's extraction) on one shard of demo photos, per backbone, input size and test-time augmentation.

Each variant embeds the same ingested shard with `phases.extraction.embed_shard` (read, decode,
prepare, the model, the views averaged, the embedding shard written) after one warm-up batch (the
model's loading and tracing are paid once per shard task and reported apart). It reports CPU
milliseconds per image (process CPU time: steadier than wall time on a shared machine), wall
images/s, and the CPU hours a 1.1M-image catalog (eProduct's index) would take at that rate.

    .venv/bin/python benchmarks/catalog_embedding.py [--images 256] [--json FILE]
"""

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

EPRODUCT_INDEX = 1_100_000
# (architecture, weights, image size): the demo's backbone at the seed's size, and the seed's.
BACKBONES = [("EfficientNetLite0", "imagenet", 224), ("EfficientNetB0", "none", 224)]
AUGMENTATIONS = ["none", "flip", "six_views"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args()

    import numpy as np

    from phases.checkpoints import save_model
    from phases.extraction import embed_shard, final_model
    from phases.model import build_backbone, build_embedder, build_projection
    from pipeline.config_files import load_config
    from tfrecords.demo_data import DemoOptions, write_demo_data
    from tfrecords.ingest import ingest
    from tfrecords.manifest import ImageManifest, read_manifest
    from tfrecords.options import IngestOptions

    folder = Path(tempfile.mkdtemp(prefix="pvs-catalog-embedding-"))
    products = max(1, args.images // 6)
    write_demo_data(folder / "images", DemoOptions(products=products, shots=6, categories=4, image_size=320))
    ingest(folder / "images", folder / "data", IngestOptions(val_fraction=0, test_fraction=0, workers=1), progress=False)
    shard = read_manifest(folder / "data", ImageManifest).shards[0]
    load = os.getloadavg()[0]
    rows = []
    for architecture, weights, size in BACKBONES:
        config = load_config(ROOT / "configs" / "demo.yaml", {
            "data.source": str(folder / "data"), "data.image_size": size, "model.architecture": architecture,
            "model.weights": weights})
        backbone = build_backbone(config.model, size)
        model = build_embedder(backbone, build_projection(backbone.output_shape[-1], 256))
        path = folder / f"{architecture}.keras"
        sha256 = save_model(model, path)
        warm = final_model(path, sha256)  # loaded once per thread, as a shard task's thread does
        warm.predict_on_batch(np.zeros((32, size, size, 3), np.float32))
        for augmentation in AUGMENTATIONS:
            settings = config.model_copy(update={"evaluation": config.evaluation.model_copy(
                update={"test_time_augmentation": augmentation, "batch_size": 32})})
            wall, cpu = time.perf_counter(), time.process_time()
            manifest = embed_shard(path, sha256, settings, folder / "data", shard, folder / f"out-{architecture}-{augmentation}")
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            row = {"backbone": f"{architecture} {size} px", "augmentation": augmentation, "images": manifest.count,
                   "cpu_ms_per_image": 1000 * cpu / manifest.count, "images_per_s": manifest.count / wall}
            row["eproduct_cpu_hours"] = row["cpu_ms_per_image"] * EPRODUCT_INDEX / 3.6e6
            rows.append(row)
            print(json.dumps(row), flush=True)
    print(f"\nload average at the start: {load:.1f} (2 cores); the model is loaded and traced before timing "
          "(a shard task pays that once)\n")
    print("| backbone | test-time augmentation | images | CPU ms/image | images/s (wall) | CPU hours for 1.1M images |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['backbone']} | {row['augmentation']} | {row['images']} | {row['cpu_ms_per_image']:.1f} | "
              f"{row['images_per_s']:.1f} | {row['eproduct_cpu_hours']:.0f} |")
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    main()
