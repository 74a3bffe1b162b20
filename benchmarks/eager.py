"""What `runtime.eager` saves or costs: one classification phase in graph mode and eagerly.

Keras compiles each phase's train and predict steps with tf.function; on 2 CPU cores
tracing EfficientNetB0's train step takes longer than a tiny epoch, so the test suite
runs its tiny configs with `runtime.eager: true`. This measures the trade, interleaved
in one run: the `full` phase of configs/demo.yaml (unfreeze all, BatchNormalization
frozen; the model built, trained for --epochs epochs, scored on val after each, saved)
on generated demo photos, each variant in a fresh process (tracing is paid once per
process and model, as in a run), for every --sizes entry "IMAGE_SIZE:PRODUCTS".
Reports wall seconds and CPU seconds of the phase, best of --repeats, and their ratios
graph/eager (above 1: eager is faster).

    .venv/bin/python benchmarks/eager.py [--sizes 32:24 64:120 --epochs 2 --repeats 2]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def one_phase(data_dir: str, image_size: int, eager: bool, epochs: int) -> dict:
    """In this (fresh) process: the `full` phase from a new model; its wall and CPU seconds."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    sys.path.insert(0, str(REPO))
    from phases.controller import run_phase
    from phases.unit import PhaseContext
    from pipeline.config_files import load_config
    from pipeline.runtime import configure_runtime

    overrides = {"data.source": data_dir, "data.image_size": image_size, "runtime.eager": eager,
                 "phases.full.epochs": epochs, "model.batch_norm_calibration_batches": 2}
    config = load_config(REPO / "configs" / "demo.yaml", overrides)
    configure_runtime(config)
    with tempfile.TemporaryDirectory() as work:
        started, cpu = time.perf_counter(), time.process_time()
        run_phase(config.phase("full"), config, PhaseContext(data_dir=Path(data_dir), work_dir=Path(work)))
        return {"wall": time.perf_counter() - started, "cpu": time.process_time() - cpu}


def measure(data_dir: Path, image_size: int, eager: bool, epochs: int) -> dict:
    code = f"import sys; sys.path.insert(0, {str(REPO / 'benchmarks')!r}); import eager, json; " \
           f"print(json.dumps(eager.one_phase({str(data_dir)!r}, {image_size}, {eager}, {epochs})))"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=REPO)
    return json.loads(result.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", default=["32:24", "64:120"], help="IMAGE_SIZE:PRODUCTS pairs")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    sys.path.insert(0, str(REPO))
    from tfrecords.demo_data import DemoOptions, write_demo_data
    from tfrecords.ingest import ingest
    from tfrecords.options import IngestOptions

    print("| image size | train images | graph s | eager s | graph/eager (wall) | graph/eager (CPU) |")
    print("|---:|---:|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as scratch:
        for pair in args.sizes:
            image_size, products = map(int, pair.split(":"))
            data_dir = Path(scratch) / pair.replace(":", "-")
            write_demo_data(data_dir / "images", DemoOptions(products=products, shots=4, categories=3, image_size=96, seed=0))
            manifest = ingest(data_dir / "images", data_dir / "data", IngestOptions(val_fraction=0.2, test_fraction=0.2, workers=1),
                              progress=False)
            best = {True: None, False: None}
            for _ in range(args.repeats):
                for eager in (False, True):  # interleaved: noise hits both alike
                    timing = measure(data_dir / "data", image_size, eager, args.epochs)
                    if best[eager] is None or timing["wall"] < best[eager]["wall"]:
                        best[eager] = timing
            graph, eager = best[False], best[True]
            print(f"| {image_size} | {manifest.counts['train']} | {graph['wall']:.1f} | {eager['wall']:.1f} | "
                  f"{graph['wall'] / eager['wall']:.2f} | {graph['cpu'] / eager['cpu']:.2f} |", flush=True)


if __name__ == "__main__":
    main()
