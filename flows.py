"""The Prefect flows: `finetune` (ingestion, the baseline, every phase, extraction) and
`compare_runs`.

    prefect deployment run 'finetune/gpu' --param config_path=configs/seed.yaml --watch
    pvs run --config configs/demo.yaml            # the same flow, without a deployment

Each step is a cached task writing into a folder named by its key (`pipeline/keys.py`):
a new run of the same config shows finished steps as Cached and resumes an unfinished
phase from its last epoch checkpoint; changing phase 3 reruns phase 3, phase 4 and the
extraction. Before trusting a cache hit, the flow checks the folder's record (files
present, sha256 matching) and has the task recompute when it does not hold; it logs why
each step is reused or runs (`pipeline/running.py`). Steps hand each other typed outputs
(`pipeline/steps.py`).

The extraction is one task per image shard of the final split (RUN_DIR/embeddings/..., keyed
by the shard's and the final model's digests), `evaluation.extraction_concurrency` at a time
on a task runner, then one task merging them: a rerun embeds only missing shards.

The run folder may be a gs:// URL (`pipeline/storage/`): steps then work in a local
mirror, pull their folder from the bucket before they start and push it back after
every epoch and at their end, so a run killed on one machine resumes on another. Several
hosts of a multi-worker cluster share one: `pipeline/coordination.py`. What a run
reports as it goes (progress, scores, chart, artifacts, run.json): `pipeline/run_report.py`.

`compare_runs` (at the end) is `pvs compare` as a flow: runs side by side, as an artifact.
`catalog_index` embeds a catalog with a run's final model and builds its search index
(`pvs index`, pipeline/catalog/).
"""

from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
from pydantic.json_schema import SkipJsonSchema

import tfrecords  # noqa: F401  (sets TF_CPP_MIN_LOG_LEVEL before anything imports TensorFlow)
from phases.config import PipelineConfig
from pipeline import keys
from pipeline.compare import artifact_markdown, read_runs, write_chart
from pipeline.coordination import chief_summary
from pipeline.flow_parameters import ConfigPath, StepNames
from pipeline.flow_runs import mark_dead_runs, run_name, tag_flow_run
from pipeline.logs import install_log_filters
from pipeline.reports import artifact_key
from pipeline.run_report import RunReport
from pipeline.run_root import claim_run_root, default_run_dir
from pipeline.running import RunRequest, embed_shards, run_step, step_names
from pipeline.runtime import configure_runtime
from pipeline.storage.remote import is_remote
from pipeline.storage.run_store import RunRoot
from pipeline.storage.shard_cache import StorageSettings
from pipeline.storage.staging import stage_file
from pipeline.tasks import extract_embeddings, ingest_data, score_baseline, train_phase

install_log_filters()


@flow(name="finetune", description="Ingest, train the phases of the recipe, extract embeddings and a submission.",
      flow_run_name=run_name)
def finetune(
    config_path: ConfigPath = "configs/demo.yaml",
    overrides: dict[str, Any] = {},  # noqa: B006  (empty, not None: see pipeline/flow_parameters.py)
    run_dir: str = "",
    force: StepNames = [],  # noqa: B006
    request: SkipJsonSchema[RunRequest | None] = None,
) -> dict:
    """Run (or resume) the pipeline of a config: ingestion, the baseline, each phase, the
    extraction.

    Args:
        config_path: The config to run: a library config (`pvs configs` lists them), or the path
            of any YAML config, relative to the project folder.
        overrides: Config values changed for this run, by dotted key, as `pvs run --set` takes
            them, e.g. `{"phases.full.epochs": 3, "data.batch_size": 32}`.
        run_dir: The run folder, or a gs:// URL; empty: runs/ and the config's file name
            (runs/seed for configs/seed.yaml). A run resumes what it finds there.
        force: Steps to compute again even when their folder holds a finished result: ingest,
            baseline, a phase by its name, extraction.
        request: `pvs run`'s hand-off, the same arguments already loaded and checked (before
            Prefect started); left out of the schema, so a deployment's Run form never shows it.

    Returns:
        The paths (or URLs) of scores.csv, the chart and submission.csv.
    """
    if request is None:
        request = RunRequest.load(config_path, overrides, run_dir or str(default_run_dir(config_path)), force)
    config = request.config
    root = RunRoot(request.run_dir, StorageSettings.of(config))
    root.read_only = request.other_worker
    root.pull_loose_files()  # run-config.yaml, for the owner check
    tag_flow_run(config, request.config_path, root, get_run_logger())
    with claim_run_root(root.local, Path(request.config_path), config, request.overrides) as swept:
        if swept:
            get_run_logger().info(f"removed {swept} temporary file(s) left in {root.local} by an interrupted run")
        if not root.read_only:
            mark_dead_runs(root, get_run_logger())
        configure_runtime(config)
        return _run_steps(config, root, request.forced)


def local_inputs(config: PipelineConfig) -> PipelineConfig:
    """The config the tasks get: a gs:// weights file replaced by its copy in the local cache.
    (Cache keys are computed from the config as written.)"""
    if not is_remote(config.model.weights):
        return config
    path, _ = stage_file(config.model.weights, StorageSettings.of(config))
    return config.model_copy(update={"model": config.model.model_copy(update={"weights": str(path)})})


