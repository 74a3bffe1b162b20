"""Several hosts on one run: the chief of a multi-worker cluster writes, the others follow.

Every host of a multi-worker run (`runtime.strategy: multi_worker`, TF_CONFIG naming the
cluster) runs the same flow on the same gs:// run folder. The chief does what a single
host does. Every other worker writes nothing there: it takes each step the chief has
finished from the chief's record in the bucket, trains each phase in lockstep with the
chief (the collectives pair their steps), and waits for what only the chief makes (the
ingested data, the baseline, the extraction) for at most `storage.chief_wait_minutes`.
"""

import json
import time
from collections.abc import Callable

from prefect import get_run_logger

from phases.config import PipelineConfig
from phases.distribute import resolve_strategy, tf_config_chief
from phases.errors import ConfigError
from pipeline.records import Work
from pipeline.steps import recorded_output
from pipeline.storage import RunRoot, is_remote
from tfrecords.errors import UserError


class ChiefTimeoutError(UserError):
    """A worker that is not the chief waited longer than `storage.chief_wait_minutes`."""


def is_other_worker(config: PipelineConfig, run_dir: str, forced: set[str] | list[str]) -> bool:
    """Whether this process is a worker that is not the chief of a multi-worker cluster, known
    from TF_CONFIG before the strategy is made (which waits for every worker to connect). Such
    a worker cannot share a local run folder (each host's is its own; the hosts share a gs://
    one) nor force a step (the chief's to do): ConfigError, at once."""
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


def run_as_other_worker(work: Work, root: RunRoot, config: PipelineConfig, train: Callable[[], object] | None = None):
    """The output of `work` on a worker that is not the chief: pulled from the bucket when
    the chief has finished it (its record there has this key); else, for a phase (`train`
    given), trained in lockstep with the chief from the checkpoint the chief last pushed,
    then the chief's record awaited; any other step (ingestion, the baseline) awaited."""
    logger = get_run_logger()

    def finished_by_the_chief() -> bool:
        return root.pull_record(work.folder, work.key) and work.finished() is not None

    if finished_by_the_chief():
        logger.info(f"{work.name}: finished by the chief; pulled from {root.url(work.folder)}")
        return recorded_output(work)
    if train is not None:
        pulled = root.pull_checkpoints(work.folder)
        logger.info(f"{work.name}: training beside the chief" + (f" ({pulled} checkpoint file(s) pulled)" if pulled else ""))
        train()
    minutes = config.storage.chief_wait_minutes
    logger.info(f"{work.name}: waiting for the chief's record in {root.url(work.folder)}")
    wait_for_chief(finished_by_the_chief, f"{work.name}: the chief's record in {root.url(work.folder)}", minutes)
    return recorded_output(work)


def wait_for_chief(ready: Callable[[], object], what: str, minutes: float):
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
