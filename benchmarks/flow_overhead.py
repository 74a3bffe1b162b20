"""What does the Prefect flow cost? `pvs run` against the same work called from a plain script.

(A) `pvs run --config CONFIG --run-dir FRESH`: the whole flow as a user runs it, with a fresh
    run folder and PREFECT_HOME, no PREFECT_API_URL (so its own temporary Prefect server).
(B) this file with `--plain RUN_DIR`: the same config, then the functions the flow's tasks
    call (pipeline/tasks.py), in the flow's order: `ingest`, `baseline_row`, each phase's
    `run_phase`, `embed_shard` per shard of the final split and `merge`. No Prefect, no cache keys,
    no records or their sha256 checks, no TensorBoard, chart, artifacts or search sheet.
Both run as subprocesses (each pays Python's and TensorFlow's start-up) on the same demo
images, generated once as `make demo` does, alternated A B A B ... after one untimed import
of TensorFlow and Prefect (so that neither meets a cold file cache).

Prints, per run, wall and CPU seconds (the server's included: it is a reaped child) and
where they went: before the first step, in the steps, between them, after the last (A's
step times from its Prefect database, B's from its own clock); then the overhead (A-B)/B per
pair, the same seconds against the phases' summed `train_seconds` (scores.csv: the target
is at most 10 %), and whether A and B scored the same (every score of scores.csv, the final
scores and submission.csv).

    .venv/bin/python benchmarks/flow_overhead.py [--repeats 2] [--products 500 --categories 16
        --image-size 128] [--config configs/demo.yaml] [--set KEY=VALUE ...] [--keep DIR]
    .venv/bin/python benchmarks/flow_overhead.py --tiny --repeats 1    # a try in 2-3 minutes

Costs two demo runs per repeat (2.5 minutes each on 2 CPU cores): 13 minutes for --repeats 2.
"""

import argparse
import contextlib
import csv
import json
import os
import resource
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# The test suite's tiny run (tests/test_run.py) on 24 products: seconds per step, for trying this file.
TINY_DATA = {"products": 24, "categories": 3, "image_size": 48}
TINY_OVERRIDES = [
    "data.image_size=32", "data.batch_size=16", "data.shuffle_buffer=64", "model.weights=none",
    "model.batch_norm_calibration_batches=2", "phases.top.epochs=1", "phases.full.epochs=1",
    "phases.siamese.projection_dim=16", "phases.siamese.labels_per_batch=6", "phases.siamese.views_per_label=3",
    "phases.siamese.margin_schedule=[{margin: 0.5, learning_rate: 1.0e-3, epochs: 1}]",
    "evaluation.batch_size=64", "runtime.eager=true",
]
STAGES = ("before the first step", "steps", "between steps", "after the last step")


def plain_run(config_path: Path, overrides: list[str], run_dir: Path) -> None:
    """(B), in this process: the flow's work without Prefect; writes RUN_DIR/plain.json
    (score rows as scores.csv has them, final scores, submission sha256, step times)."""
    import tfrecords  # noqa: F401  (sets TF_CPP_MIN_LOG_LEVEL before TensorFlow loads)
    from phases.controller import run_phase
    from phases.extraction import embed_shard, final_shards, merge
    from phases.starting import baseline_row
    from phases.unit import PhaseContext
    from pipeline.config_files import load_config
    from pipeline.config_overrides import parse_overrides
    from pipeline.runtime import configure_runtime
    from pipeline.scores import phase_rows
    from tfrecords.files import sha256_file
    from tfrecords.ingest import ingest

    steps: dict[str, list[float]] = {}

    @contextlib.contextmanager
    def step(name: str):
        began = time.time()
        yield
        steps[name] = [began, time.time()]

    config = load_config(config_path, parse_overrides(overrides))
    configure_runtime(config)  # as `finetune` does: strategy, seeds, op determinism
    data_dir = run_dir / "data"
    with step("ingest"):
        ingest(Path(config.data.source), data_dir, config.data.ingest, progress=False)
    with step("baseline"):
        rows = [baseline_row(config, data_dir)]
    previous = final = None
    for number, phase in enumerate(config.phases, start=1):
        with step(phase.name):
            work_dir = run_dir / "phases" / f"{number:02d}-{phase.name}"
            work_dir.mkdir(parents=True, exist_ok=True)
            result = run_phase(phase, config, PhaseContext(data_dir=data_dir, work_dir=work_dir), previous)
        rows += phase_rows(result.rows, result.final_scores, config.evaluation.final_split)
        previous = (result.model_path, result.model_sha256)
        # flows.final_model: a classifier's embedder, else the phase's model
        final = (result.embedder_path, result.embedder_sha256) if result.embedder_path else previous
    with step("extraction"):
        group, shards = final_shards(config, data_dir)
        parts = [run_dir / "embeddings" / shard.file.removesuffix(".tfrecord") for shard in shards]
        for shard, part in zip(shards, parts):
            embed_shard(final[0], final[1], config, data_dir, shard, part)
        extraction = merge(parts, final[0], final[1], config, data_dir, group, run_dir / "extraction")
    submission_sha256 = sha256_file(extraction.submission_path)
    summary = {"rows": rows, "final_scores": extraction.scores, "submission_sha256": submission_sha256, "steps": steps,
               "prefect_imported": "prefect" in sys.modules}
    (run_dir / "plain.json").write_text(json.dumps(summary, indent=1))


