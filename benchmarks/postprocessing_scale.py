"""What each retrieval post-processing step costs beside the plain exact search, at 10,000 x 1,000,000.

Data: benchmarks/retrieval.py's make_data (each embedding its product's random centre
plus noise), L2-normalised: by default 10,000 queries x 1,000,000 index items (200,000
products x 5) x 256 dims float32, a 0.95 GiB index. The whitening is learned on the
index's first --train-images rows (its cost does not depend on which rows).

Variants, each in a fresh subprocess that makes the data (and, for re-ranking, the
exact search's top --candidates, untimed), then runs the call once, timed (wall and
CPU seconds, all threads) and measured as retrieval_scale.py measures memory: the peak
of NumPy's allocations (tracemalloc) and the growth of peak resident memory (VmHWM):
  (a) nearest_neighbours, k=10: the plain search, the cost the others are set beside;
  (b) whitening: Whitening.fit on the train rows (all dimensions), then apply to the
      queries and the index;
  (c) database augmentation (DBA), --neighbours, alpha 3: a search of the index against
      itself. With --augment-rows N, only the first N rows are augmented (the same
      search and averaging, expansion._neighbour_means, as augment_database does for
      them), and the time of all rows is extrapolated linearly;
  (d) alpha query expansion of the queries, --neighbours, alpha 3;
  (e) k-reciprocal re-ranking (k1 20, k2 6, lambda 0.3) of each query's top --candidates.
The last column is each variant's time over (a)'s. A full run takes hours on 2 cores
(DBA alone is a 1M x 1M search): the flags make it smaller.

    .venv/bin/python benchmarks/postprocessing_scale.py [--queries 10000 --index 1000000 --dim 256]
        [--augment-rows 20000] [--only a b ...]
"""

import argparse
import json
import os
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from retrieval import MIB, make_data, memory_status_bytes  # benchmarks/retrieval.py, beside this file
from retrieval_scale import blas_threads

from phases.exact_search import DEFAULT_BLOCK_BYTES, inverse_norms
from phases.metrics import TOP_K, nearest_neighbours
from phases.retrieval import Whitening, expand_queries, rerank
from phases.retrieval.expansion import _neighbour_means

ALPHA = 3.0  # the paper's, for (c) and (d)
RERANKING = {"k1": 20, "k2": 6, "lambda_value": 0.3}  # the paper's
VARIANTS = {
    "a": "(a) plain search k=10",
    "b": "(b) whitening fit+apply",
    "c": "(c) DBA",
    "d": "(d) alpha-QE",
    "e": "(e) re-ranking",
}


def unit_data(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray]:
    """queries [n_query, dim] and index [n_index, dim], float32 unit vectors, normalised in place."""
    queries, _, index, _ = make_data(args)
    for vectors in (queries, index):
        for start in range(0, len(vectors), 100_000):
            block = vectors[start : start + 100_000]
            block *= inverse_norms("benchmark", block)[:, None]
    return queries, index


def prepared_call(key: str, args: argparse.Namespace):
    """Variant `key` as a call without arguments, and what it covers (a note); its inputs made untimed."""
    queries, index = unit_data(args)
    if key == "a":
        return lambda: nearest_neighbours(queries, index, TOP_K), ""
    if key == "b":
        train = index[: args.train_images]
        return lambda: [Whitening.fit(train).apply(vectors) for vectors in (queries, index)], ""
    if key == "c":
        rows = min(args.augment_rows or len(index), len(index))
        return (
            lambda: _neighbour_means(index[:rows], index, args.neighbours, ALPHA, DEFAULT_BLOCK_BYTES, own_weight=0),
            f"{rows} of {len(index)} rows" if rows < len(index) else "",
        )
    if key == "d":
        return lambda: expand_queries(queries, index, args.neighbours, ALPHA), ""
    candidates, _ = nearest_neighbours(queries, index, args.candidates)
    return lambda: rerank(queries, index, candidates, **RERANKING), f"{args.candidates} candidates"


def measure(key: str, args: argparse.Namespace) -> dict:
    """Run variant `key` once on fresh data: seconds, CPU seconds, peak traced and peak-RSS growth in bytes."""
    call, note = prepared_call(key, args)
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS (see retrieval.py)
    before = memory_status_bytes("VmRSS")
    tracemalloc.start()
    start, start_cpu = time.perf_counter(), time.process_time()
    call()
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
    traced_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    rss_growth = memory_status_bytes("VmHWM") - before
    return {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "traced_peak": traced_peak,
        "rss_growth": rss_growth,
        "note": note,
        "blas_threads": blas_threads(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--index", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--shots", type=int, default=5, help="index embeddings per product")
    parser.add_argument("--noise", type=float, default=2.0, help="noise scale against unit-variance centres")
    parser.add_argument("--train-images", type=int, default=10_000, help="rows the whitening is learned on")
    parser.add_argument("--neighbours", type=int, default=5, help="k of DBA and alpha-QE")
    parser.add_argument("--candidates", type=int, default=100, help="items re-ranked per query")
    parser.add_argument("--augment-rows", type=int, help="DBA of only the first rows, its time extrapolated")
    parser.add_argument("--only", nargs="+", choices=list(VARIANTS), default=list(VARIANTS))
    parser.add_argument("--measure", choices=list(VARIANTS), help=argparse.SUPPRESS)  # a subprocess's job
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args)))
        return

    print(
        f"{args.queries} queries x {args.index} index items x {args.dim} dims float32 unit vectors; index "
        f"{args.index * args.dim * 4 / MIB:.0f} MiB; load average {os.getloadavg()[0]:.1f}"
    )
    sizes = {key: value for key, value in vars(args).items() if key not in ("only", "measure") and value is not None}
    argv = [f"--{key.replace('_', '-')}={value}" for key, value in sizes.items()]
    results = {}
    for key in ["a", *(key for key in args.only if key != "a")]:  # (a) always: the others are set beside it
        command = [sys.executable, __file__, *argv, "--measure", key]
        completed = subprocess.run(command, check=True, capture_output=True, text=True)
        results[key] = json.loads(completed.stdout.splitlines()[-1])
        print(f"  {VARIANTS[key]} done in {results[key]['seconds']:.1f} s", flush=True)
    print(f"load average at the end {os.getloadavg()[0]:.1f}; NumPy's BLAS threads {results['a']['blas_threads']}")
    print(f"\n{'variant':<26}{'seconds':>9}{'CPU s':>9}{'traced peak MiB':>17}{'RSS growth MiB':>16}{'x (a)':>8}  note")
    for key, result in results.items():
        seconds, note = result["seconds"], result["note"]
        if key == "c" and note:  # DBA of a prefix: all rows cost index / rows as much
            all_rows = seconds * args.index / min(args.augment_rows, args.index)
            note += f"; all rows ~{all_rows:.0f} s, {all_rows / results['a']['seconds']:.0f} x (a)"
        print(
            f"{VARIANTS[key]:<26}{seconds:>9.1f}{result['cpu_seconds']:>9.1f}{result['traced_peak'] / MIB:>17.0f}"
            f"{result['rss_growth'] / MIB:>16.0f}{seconds / results['a']['seconds']:>8.2f}  {note}"
        )


if __name__ == "__main__":
    main()
