"""The flow's tasks: ingestion, the baseline, one training phase, extraction (one task
per image shard of the final split, then one merging them).

Every task writes into its own folder and ends by writing the folder's record
(`pipeline/records.py`). Its Prefect cache key is the key of that folder, so a
new run of the same config shows finished tasks as Cached. The flow checks the
record (files present, sha256 matching) before it trusts a cache hit, and makes
the task recompute when it does not hold (`refresh_cache`). Prefect stores only
the small output dict (paths, digests, scores) as JSON, never models or arrays.
"""

import functools
from pathlib import Path

from prefect import get_run_logger, task

from phases.classification import baseline_row, run_classification_phase
from phases.config import PipelineConfig
from phases.end_to_end import run_end_to_end_phase
from phases.extraction import embed_shard as embed_image_shard
from phases.extraction import final_group, merge
from phases.siamese import run_siamese_phase
from phases.unit import PhaseContext
from pipeline.monitoring import EpochLogger, ScoreReporter, tensorboard_callback
from pipeline.records import Work, write_record
from pipeline.storage import (
    RunRoot,
    ShardCache,
    StorageSettings,
    check_direct_read,
    download,
    is_remote,
    join,
    remote_ingested,
    stage_source,
)
from tfrecords.files import write_text_atomic
from tfrecords.ingest import ingest, summary
from tfrecords.manifest import (
    MANIFEST_NAME,
    SHARDS_AT_NAME,
    EmbeddingManifest,
    ImageManifest,
    ShardEntry,
    ShardSet,
    read_manifest,
    verify_shards,
)

RUNNERS = {"classification": run_classification_phase, "siamese": run_siamese_phase, "end_to_end": run_end_to_end_phase}


def _cache_key(context, inputs: dict) -> str:
    return inputs["work"].key


def cached_task(fn):
    """A task cached under its Work's key, with its small output persisted as JSON.

    When Prefect has no cached result (a new PREFECT_HOME, say) but the folder holds a
    trustworthy record, the task returns that record instead of working again."""

    @functools.wraps(fn)
    def reuse_or_run(work: Work, *args, **kwargs) -> dict:
        done = work.finished()
        if done is not None:
            get_run_logger().info(f"{work.name}: reusing the finished work in {work.folder}")
            return done
        return fn(work, *args, **kwargs)

    return task(
        reuse_or_run,
        cache_key_fn=_cache_key,
        persist_result=True,
        result_serializer="json",
        task_run_name="{work.name}",
    )


@cached_task
def ingest_data(work: Work, config: PipelineConfig) -> dict:
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
        return write_record(work.folder, work.key, {}, _shard_set_files(source.resolve(), manifest))
    manifest = ingest(source, work.folder, config.data.ingest, progress=False)  # resumes an interrupted ingestion
    logger.info(summary(manifest))
    return write_record(work.folder, work.key, {}, _shard_set_files(work.folder, manifest))


def _ingest_remote(work: Work, config: PipelineConfig) -> dict:
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
            return write_record(work.folder, work.key, {}, {"manifest": work.folder / MANIFEST_NAME, "shards at": marker})
        fetched = ShardCache(settings).stage(source, manifest.shards, work.folder)
        verify_shards(work.folder, manifest.shards)
        logger.info(f"data: the ingested folder {source}, staged in {work.folder} "
                    f"({fetched} of {len(manifest.shards)} shards downloaded, the others from the cache)")
    else:
        staged = stage_source(source, settings)
        logger.info(f"data: {source} staged in {staged}")
        manifest = ingest(staged, work.folder, config.data.ingest, progress=False, source_name=source)
        logger.info(summary(manifest))
    return write_record(work.folder, work.key, {}, _shard_set_files(work.folder, manifest))


def _shard_set_files(folder: Path, manifest: ShardSet, name: str = "") -> dict[str, Path]:
    """A shard set's manifest and every shard, for a record: it vouches for all of them, so
    a shard damaged or deleted between runs is found (by sha256) before the next run trusts
    it, and rewritten. Costs one read of the shards per run (about 0.2 s per 128 MB)."""
    return {f"{name}manifest": folder / MANIFEST_NAME,
            **{f"{name}shard {shard.file}": folder / shard.file for shard in manifest.shards}}


