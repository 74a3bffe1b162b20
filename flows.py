"""The Prefect flow `finetune`: ingestion, the baseline, every phase, extraction.

    prefect deployment run 'finetune/gpu' --param config_path=configs/seed.yaml --watch
    pvs run --config configs/demo.yaml            # the same flow, without a deployment

Each step is a cached task writing into a folder named by its key (`pipeline/keys.py`):
a new run of the same config shows finished steps as Cached and resumes an unfinished
phase from its last epoch checkpoint; changing phase 3 reruns phase 3, phase 4 and the
extraction. Before trusting a cache hit, the flow checks the folder's record (files
present, sha256 matching) and has the task recompute when it does not hold.

The extraction is one task per image shard of the final split (RUN_DIR/embeddings/..., keyed
by the shard's and the final model's digests), `evaluation.extraction_concurrency` at a time
on the flow's task runner, then one task merging them: a rerun embeds only missing shards.

The run folder may be a gs:// URL (`pipeline/storage.py`): steps then work in a local
mirror, pull their folder from the bucket before they start and push it back after
every epoch and at their end, so a run killed on one machine resumes on another.

`compare_runs` (at the end) is `pvs compare` as a flow: runs side by side, as an artifact.
"""

import json
import shutil
import time
from collections import deque
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.artifacts import (
    create_markdown_artifact,
    create_progress_artifact,
    create_table_artifact,
    update_progress_artifact,
)
from prefect.futures import as_completed

import tfrecords  # noqa: F401  (sets TF_CPP_MIN_LOG_LEVEL before anything imports TensorFlow)
from phases.config import PipelineConfig
from phases.distribute import resolve_strategy, tf_config_chief
from phases.errors import ConfigError
from phases.extraction import final_shards
from pipeline import keys
from pipeline.charts import write_score_chart
from pipeline.compare import artifact_markdown, read_runs, write_chart
from pipeline.config_files import load_config
from pipeline.logs import install_log_filters
from pipeline.records import Work, recorded_output
from pipeline.reports import artifact_key, chart_markdown
from pipeline.run_root import claim_run_root, default_run_dir
from pipeline.runtime import configure_runtime
from pipeline.scores import ScoreTable, phase_rows
from pipeline.search import sheet_markdown, write_run_sheet
from pipeline.storage import RunRoot, StorageSettings, is_remote, stage_file
from pipeline.tasks import (
    embed_shard,
    extract_embeddings,
    ingest_data,
    score_baseline,
    train_phase,
    train_phase_beside_the_chief,
)
from tfrecords.errors import UserError
from tfrecords.files import sha256_file, write_bytes_atomic, write_text_atomic

install_log_filters()


def step_names(config: PipelineConfig) -> list[str]:
    """What `force` may name: ingest, baseline, each phase, extraction."""
    return ["ingest", "baseline", *(phase.name for phase in config.phases), "extraction"]


def check_force(config: PipelineConfig, force: list[str] | None) -> set[str]:
    names = step_names(config)
    unknown = [name for name in force or [] if name not in names]
    if unknown:
        raise ConfigError(f"force: no step named {', '.join(map(repr, unknown))}; the steps are {', '.join(names)}")
    return set(force or [])


class ChiefTimeoutError(UserError):
    """A worker that is not the chief waited longer than `storage.chief_wait_minutes`."""


def run(task_fn, work: Work, forced: set[str], run_root: RunRoot, **arguments) -> dict:
    """Call a cached task for `work`: recomputed (its folder cleared) when forced, and
    with Prefect's cached result refreshed when the folder's record does not hold.
    Under a gs:// root, the folder is pulled from the bucket first and pushed after;
    on a worker that is not the chief, see `follow`."""
    if run_root.read_only:
        return follow(task_fn, work, run_root, arguments)
    fresh = before_task(work, work.name in forced, run_root)
    return after_task(work, run_root, task_fn.with_options(refresh_cache=fresh)(work, **arguments))


def before_task(work: Work, forced: bool, run_root: RunRoot) -> bool:
    """Ready `work`'s folder for its task: cleared (here and in the bucket) when forced, else
    pulled from the bucket (a gs:// root). Returns whether the task must run, Prefect's cached
    result refreshed: when the folder holds no trustworthy record."""
    logger = get_run_logger()
    if forced:
        logger.info(f"{work.name}: forced; clearing {run_root.show(work.folder)}")
        if work.folder.exists():
            _clear(work)
        if work.name != "ingest":
            run_root.remove(work.folder)
    else:
        pulled = run_root.pull(work.folder, work.key)
        if pulled:
            logger.info(f"{work.name}: {pulled} file(s) pulled from {run_root.url(work.folder)}")
    fresh = work.finished() is None
    if fresh and work.folder.exists():
        logger.info(f"{work.name}: no trustworthy result in {run_root.show(work.folder)}; running (resuming what is there)")
    return fresh