def timed(command: list[str], environment: dict) -> dict:
    """Run `command` to its end; its wall and CPU seconds (its reaped children's included) and start time."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    began, clock = time.time(), time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, cwd=ROOT, env=environment, check=False,
                            stdin=subprocess.DEVNULL)
    wall = time.perf_counter() - clock
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if result.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
    cpu = after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime
    return {"wall": wall, "cpu": cpu, "began": began, "ended": began + wall}


def clean_environment(prefect_home: Path) -> dict:
    """This environment without any PREFECT_ setting, with a fresh PREFECT_HOME and no telemetry."""
    prefect_home.mkdir(parents=True)  # Prefect's server does not create it
    environment = {key: value for key, value in os.environ.items() if not key.startswith("PREFECT_")}
    return {**environment, "PREFECT_HOME": str(prefect_home), "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}


def flow_run(config: Path, overrides: list[str], folder: Path) -> dict:
    """(A): `pvs run` into FOLDER/run; its times, score rows, final scores and step times."""
    command = [sys.executable, "-m", "pipeline.cli", "run", "--config", str(config), "--run-dir", str(folder / "run")]
    for override in overrides:
        command += ["--set", override]
    run = timed(command, clean_environment(folder / "prefect-home"))
    with open(folder / "run" / "scores.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    summary = json.loads((folder / "run" / "run.json").read_text())
    database = folder / "prefect-home" / "prefect.db"
    return {**run, "rows": rows, "steps": task_spans(database), "flow": flow_span(database),
            **{name: summary[name] for name in ("final_scores", "submission_sha256")}}


def plain(config: Path, overrides: list[str], folder: Path) -> dict:
    """(B): this file with --plain, in a fresh process."""
    command = [sys.executable, __file__, "--plain", str(folder / "run"), "--config", str(config)]
    for override in overrides:
        command += ["--set", override]
    run = timed(command, clean_environment(folder / "prefect-home"))
    return {**run, **json.loads((folder / "run" / "plain.json").read_text())}


# (A)'s start-up in parts, in a fresh process: what `pvs run` imports, then its temporary server.
STARTUP_PROBE = """
import json, time
began = time.perf_counter()
import flows
from pipeline.prefect_server import temporary_server
imported = time.perf_counter()
with temporary_server():
    up = time.perf_counter()
stopped = time.perf_counter()
print(json.dumps({"import flows": imported - began, "server start": up - imported, "server stop": stopped - up}))
"""


def startup_parts(folder: Path) -> dict[str, float]:
    """Seconds to import `flows` (TensorFlow, Keras, Prefect, the pipeline) and to start and
    stop a temporary Prefect server, as `pvs run` does, in a fresh process."""
    result = subprocess.run([sys.executable, "-c", STARTUP_PROBE], capture_output=True, text=True, cwd=ROOT,
                            env=clean_environment(folder / "prefect-home"), check=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def _epoch(text: str) -> float:
    moment = datetime.fromisoformat(text)
    return (moment if moment.tzinfo else moment.replace(tzinfo=timezone.utc)).timestamp()


def task_spans(database: Path) -> dict[str, list[float]]:
    """Each step's [start, end] (epoch seconds) from the run's Prefect database: a task per step,
    except the extraction (a task per shard, `embed ...`, then `extraction`)."""
    with contextlib.closing(sqlite3.connect(database)) as db:
        tasks = db.execute("SELECT name, start_time, end_time FROM task_run ORDER BY start_time").fetchall()
    spans: dict[str, list[float]] = {}
    for name, start, end in tasks:
        step = "extraction" if name.startswith("embed ") else name
        span = spans.setdefault(step, [_epoch(start), _epoch(end)])
        span[:] = [min(span[0], _epoch(start)), max(span[1], _epoch(end))]
    return spans


def flow_span(database: Path) -> list[float]:
    with contextlib.closing(sqlite3.connect(database)) as db:
        start, end = db.execute("SELECT start_time, end_time FROM flow_run").fetchone()
    return [_epoch(start), _epoch(end)]


def stages(run: dict) -> dict[str, float]:
    """The run's wall time cut at its first step's start and its last step's end."""
    spans = list(run["steps"].values())
    first, last = min(span[0] for span in spans), max(span[1] for span in spans)
    in_steps = sum(end - start for start, end in spans)
    return {"before the first step": first - run["began"], "steps": in_steps,
            "between steps": last - first - in_steps, "after the last step": run["ended"] - last}


