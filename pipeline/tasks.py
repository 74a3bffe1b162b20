"""The flow's tasks: ingestion, the baseline, one training phase, extraction (one task
per image shard of the final split, then one merging them).

Every task writes into its own folder and ends by writing the folder's record
(`pipeline/records.py`) through its output's type (`pipeline/steps.py`). Its Prefect
cache key is the key of that folder, so a new run of the same config shows finished
tasks as Cached. The flow checks the record (files present, sha256 matching) before it
trusts a cache hit, and makes the task recompute when it does not hold (`refresh_cache`).
Prefect stores only the small output (paths, digests, scores) as JSON, never models or arrays.
"""

import dataclasses
import functools
import hashlib
from collections.abc import Callable
from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_table_artifact

from phases.config import PipelineConfig
from phases.controller import run_phase
from phases.extraction import embed_shard as embed_image_shard
from phases.extraction import final_group, merge
from phases.starting import baseline_row
from phases.unit import PhaseContext, PhaseResult
from pipeline.fault_drill import inject_fault
from pipeline.flow_runs import attempt
from pipeline.monitoring import EpochLogger, ScoreReporter
from pipeline.records import Work
from pipeline.reports import artifact_key, phase_table, run_key
from pipeline.steps import Baseline, Extraction, IngestedData, ModelFile, PhaseOutput, ShardEmbeddings
from pipeline.storage.remote import download, is_remote, join
from pipeline.storage.run_store import RunRoot
from pipeline.storage.shard_cache import ShardCache, StorageSettings
from pipeline.storage.staging import check_direct_read, remote_ingested, stage_source
from pipeline.tensorboard_logs import PhaseLog
from tfrecords.files import write_text_atomic
from tfrecords.ingest import ingest, summary
from tfrecords.manifest import (
    MANIFEST_NAME,
    SHARDS_AT_NAME,
    EmbeddingManifest,
    ImageManifest,
    ShardEntry,
    read_manifest,
    verify_shards,
)


def cached_task(output_type):
    """A task returning an `output_type` (`pipeline/steps.py`), cached under its Work's key,
    its output persisted as JSON.

    When Prefect has no cached result (a new PREFECT_HOME, say) but the folder holds a
    trustworthy record, the task returns that record's output instead of working again.
    Prefect's cache key adds the output type's fields to the work's: a result Prefect stored
    for another shape of the output is never read back into this one."""
    shape = hashlib.sha256(repr([(f.name, str(f.type)) for f in dataclasses.fields(output_type)]).encode()).hexdigest()

    def cache_key(context, inputs: dict) -> str:
        return f"{inputs['work'].key}-{shape[:12]}"

    def decorate(fn):
        @functools.wraps(fn)
        def reuse_or_run(work: Work, *args, **kwargs):
            done = work.finished()
            if done is not None:
                get_run_logger().info(f"{work.name}: reusing the finished work in {work.folder}")
                return output_type.from_record(done)
            return fn(work, *args, **kwargs)

        return task(reuse_or_run, cache_key_fn=cache_key, persist_result=True, result_serializer="json",
                    task_run_name="{work.name}")

    return decorate


@cached_task(IngestedData)
def ingest_data(work: Work, config: PipelineConfig) -> IngestedData:
    """The source as checked TFRecord shards: ingested into `work.folder`, or the source
    itself when it is an ingested folder already (its shards are verified). A gs:// source
    is staged on local disk first: an ingested one into `work.folder`, through the shard
    cache; images into the cache, then ingested. Its `manifest` file's folder is the data."""
    logger = get_run_logger()
    (work.folder / SHARDS_AT_NAME).unlink(missing_ok=True)  # left by a run with read_shards: direct
    check_direct_read(config.data.source, config.storage.read_shards)  # as `pvs run` did (not deployments)
    if is_remote(config.data.source):
        return _ingest_remote(work, config)
    source = Path(config.data.source)
    if (source / MANIFEST_NAME).is_file():
        manifest = read_manifest(source, ImageManifest)
        verify_shards(source, manifest.shards)
        logger.info(f"data: the ingested folder {source} ({len(manifest.shards)} shards verified)")
        return IngestedData.write(work, source.resolve(), manifest)
    manifest = ingest(source, work.folder, config.data.ingest, progress=False)  # resumes an interrupted ingestion
    logger.info(summary(manifest))
    return IngestedData.write(work, work.folder, manifest)


def _ingest_remote(work: Work, config: PipelineConfig) -> IngestedData:
    logger = get_run_logger()
    source, settings = config.data.source, StorageSettings.of(config)
    if remote_ingested(source):
        download(join(source, MANIFEST_NAME), work.folder / MANIFEST_NAME)
        manifest = read_manifest(work.folder, ImageManifest)
        if config.storage.read_shards == "direct":
            marker = work.folder / SHARDS_AT_NAME
            write_text_atomic(marker, source.rstrip("/") + "\n")
            logger.info(f"data: the ingested folder {source}, {len(manifest.shards)} shards read from there by "
                        "TensorFlow (storage.read_shards: direct; not sha256-checked, each record's CRC is)")
            return IngestedData.write_direct(work, marker)
        fetched = ShardCache(settings).stage(source, manifest.shards, work.folder)
        verify_shards(work.folder, manifest.shards)
        logger.info(f"data: the ingested folder {source}, staged in {work.folder} "
                    f"({fetched} of {len(manifest.shards)} shards downloaded, the others from the cache)")
    else:
        staged = stage_source(source, settings)
        logger.info(f"data: {source} staged in {staged}")
        manifest = ingest(staged, work.folder, config.data.ingest, progress=False, source_name=source)
        logger.info(summary(manifest))
    return IngestedData.write(work, work.folder, manifest)


