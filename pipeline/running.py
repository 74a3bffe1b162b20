"""Running the flow's steps: each folder readied, why it is reused or runs logged, the
cached task called, its folder pushed; the per-shard extraction mapped on a task runner.

    ingest: reused: key equal
    full: runs: config changed (phase)
    siamese: no trustworthy result in runs/demo/phases/04-siamese-...; runs: unfinished, resuming what is there
"""

import shutil
from dataclasses import dataclass
from typing import Any

from prefect import get_run_logger
from prefect.futures import wait
from prefect.task_runners import ThreadPoolTaskRunner

from phases.config import PipelineConfig
from phases.errors import ConfigError
from phases.extraction import final_shards
from pipeline import keys
from pipeline.config_files import load_config
from pipeline.coordination import is_other_worker, run_as_other_worker
from pipeline.reasons import reason_to_run
from pipeline.records import Work
from pipeline.steps import IngestedData, ModelFile, ShardEmbeddings, recorded_output
from pipeline.storage import RunRoot
from pipeline.tasks import embed_shard, train_phase, train_phase_in_lockstep
from tfrecords.manifest import ShardEntry

POLL_SECONDS = 1.0  # how long the main thread waits on the shards at a time (see `embed_shards`)


def step_names(config: PipelineConfig) -> list[str]:
    """What `force` may name: ingest, baseline, each phase, extraction."""
    return steps_with_phases([phase.name for phase in config.phases])


def steps_with_phases(phase_names: list[str]) -> list[str]:
    """The steps of a pipeline of these phases, in the order they run."""
    return ["ingest", "baseline", *phase_names, "extraction"]


def check_force(config: PipelineConfig, force: list[str] | None) -> set[str]:
    """The steps `force` names, as a set; ConfigError naming any that is no step."""
    names = step_names(config)
    unknown = [name for name in force or [] if name not in names]
    if unknown:
        raise ConfigError(f"force: no step named {', '.join(map(repr, unknown))}; the steps are {', '.join(names)}")
    return set(force or [])


@dataclass(frozen=True)
class RunRequest:
    """One run of the pipeline as asked (by `pvs run` or a deployment): the config of
    `config_path` with `overrides`, loaded once; the run folder; the steps to recompute
    (`forced`, checked against the config's steps); whether this process is a worker that
    is not the chief (checked to be able to: `coordination.is_other_worker`)."""

    config: PipelineConfig
    config_path: str
    overrides: dict[str, Any]
    run_dir: str
    forced: frozenset[str]
    other_worker: bool

    @classmethod
    def of(cls, config: PipelineConfig, config_path: str, overrides: dict[str, Any] | None, run_dir: str,
           force: list[str] | None) -> "RunRequest":
        """The request of a loaded `config`, checked: ConfigError (a UserError) for a force
        or a role that cannot run."""
        forced = check_force(config, force)
        return cls(config, str(config_path), dict(overrides or {}), str(run_dir), frozenset(forced),
                   is_other_worker(config, str(run_dir), forced))

    @classmethod
    def load(cls, config_path: str, overrides: dict[str, Any] | None, run_dir: str, force: list[str] | None) -> "RunRequest":
        """`of` the config loaded from `config_path` with `overrides`."""
        return cls.of(load_config(config_path, overrides), config_path, overrides, run_dir, force)


def run_step(task_fn, work: Work, forced: set[str] | frozenset[str], run_root: RunRoot, **arguments):
    """Call a cached task for `work`: recomputed (its folder cleared) when forced, and
    with Prefect's cached result refreshed when the folder's record does not hold.
    Under a gs:// root, the folder is pulled from the bucket first and pushed after;
    on a worker that is not the chief, see `coordination.run_as_other_worker`."""
    if run_root.read_only:
        train = None
        if task_fn is train_phase:
            train = lambda: train_phase_in_lockstep(work, **arguments)  # noqa: E731
        return run_as_other_worker(work, run_root, arguments["config"], train)
    fresh = ready_folder(work, work.name in forced, run_root)
    return finish_step(work, run_root, task_fn.with_options(refresh_cache=fresh)(work, **arguments))