def train_seconds(rows: list[dict]) -> float:
    return sum(float(row["train_seconds"]) for row in rows if row.get("train_seconds") not in (None, ""))


def scores(run: dict) -> dict[str, float | str]:
    """Every score of a run, by "phase epoch N name" (train_seconds aside: it is a time), its
    final scores ("final name") and its submission's sha256: what two runs must share."""
    found: dict[str, float | str] = {}
    for row in run["rows"]:
        for name, value in row.items():
            if name not in ("phase", "epoch", "train_seconds") and value not in ("", None):
                found[f"{row['phase']} epoch {row['epoch']} {name}"] = float(value)
    found.update({f"final {name}": value for name, value in run["final_scores"].items()})
    return {**found, "submission.csv sha256": run["submission_sha256"]}


def differences(first: dict, second: dict) -> list[str]:
    """Where two runs' `scores` differ: empty when they agree exactly."""
    ours, theirs = scores(first), scores(second)
    return [f"{key}: {ours.get(key)} against {theirs.get(key)}" for key in sorted(ours.keys() | theirs.keys())
            if ours.get(key) != theirs.get(key)]


def spread(values: list[float], unit: str = "") -> str:
    """Mean ± sample standard deviation [min, max]."""
    deviation = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.fmean(values):.1f}{unit} ± {deviation:.1f} [{min(values):.1f}, {max(values):.1f}]"


def step_seconds(run: dict) -> dict[str, float]:
    """Seconds of each step, then of the time around and between them."""
    inside = {name: end - start for name, (start, end) in run["steps"].items()}
    return {**inside, **{stage: seconds for stage, seconds in stages(run).items() if stage != "steps"}}


def agreement(flows: list[dict], plains: list[dict]) -> list[str]:
    """Lines saying whether A and B (pair by pair), and the repeats of each, scored the same."""
    checks = [(f"A{n} and B{n}", a, b) for n, (a, b) in enumerate(zip(flows, plains), start=1)]
    checks += [(f"{kind}1 and {kind}{n}", runs[0], run) for kind, runs in (("A", flows), ("B", plains))
               for n, run in enumerate(runs[1:], start=2)]
    lines = []
    for name, first, second in checks:
        found = differences(first, second)
        compared = len(scores(first))
        lines.append(f"- scores of {name}: " + (f"identical ({compared} values)" if not found else
                     f"{len(found)} of {compared} values differ: " + "; ".join(found[:8])))
    return lines


def print_tables(runs: list[tuple[str, dict]]) -> None:
    """Markdown: each run's times, then each step's mean time in A and B."""
    flows, plains = ([run for name, run in runs if name.startswith(kind)] for kind in "AB")
    print("| run | wall s | CPU s | train s | " + " | ".join(f"{stage} s" for stage in STAGES) + " |")
    print("|---|" + "---:|" * (3 + len(STAGES)))
    for name, run in runs:
        cells = [run["wall"], run["cpu"], train_seconds(run["rows"]), *stages(run).values()]
        print(f"| {name} | " + " | ".join(f"{cell:.1f}" for cell in cells) + " |")

    print("\nSeconds per step, mean over the repeats (A: its tasks' spans; B: the plain calls):\n")
    print("| step | A | B | A - B |\n|---|---:|---:|---:|")
    for name in step_seconds(plains[0]):
        mean_a, mean_b = (statistics.fmean(step_seconds(run)[name] for run in group) for group in (flows, plains))
        print(f"| {name} | {mean_a:.1f} | {mean_b:.1f} | {mean_a - mean_b:+.1f} |")


