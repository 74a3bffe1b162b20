"""How retrieval_scores compares with a plain full-matrix search, in time and peak memory.

Data: --index / --shots products with --shots index embeddings each (default
20,000 x 5 = 100,000) and --queries queries (2,000) drawn from those products,
all --dim (512) float32; an embedding is its product's random centre plus
Gaussian noise of scale --noise, so that rankings are neither perfect nor random.

Variants:
  (a) full matrix: normalise both sides, the whole [queries x index] similarity
      matrix at once, np.argsort of each row for the top 10, MAR@10 only;
  (b) retrieval_scores with its default memory budget (all its scores).

Time: best of --repeats, wall and CPU (all threads) seconds, the variants
interleaved in each repeat so machine noise hits both alike, in this process.
Peak memory: each variant once more in a fresh subprocess, which makes the same
data and reports (1) the peak of NumPy's allocations during the call
(tracemalloc) and (2) the growth of the process's peak resident memory over the
call (VmHWM, reset just before the call; it also sees the BLAS buffers). The two
MAR@10 must agree. The last lines are the ratios; the targets are (b) no slower
than (a) and (b)'s peak well under the similarity matrix of (a).

    .venv/bin/python benchmarks/retrieval.py [--queries 2000 --index 100000 --dim 512]
"""

import argparse
import json
import subprocess
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from phases.metrics import retrieval_scores  # noqa: E402

MIB = 2**20
NOISE_ROWS = 10_000  # noise is added this many rows at a time, so making the data leaves no large peak


def make_data(args: argparse.Namespace):
    """queries [n_query, dim], query labels [n_query], index [n_index, dim], index labels [n_index]."""
    rng = np.random.default_rng(0)
    products = args.index // args.shots
    centres = rng.standard_normal((products, args.dim), dtype=np.float32)
    index_labels = np.repeat(np.arange(products), args.shots)
    query_labels = rng.integers(0, products, args.queries)
    data = []
    for labels in (query_labels, index_labels):
        embeddings = centres[labels]
        for start in range(0, len(embeddings), NOISE_ROWS):
            block = embeddings[start : start + NOISE_ROWS]
            block += args.noise * rng.standard_normal(block.shape, dtype=np.float32)
        data += [embeddings, labels]
    return tuple(data)


def full_matrix_mar_at_10(queries, query_labels, index, index_labels) -> float:
    """MAR@10 the plain way: one [n_query, n_index] similarity matrix, then a full argsort per row.

    Every query here has relevant items, so none is left out."""
    unit_queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    unit_index = index / np.linalg.norm(index, axis=1, keepdims=True)
    similarities = unit_queries @ unit_index.T
    labels, counts = np.unique(index_labels, return_counts=True)
    recalls = []
    for row, label in enumerate(query_labels):
        relevant_count = counts[np.searchsorted(labels, label)]
        top_10 = np.argsort(-similarities[row])[:10]
        recalls.append(np.sum(index_labels[top_10] == label) / min(10, relevant_count))
    return float(np.mean(recalls))


VARIANTS = {
    "(a) full matrix + argsort": full_matrix_mar_at_10,
    "(b) retrieval_scores": lambda *data: retrieval_scores(*data)["mar_at_10"],
}


def memory_status_bytes(field: str) -> int:
    """A field of /proc/self/status in bytes (Linux): VmRSS (resident now), VmHWM (its peak)."""
    line = next(line for line in Path("/proc/self/status").read_text().splitlines() if line.startswith(field + ":"))
    return int(line.split()[1]) * 1024


def measure_memory(name: str, args: argparse.Namespace) -> dict:
    """Run one variant once on fresh data; its peak traced allocation and peak-RSS growth, in bytes."""
    data = make_data(args)
    # Reset the peak-RSS mark to the current RSS. ru_maxrss would not do: Linux carries
    # it over from the parent across fork and exec, so the child would report our peak.
    Path("/proc/self/clear_refs").write_text("5")
    before = memory_status_bytes("VmRSS")
    tracemalloc.start()
    mar_at_10 = VARIANTS[name](*data)
    traced_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    rss_growth = memory_status_bytes("VmHWM") - before
    return {"traced_peak": traced_peak, "rss_growth": rss_growth, "mar_at_10": mar_at_10}


def memory_in_subprocess(name: str, argv: list[str]) -> dict:
    """measure_memory(name) in a fresh Python process, so that neither variant inherits the other's heap."""
    result = subprocess.run(
        [sys.executable, __file__, *argv, "--memory-of", name], check=True, capture_output=True, text=True
    )
    return json.loads(result.stdout.splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--index", type=int, default=100_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--shots", type=int, default=5, help="index embeddings per product")
    parser.add_argument("--noise", type=float, default=2.0, help="noise scale against unit-variance centres")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--memory-of", choices=list(VARIANTS), help=argparse.SUPPRESS)  # the subprocess's job
    args = parser.parse_args()
    if args.memory_of:
        print(json.dumps(measure_memory(args.memory_of, args)))
        return

    data = make_data(args)
    matrix_bytes = args.queries * args.index * 4
    print(
        f"{args.queries} queries x {args.index} index items x {args.dim} dims float32, "
        f"{args.index // args.shots} products x {args.shots}; full similarity matrix {matrix_bytes / MIB:.0f} MiB"
    )
    best = {name: float("inf") for name in VARIANTS}
    best_cpu = dict(best)
    mar_at_10 = {}
    for _ in range(args.repeats):
        for name, run in VARIANTS.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            mar_at_10[name] = run(*data)
            best[name] = min(best[name], time.perf_counter() - start)
            best_cpu[name] = min(best_cpu[name], time.process_time() - start_cpu)
    size_argv = [f"--{key}={getattr(args, key)}" for key in ("queries", "index", "dim", "shots", "noise")]
    memory = {name: memory_in_subprocess(name, size_argv) for name in VARIANTS}

    print(f"\n{'variant':<28}{'seconds':>9}{'CPU s':>8}{'traced peak MiB':>17}{'RSS growth MiB':>16}{'mar_at_10':>11}")
    for name in VARIANTS:
        assert memory[name]["mar_at_10"] == mar_at_10[name], (name, memory[name], mar_at_10[name])
        traced, rss = memory[name]["traced_peak"] / MIB, memory[name]["rss_growth"] / MIB
        print(
            f"{name:<28}{best[name]:>9.2f}{best_cpu[name]:>8.2f}{traced:>17.0f}{rss:>16.0f}{mar_at_10[name]:>11.4f}"
        )
    baseline, ours = VARIANTS
    difference = abs(mar_at_10[baseline] - mar_at_10[ours])
    print(f"\nmar_at_10 of (a) and (b) differ by {difference:.1e} ({'agree' if difference < 1e-12 else 'DISAGREE'})")
    print(f"CPU time (b)/(a) = {best_cpu[ours] / best_cpu[baseline]:.2f}")
    print(f"time (b)/(a) = {best[ours] / best[baseline]:.2f} (target <= 1)")
    for key, label in (("traced_peak", "traced peak"), ("rss_growth", "RSS growth")):
        print(f"{label} (b)/(a) = {memory[ours][key] / memory[baseline][key]:.2f}")
    matrix_share = memory[ours]["traced_peak"] / matrix_bytes
    print(f"traced peak (b) / full similarity matrix = {matrix_share:.2f} (target well under 1)")

if __name__ == "__main__":
    main()
