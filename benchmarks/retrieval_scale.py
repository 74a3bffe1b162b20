"""Exact top-10 search of 10,000 queries in 1,000,000 index vectors: ours against faiss' IndexFlatIP.

Data: benchmarks/retrieval.py's make_data (each embedding its product's random
centre plus noise), by default 10,000 queries x 1,000,000 index items (200,000
products x 5) x 512 dims float32: a 1.9 GiB index, where the full similarity
matrix would take 37 GiB.

Variants, each in a fresh subprocess that makes the data, then runs the call
once, timed (wall and CPU seconds, all threads) and measured as retrieval.py
measures memory: the peak of NumPy's allocations (tracemalloc; it does not see
faiss' own) and the growth of peak resident memory over the call (VmHWM; it sees
everything):
  (a) nearest_neighbours, k=10: the submission's search;
  (b) retrieval_scores: the same search, scored (all its scores);
  (c) faiss IndexFlatIP, k=10, when faiss-cpu is installed (pip install
      '.[faiss]'): the index normalised and added 100,000 rows at a time (faiss
      keeps its own copy of it), the queries normalised, then searched. Its
      build is timed apart too, since an index is built once and searched often.
faiss runs on as many threads as NumPy's BLAS; both counts are printed.

Agreement, checked here on the same data: the similarities of each query's top
10 are recomputed in float64 for (a) and (c); rank by rank they must agree
within 1e-5, so that any difference in positions is a tie within float32
rounding. MAR@10 from (c)'s neighbours is compared with (b)'s. The last lines
are the ratios ours/faiss.

One run of a variant takes minutes at full size on 2 cores, so each is measured
once by default (--repeats n: best of n, the variants interleaved).

    .venv/bin/python benchmarks/retrieval_scale.py [--queries 10000 --index 1000000 --dim 512]
"""

import argparse
import ctypes
import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from retrieval import MIB, make_data, memory_status_bytes  # benchmarks/retrieval.py, beside this file

from phases.metrics import TOP_K, nearest_neighbours, retrieval_scores

FAISS_ADD_ROWS = 100_000  # the index is normalised and added to faiss this many rows at a time
TIE_TOLERANCE = 1e-5  # similarities closer than this are a tie within float32 rounding
VARIANTS = ("(a) nearest_neighbours", "(b) retrieval_scores", "(c) faiss IndexFlatIP")


def blas_threads() -> int | None:
    """Threads of the OpenBLAS loaded in this process (None if none is), asked of the library itself.

    Call it before importing faiss, which loads an OpenBLAS of its own."""
    libraries = {line.split()[-1] for line in Path("/proc/self/maps").read_text().splitlines() if "openblas" in line}
    for library in map(ctypes.CDLL, libraries):
        for symbol in ("scipy_openblas_get_num_threads64_", "openblas_get_num_threads64_", "openblas_get_num_threads"):
            if hasattr(library, symbol):
                return getattr(library, symbol)()
    return None


def faiss_search(faiss, queries, index, threads: int) -> dict:
    """IndexFlatIP over the L2-normalised index, searched with the normalised queries: positions, similarities."""
    faiss.omp_set_num_threads(threads)
    start = time.perf_counter()
    flat = faiss.IndexFlatIP(index.shape[1])
    for first in range(0, len(index), FAISS_ADD_ROWS):
        rows = np.array(index[first : first + FAISS_ADD_ROWS])
        faiss.normalize_L2(rows)
        flat.add(rows)
    build_seconds = time.perf_counter() - start
    unit_queries = np.array(queries)
    faiss.normalize_L2(unit_queries)
    similarities, positions = flat.search(unit_queries, TOP_K)
    return {
        "positions": positions,
        "similarities": similarities,
        "build_seconds": build_seconds,
        "faiss_threads": faiss.omp_get_max_threads(),
    }


