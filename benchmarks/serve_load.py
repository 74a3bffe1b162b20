"""How does `pvs serve` hold up? Throughput, latency and memory at 1, 8 and 32 concurrent clients.

`pvs serve` is started on 127.0.0.1 (a free port) against --index, or against an index of
the demo run's images built here (`pvs index build --run runs/demo runs/demo/images`, about
a minute; `make demo` makes the run; without it, the demo is generated and trained here, as
benchmarks/quality.py does: about four minutes more). Then per level, --clients threads
(each with its own keep-alive httpx client) search for --seconds: each request is a catalog
image (JPEG or PNG, as the catalog has it), whose first result must be that image, or, one
in ten (--bad-share), a malformed or oversized upload that must be refused with its 4xx:
text (415), a truncated JPEG (422), a body over --max-upload-bytes (413) or a PNG over the
pixel limit (413, ~100 KB that decode to 100 megapixels). Latency is over the good
requests, from the client (the request written to the answer read). The server's resident
memory (VmRSS, and its peak VmHWM) is read at start and after each level; its /health
counts give the mean batch the worker embedded.

The clients share the machine's cores with the server (2 here): the figures are the
service's on this machine with its load generator beside it, not the model's alone.

    .venv/bin/python benchmarks/serve_load.py [--index INDEX | --run RUN_DIR] [--clients 1 8 32]
        [--seconds 20] [--bad-share 0.1] [--max-upload-bytes 2MB] [--json FILE]
"""

import argparse
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import httpx  # noqa: E402

from pipeline.cli_options import size  # noqa: E402

QUERIES = 200  # catalog images the good requests cycle through
MIB = 2**20


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--index", type=Path, default=None, help="a built catalog index (default: one built here)")
    parser.add_argument("--run", type=Path, default=ROOT / "runs" / "demo",
                        help="the run whose images are indexed when --index is not given (default runs/demo)")
    parser.add_argument("--clients", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--seconds", type=float, default=20.0, help="per level")
    parser.add_argument("--bad-share", type=float, default=0.1, help="share of malformed or oversized uploads")
    parser.add_argument("--max-upload-bytes", type=size, default="2MB",
                        help="the server's limit (its default is 10MB; smaller keeps the oversized uploads cheap "
                             "for the clients sharing its cores)")
    parser.add_argument("--json", type=Path, default=None, help="also write the measurements here")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="pvs-serve-load-") as scratch:
        index = args.index or build_index(args.run, Path(scratch))
        good, bad = requests_of(index, args.max_upload_bytes)
        process, url = start_server(index, args.max_upload_bytes)
        try:
            results = {"index": str(index), "start_rss_mib": rss_mib(process.pid)["rss"], "levels": []}
            print(f"serving {url}: {len(good)} catalog queries, RSS {results['start_rss_mib']:.0f} MiB", flush=True)
            for clients in args.clients:
                level = load(url, clients, args.seconds, good, bad, args.bad_share)
                level.update(rss_mib(process.pid))
                results["levels"].append(level)
                print(f"{clients} clients: {level['requests']} requests, {level['throughput']:.1f}/s, "
                      f"RSS {level['rss']:.0f} MiB", flush=True)
        finally:
            stop_server(process)
    print()
    print(table(results))
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))
        print(f"\nmeasurements: {args.json}")


def build_index(run_dir: Path, scratch: Path) -> Path:
    """An exact index of the run's images (`pvs index build`); the demo run made first when missing."""
    images = run_dir / "images"
    if not (run_dir / "run.json").is_file():
        from quality import prepare_data, run

        print(f"{run_dir}: no finished run; training the demo in {scratch} (about four minutes)", flush=True)
        data = prepare_data(ROOT / "configs" / "demo.yaml", scratch, None)
        run_dir, images = scratch / "run", scratch / "images"
        run(ROOT / "configs" / "demo.yaml", run_dir, [f"data.source={data}"])
    index = scratch / "index"
    print(f"building an index of {images} with {run_dir} ...", flush=True)
    pvs("index", "build", "--run", run_dir, images, "--out", index)
    return index


def pvs(*arguments) -> None:
    environment = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    result = subprocess.run([sys.executable, "-m", "pipeline.cli", *map(str, arguments)], capture_output=True,
                            text=True, cwd=ROOT, env=environment)
    if result.returncode != 0:
        raise SystemExit(f"pvs {arguments[0]} failed:\n{result.stdout[-2000:]}\n{result.stderr[-2000:]}")


