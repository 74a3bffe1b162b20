"""A run root belongs to one config and is used by one run at a time.

`claim_run_root` is held for the whole flow:
1. an exclusive lock (`run.lock`, flock): a second run on the same root fails at once,
   naming the process that holds it. The kernel drops the lock when its process dies,
   so a killed run never leaves a stale lock behind;
2. the owner check: `run-config.yaml` records which config file made the root; a run
   of another config file is refused (its scores.csv and submission would mix with ours);
3. temporary files of killed writers are swept (safe: no one else writes here now);
4. `run-config.yaml` is rewritten with this run's resolved config, for the record.

flock works on local disks and NFSv4; gs:// roots (issue 7) need another lock.
"""

import contextlib
import fcntl
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import yaml

from phases.config import PipelineConfig
from tfrecords.errors import UserError
from tfrecords.files import remove_stale_temporaries, write_text_atomic

LOCK_NAME = "run.lock"
CONFIG_NAME = "run-config.yaml"


class RunRootError(UserError):
    """The run root is in use by another run, or belongs to another config."""


@contextlib.contextmanager
def claim_run_root(root: Path, config_path: Path, config: PipelineConfig) -> Iterator[int]:
    """Hold `root` for one run of `config` (read from `config_path`); yields how many
    stale temporary files were swept. Raises RunRootError when the root is taken."""
    root.mkdir(parents=True, exist_ok=True)
    with open(root / LOCK_NAME, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            raise RunRootError(
                f"{root}: another run is using this run folder ({holder}); wait for it to end, "
                "or give this run another --run-dir"
            ) from None
        try:
            lock.seek(0)
            lock.truncate()
            lock.write(f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
            lock.flush()
            _check_owner(root, config_path)
            swept = remove_stale_temporaries(root, recursive=True)
            record = {"config_file": str(config_path), "config": config.model_dump(mode="json")}
            write_text_atomic(root / CONFIG_NAME, f"# The config of the last run in this folder.\n{yaml.safe_dump(record, sort_keys=False)}")
            yield swept
        finally:
            lock.seek(0)
            lock.truncate()
            fcntl.flock(lock, fcntl.LOCK_UN)


def recorded_config(root: Path) -> dict:
    """RUN_DIR/run-config.yaml: `config_file` and the resolved `config` of the last run there;
    {} when there is none or it is unreadable (its writer is atomic, so that is a user's edit)."""
    try:
        record = yaml.safe_load((root / CONFIG_NAME).read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return record if isinstance(record, dict) else {}


def _check_owner(root: Path, config_path: Path) -> None:
    recorded = recorded_config(root).get("config_file")
    if not isinstance(recorded, str):
        return
    owner = Path(recorded)
    if owner.stem != config_path.stem:
        raise RunRootError(
            f"{root}: this run folder holds a run of {owner}, not of {config_path}; give this run another "
            f"--run-dir (the default is runs/{config_path.stem}), or delete the folder to start it again"
        )


def recorded_path(recorded: str, summary: dict, run_dir: Path) -> Path:
    """A path that run.json recorded, inside `run_dir` as it is now: run.json records
    absolute paths, which point at the old place once a run folder is moved or copied
    (e.g. from the GPU machine), and gs:// URLs for a run in a bucket, which its local
    mirror holds in the same places. Where it is not there, but still at the recorded
    place (a run.json copied on its own, sharing the run's files), that place."""
    path = Path(recorded)
    if not summary.get("run_dir"):
        return path
    try:
        moved = run_dir / path.relative_to(summary["run_dir"])
    except ValueError:
        return path  # recorded outside the run folder
    return moved if moved.exists() or not path.exists() else path