def ready_folder(work: Work, forced: bool, root: RunRoot) -> bool:
    """Ready `work`'s folder for its task: cleared (here and in the bucket) when forced, else
    pulled from the bucket (a gs:// root). Logs why the step is reused or runs, and returns
    whether it must run, Prefect's cached result refreshed: when the folder holds no
    trustworthy record."""
    logger = get_run_logger()
    if forced:
        logger.info(f"{work.name}: forced; clearing {root.show(work.folder)}")
        if work.folder.exists():
            _clear(work)
        if work.kind != "ingest":
            root.remove(work.folder)
    else:
        pulled = root.pull(work.folder, work.key)
        if pulled:
            logger.info(f"{work.name}: {pulled} file(s) pulled from {root.url(work.folder)}")
    fresh = work.finished() is None
    if not fresh:
        logger.info(f"{work.name}: reused: key equal")
    elif forced:
        logger.info(f"{work.name}: runs: forced")
    elif work.folder.exists():
        logger.info(f"{work.name}: no trustworthy result in {root.show(work.folder)}; runs: {reason_to_run(work)}, "
                    "resuming what is there")
    else:
        logger.info(f"{work.name}: runs: {reason_to_run(work)}")
    return fresh


def finish_step(work: Work, root: RunRoot, output):
    """The output of `work`'s finished task; under a gs:// root, once its folder is pushed."""
    if root.remote is None:
        return output
    pushed = root.push(work.folder)
    if pushed:
        get_run_logger().info(f"{work.name}: {pushed} object(s) written to {root.url(work.folder)}")
    # Prefect's cached result may come from another machine's mirror: its paths are not ours.
    return recorded_output(work)


def _clear(work: Work) -> None:
    if work.kind == "ingest":
        (work.folder / "result.json").unlink(missing_ok=True)  # shards are checked and rewritten by ingestion itself
    else:
        shutil.rmtree(work.folder)


def embed_shards(config: PipelineConfig, inputs: PipelineConfig, root: RunRoot, forced: bool, data: IngestedData,
                 final: ModelFile) -> list[ShardEmbeddings]:
    """`embed_shard` for each image shard of the final split (`embed_shard_jobs`)."""
    group, shards = final_shards(config, data.data_dir)
    works = [keys.shard_work(config, root, shard, final) for shard in shards]
    outputs, computed = embed_shard_jobs(inputs, root, forced, final,
                                         [(work, data, shard) for work, shard in zip(works, shards)],
                                         config.evaluation.extraction_concurrency)
    get_run_logger().info(f"extraction: {len(works)} embedding shard(s) of {group}: {len(works) - computed} reused, "
                          f"{computed} computed")
    return outputs


def embed_shard_jobs(inputs: PipelineConfig, root: RunRoot, forced: bool, final: ModelFile,
                     jobs: list[tuple[Work, IngestedData, ShardEntry]], concurrency: int
                     ) -> tuple[list[ShardEmbeddings], int]:
    """`embed_shard` for each (work, the data it is in, image shard), on a task runner of
    `concurrency` threads, each folder readied as `run_step` does (pulled before its task is
    submitted, pushed once its result is in). Returns the tasks' outputs, in order, and how
    many of them ran (the others reused their folder's record).

    The main thread waits on the shards in slices of POLL_SECONDS: a wait without a timeout
    blocks it in a lock that a signal sent to the process (and taken by another thread)
    never wakes, so Ctrl-C would wait for every shard to end."""
    outputs: list[ShardEmbeddings | None] = [None] * len(jobs)
    fresh = [ready_folder(work, forced, root) for work, _, _ in jobs]
    with ThreadPoolTaskRunner(max_workers=concurrency) as runner:
        futures = {
            runner.submit(embed_shard.with_options(refresh_cache=again),
                          {"work": work, "config": inputs, "data": data, "shard": shard, "final": final}): number
            for number, ((work, data, shard), again) in enumerate(zip(jobs, fresh))
        }
        pending = list(futures)
        while pending:
            done, not_done = wait(pending, timeout=POLL_SECONDS)
            for future in done:
                number = futures[future]
                outputs[number] = finish_step(jobs[number][0], root, future.result())
            pending = list(not_done)
    return outputs, sum(fresh)
