"""`pvs compare`: runs side by side, as MILDNet compared its models and their sizes.

One row per run: its config, the architecture, mar_at_10 at the end of each phase, the
final test score, the final model's parameters and size, the training time and the
embedding size; and one chart (`pipeline/charts.py`).

A run that has not finished (no `run.json` yet: killed, or still training) is compared
on the scores it has, marked "(unfinished)": parameters, model size and embedding size
stay blank (there is no final model yet), and its training time is that of the epochs
it has scored so far.
"""

import io
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import h5py

from phases.errors import ModelIntegrityError
from pipeline.charts import write_comparison_chart
from pipeline.reports import METRIC, markdown_table, phase_order, png_markdown, read_scores, run_names
from pipeline.run_root import recorded_config, recorded_path, run_command
from tfrecords.errors import UserError
from tfrecords.files import sha256_file
from tfrecords.manifest import MANIFEST_NAME, EmbeddingManifest, read_manifest

SUMMARY_KEYS = ("final_model", "final_model_sha256", "embeddings")  # what run.json must hold
CAPTION = f"{METRIC} at the end of each phase, then on test at the end of the last"
TEXT_COLUMNS = ("run", "config_file", "architecture", "description")  # left-aligned in the printed table


class CompareError(UserError):
    """A run's summary (run.json) or final model cannot be read."""


@dataclass
class RunComparison:
    """What `pvs compare` shows of one run; None where it is not known."""

    name: str
    rows: list[dict]  # scores.csv, numbers as numbers
    config_file: str = ""
    description: str = ""
    architecture: str = ""
    finished: bool = False
    parameters: int | None = None  # of the final model, as keras.Model.count_params() counts them
    model_bytes: int | None = None  # the final model's file
    embedding_dim: int | None = None

    def phase_scores(self) -> dict[str, float]:
        """mar_at_10 at the last epoch of each phase."""
        return {row["phase"]: row[METRIC] for row in self.rows}  # later rows win

    def test_score(self) -> float | None:
        """test_mar_at_10 of the last row: measured at the end of the last phase."""
        value = self.rows[-1].get(f"test_{METRIC}", "") if self.rows else ""
        return value if isinstance(value, (int, float)) else None

    def train_seconds(self) -> float | None:
        """The summed fit wall time of every trained epoch; None when an epoch lacks it
        (scored by a version that did not record it): a partial sum would mislead."""
        times = [row.get("train_seconds", "") for row in self.rows if row["phase"] != "baseline"]
        if not times or not all(isinstance(seconds, (int, float)) for seconds in times):
            return None
        return float(sum(times))


def read_runs(run_dirs: list[Path], names: list[str] | None = None) -> list[RunComparison]:
    """The runs of `run_dirs` (local folders), named `names` (default: run_names of the folders)."""
    return [read_run(Path(run_dir), name) for run_dir, name in zip(run_dirs, names or run_names(run_dirs))]


def read_run(run_dir: Path, name: str) -> RunComparison:
    """A run folder's scores, config, and (when finished) final model and embeddings."""
    run = RunComparison(name=name, rows=read_scores(run_dir), **_config_fields(run_dir))
    summary = _summary(run_dir)
    if summary is None:
        return run
    model, embeddings = (recorded_path(summary[key], summary, run_dir) for key in ("final_model", "embeddings"))
    for path, what in ((model, "final model"), (embeddings / MANIFEST_NAME, "embeddings' manifest")):
        if not path.is_file():
            raise CompareError(f"{run_dir}: its {what} {path} is missing; run {run_command(run_dir)} again to "
                               "rebuild it")
    run.finished, run.parameters = True, count_parameters(model, summary["final_model_sha256"])
    run.model_bytes = model.stat().st_size
    run.embedding_dim = read_manifest(embeddings, EmbeddingManifest).dim
    return run


def _config_fields(run_dir: Path) -> dict:
    """config_file, description and architecture from run-config.yaml (blank when unreadable)."""
    record = recorded_config(run_dir)
    try:
        config = record["config"]
        return {"config_file": record["config_file"], "description": config.get("description") or "",
                "architecture": config["model"]["architecture"]}
    except (KeyError, TypeError, AttributeError):
        return {}