def run_variant(name: str, data: tuple, block_bytes: int | None, threads: int) -> dict:
    """One call of variant `name`: its arrays (positions, similarities or MAR@10) and side figures."""
    queries, _, index, _ = data
    block = {} if block_bytes is None else {"max_block_bytes": block_bytes}
    if name == VARIANTS[0]:
        positions, similarities = nearest_neighbours(queries, index, TOP_K, **block)
        return {"positions": positions, "similarities": similarities}
    if name == VARIANTS[1]:
        return {"mar_at_10": retrieval_scores(*data, **block)["mar_at_10"]}
    return faiss_search(importlib.import_module("faiss"), queries, index, threads)


def measure(name: str, args: argparse.Namespace) -> dict:
    """Run one variant once on fresh data: seconds, CPU seconds, peak traced and peak-RSS growth in bytes."""
    threads = blas_threads()
    if name == VARIANTS[2]:
        importlib.import_module("faiss")  # imported before the timing
    data = make_data(args)
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS (see retrieval.py)
    before = memory_status_bytes("VmRSS")
    tracemalloc.start()
    start, start_cpu = time.perf_counter(), time.process_time()
    result = run_variant(name, data, args.block_mib and args.block_mib * MIB, threads or os.cpu_count())
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - start_cpu
    traced_peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    rss_growth = memory_status_bytes("VmHWM") - before
    arrays = {key: result.pop(key) for key in ("positions", "similarities") if key in result}
    np.savez(args.result_file, **arrays)
    return result | {
        "seconds": seconds,
        "cpu_seconds": cpu_seconds,
        "traced_peak": traced_peak,
        "rss_growth": rss_growth,
        "blas_threads": threads,
    }


def measure_in_subprocess(name: str, argv: list[str], result_file: Path) -> dict:
    """measure(name) in a fresh Python process; its arrays are loaded from result_file."""
    command = [sys.executable, __file__, *argv, "--measure", name, "--result-file", str(result_file)]
    completed = subprocess.run(command, check=True, capture_output=True, text=True)
    with np.load(result_file) as arrays:
        return json.loads(completed.stdout.splitlines()[-1]) | dict(arrays)


def float64_similarities(queries, index, positions) -> np.ndarray:
    """[n_query, k] cosine similarities of each query with the index rows listed for it, in float64."""
    unit_queries = queries / np.linalg.norm(queries.astype(np.float64), axis=1, keepdims=True)
    similarities = np.empty(positions.shape)
    for rank in range(positions.shape[1]):
        rows = index[positions[:, rank]].astype(np.float64)
        similarities[:, rank] = np.einsum("ij,ij->i", unit_queries, rows) / np.linalg.norm(rows, axis=1)
    return similarities


def mar_at_10(positions, query_labels, index_labels) -> float:
    """MAR@10 of ranked neighbours [n_query, >= 10], as retrieval_scores defines it (every query has a relevant item)."""
    labels, counts = np.unique(index_labels, return_counts=True)
    relevant_counts = counts[np.searchsorted(labels, query_labels)]
    hits = (index_labels[positions[:, :TOP_K]] == query_labels[:, None]).sum(axis=1)
    return float(np.mean(hits / np.minimum(relevant_counts, TOP_K)))