def after_task(work: Work, run_root: RunRoot, output: dict) -> dict:
    """The output of `work`'s finished task; under a gs:// root, once its folder is pushed."""
    if run_root.remote is None:
        return output
    logger = get_run_logger()
    pushed = run_root.push(work.folder)
    if pushed:
        logger.info(f"{work.name}: {pushed} object(s) written to {run_root.url(work.folder)}")
    # Prefect's cached result may come from another machine's mirror: its paths are not ours.
    return recorded_output(work.folder)


def follow(task_fn, work: Work, root: RunRoot, arguments: dict) -> dict:
    """`run` on a worker that is not the chief of a multi-worker cluster, all of whose hosts
    run this flow on one gs:// run folder. It writes nothing there: a step the chief has
    finished (its record in the bucket, with this key) is pulled; a phase that is not is
    trained in lockstep with the chief, from the checkpoint the chief last pushed, then its
    record is awaited; every other step (ingestion, the baseline) is awaited."""
    logger = get_run_logger()

    def finished_by_the_chief() -> bool:
        return root.pull_record(work.folder, work.key) and work.finished() is not None

    if finished_by_the_chief():
        logger.info(f"{work.name}: finished by the chief; pulled from {root.url(work.folder)}")
        return recorded_output(work.folder)
    if task_fn is train_phase:
        pulled = root.pull_checkpoints(work.folder)
        logger.info(f"{work.name}: training beside the chief" + (f" ({pulled} checkpoint file(s) pulled)" if pulled else ""))
        train_phase_beside_the_chief(work, **{name: value for name, value in arguments.items() if name != "root"})
    minutes = arguments["config"].storage.chief_wait_minutes
    logger.info(f"{work.name}: waiting for the chief's record in {root.url(work.folder)}")
    wait_for_chief(finished_by_the_chief, f"{work.name}: the chief's record in {root.url(work.folder)}", minutes)
    return recorded_output(work.folder)


def wait_for_chief(ready, what: str, minutes: float):
    """Poll `ready()` (a listing of the bucket each time, every 1 s at first, then every 15 s)
    until it returns something true, which is returned; ChiefTimeoutError after `minutes`."""
    deadline, delay = time.monotonic() + minutes * 60, 1.0
    while not (found := ready()):
        if time.monotonic() > deadline:
            raise ChiefTimeoutError(
                f"{what}: not there after {minutes:g} minutes (storage.chief_wait_minutes); is the chief running "
                "this config on the same run folder and data source, with the same TF_CONFIG cluster?"
            )
        time.sleep(delay)
        delay = min(delay * 2, 15.0)
    return found


def chief_summary(root: RunRoot, final_model_sha256: str, minutes: float) -> dict:
    """The run's summary (run.json) once the chief has pushed it for this final model."""

    def ready() -> dict | None:
        root.pull_loose_files()
        try:
            summary = json.loads((root.local / "run.json").read_text())
        except (OSError, ValueError):
            return None
        return summary if summary.get("final_model_sha256") == final_model_sha256 else None

    return wait_for_chief(ready, f"the run's summary in {root.remote}/run.json", minutes)


def _clear(work: Work) -> None:
    if work.name == "ingest":
        (work.folder / "result.json").unlink(missing_ok=True)  # shards are checked and rewritten by ingestion itself
    else:
        shutil.rmtree(work.folder)


@flow(name="finetune", description="Ingest, train the phases of the recipe, extract embeddings and a submission.")
def finetune(
    config_path: str = "configs/demo.yaml",
    overrides: dict[str, Any] | None = None,
    run_dir: str | None = None,
    force: list[str] | None = None,
) -> dict:
    """Run (or resume) the pipeline of `config_path` with `overrides` (dotted keys, e.g.
    {"phases.full.epochs": 3}) into `run_dir` (default runs/<config name>); `force`
    names steps to recompute. `run_dir` may be a gs:// URL. Returns the paths (or URLs)
    of scores.csv, the chart and submission.csv."""
    config = load_config(config_path, overrides)
    forced = check_force(config, force)
    root = RunRoot(run_dir or default_run_dir(config_path), StorageSettings.of(config))
    root.read_only = beside_the_chief(config, str(root), forced)
    root.pull_loose_files()  # run-config.yaml, for the owner check
    with claim_run_root(root.local, Path(config_path), config, overrides) as swept:
        if swept:
            get_run_logger().info(f"removed {swept} temporary file(s) left in {root.local} by an interrupted run")
        configure_runtime(config)
        return _run_steps(config, root, forced)


