"""Does the recipe make retrieval better? The score journey of configs/demo.yaml over seeds.

The demo data (`pvs demo-data`, the products `make demo` generates) is ingested once; then
`pvs run` trains the config from the same ingested folder once per seed and per start:
`pretrained` (the config as written: EfficientNet-Lite0's ImageNet weights) and `random`
(the same network from random weights, its BatchNormalization statistics measured on 8
train batches). Each run is the whole pipeline, temporary Prefect server included.

Per start and phase (the baseline row, then each phase's last epoch) it prints MAR@10,
mAP@10 and recall@1 on val as mean +- standard deviation over the seeds (and their
range), the final test MAR@10, then checks the targets of the recipe:
  * MAR@10 after the last classification phase >= 1.1 x the pretrained baseline, and
    above it by more than the spread (the larger of the two standard deviations);
  * the last phase (the projection) above the last classification phase, likewise.
The journey is drawn with its spread into --chart. Costs: one demo run per seed and start
(about five minutes each on 2 cores: half an hour for the defaults).

    .venv/bin/python benchmarks/quality.py [--config configs/demo.yaml] [--seeds 0 1 2] [--products 400]
        [--starts pretrained random] [--chart docs/images/quality-journey.png] [--keep DIR]
"""

import argparse
import csv
import dataclasses
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

METRICS = ("mar_at_10", "map_at_10", "recall_at_1")
# What each start overrides in the config: `random` is the same network without ImageNet weights.
STARTS = {
    "pretrained": [],
    "random": ["model.weights=none", "model.batch_norm_calibration_batches=8"],
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", type=Path, default=ROOT / "configs" / "demo.yaml")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--products", type=int, default=None, help="demo products (default: make demo's)")
    parser.add_argument("--starts", nargs="+", choices=tuple(STARTS), default=list(STARTS))
    parser.add_argument("--chart", type=Path, default=None, help="PNG of the journey with its spread")
    parser.add_argument("--keep", type=Path, default=None, help="keep the runs in this folder")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="a config override for every run (repeatable)")
    args = parser.parse_args()

    folder = args.keep or Path(tempfile.mkdtemp(prefix="pvs-quality-"))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        data = prepare_data(args.config, folder, args.products)
        journeys = {}
        for start in args.starts:
            for seed in args.seeds:
                run_dir = folder / f"{start}-seed{seed}"
                began = time.perf_counter()
                overrides = [f"data.source={data}", f"runtime.seed={seed}", *STARTS[start], *args.overrides]
                journeys.setdefault(start, []).append(run(args.config, run_dir, overrides))
                scores = " -> ".join(f"{row['mar_at_10']:.3f}" for row in journeys[start][-1].values())
                print(f"{start} seed {seed}: {time.perf_counter() - began:.0f} s, val MAR@10 {scores}", flush=True)
        print()
        print(table(journeys))
        print()
        for line in verdicts(journeys.get("pretrained")):
            print(line)
        if args.chart:
            draw(journeys, args.chart)
            print(f"chart: {args.chart}")
    finally:
        if args.keep is None:
            shutil.rmtree(folder, ignore_errors=True)


def prepare_data(config: Path, folder: Path, products: int | None) -> Path:
    """The demo images, ingested once with the config's ingest options: the folder every run reads."""
    from pipeline.config_files import load_config
    from tfrecords.demo_data import write_demo_data
    from tfrecords.ingest import ingest

    settings = load_config(config)
    images, data = folder / "images", folder / "data"
    if not (data / "manifest.json").is_file():
        options = make_demo_options()
        if products:
            options = dataclasses.replace(options, products=products)
        write_demo_data(images, options)
        ingest(images, data, settings.data.ingest, progress=False)
    return data


def make_demo_options():
    """The DemoOptions of `make demo`: the arguments of the Makefile's `pvs demo-data` line."""
    from pipeline.cli import demo_options

    line = next((line for line in (ROOT / "Makefile").read_text().splitlines() if "pvs demo-data" in line), None)
    if line is None:
        raise SystemExit("Makefile: no `pvs demo-data` line to take the demo's options from")
    return demo_options(line.split("pvs demo-data", 1)[1].split())