def agreement(results: dict, args: argparse.Namespace) -> bool:
    """Print how (a) and (c) agree on positions and similarities and (b) and (c) on MAR@10; True if they do."""
    queries, query_labels, index, index_labels = make_data(args)
    ours, theirs = results[VARIANTS[0]], results[VARIANTS[2]]
    exact_ours = float64_similarities(queries, index, ours["positions"])
    exact_theirs = float64_similarities(queries, index, theirs["positions"])
    reported_error = max(
        np.abs(ours["similarities"] - exact_ours).max(), np.abs(theirs["similarities"] - exact_theirs).max()
    )
    rank_gap = np.abs(exact_ours - exact_theirs).max()
    differing = ours["positions"] != theirs["positions"]
    ties_only = rank_gap <= TIE_TOLERANCE
    print(
        f"\npositions of (a) and (c): {differing.sum()} of {differing.size} differ, in {differing.any(axis=1).sum()} "
        f"queries; largest similarity gap at one rank {rank_gap:.1e} (float64), so the differences are "
        f"{'ties within ' if ties_only else 'NOT all ties within '}{TIE_TOLERANCE:.0e}"
    )
    print(f"reported similarities of (a) and (c) are within {reported_error:.1e} of float64")
    scores = {
        "(b) retrieval_scores": results[VARIANTS[1]]["mar_at_10"],
        "(a)'s neighbours": mar_at_10(ours["positions"], query_labels, index_labels),
        "(c)'s neighbours": mar_at_10(theirs["positions"], query_labels, index_labels),
    }
    difference = max(scores.values()) - min(scores.values())
    print(
        "mar_at_10: "
        + ", ".join(f"{source} {value:.6f}" for source, value in scores.items())
        + f"; they differ by {difference:.1e} ({'agree' if difference < 1e-12 else 'DISAGREE'})"
    )
    return ties_only and difference < 1e-12


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--queries", type=int, default=10_000)
    parser.add_argument("--index", type=int, default=1_000_000)
    parser.add_argument("--dim", type=int, default=512)
    parser.add_argument("--shots", type=int, default=5, help="index embeddings per product")
    parser.add_argument("--noise", type=float, default=2.0, help="noise scale against unit-variance centres")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--block-mib", type=int, help="max_block_bytes of (a) and (b) in MiB (default: theirs)")
    parser.add_argument("--measure", choices=VARIANTS, help=argparse.SUPPRESS)  # a subprocess's job
    parser.add_argument("--result-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args)))
        return

    variants = VARIANTS if importlib.util.find_spec("faiss") else VARIANTS[:2]
    print(
        f"{args.queries} queries x {args.index} index items x {args.dim} dims float32, "
        f"{args.index // args.shots} products x {args.shots}; index {args.index * args.dim * 4 / MIB:.0f} MiB, "
        f"full similarity matrix {args.queries * args.index * 4 / MIB:.0f} MiB; "
        f"block {f'{args.block_mib} MiB' if args.block_mib else 'default'}; load average {os.getloadavg()[0]:.1f}"
    )
    if len(variants) < len(VARIANTS):
        print("faiss is not installed (pip install '.[faiss]'): (c) and the agreement checks are skipped")
    argv = [f"--{key.replace('_', '-')}={getattr(args, key)}" for key in ("queries", "index", "dim", "shots", "noise")]
    argv += [f"--block-mib={args.block_mib}"] if args.block_mib else []
    runs: dict[str, list[dict]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory() as scratch:
        for _ in range(args.repeats):
            for name in variants:
                runs[name].append(measure_in_subprocess(name, argv, Path(scratch) / "result.npz"))
    figures = ("seconds", "cpu_seconds", "traced_peak", "rss_growth", "build_seconds")
    best = {
        name: {key: min(run[key] for run in runs[name]) for key in figures if key in runs[name][0]} for name in runs
    }
    results = {name: runs[name][-1] for name in variants}

    threads = f"NumPy's BLAS threads {results[VARIANTS[0]]['blas_threads']}"
    if len(variants) == len(VARIANTS):
        threads += f", faiss threads {results[VARIANTS[2]]['faiss_threads']}"
    print(f"load average at the end {os.getloadavg()[0]:.1f}; {threads}")
    print(f"\n{'variant':<26}{'seconds':>9}{'CPU s':>9}{'traced peak MiB':>17}{'RSS growth MiB':>16}")
    for name in variants:
        figures = best[name]
        print(
            f"{name:<26}{figures['seconds']:>9.1f}{figures['cpu_seconds']:>9.1f}"
            f"{figures['traced_peak'] / MIB:>17.0f}{figures['rss_growth'] / MIB:>16.0f}"
        )
    if len(variants) < len(VARIANTS):
        return
    faiss_figures = best[VARIANTS[2]]
    print(f"faiss build (normalise + add) {faiss_figures['build_seconds']:.1f} s of its {faiss_figures['seconds']:.1f}")
    agreed = agreement(results, args)
    for key, label in (("seconds", "time"), ("cpu_seconds", "CPU time"), ("rss_growth", "RSS growth")):
        ratios = ", ".join(f"{name[:3]} {best[name][key] / faiss_figures[key]:.2f}" for name in VARIANTS[:2])
        print(f"{label} ours/faiss: {ratios}")
    if not agreed:
        sys.exit("the exact searches disagree")


if __name__ == "__main__":
    main()