def _run_steps(config: PipelineConfig, root: RunRoot, forced: frozenset[str]) -> dict:
    logger = get_run_logger()
    report = RunReport(config, root, len(step_names(config)))
    inputs = local_inputs(config)

    data = run_step(ingest_data, keys.ingestion_work(config, root), forced, root, config=inputs)
    report.step_done("data ingested")
    baseline = run_step(score_baseline, keys.baseline_work(config, root, data), forced, root, config=inputs, data=data)
    report.baseline(baseline)

    previous = None
    for number, phase in enumerate(config.phases, start=1):
        work = keys.phase_work(config, root, number, data, previous and previous.model)
        previous = run_step(train_phase, work, forced, root, config=inputs, phase_name=phase.name, data=data,
                            previous=previous and previous.model, root=root, on_epoch=report.epoch)
        report.phase(phase.name, previous)

    final = previous.final_model
    if root.read_only:  # the extraction is the chief's alone: this worker ends with the chief's summary
        summary = chief_summary(root, final.sha256, config.storage.chief_wait_minutes)
        logger.info(f"submission: {summary['submission']} (the chief's; {summary['final_split']}: "
                    f"mar_at_10 {summary['final_scores']['mar_at_10']:.4f})")
        return summary

    shards = embed_shards(config, inputs, root, "extraction" in forced, data, final)
    extraction = run_step(extract_embeddings, keys.extraction_work(config, root, data, final, shards), forced, root,
                          config=inputs, data=data, final=final, shards=shards)
    summary = report.finish(data, final, extraction)
    logger.info(f"submission: {summary['submission']} ({extraction.split}: mar_at_10 {extraction.scores['mar_at_10']:.4f})")
    report.log_verdict(logger)
    return summary


@flow(name="compare-runs", description="Runs side by side: mar_at_10 per phase, test score, model size, time.")
def compare_runs(run_dirs: list[str], out_dir: str = "") -> dict:
    """`pvs compare` as a flow: a chart of the runs and a markdown artifact of it and the table.

    Args:
        run_dirs: The run folders to put side by side, e.g. `["runs/seed", "runs/no-block7a"]`.
        out_dir: The folder comparison.png is written to; empty: the working folder.

    Returns:
        The chart's path and the runs' names.
    """
    runs = read_runs([Path(run_dir) for run_dir in run_dirs])
    chart = write_chart(runs, Path(out_dir or ".") / "comparison.png")
    create_markdown_artifact(artifact_markdown(runs, chart), key=artifact_key("comparison", *(run.name for run in runs)),
                             description="mar_at_10 per phase, final test score, model size and training time per run")
    return {"chart": str(chart.resolve()), "runs": [run.name for run in runs]}


@flow(name="catalog-index", description="Embed a catalog with a run's final model and build its search index.")
def catalog_index(
    index_dir: str,
    run_dir: str = "",
    sources: list[str] = [],  # noqa: B006  (empty, not None: see pipeline/flow_parameters.py)
    settings: dict[str, Any] = {},  # noqa: B006
    add: bool = False,
    force: bool = False,
) -> dict:
    """Build (`run_dir` and `sources`), extend (`add`: `sources` appended) or update (neither:
    the recorded sources read again) a catalog index: each source ingested, each image shard
    embedded by the run's final model (cached: only shards not embedded yet are), the index
    assembled and index.json written.

    Args:
        index_dir: The index folder, on the machine that searches it.
        run_dir: The run whose final model embeds the catalog (a build); empty: the index's own.
        sources: Catalogs to build from, or with `add`, to append: CSVs, image folders or
            ingested folders (gs:// or s3:// too); empty: the index's recorded sources, read again.
        settings: The search structure built, as pipeline/catalog/settings.py reads it (a build),
            e.g. `{"kind": "hnsw", "parameters": {"ef_search": 128}}`; empty: the exact search.
        add: Append `sources` to the index's sources rather than build it anew.
        force: Embed every shard and assemble the index again, even where cached.

    Returns:
        index.json's content.
    """
    from phases.config import PipelineConfig
    from pipeline.catalog.building import build_catalog, resolve_request
    from pipeline.catalog.index import CatalogIndexError
    from pipeline.search import open_run_model
    from tfrecords.locks import hold_lock

    if is_remote(index_dir):
        raise CatalogIndexError(f"{index_dir}: an index folder is local (a search memory-maps its vectors); give a "
                                "folder on the machine that searches it (its sources may be gs:// or s3://)")
    folder = Path(index_dir)
    request = resolve_request(folder, run_dir, sources, settings, add)
    run = open_run_model(Path(request.run_dir))
    config = PipelineConfig.model_validate(run.config)
    root = RunRoot(index_dir, StorageSettings.of(config))

    def in_use(holder: str) -> CatalogIndexError:
        return CatalogIndexError(f"{index_dir}: another build is using this index folder ({holder}); wait for it to end")

    with hold_lock(root.local / ".lock", in_use):
        request.save(root.local)
        configure_runtime(config)
        manifest = build_catalog(request, run, config, root, {"index", "embed"} if force else set())
    get_run_logger().info(f"index: {root.local / 'index.json'}: {manifest['count']} images, {manifest['kind']}")
    return manifest