def run(config: Path, run_dir: Path, overrides: list[str], usage: dict | None = None) -> dict[str, dict]:
    """`pvs run` of the config; returns {phase: its last row} (baseline first), scores as floats.
    `usage`, when given, gets "peak_rss_mib": the largest resident memory of the `pvs run`
    process (the training, in its threads), from the kernel's accounting of that child (wait4);
    its temporary Prefect server runs in a session of its own and is not counted."""
    command = [sys.executable, "-m", "pipeline.cli", "run", "--config", str(config), "--run-dir", str(run_dir)]
    for override in overrides:
        command += ["--set", override]
    environment = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false"}
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        process = subprocess.Popen(command, stdout=out, stderr=err, text=True, cwd=ROOT, env=environment)
        _, status, resources = os.wait4(process.pid, 0)
        process.returncode = os.waitstatus_to_exitcode(status)
        if usage is not None:
            usage["peak_rss_mib"] = resources.ru_maxrss / 1024  # KiB on Linux
        if process.returncode != 0:
            out.seek(0), err.seek(0)
            raise SystemExit(f"pvs run failed ({run_dir}):\n{out.read()[-3000:]}\n{err.read()[-3000:]}")
    with open(run_dir / "scores.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    last = {}
    for row in rows:  # each phase's last epoch; the last one of a phase carries its test scores
        last[row["phase"]] = {key: float(value) for key, value in row.items() if value and key != "phase"}
    return last


def summary(values: list[float]) -> tuple[float, float, float, float]:
    """Mean, sample standard deviation (0 for one value), min and max."""
    spread = statistics.stdev(values) if len(values) > 1 else 0.0
    return statistics.fmean(values), spread, min(values), max(values)


def table(journeys: dict[str, list[dict]]) -> str:
    """Markdown: per start and phase, each metric as mean +- std [min, max] over the seeds."""
    header = ["start", "phase", *(f"val {name}" for name in METRICS), "test mar_at_10"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for start, runs in journeys.items():
        for phase in runs[0]:
            cells = [start, phase]
            for name in (*METRICS, "test_mar_at_10"):
                values = [journey[phase][name] for journey in runs if name in journey[phase]]
                if not values:
                    cells.append("")
                    continue
                mean, spread, low, high = summary(values)
                cells.append(f"{mean:.3f} ± {spread:.3f} [{low:.3f}, {high:.3f}]")
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + f"\n\n(n = {len(next(iter(journeys.values())))} seeds each; ± is the sample standard deviation)"


def verdicts(runs: list[dict] | None) -> list[str]:
    """The recipe's targets on the pretrained runs, each line saying met or missed with the numbers."""
    if not runs:
        return ["targets: no pretrained runs"]
    phases = list(runs[0])  # baseline, the classification phases, the projection
    if len(phases) < 3:
        return ["targets: need the baseline, a classification phase and a last phase"]
    last_classifier, last = phases[-2], phases[-1]

    def stats(phase):
        return summary([journey[phase]["mar_at_10"] for journey in runs])

    base, after_classifier, final = stats("baseline"), stats(last_classifier), stats(last)
    lines = []
    ratio = after_classifier[0] / base[0]
    gap = after_classifier[0] - base[0]
    met = ratio >= 1.1 and gap > max(base[1], after_classifier[1])
    lines.append(f"target {'met' if met else 'MISSED'}: {last_classifier} / baseline = {ratio:.3f} (>= 1.1), "
                 f"gain {gap:+.3f} vs spread {max(base[1], after_classifier[1]):.3f}")
    gap = final[0] - after_classifier[0]
    met = gap > max(final[1], after_classifier[1])
    lines.append(f"target {'met' if met else 'MISSED'}: {last} - {last_classifier} = {gap:+.3f} "
                 f"vs spread {max(final[1], after_classifier[1]):.3f}")
    return lines


def draw(journeys: dict[str, list[dict]], path: Path) -> None:
    """Val MAR@10 after each phase: the mean of the seeds, a bar for their min-max range."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4), dpi=100)
    for start, runs in journeys.items():
        phases = list(runs[0])
        stats = [summary([journey[phase]["mar_at_10"] for journey in runs]) for phase in phases]
        means = [s[0] for s in stats]
        errors = [[s[0] - s[2] for s in stats], [s[3] - s[0] for s in stats]]
        axis.errorbar(range(len(phases)), means, yerr=errors, marker="o", capsize=4, label=f"{start} ({len(runs)} seeds)")
        for position, mean in enumerate(means):
            axis.annotate(f"{mean:.3f}", (position, mean), textcoords="offset points", xytext=(0, 8), ha="center", fontsize=8)
        axis.set_xticks(range(len(phases)), phases)
    axis.set_ylabel("val MAR@10")
    axis.set_title("The recipe's score journey on the demo data (mean, min-max over seeds)")
    axis.grid(alpha=0.3)
    axis.legend()
    save_chart(figure, path)


def save_chart(figure, path: Path) -> None:
    """Lay out a Matplotlib figure, write it to `path` (its folder made) and close it."""
    import matplotlib.pyplot as plt

    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    plt.close(figure)


if __name__ == "__main__":
    main()