def beside_the_chief(config: PipelineConfig, run_dir: str, forced: set[str] | list[str]) -> bool:
    """Whether this process is a worker that is not the chief of a multi-worker cluster, known
    from TF_CONFIG before the strategy is made (which waits for every worker to connect). Such
    a worker cannot share a local run folder (each host's is its own; the hosts share a gs://
    one) nor force a step (the chief's to do): refused here, at once."""
    if resolve_strategy(config.runtime.strategy) != "multi_worker" or tf_config_chief():
        return False
    if not is_remote(run_dir):
        raise ConfigError(
            f"run folder {run_dir}: this process is a worker that is not the chief of its TF_CONFIG cluster, and "
            "writes nothing; every host of a multi-worker run needs the same gs:// run folder (--run-dir gs://...)"
        )
    if forced:
        raise ConfigError(f"force {', '.join(sorted(forced))}: only the chief recomputes steps; give force to the chief alone")
    return True


def local_inputs(config: PipelineConfig) -> PipelineConfig:
    """The config the tasks get: a gs:// weights file replaced by its copy in the local cache.
    (Cache keys are computed from the config as written.)"""
    if not is_remote(config.model.weights):
        return config
    path, _ = stage_file(config.model.weights, StorageSettings.of(config))
    return config.model_copy(update={"model": config.model.model_copy(update={"weights": str(path)})})


def _run_steps(config: PipelineConfig, root: RunRoot, forced: set[str]) -> dict:
    logger = get_run_logger()
    name = (root.remote or str(root.local.resolve())).rsplit("/", 1)[-1]
    steps = len(step_names(config))
    progress = create_progress_artifact(0.0, key=artifact_key(name, "progress"), description=f"steps done of {steps}")
    inputs = local_inputs(config)

    data = run(ingest_data, keys.ingestion_work(config, root), forced, root, config=inputs)
    data = {**data, "data_dir": str(Path(data["manifest"]).parent)}
    update_progress_artifact(progress, 100 * 1 / steps)
    baseline = run(score_baseline, keys.baseline_work(config, root, data), forced, root, config=inputs, data=data)
    update_progress_artifact(progress, 100 * 2 / steps)

    local = root.local
    table = ScoreTable(local / "scores.csv")
    table.add(baseline["row"])
    title = f"{config.description or name}: MAR@10 on {config.evaluation.split}"
    previous = None
    for number, phase in enumerate(config.phases, start=1):
        work = keys.phase_work(config, root, number, data, previous)
        previous = run(train_phase, work, forced, root, config=inputs, phase_name=phase.name, data=data,
                       previous=previous, root=root if root.remote else None)
        rows = phase_rows(previous, config.evaluation.final_split)
        for row in rows:
            table.add(row)
        write_score_chart(table.rows, local / "scores.png", title=title)
        root.push(local, recursive=False)  # the scores so far
        create_table_artifact(rows, key=artifact_key(name, "scores", phase.name), description=f"{phase.name}: scores per epoch")
        update_progress_artifact(progress, 100 * (2 + number) / steps)

    final = final_model(previous)
    if root.read_only:  # the extraction is the chief's alone: this worker ends with the chief's summary
        summary = chief_summary(root, final["model_sha256"], config.storage.chief_wait_minutes)
        logger.info(f"submission: {summary['submission']} (the chief's; {summary['final_split']}: "
                    f"mar_at_10 {summary['final_scores']['mar_at_10']:.4f})")
        return summary

    shards = embed_shards(config, inputs, root, "extraction" in forced, data, final)
    extraction = run(extract_embeddings, keys.extraction_work(config, root, data, final), forced, root,
                     config=inputs, data=data, final=final, shards=shards)
    embeddings = Path(extraction["embeddings manifest"]).parent
    submission = local / "submission.csv"
    write_bytes_atomic(submission, Path(extraction["submission"]).read_bytes())
    update_progress_artifact(progress, 100.0)
    create_markdown_artifact(chart_markdown(title, local / "scores.png", table.rows), key=artifact_key(name, "score-chart"),
                             description="the leaderboard metric after each phase and epoch")
    sheet = write_run_sheet(local / "search-sheet.png", embeddings, extraction["split"], Path(data["data_dir"]))
    create_markdown_artifact(sheet_markdown(f"{name}: similar items", sheet), key=artifact_key(name, "search-sheet"),
                             description="a few queries and their nearest index images, by the final model")

    def where(path: Path | str) -> str:  # paths of a local root; URLs of a gs:// one
        return root.show(Path(path)) if root.remote else str(Path(path).resolve())

    summary = {
        "run_dir": root.identity,
        "scores": where(table.path),
        "chart": where(local / "scores.png"),
        "submission": where(submission),
        "submission_sha256": sha256_file(submission),
        "embeddings": where(embeddings),
        "final_model": where(final["model"]),
        "final_model_sha256": final["model_sha256"],
        "final_split": extraction["split"],
        "final_scores": extraction["scores"],
        "search_sheet": where(sheet),
    }
    write_text_atomic(local / "run.json", json.dumps(summary, indent=1))
    root.push(local, recursive=False)
    logger.info(f"submission: {where(submission)} ({extraction['split']}: mar_at_10 {extraction['scores']['mar_at_10']:.4f})")
    return summary


