"""Which retrieval tools help on this data? Each switch of the toolbox alone, then a combination, over seeds.

The recipe (configs/demo.yaml: pretrained EfficientNet-Lite0, the demo products) is run per
seed, as benchmarks/quality.py runs it. Then each switch:

  * a switch that changes training (a margin head in phases 1-3, the pooling, a margin loss
    in phase 4) is its own `pvs run` per seed, with the switch's overrides;
  * a switch that changes only retrieval (whitening, query expansion, database augmentation,
    re-ranking, test-time augmentation) leaves every weight as the recipe trained it
    (deterministic runs: the same seed trains the same weights), so it is measured on the
    recipe's own runs: their final model scores val and test again through
    `phases.scoring.score_split` under the switch's config, the function that scores every
    row of a run (the same embedding, post-processing and metrics), without training the
    same weights again.

Per variant it prints val MAR@10 as mean +- sample standard deviation [min, max] over the
seeds, its change against the recipe (paired by seed: the mean and spread of the per-seed
differences), test MAR@10, and its cost: the run's wall time and its peak resident memory
(training variants; the `pvs run` process, from wait4) or the
final model's scoring time of val and test (retrieval variants, against the recipe's own
scoring in the same process). One val query moves MAR@10 by at most 0.0044 (228 queries).

    .venv/bin/python benchmarks/toolbox.py [--seeds 0 1 2] [--only NAME ...] [--set NAME=KEY=VALUE,...]
        [--keep DIR] [--json FILE] [--chart docs/images/toolbox.png]
    .venv/bin/python benchmarks/toolbox.py --results FILE ... [--chart ...]   # the table of saved measurements

Costs: one demo run (about three minutes on 2 cores) per training variant and seed, a few
seconds per retrieval variant and seed.
"""

import argparse
import csv
import json
import os
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from quality import prepare_data, run, save_chart, summary  # noqa: E402

CONFIG = ROOT / "configs" / "demo.yaml"
RECIPE = "recipe"


@dataclass(frozen=True)
class Variant:
    overrides: tuple[str, ...]
    trains: bool  # True: its own `pvs run`; False: the recipe's final model scored again