def print_summary(flows: list[dict], plains: list[dict], probes: list[dict[str, float]], loads: list[tuple]) -> None:
    """The overhead per pair, against B and against the training time; where it goes; the scores' agreement."""
    to_flow = [run["flow"][0] - run["began"] for run in flows]
    print(f"- A's flow run began {spread(to_flow, ' s')} after its process "
          "(imports, config checks, the server's start, the flow run's creation)")
    parts = "; ".join(f"{name} {spread([probe[name] for probe in probes], ' s')}" for name in probes[0])
    print(f"- A's start-up in parts (a fresh process after each pair): {parts}")
    print(f"- wall A {spread([run['wall'] for run in flows], ' s')}; B {spread([run['wall'] for run in plains], ' s')}")
    overhead = [a["wall"] - b["wall"] for a, b in zip(flows, plains)]
    print(f"- overhead A - B per pair: {spread(overhead, ' s')}; "
          f"(A - B) / B: {spread([100 * o / b['wall'] for o, b in zip(overhead, plains)], ' %')}")
    trained = [train_seconds(run["rows"]) for run in flows]
    share = [100 * o / seconds for o, seconds in zip(overhead, trained)]
    verdict = "met" if max(share) <= 10 else "missed" if min(share) > 10 else "met in some pairs, missed in others"
    print(f"- (A - B) / A's summed train_seconds ({spread(trained, ' s')}): {spread(share, ' %')} "
          f"(target <= 10 %: **{verdict}**)")
    inside = [stages(a)["steps"] - stages(b)["steps"] for a, b in zip(flows, plains)]
    outside = [whole - steps for whole, steps in zip(overhead, inside)]  # before, between and after the steps
    print(f"- of which outside the steps (before, between, after): {spread(outside, ' s')}, "
          f"{spread([100 * o / seconds for o, seconds in zip(outside, trained)], ' %')} of A's train_seconds; "
          f"inside them: {spread(inside, ' s')}")
    print(f"- CPU A - B per pair: {spread([a['cpu'] - b['cpu'] for a, b in zip(flows, plains)], ' s')}")
    print("\n".join(agreement(flows, plains)))
    print(f"- B imported Prefect: {any(run['prefect_imported'] for run in plains)}")
    print(f"- load average (1, 5, 15 min) at the start {loads[0]}, at the end {loads[1]}; {os.cpu_count()} CPUs")


def fresh(folder: Path) -> Path:
    """`folder`, emptied of what an earlier run with the same --keep left."""
    shutil.rmtree(folder, ignore_errors=True)
    return folder


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "demo.yaml")
    parser.add_argument("--repeats", type=int, default=2, help="pairs (A then B)")
    parser.add_argument("--products", type=int, default=500, help="demo products (default: make demo's)")
    parser.add_argument("--categories", type=int, default=16)
    parser.add_argument("--image-size", type=int, default=128, help="pixels of the demo photos' longer side")
    parser.add_argument("--tiny", action="store_true", help=f"{TINY_DATA} and the test suite's tiny settings")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for both variants (repeatable)")
    parser.add_argument("--keep", type=Path, default=None, help="keep the data and runs in this folder")
    parser.add_argument("--plain", type=Path, default=None, metavar="RUN_DIR", help="(B) itself, into RUN_DIR")
    args = parser.parse_args()
    if args.plain:
        return plain_run(args.config, args.overrides, args.plain)
    if args.tiny:
        vars(args).update(TINY_DATA)
        args.overrides = [*TINY_OVERRIDES, *args.overrides]

    folder = args.keep or Path(tempfile.mkdtemp(prefix="pvs-flow-overhead-"))
    images = folder / "images"
    if not images.is_dir():
        demo_data = ["demo-data", str(images), "--products", str(args.products), "--categories", str(args.categories),
                     "--image-size", str(args.image_size)]  # as `make demo`
        subprocess.run([sys.executable, "-m", "pipeline.cli", *demo_data], cwd=ROOT, check=True)
    warm_up = [sys.executable, "-c", "import tensorflow, keras, prefect"]  # into the file cache, untimed
    subprocess.run(warm_up, cwd=ROOT, check=True, capture_output=True)
    overrides = [f"data.source={images}", *args.overrides]
    loads, runs, probes = [os.getloadavg()], [], []
    try:
        for repeat in range(1, args.repeats + 1):
            for name, variant in ((f"A{repeat}", flow_run), (f"B{repeat}", plain)):
                runs.append((name, variant(args.config, overrides, fresh(folder / name))))
                print(f"{name}: {runs[-1][1]['wall']:.1f} s", flush=True)
            probes.append(startup_parts(fresh(folder / f"probe{repeat}")))
        loads.append(os.getloadavg())
        print()
        print_tables(runs)
        print()
        flows, plains = ([run for name, run in runs if name.startswith(kind)] for kind in "AB")
        print_summary(flows, plains, probes, [tuple(round(load, 2) for load in sample) for sample in loads])
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)


if __name__ == "__main__":
    main()
