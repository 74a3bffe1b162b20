"""Run the whole pipeline in one process: data, baseline, the phases, extraction.

Each phase works in its own folder under `RUN_DIR/phases/`, named by a key that
digests everything its output depends on: the data (manifest sha256), the model
and data settings, the runtime and every phase up to this one. A phase whose
folder holds a `result.json` with a matching model sha256 is reused; one with
checkpoints resumes from its last finished epoch; so running the same command
again after a failure redoes only what was lost, and changing phase 3 reruns
phases 3 and 4 but reuses 1 and 2.
"""

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

from phases.classification import baseline_row, run_classification_phase
from phases.config import ClassificationPhase, PipelineConfig
from phases.extraction import ExtractionResult, extract
from phases.siamese import run_siamese_phase
from phases.unit import PhaseContext, PhaseResult
from pipeline.charts import write_score_chart
from pipeline.scores import ScoreTable
from tfrecords.files import sha256_file, write_text_atomic
from tfrecords.ingest import ingest
from tfrecords.manifest import MANIFEST_NAME

RESULT_NAME = "result.json"


@dataclass
class RunOutcome:
    table: ScoreTable
    extraction: ExtractionResult


def configure_runtime(config: PipelineConfig) -> None:
    """Seed every generator; with `runtime.deterministic`, also make TensorFlow ops deterministic."""
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(config.runtime.seed)
    if config.runtime.deterministic:
        tf.config.experimental.enable_op_determinism()


def prepare_data(config: PipelineConfig, run_dir: Path, progress: bool = False) -> Path:
    """An ingested folder: the source itself if it is one, else the source ingested into RUN_DIR/data."""
    source = Path(config.data.source)
    if (source / MANIFEST_NAME).is_file():
        return source
    out = run_dir / "data"
    ingest(source, out, config.data.ingest, progress=progress)  # resumes an interrupted ingestion
    return out


def phase_keys(config: PipelineConfig, data_digest: str) -> tuple[str, list[str]]:
    """The key of the starting point (data, model, runtime: what the baseline depends on)
    and one key per phase, chained: a phase's key covers every phase before it."""
    shared = {
        "data": data_digest,
        "model": config.model.model_dump(),
        "inputs": config.data.model_dump(include={"image_size", "batch_size", "shuffle_buffer"}),
        "runtime": config.runtime.model_dump(),
        "evaluation": config.evaluation.model_dump(),
    }
    start = hashlib.sha256(json.dumps(shared, sort_keys=True).encode()).hexdigest()
    keys, previous = [], start
    for phase in config.phases:
        previous = hashlib.sha256((previous + phase.model_dump_json()).encode()).hexdigest()
        keys.append(previous)
    return start, keys


def reusable_result(folder: Path) -> PhaseResult | None:
    """The result of a phase finished earlier in `folder`, if its model file is intact."""
    path = folder / RESULT_NAME
    if not path.is_file():
        return None
    stored = json.loads(path.read_text())
    stored["model_path"] = folder / stored["model_path"]
    if not stored["model_path"].is_file() or sha256_file(stored["model_path"]) != stored["model_sha256"]:
        return None
    return PhaseResult(**stored)


def save_result(folder: Path, result: PhaseResult) -> None:
    stored = asdict(result)
    stored["model_path"] = result.model_path.relative_to(folder).as_posix()
    write_text_atomic(folder / RESULT_NAME, json.dumps(stored, indent=1))


def with_final_scores(result: PhaseResult, group: str) -> list[dict]:
    """The phase's rows, its last one extended with the scores of the final split
    (`test_mar_at_10`, ...), measured once at the end of the phase."""
    rows = [dict(row) for row in result.rows]
    if result.final_scores and rows:
        prefix = f"{group}_"
        rows[-1].update({(k if k.startswith(prefix) else prefix + k): v for k, v in result.final_scores.items()})
    return rows


def run_pipeline(config: PipelineConfig, run_dir: Path, log: Callable[[str], None] = print) -> RunOutcome:
    """Run (or resume) everything; writes scores.csv, submission.csv and the artifacts into run_dir."""
    run_dir.mkdir(parents=True, exist_ok=True)
    configure_runtime(config)
    data_dir = prepare_data(config, run_dir)
    start_key, keys = phase_keys(config, sha256_file(data_dir / MANIFEST_NAME))
    table = ScoreTable(run_dir / "scores.csv")

    baseline_file = run_dir / "phases" / f"baseline-{start_key[:12]}.json"
    if baseline_file.is_file():
        baseline = json.loads(baseline_file.read_text())
    else:
        baseline = baseline_row(config, data_dir)
        write_text_atomic(baseline_file, json.dumps(baseline))
    table.add(baseline)
    log(f"baseline: mar_at_10 {baseline['mar_at_10']:.4f}")

    previous = None
    for number, (phase, key) in enumerate(zip(config.phases, keys), start=1):
        folder = run_dir / "phases" / f"{number:02d}-{phase.name}-{key[:12]}"
        result = reusable_result(folder)
        if result is not None:
            log(f"{phase.name}: reused the finished phase in {folder}")
        else:

            def report(row, phase_name=phase.name):
                table.add(row)
                log(f"{phase_name} epoch {row['epoch']}: loss {row['loss']:.4f}, mar_at_10 {row['mar_at_10']:.4f}")

            context = PhaseContext(data_dir=data_dir, work_dir=folder, report=report)
            runner = run_classification_phase if isinstance(phase, ClassificationPhase) else run_siamese_phase
            result = runner(phase, config, context, previous)
            save_result(folder, result)
        for row in with_final_scores(result, config.evaluation.final_split):
            table.add(row)
        previous = (result.model_path, result.model_sha256)

    write_score_chart(table.rows, run_dir / "scores.png", title=f"{config.description or 'run'}: MAR@10 on {config.evaluation.split}")
    extraction = extract(previous[0], previous[1], config, data_dir, run_dir)
    log(f"submission: {extraction.submission_path} ({extraction.split}: mar_at_10 {extraction.scores['mar_at_10']:.4f})")
    return RunOutcome(table=table, extraction=extraction)