def _summary(run_dir: Path) -> dict | None:
    """run.json, written when the run finished; None while it has not."""
    path = run_dir / "run.json"
    if not path.is_file():
        return None
    try:
        summary = json.loads(path.read_text())
    except ValueError as error:
        summary = {"error": str(error)}
    missing = [key for key in SUMMARY_KEYS if not isinstance(summary, dict) or key not in summary]
    if missing:
        raise CompareError(f"{path}: not a run summary (no {', '.join(missing)}); "
                           f"run `pvs run` again with the same --run-dir to rewrite it")
    return summary


def count_parameters(path: Path, sha256: str | None = None) -> int:
    """The parameters of a `.keras` model as keras.Model.count_params() counts them
    (trainable or not, BatchNormalization's statistics too), after checking its sha256.

    Read from the archive's weights file without building the model (which costs seconds
    of TensorFlow for an EfficientNet, and needs every custom layer registered): every
    array saved there, less the optimizer state of the model or of a model nested in it."""
    if sha256 is not None and sha256_file(path) != sha256:
        raise ModelIntegrityError(f"{path}: sha256 differs from the one in run.json; the file was altered "
                                  "(`pvs run` on its run folder rebuilds it)")
    try:
        with zipfile.ZipFile(path) as archive:
            weights = io.BytesIO(archive.read("model.weights.h5"))
    except (zipfile.BadZipFile, KeyError) as error:
        raise CompareError(f"{path}: not a Keras model archive ({error}); run `pvs run` again to rewrite it") from None
    sizes = []

    def add(name: str, item) -> None:
        # Optimizer state is under `optimizer/`, and `layers/<model>/optimizer/` for a compiled
        # model nested in this one (phase 4's projection); the layers' groups are named by class.
        if isinstance(item, h5py.Dataset) and "optimizer" not in name.split("/"):
            sizes.append(item.size)

    with h5py.File(weights, "r") as store:
        store.visititems(add)
    return int(sum(sizes))


def comparison_table(runs: list[RunComparison]) -> tuple[list[str], list[dict]]:
    """The table's columns and one row per run, as text: mar_at_10 per phase (blank where a
    run lacks the phase), the final test score, parameters, MB (10^6 bytes), seconds."""
    phases = phase_order([run.rows for run in runs])
    columns = ["run", "config_file", "architecture", *phases, f"test_{METRIC}", "parameters", "model_mb",
               "train_seconds", "embedding_dim", "description"]
    return columns, [_row(run) for run in runs]


def _row(run: RunComparison) -> dict:
    def text(value, form: str) -> str:
        return "" if value is None else format(value, form)

    return {
        "run": run.name if run.finished else f"{run.name} (unfinished)",
        "config_file": run.config_file, "architecture": run.architecture, "description": run.description,
        **{phase: f"{score:.4f}" for phase, score in run.phase_scores().items()},
        f"test_{METRIC}": text(run.test_score(), ".4f"),
        "parameters": text(run.parameters, ","),
        "model_mb": text(None if run.model_bytes is None else run.model_bytes / 1e6, ".2f"),
        "train_seconds": text(run.train_seconds(), ".1f"),
        "embedding_dim": text(run.embedding_dim, "d"),
    }


def render_text(runs: list[RunComparison]) -> str:
    """The table as fixed-width text: text columns left-aligned, numbers right-aligned."""
    columns, rows = comparison_table(runs)
    widths = {column: max(len(column), *(len(row.get(column, "")) for row in rows)) for column in columns}

    def line(cells: dict) -> str:
        aligned = [f"{cells.get(c, ''):{'<' if c in TEXT_COLUMNS else '>'}{widths[c]}}" for c in columns]
        return "  ".join(aligned).rstrip()

    return "\n".join([line({column: column for column in columns}), *(line(row) for row in rows)])


def render_markdown(runs: list[RunComparison]) -> str:
    columns, rows = comparison_table(runs)
    return markdown_table(rows, columns) + "\n"


def write_chart(runs: list[RunComparison], out_path: Path) -> Path:
    """mar_at_10 at the end of each phase, per run; and, for the runs that have both, the
    final test score against the model's size."""
    sizes = {run.name: (run.model_bytes / 1e6, run.test_score()) for run in runs
             if run.model_bytes is not None and run.test_score() is not None}
    return write_comparison_chart({run.name: run.rows for run in runs}, out_path, METRIC, sizes)


def artifact_markdown(runs: list[RunComparison], chart: Path) -> str:
    """The flow's markdown artifact: the chart, embedded, over the table."""
    return (f"# Comparing {len(runs)} runs\n\n{png_markdown('comparison chart', chart)}\n\n"
            f"{CAPTION}.\n\n{render_markdown(runs)}")
