"""Each kind of phases/retrieval/vector_index.py at eProduct scale: build, memory, size, latency, recall@10.

Data (catalog_data): benchmarks/retrieval.py's make_data (each embedding its product's random centre
plus --noise times unit noise) with --category-scale times a random centre of the product's category
added (1,000 categories), L2-normalised: by default 1,100,000 index vectors (220,000 products x 5,
eProduct's index size) x 256 dims float32 (1.05 GiB) and 10,000 queries drawn alike. A product's
images then have a cosine of ~0.76, a category's ~0.53, others ~0. Why categories: with product
centres alone (--categories 0), every vector but a product's own ~5 is about equally far, so a graph
or k-means cells have nothing to follow: at 1.1M x 256 (noise 1), hnsw recalled 0.10 of the exact
top 10 and ivf_flat 0.20. Real embeddings have structure at several scales; neither set is a real
catalog, whose build stores measure_recall on its own vectors for that reason. Each kind's options
are VectorIndex's defaults unless --options says otherwise; the table shows them as built (nlist as
chosen from n).

Each kind runs in a fresh subprocess, which makes the data, then, with the peak-RSS mark reset
(VmHWM, as retrieval_scale.py does: it sees faiss' C++ allocations, which tracemalloc does not):
  build: VectorIndex.build, wall and CPU seconds (all threads); "build peak" is the growth of peak
      RSS over it, "held" the growth of RSS once built (what the index keeps; `exact` keeps a copy);
  size on disk: the files VectorIndex.save writes;
  single queries: search(one query, 10), one warm-up call, then up to --single-queries calls or
      --single-seconds, whichever ends first (the count is shown): p50 and p99 latency;
  batch: search(all --queries queries, 10), timed: queries per second;
  recall@10: of the batch's positions against the `exact` kind's (run first, in its own subprocess);
      MAR@10, the eProduct metric, of the batch's positions (set beside the exact kind's); "self-recall"
      is measure_recall on --recall-sample index rows (what a catalog's manifest stores).
faiss runs on its default OpenMP threads (one per core) unless --threads says otherwise; `exact`
on NumPy's BLAS threads. Other processes on the machine slow every figure: the load average at
the start and the end are printed.

    .venv/bin/python benchmarks/vector_index_scale.py [--index 1100000 --queries 10000 --dim 256]
        [--kinds exact hnsw ...] [--options '{"ivf_flat": {"nprobe": 64}}'] [--json results.json]
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from retrieval import MIB, NOISE_ROWS, make_data, memory_status_bytes  # benchmarks/, beside this file
from retrieval_scale import blas_threads, mar_at_10

from phases.exact_search import inverse_norms
from phases.metrics import TOP_K
from phases.retrieval.vector_index import OPTIONS, VectorIndex, measure_recall, recall_at, set_faiss_threads


def catalog_data(args: argparse.Namespace) -> tuple[np.ndarray, np.ndarray]:
    """queries [n_query, dim] and index [n_index, dim] float32 unit vectors: make_data's (a product's centre
    plus noise) with --category-scale times a random centre of the product's category added (product p is
    in category p % --categories; none when 0), then L2-normalised, NOISE_ROWS rows at a time."""
    queries, query_labels, index, index_labels = make_data(args)
    category_centres = np.random.default_rng(1).standard_normal((max(args.categories, 1), args.dim), dtype=np.float32)
    for vectors, labels in ((queries, query_labels), (index, index_labels)):
        for start in range(0, len(vectors), NOISE_ROWS):
            block = vectors[start : start + NOISE_ROWS]
            if args.categories:
                block += args.category_scale * category_centres[labels[start : start + NOISE_ROWS] % args.categories]
            block *= inverse_norms("benchmark", block)[:, None]
    return queries, index


def timed(call):
    """call()'s result, its wall seconds and its CPU seconds (all threads)."""
    start, start_cpu = time.perf_counter(), time.process_time()
    result = call()
    return result, time.perf_counter() - start, time.process_time() - start_cpu


def measure(kind: str, args: argparse.Namespace) -> dict:
    """Build and search kind `kind` once on fresh data; its figures, its batch positions saved to args.result_file."""
    threads = blas_threads()  # asked before faiss loads an OpenBLAS of its own
    if kind != "exact":
        set_faiss_threads(args.threads)
    queries, index_vectors = catalog_data(args)
    Path("/proc/self/clear_refs").write_text("5")  # reset VmHWM to the current RSS (see retrieval.py)
    before = memory_status_bytes("VmRSS")
    options = json.loads(args.options or "{}").get(kind)
    index, build_seconds, build_cpu_seconds = timed(lambda: VectorIndex.build(index_vectors, kind, options))
    figures = {
        "options": index.description["options"],
        "build_seconds": build_seconds,
        "build_cpu_seconds": build_cpu_seconds,
        "build_peak_mib": (memory_status_bytes("VmHWM") - before) / MIB,
        "held_mib": (memory_status_bytes("VmRSS") - before) / MIB,
        "blas_threads": threads,
    }
    with tempfile.TemporaryDirectory() as folder:
        figures["disk_mib"] = sum((Path(folder) / name).stat().st_size for name in index.save(folder)) / MIB
    index.search(queries[:1], TOP_K)  # warm-up
    latencies, deadline = [], time.perf_counter() + args.single_seconds
    for row in range(min(args.single_queries, len(queries))):
        latencies.append(timed(lambda row=row: index.search(queries[row : row + 1], TOP_K))[1])
        if time.perf_counter() > deadline:
            break
    (positions, _), batch_seconds, batch_cpu_seconds = timed(lambda: index.search(queries, TOP_K))
    np.save(args.result_file, positions)
    figures |= {
        "single_queries": len(latencies),
        "p50_ms": float(np.percentile(latencies, 50)) * 1e3,
        "p99_ms": float(np.percentile(latencies, 99)) * 1e3,
        "batch_seconds": batch_seconds,
        "batch_cpu_seconds": batch_cpu_seconds,
        "queries_per_second": len(queries) / batch_seconds,
    }
    if kind != "exact" and args.recall_sample:
        figures["self_recall"] = measure_recall(index, index_vectors, args.recall_sample)
    return figures