@cached_task
def score_baseline(work: Work, config: PipelineConfig, data: dict) -> dict:
    """Scores of the untrained model (the starting point of the score journey)."""
    row = baseline_row(config, Path(data["data_dir"]))
    get_run_logger().info(f"baseline: mar_at_10 {row['mar_at_10']:.4f}")
    return write_record(work.folder, work.key, {"row": row})


@cached_task
def train_phase(work: Work, config: PipelineConfig, phase_name: str, data: dict, previous: dict | None,
                root: RunRoot | None = None) -> dict:
    """Train (or resume) one phase in `work.folder`; returns its final model and score rows.

    `previous` is the output of the phase before (its model and sha256), None for the first.
    With a gs:// `root`, the folder is pushed to the bucket after every epoch (checkpoint
    included), so the phase can resume on another machine.
    """
    output, models = _train(work, config, phase_name, data, previous, root)
    return write_record(work.folder, work.key, output, models)


@task(task_run_name="{work.name}", persist_result=False)
def train_phase_beside_the_chief(work: Work, config: PipelineConfig, phase_name: str, data: dict,
                                 previous: dict | None) -> dict:
    """A worker that is not the chief of a multi-worker cluster: trains the phase in lockstep
    with the chief (from the checkpoint the flow pulled from the bucket) and writes nothing:
    no record, no cache entry. The flow takes the phase's model from the chief's record."""
    return _train(work, config, phase_name, data, previous, None)[0]


def _train(work: Work, config: PipelineConfig, phase_name: str, data: dict, previous: dict | None,
           root: RunRoot | None) -> tuple[dict, dict[str, Path]]:
    """Run the phase; returns its output and its model files: `model` (what the next phase
    starts from) and, for a classifier, `embedder` (what extraction uses if it is the last)."""
    logger = get_run_logger()
    phase = config.phase(phase_name)
    scores = ScoreReporter(logger, phase.name, work.folder / "tensorboard")

    def report(row: dict) -> None:
        scores(row)
        if root is not None:
            root.push(work.folder)

    context = PhaseContext(
        data_dir=Path(data["data_dir"]),
        work_dir=work.folder,
        report=report,
        callbacks=(EpochLogger(logger, phase.name), tensorboard_callback(work.folder)),
    )
    runner = RUNNERS[phase.kind]
    start = (Path(previous["model"]), previous["model_sha256"]) if previous else None
    result = runner(phase, config, context, start)
    if result.resumed_after_epoch is not None:
        logger.info(f"{phase.name}: resumed after epoch {result.resumed_after_epoch} from its checkpoint")
    output = {
        "phase": phase.name,
        "rows": result.rows,
        "final_scores": result.final_scores,
        "resumed_after_epoch": result.resumed_after_epoch,
        **result.extra,
    }
    models = {"model": result.model_path}
    if result.embedder_path is not None:
        models["embedder"] = result.embedder_path
    return output, models


@cached_task
def embed_shard(work: Work, config: PipelineConfig, data_dir: str, shard: ShardEntry, final: dict) -> dict:
    """The embeddings of one image shard of the final split, by the final model, in `work.folder`."""
    manifest = embed_image_shard(Path(final["model"]), final["model_sha256"], config, Path(data_dir), shard, work.folder)
    get_run_logger().info(f"{work.name}: {manifest.count} image(s) embedded")
    return write_record(work.folder, work.key, {"set": shard.split, "image_shard": shard.file},
                        _shard_set_files(work.folder, manifest))


@cached_task
def extract_embeddings(work: Work, config: PipelineConfig, data: dict, final: dict, shards: list[dict]) -> dict:
    """The embeddings of the final split (the outputs of `embed_shard`, in shard order, merged),
    `submission.csv` and the scores."""
    group = final_group(config, read_manifest(Path(data["data_dir"]), ImageManifest))
    parts = [Path(shard["manifest"]).parent for shard in shards]
    result = merge(parts, final["model_sha256"], config, group, work.folder)
    get_run_logger().info(f"submission: {result.split} mar_at_10 {result.scores['mar_at_10']:.4f}")
    output = {"split": result.split, "scores": result.scores}  # the embeddings: the folder of "embeddings manifest"
    embeddings = read_manifest(result.embeddings_dir, EmbeddingManifest)
    files = {"submission": result.submission_path, **_shard_set_files(result.embeddings_dir, embeddings, "embeddings ")}
    return write_record(work.folder, work.key, output, files)