def requests_of(index: Path, max_upload_bytes: int) -> tuple[list[tuple[str, bytes, str]], list[tuple[str, bytes, str, int]]]:
    """The good requests (image id, bytes, content type) and the bad ones (name, bytes, content type, status)."""
    from pipeline.catalog.index import open_catalog

    catalog = open_catalog(index)
    step = max(1, len(catalog.image_ids) // QUERIES)
    good = []
    for row in range(0, len(catalog.image_ids), step)[:QUERIES]:
        data = catalog.image_bytes(row)
        good.append((catalog.image_ids[row].decode(), data, "image/png" if data[:4] == b"\x89PNG" else "image/jpeg"))
    jpeg = next(data for _, data, kind in good if kind == "image/jpeg")
    bad = [("text", b"not an image\n" * 40, "application/octet-stream", 415),
           ("truncated JPEG", jpeg[: len(jpeg) // 2], "image/jpeg", 422),
           ("oversized body", bytes(max_upload_bytes + 1), "image/jpeg", 413),
           ("PNG over the pixel limit", png_bomb(10_000), "image/png", 413)]
    return good, bad


def png_bomb(side: int) -> bytes:
    """A valid greyscale PNG of side x side black pixels: ~100 KB for side 10000 that decode to 100 MB."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    compressor = zlib.compressobj(9)
    rows = bytes(side + 1) * 1000  # each row: filter byte 0, then its pixels
    pixels = b"".join(compressor.compress(rows) for _ in range(side // 1000)) + compressor.flush()
    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def start_server(index: Path, max_upload_bytes: int) -> tuple[subprocess.Popen, str]:
    """`pvs serve` on a free port; returns once it printed its ready line, with its URL."""
    command = [sys.executable, "-m", "pipeline.cli", "serve", "--index", str(index), "--port", "0",
               "--max-upload-bytes", str(max_upload_bytes)]
    process = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    line = process.stdout.readline()
    if not line.startswith("serving "):
        process.kill()
        raise SystemExit(f"pvs serve did not start (exit status {process.wait()}); run it alone to see why")
    return process, line.rsplit(" at ", 1)[1].strip().rstrip("/")


def stop_server(process: subprocess.Popen) -> None:
    process.terminate()  # SIGTERM: `pvs serve` stops cleanly within a second
    try:
        process.wait(timeout=20)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def rss_mib(pid: int) -> dict:
    """The process' resident memory now and its peak, MiB (/proc/PID/status)."""
    fields = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines() if ":" in line)
    return {"rss": int(fields["VmRSS"].split()[0]) / 1024, "peak_rss": int(fields["VmHWM"].split()[0]) / 1024}


def load(url: str, clients: int, seconds: float, good: list, bad: list, bad_share: float) -> dict:
    """`clients` threads searching for `seconds`; what they measured."""
    counter, lock = itertools.count(), threading.Lock()
    bad_every = round(1 / bad_share) if bad_share > 0 else 0
    latencies, failures, statuses = [], [], {}
    before = httpx.get(f"{url}/health").json()
    deadline = time.monotonic() + seconds

    def client() -> None:
        with httpx.Client(base_url=url, timeout=60) as session:
            while time.monotonic() < deadline:
                number = next(counter)
                if bad_every and number % bad_every == bad_every - 1:
                    name, data, kind, expected = bad[(number // bad_every) % len(bad)]
                else:
                    name, data, kind = good[number % len(good)]
                    expected = 200
                began = time.perf_counter()
                response = session.post("/search", params={"k": 10}, content=data, headers={"Content-Type": kind})
                took = time.perf_counter() - began
                correct = response.status_code == expected and (
                    expected != 200 or response.json()["results"][0]["image_id"] == name)
                with lock:
                    statuses[response.status_code] = statuses.get(response.status_code, 0) + 1
                    if expected == 200:
                        latencies.append(took)
                    if not correct:
                        failures.append(f"{name}: {response.status_code} {response.text[:200]}")

    started = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    after = httpx.get(f"{url}/health").json()
    latencies.sort()
    embedded = after["requests"] - before["requests"]
    calls = after["model_calls"] - before["model_calls"]
    return {"clients": clients, "seconds": round(elapsed, 1), "requests": sum(statuses.values()),
            "refused": sum(count for status, count in statuses.items() if 400 <= status < 500),
            "statuses": statuses, "wrong": len(failures), "failures": failures[:5],
            "throughput": sum(statuses.values()) / elapsed,
            "p50_ms": 1000 * statistics.median(latencies), "p99_ms": 1000 * latencies[int(0.99 * (len(latencies) - 1))],
            "mean_batch": embedded / max(calls, 1)}


def table(results: dict) -> str:
    header = ["clients", "requests (4xx)", "wrong", "requests/s", "p50 ms", "p99 ms", "mean batch",
              "RSS after, MiB (peak)"]
    lines = [f"Server RSS at start: {results['start_rss_mib']:.0f} MiB", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for level in results["levels"]:
        lines.append(f"| {level['clients']} | {level['requests']} ({level['refused']}) | {level['wrong']} | "
                     f"{level['throughput']:.1f} | {level['p50_ms']:.0f} | {level['p99_ms']:.0f} | "
                     f"{level['mean_batch']:.1f} | {level['rss']:.0f} ({level['peak_rss']:.0f}) |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