@cached_task(Baseline)
def score_baseline(work: Work, config: PipelineConfig, data: IngestedData) -> Baseline:
    """Scores of the untrained model (the starting point of the score journey)."""
    row = baseline_row(config, data.data_dir)
    get_run_logger().info(f"baseline: mar_at_10 {row['mar_at_10']:.4f}")
    return Baseline.write(work, row)


@cached_task(PhaseOutput)
def train_phase(work: Work, config: PipelineConfig, phase_name: str, data: IngestedData, previous: ModelFile | None,
                root: RunRoot, on_epoch: Callable[[str, dict], None] | None = None) -> PhaseOutput:
    """Train (or resume) one phase in `work.folder`; returns its final model and score rows.

    `previous` is the model of the phase before, None for the first. The folder is pushed to
    `root` after every epoch (checkpoint included; nothing to do for a local root), so a
    phase in a bucket can resume on another machine; then `on_epoch(phase, row)` (the run's
    report). Its score table is an artifact of this task run, rounded to 4 digits.
    """
    output = PhaseOutput.write(work, _train(work, config, phase_name, data, previous, root, on_epoch))
    rows = output.scored_rows(config.evaluation.final_split)
    create_table_artifact(phase_table(rows), key=artifact_key(run_key(root), "scores", phase_name),
                          description=f"{phase_name}: scores per epoch ({root.identity}; {attempt()})")
    return output


@task(task_run_name="{work.name}", persist_result=False)
def train_phase_in_lockstep(work: Work, config: PipelineConfig, phase_name: str, data: IngestedData,
                            previous: ModelFile | None, root: RunRoot, on_epoch=None) -> None:
    """A worker that is not the chief of a multi-worker cluster: trains the phase in lockstep
    with the chief (from the checkpoint the flow pulled from the bucket) and writes nothing:
    no record, no cache entry. The flow takes the phase's model from the chief's record."""
    _train(work, config, phase_name, data, previous, root)  # reports nothing, so pushes nothing


def _train(work: Work, config: PipelineConfig, phase_name: str, data: IngestedData, previous: ModelFile | None,
           root: RunRoot, on_epoch: Callable[[str, dict], None] | None = None) -> PhaseResult:
    """Run (or resume) the phase in `work.folder`, reporting each epoch's scores."""
    logger = get_run_logger()
    phase = config.phase(phase_name)
    scores = ScoreReporter(logger, PhaseLog(root, config, phase.name, work.folder))

    def report(row: dict) -> None:  # the run's report first: a run failing here keeps this epoch in its chart
        scores(row)
        if on_epoch is not None:
            on_epoch(phase.name, row)
        inject_fault(phase.name, int(row["epoch"]))  # the fault drill (pipeline/fault_drill.py)
        root.push(work.folder)

    context = PhaseContext(
        data_dir=data.data_dir,
        work_dir=work.folder,
        report=report,
        resuming=lambda epoch, step, epochs: logger.info(resume_message(phase.name, epoch, step, epochs)),
        callbacks=(EpochLogger(logger, phase.name),),
    )
    start = (previous.path, previous.sha256) if previous else None
    result = run_phase(phase, config, context, start)
    scores.finish(result)  # the final split's scores, at the phase's last step
    return result


def resume_message(phase: str, epoch: int, step: int | None, epochs: int) -> str:
    """What a phase resuming from its checkpoint says before it trains (`epoch` 0-based)."""
    if epoch >= epochs:
        return f"{phase}: all {epochs} epoch(s) were trained before; resuming from its checkpoint to finish the phase"
    inside = f", after batch {step}" if step is not None else ""
    return f"{phase}: resuming at epoch {epoch + 1} of {epochs}{inside}, from its checkpoint"


@cached_task(ShardEmbeddings)
def embed_shard(work: Work, config: PipelineConfig, data: IngestedData, shard: ShardEntry, final: ModelFile) -> ShardEmbeddings:
    """The embeddings of one image shard of the final split, by the final model, in `work.folder`."""
    manifest = embed_image_shard(final.path, final.sha256, config, data.data_dir, shard, work.folder)
    get_run_logger().info(f"{work.name}: {manifest.count} image(s) embedded")
    return ShardEmbeddings.write(work, shard.split, shard.file, manifest)


@cached_task(Extraction)
def extract_embeddings(work: Work, config: PipelineConfig, data: IngestedData, final: ModelFile,
                       shards: list[ShardEmbeddings]) -> Extraction:
    """The embeddings of the final split (the outputs of `embed_shard`, in shard order, merged),
    `submission.csv` and the scores."""
    group = final_group(config, read_manifest(data.data_dir, ImageManifest))
    result = merge([shard.folder for shard in shards], final.path, final.sha256, config, data.data_dir, group, work.folder)
    get_run_logger().info(f"submission: {result.split} mar_at_10 {result.scores['mar_at_10']:.4f}")
    embeddings = read_manifest(result.embeddings_dir, EmbeddingManifest)
    return Extraction.write(work, result.split, result.scores, result.submission_path, result.embeddings_dir, embeddings,
                            result.whitening_path)