# Each switch alone; the combination last. The values are the papers' defaults unless the
# comment says otherwise.
VARIANTS = {
    RECIPE: Variant((), trains=True),
    "arcface head": Variant(("model.classifier.kind=arcface",), trains=True),
    "gem pooling": Variant(("model.pooling=gem",), trains=True),
    # Phase 4 on product centres; the demo's schedule with the margins of
    # configs/losses/arcface-projection.yaml (radians: 0.75 would be a third of the way to pi).
    "arcface projection": Variant(("phases.siamese.loss=arcface", "phases.siamese.margin_schedule.0.margin=0.2",
                                   "phases.siamese.margin_schedule.1.margin=0.35",
                                   "phases.siamese.margin_schedule.2.margin=0.5"), trains=True),
    "cosface head": Variant(("model.classifier.kind=cosface",), trains=True),
    "sub-center arcface head": Variant(("model.classifier.kind=subcenter_arcface",), trains=True),
    "max pooling": Variant(("model.pooling=max",), trains=True),
    "whitening": Variant(("evaluation.retrieval.whitening={}",), trains=False),
    "query expansion": Variant(("evaluation.retrieval.query_expansion={}",), trains=False),
    "database augmentation": Variant(("evaluation.retrieval.database_augmentation={}",), trains=False),
    "re-ranking": Variant(("evaluation.retrieval.reranking={}",), trains=False),
    "flip tta": Variant(("evaluation.test_time_augmentation=flip",), trains=False),
    "six-view tta": Variant(("evaluation.test_time_augmentation=six_views",), trains=False),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--only", nargs="+", default=None, help="variants to measure (the recipe always runs)")
    parser.add_argument("--set", dest="extra", action="append", default=[], metavar="NAME=KEY=VALUE",
                        help="an extra variant: NAME=KEY=VALUE[,KEY=VALUE...] (retrieval-only when every key "
                             "starts with evaluation.)")
    parser.add_argument("--keep", type=Path, default=None, help="keep the runs in this folder (and reuse them)")
    parser.add_argument("--chart", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=None, help="write the measurements here")
    parser.add_argument("--results", type=Path, nargs="+", default=None,
                        help="measure nothing: print the table (and draw --chart) of these --json files, merged")
    args = parser.parse_args()
    if args.results:
        results = {}
        for path in args.results:
            results.update(json.loads(path.read_text()))
        report(results, args.chart)
        return

    variants = {name: variant for name, variant in VARIANTS.items() if args.only is None or name in args.only}
    variants.setdefault(RECIPE, VARIANTS[RECIPE])
    for extra in args.extra:
        name, _, overrides = extra.partition("=")
        pairs = tuple(overrides.split(","))
        variants[name] = Variant(pairs, trains=not all(pair.startswith("evaluation.") for pair in pairs))
    folder = args.keep or Path(tempfile.mkdtemp(prefix="pvs-toolbox-"))
    folder.mkdir(parents=True, exist_ok=True)
    data = prepare_data(CONFIG, folder, None)
    results: dict[str, list[dict]] = {}
    # Variant after variant (the recipe first, whose runs the retrieval variants score again; then
    # those, which are quick), so that an interrupted benchmark leaves whole variants; --json is
    # rewritten after every run.
    for name, variant in sorted(variants.items(), key=lambda item: (item[0] != RECIPE, item[1].trains)):
        for seed in args.seeds:
            recipe_dir = folder / f"recipe-seed{seed}"
            if variant.trains:
                run_dir = recipe_dir if name == RECIPE else folder / f"{slug(name)}-seed{seed}"
                result = trained(run_dir, data, seed, variant.overrides)
            else:
                result = rescored(recipe_dir, data, seed, variant.overrides)
            results.setdefault(name, []).append(result)
            print(f"{name} seed {seed}: val MAR@10 {result['val']:.4f}, test {result.get('test') or float('nan'):.4f}, "
                  f"{result['seconds']:.0f} s", flush=True)
            if args.json:
                args.json.write_text(json.dumps(results, indent=1))
    report(results, args.chart)


def report(results: dict[str, list[dict]], chart: Path | None) -> None:
    print()
    print(table(results))
    if chart:
        draw(results, chart)
        print(f"chart: {chart}")


def slug(name: str) -> str:
    return "".join(character if character.isalnum() else "-" for character in name)


def trained(run_dir: Path, data: Path, seed: int, overrides: tuple[str, ...]) -> dict:
    """A variant that trains: `pvs run` of the demo config. A finished run in --keep's folder
    (its run.json written) is read, not run again: keep a folder only across runs of one commit."""
    began = time.perf_counter()
    if (run_dir / "run.json").is_file():
        last, kept = finished(run_dir), json.loads((run_dir / "toolbox.json").read_text())
        return {"seed": seed, "val": last["mar_at_10"], "test": last.get("test_mar_at_10"), **kept}
    usage = {}
    last = run(CONFIG, run_dir, [f"data.source={data}", f"runtime.seed={seed}", *overrides], usage)
    final = list(last.values())[-1]
    kept = {"seconds": time.perf_counter() - began, **usage}
    (run_dir / "toolbox.json").write_text(json.dumps(kept))
    return {"seed": seed, "val": final["mar_at_10"], "test": final.get("test_mar_at_10"), **kept}


def finished(run_dir: Path) -> dict:
    """The last row of a finished run's scores.csv, as floats."""
    with open(run_dir / "scores.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    return {key: float(value) for key, value in rows[-1].items() if value and key != "phase"}


def rescored(recipe_dir: Path, data: Path, seed: int, overrides: tuple[str, ...]) -> dict:
    """A retrieval-only variant: the recipe run's final model scored again, val and test,
    under the recipe's config with `overrides`; its time against the plain scoring's."""
    from phases.checkpoints import load_model
    from phases.scoring import score_split
    from pipeline.config_files import load_config
    from pipeline.config_overrides import parse_overrides

    summary_of_run = json.loads((recipe_dir / "run.json").read_text())
    model = load_model(recipe_dir / summary_of_run["final_model"], summary_of_run["final_model_sha256"],
                       compile=False)
    plain = load_config(CONFIG, parse_overrides([f"data.source={data}", f"runtime.seed={seed}"]))
    switched = load_config(CONFIG, parse_overrides([f"data.source={data}", f"runtime.seed={seed}", *overrides]))
    timings, scores = {}, {}
    for name, config in (("plain", plain), ("switched", switched)):
        began = time.perf_counter()
        scores[name] = {group: score_split(model, config, data, group, None)["mar_at_10"] for group in ("val", "test")}
        timings[name] = time.perf_counter() - began
    return {"seed": seed, "val": scores["switched"]["val"], "test": scores["switched"]["test"],
            "plain_val": scores["plain"]["val"], "seconds": timings["switched"], "plain_seconds": timings["plain"]}


def table(results: dict[str, list[dict]]) -> str:
    """Markdown: per variant, val MAR@10, its paired change against the recipe, test MAR@10, cost."""
    recipe = {result["seed"]: result for result in results[RECIPE]}
    header = ["variant", "seeds", "val MAR@10", "change vs recipe (paired)", "test MAR@10", "cost"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, runs in results.items():
        val = summary([result["val"] for result in runs])
        cells = [name, str(len(runs)), f"{val[0]:.3f} ± {val[1]:.3f} [{val[2]:.3f}, {val[3]:.3f}]"]
        if name == RECIPE:
            cells.append("")
        else:
            changes = [result["val"] - recipe[result["seed"]]["val"] for result in runs]
            change = summary(changes)
            cells.append(f"{change[0]:+.3f} ± {change[1]:.3f}")
        tests = [result["test"] for result in runs if result.get("test") is not None]
        cells.append(f"{statistics.fmean(tests):.3f} ± {summary(tests)[1]:.3f}" if tests else "")
        seconds = statistics.fmean(result["seconds"] for result in runs)
        if "plain_seconds" in runs[0]:
            plain = statistics.fmean(result["plain_seconds"] for result in runs)
            cells.append(f"scoring {seconds:.1f} s (plain {plain:.1f} s)")
        else:
            peaks = [result["peak_rss_mib"] for result in runs if "peak_rss_mib" in result]
            memory = f", peak {statistics.fmean(peaks) / 1024:.2f} GiB" if peaks else ""
            if peaks and len(peaks) < len(runs):
                memory += f" ({len(peaks)} of {len(runs)} seeds)"
            cells.append(f"run {seconds:.0f} s{memory}")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n(± is the sample standard deviation over the seeds)"


def draw(results: dict[str, list[dict]], path: Path) -> None:
    """A bar per variant: the mean val MAR@10, a line for the min-max range over seeds."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results)
    stats = [summary([result["val"] for result in results[name]]) for name in names]
    figure, axis = plt.subplots(figsize=(8, 0.45 * len(names) + 1.2), dpi=100)
    positions = range(len(names))
    colours = ["#888888" if name == RECIPE else "#3b75af" for name in names]
    axis.barh(positions, [s[0] for s in stats], color=colours,
              xerr=[[s[0] - s[2] for s in stats], [s[3] - s[0] for s in stats]], capsize=3)
    for position, stat in zip(positions, stats):
        axis.annotate(f"{stat[0]:.3f}", (stat[3], position), textcoords="offset points", xytext=(4, -3), fontsize=8)
    axis.axvline(stats[names.index(RECIPE)][0], color="#888888", linestyle="--", linewidth=1)
    axis.set_yticks(list(positions), names)
    axis.invert_yaxis()
    axis.set_xlabel("val MAR@10 after the last phase (mean, min-max over seeds)")
    axis.set_title("The retrieval toolbox on the demo data:\neach switch alone, then combinations")
    axis.grid(axis="x", alpha=0.3)
    save_chart(figure, path)


if __name__ == "__main__":
    main()