def measure_in_subprocess(kind: str, argv: list[str], result_file: Path) -> tuple[dict, np.ndarray]:
    """measure(kind) in a fresh Python process, so that no kind inherits another's heap: figures, positions."""
    command = [sys.executable, __file__, *argv, "--measure", kind, "--result-file", str(result_file)]
    completed = subprocess.run(command, check=True, capture_output=True, text=True)
    return json.loads(completed.stdout.splitlines()[-1]), np.load(result_file)


def table(results: dict[str, dict], args: argparse.Namespace) -> str:
    """The results as a markdown table."""
    lines = [
        f"| kind | options | build s (CPU s) | build peak +MiB | held +MiB | disk MiB | single query p50 / p99 ms (n) "
        f"| batch of {args.queries}: s (CPU s), queries/s | recall@10 | MAR@10 "
        f"| self-recall@10 ({args.recall_sample} rows) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for kind, figures in results.items():
        options = ", ".join(f"{key} {value}" for key, value in figures["options"].items()) or "-"
        self_recall = f"{figures['self_recall']:.3f}" if "self_recall" in figures else "-"
        lines.append(
            f"| {kind} | {options} | {figures['build_seconds']:.1f} ({figures['build_cpu_seconds']:.1f}) "
            f"| {figures['build_peak_mib']:.0f} | {figures['held_mib']:.0f} | {figures['disk_mib']:.0f} "
            f"| {figures['p50_ms']:.2f} / {figures['p99_ms']:.2f} ({figures['single_queries']}) "
            f"| {figures['batch_seconds']:.1f} ({figures['batch_cpu_seconds']:.1f}), "
            f"{figures['queries_per_second']:.0f} "
            f"| {figures['recall_at_10']:.3f} | {figures['mar_at_10']:.3f} | {self_recall} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--index", type=int, default=1_100_000)
    parser.add_argument("--queries", type=int, default=10_000, help="the batch searched at once, and recall's queries")
    parser.add_argument("--dim", type=int, default=256)
    parser.add_argument("--shots", type=int, default=5, help="index embeddings per product")
    parser.add_argument("--noise", type=float, default=1.0, help="noise scale against unit-variance centres")
    parser.add_argument("--categories", type=int, default=1000, help="product categories; 0: none (make_data's)")
    parser.add_argument("--category-scale", type=float, default=1.5, help="category centres' scale against products'")
    parser.add_argument("--single-queries", type=int, default=1000, help="queries searched one at a time")
    parser.add_argument("--single-seconds", type=float, default=60, help="at most this long on single queries")
    parser.add_argument("--recall-sample", type=int, default=1000, help="index rows measure_recall queries; 0: none")
    parser.add_argument("--threads", type=int, help="faiss' OpenMP threads (default: faiss', one per core)")
    parser.add_argument("--kinds", nargs="+", choices=list(OPTIONS), default=list(OPTIONS))
    parser.add_argument("--options", help='JSON {kind: {option: value}} over the defaults: \'{"hnsw": {"m": 16}}\'')
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--measure", choices=list(OPTIONS), help=argparse.SUPPRESS)  # a subprocess's job
    parser.add_argument("--result-file", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps(measure(args.measure, args)))
        return

    print(
        f"{args.queries} queries x {args.index} index vectors ({args.index // args.shots} products x {args.shots}) x "
        f"{args.dim} dims float32, noise {args.noise}, {args.categories} categories at scale {args.category_scale}; "
        f"index {args.index * args.dim * 4 / MIB:.0f} MiB; "
        f"load average at the start {os.getloadavg()[0]:.1f} ({os.cpu_count()} cores)", flush=True
    )
    keys = ("index", "queries", "dim", "shots", "noise", "categories", "category_scale", "single_queries",
            "single_seconds", "recall_sample", "threads", "options")
    argv = [f"--{key.replace('_', '-')}={getattr(args, key)}" for key in keys if getattr(args, key) is not None]
    query_labels, index_labels = make_data(args)[1::2]  # MAR@10's labels (the vectors are dropped at once)
    results, exact_positions = {}, None
    with tempfile.TemporaryDirectory() as scratch:
        for kind in ["exact", *(kind for kind in args.kinds if kind != "exact")]:  # exact first: recall's reference
            figures, positions = measure_in_subprocess(kind, argv, Path(scratch) / "positions.npy")
            exact_positions = positions if exact_positions is None else exact_positions
            scores = {"recall_at_10": recall_at(exact_positions, positions),
                      "mar_at_10": mar_at_10(positions, query_labels, index_labels)}
            results[kind] = figures | scores
            print(f"  {kind} done: build {figures['build_seconds']:.0f} s, batch {figures['batch_seconds']:.0f} s",
                  flush=True)
    print(f"load average at the end {os.getloadavg()[0]:.1f}; NumPy's BLAS threads {results['exact']['blas_threads']}, "
          f"faiss threads {args.threads or 'default'}\n")
    print(table(results, args))
    if args.json:
        args.json.write_text(json.dumps({"arguments": vars(args) | {"json": str(args.json)}, "results": results},
                                        indent=1))


if __name__ == "__main__":
    main()