def final_model(last_phase: dict) -> dict:
    """The model that embeds the final split, as {"model": path, "model_sha256": ...}: the last
    phase's `embedder` when it has one (a classifier's: images -> the features it was scored
    with, not its class probabilities), else its model (an embedding phase's embedder)."""
    name = "embedder" if "embedder" in last_phase else "model"
    return {"model": last_phase[name], "model_sha256": last_phase[f"{name}_sha256"]}


def embed_shards(config: PipelineConfig, inputs: PipelineConfig, root: RunRoot, forced: bool, data: dict,
                 final: dict) -> list[dict]:
    """`embed_shard` for each image shard of the final split, submitted to the flow's task
    runner `evaluation.extraction_concurrency` at a time, each folder readied as `run` does
    (pulled before its task is submitted, pushed once its result is in). Returns the tasks'
    outputs, in shard order."""
    group, shards = final_shards(config, Path(data["data_dir"]))
    works = [keys.shard_work(config, root, shard, final) for shard in shards]
    waiting, running, outputs, reused = deque(range(len(works))), {}, [None] * len(works), 0
    while waiting or running:
        while waiting and len(running) < config.evaluation.extraction_concurrency:
            number = waiting.popleft()
            fresh = before_task(works[number], forced, root)
            reused += not fresh
            task = embed_shard.with_options(refresh_cache=fresh)
            future = task.submit(works[number], config=inputs, data_dir=data["data_dir"], shard=shards[number], final=final)
            running[future] = number
        future = first_finished(list(running))
        number = running.pop(future)
        outputs[number] = after_task(works[number], root, future.result())
    get_run_logger().info(f"extraction: {len(works)} embedding shard(s) of {group}: {reused} reused, "
                          f"{len(works) - reused} computed")
    return outputs


def first_finished(futures: list, poll_seconds: float = 1.0):
    """The first of `futures` to finish, waited for in slices of `poll_seconds`: a wait
    without a timeout blocks the main thread in a lock that a signal sent to the process
    (and taken by another thread) never wakes, so Ctrl-C would wait for the shard to end."""
    while True:
        try:
            return next(as_completed(futures, timeout=poll_seconds))
        except TimeoutError:
            continue


@flow(name="compare-runs", description="Runs side by side: mar_at_10 per phase, test score, model size, time.")
def compare_runs(run_dirs: list[str], out_dir: str | None = None) -> dict:
    """`pvs compare` as a flow: writes OUT_DIR/comparison.png (default: the working folder)
    and a markdown artifact of the chart and the table. Returns the chart's path."""
    runs = read_runs([Path(run_dir) for run_dir in run_dirs])
    chart = write_chart(runs, Path(out_dir or ".") / "comparison.png")
    create_markdown_artifact(artifact_markdown(runs, chart), key=artifact_key("comparison", *(run.name for run in runs)),
                             description="mar_at_10 per phase, final test score, model size and training time per run")
    return {"chart": str(chart.resolve()), "runs": [run.name for run in runs]}
