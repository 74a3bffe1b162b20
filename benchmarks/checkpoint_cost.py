"""What do in-epoch checkpoints (`runtime.checkpoint_every`) cost?

(1) One checkpoint save, timed directly: `save_checkpoint` (the .keras file with the
    optimizer's state, its sha256, the JSON record, an fsync and a rename) of the recipe's
    phase-3 model (EfficientNetB0, every layer but BatchNormalization trainable, Adam's
    slots made by one training step) and of the demo's (EfficientNetLite0). Repeated; mean
    and spread. At the default interval (10 minutes of training) the cost is this time
    over 600 s, whatever the device: a faster GPU trains more batches between checkpoints,
    not fewer seconds.
(2) The same in a real phase: one epoch of the demo's `full` phase (through
    `phases.controller.run_phase`) with `checkpoint_every: never` (A) and `N steps` (B),
    alternated A B A B in one process after an untimed epoch; (B - A) / checkpoints written is the measured
    cost of one, to check (1) against (the epoch's own time is noisy on a shared machine).

    .venv/bin/python benchmarks/checkpoint_cost.py [--repeats 5] [--pairs 3] [--every 2] [--products 200]

About 6 minutes on 2 CPU cores.
"""

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

DEFAULT_SECONDS = 600.0  # RuntimeConfig.checkpoint_every's default, 10 minutes


def spread(values: list[float]) -> str:
    return f"{statistics.mean(values):.3f} ± {statistics.stdev(values) if len(values) > 1 else 0:.3f}"


def save_times(architecture: str, image_size: int, classes: int, repeats: int, folder: Path) -> tuple[list[float], int]:
    """Seconds per `save_checkpoint` of a compiled, once-trained classifier; and the file's bytes."""
    import keras
    import numpy as np

    from phases.checkpoints import save_checkpoint
    from phases.config import ClassificationPhase, ModelConfig
    from phases.model import build_backbone, build_classifier, set_trainable

    model_config = ModelConfig(architecture=architecture, weights="none")
    model = build_classifier(build_backbone(model_config, image_size), classes, 0.2)
    phase = ClassificationPhase(name="full", unfreeze="all", learning_rate=1e-4, epochs=1)
    set_trainable(model, phase, True, architecture)
    model.compile(optimizer=keras.optimizers.Adam(1e-4), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    images = np.random.default_rng(0).uniform(0, 255, (8, image_size, image_size, 3)).astype("float32")
    model.train_on_batch(images, np.arange(8) % classes)  # Adam's slots exist, as in a checkpoint mid-phase
    times = []
    for step in range(repeats):
        began = time.perf_counter()
        save_checkpoint(folder, 0, model, {"rows": [], "metrics": [], "train_seconds": 0.0}, step=step + 1)
        times.append(time.perf_counter() - began)
    size = max(path.stat().st_size for path in folder.glob("*.keras"))
    shutil.rmtree(folder)
    return times, size


def epoch_seconds(config, data_dir: Path, every: int | None, folder: Path) -> tuple[float, int]:
    """Train seconds of the `full` phase's first epoch with a checkpoint every `every` steps
    (None: never), and how many in-epoch checkpoints it wrote (one per `every` batches but
    the last, which the epoch's own checkpoint follows)."""
    import keras

    from phases.controller import run_phase
    from phases.unit import PhaseContext

    class Batches(keras.callbacks.Callback):
        count = 0

        def on_train_batch_end(self, batch, logs=None):
            Batches.count += 1

    interval = "never" if every is None else f"{every} steps"
    config = config.model_copy(update={"runtime": config.runtime.model_copy(update={"checkpoint_every": interval})})
    phase = config.phase("full").model_copy(update={"epochs": 1})
    work = folder / interval.replace(" ", "-")
    result = run_phase(phase, config, PhaseContext(data_dir=data_dir, work_dir=work, callbacks=(Batches(),)))
    shutil.rmtree(work)
    return result.rows[0]["train_seconds"], 0 if every is None else (Batches.count - 1) // every


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=5, help="saves timed per model")
    parser.add_argument("--pairs", type=int, default=3, help="A B pairs of the demo's full-phase epoch")
    parser.add_argument("--every", type=int, default=2, help="steps between checkpoints in B")
    parser.add_argument("--products", type=int, default=200, help="demo products for (2)")
    arguments = parser.parse_args()

    import tfrecords  # noqa: F401
    from pipeline.config_files import load_config
    from pipeline.config_overrides import parse_overrides
    from pipeline.runtime import configure_runtime
    from tfrecords.demo_data import DemoOptions, write_demo_data
    from tfrecords.ingest import ingest

    folder = Path(tempfile.mkdtemp(prefix="pvs-checkpoint-cost-"))
    try:
        print("(1) one save_checkpoint (model + optimizer state, sha256, record, fsync, rename)")
        for architecture, size, classes in (("EfficientNetB0", 224, 1000), ("EfficientNetLite0", 96, 500)):
            times, size_bytes = save_times(architecture, size, classes, arguments.repeats, folder / architecture)
            mean = statistics.mean(times)
            print(f"  {architecture:18s} {size_bytes / 1e6:6.1f} MB  {spread(times)} s over {len(times)} saves;"
                  f"  at the default 10 minutes: {100 * mean / DEFAULT_SECONDS:.3f} % of training")

        images, data_dir = folder / "images", folder / "data"
        write_demo_data(images, DemoOptions(products=arguments.products, shots=4, categories=8, image_size=96, seed=1))
        overrides = parse_overrides(["model.weights=none", "model.freeze_batch_norm=false",
                                     "model.batch_norm_calibration_batches=2", f"data.source={images}"])
        config = load_config(ROOT / "configs" / "demo.yaml", overrides)
        ingest(images, data_dir, config.data.ingest, progress=False)
        configure_runtime(config)
        print(f"(2) one epoch of the demo's full phase ({arguments.products} products, 96 px), A: never, "
              f"B: every {arguments.every} steps")
        epoch_seconds(config, data_dir, None, folder)  # untimed: TensorFlow's first tracing and the file cache
        plain, checkpointed, per_checkpoint = [], [], []
        for _ in range(arguments.pairs):
            a, _ = epoch_seconds(config, data_dir, None, folder)
            b, count = epoch_seconds(config, data_dir, arguments.every, folder)
            plain.append(a)
            checkpointed.append(b)
            per_checkpoint.append((b - a) / max(count, 1))
            print(f"  A {a:.2f} s   B {b:.2f} s with {count} checkpoints: {(b - a) / max(count, 1):+.3f} s each")
        print(f"  A {spread(plain)} s, B {spread(checkpointed)} s; one checkpoint {spread(per_checkpoint)} s")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
