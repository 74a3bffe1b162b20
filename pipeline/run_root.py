"""A run root belongs to one config and is used by one run at a time.

`check_run_folder` refuses, before a run starts, a local run folder it cannot use (a file,
read-only, another config's, inside its own image folder). `claim_run_root` is held for
the whole flow:
1. an exclusive lock (`run.lock`, flock): a second run on the same root fails at once,
   naming the process that holds it. The kernel drops the lock when its process dies,
   so a killed run never leaves a stale lock behind;
2. the owner check: `run-config.yaml` records which config file made the root, as given
   and resolved; a run of another config file is refused (its scores.csv and submission
   would mix with ours), even one of the same name in another folder;
3. temporary files of killed writers are swept (safe: no one else writes here now);
4. `run-config.yaml` is rewritten with this run's config file, `--set` overrides and
   resolved config, for the record and for `run_command`, which says how to go on.

flock works on local disks and NFSv4; gs:// roots (issue 7) need another lock.
"""

import contextlib
import errno
import shlex
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

from phases.config import PipelineConfig
from phases.errors import ConfigError
from pipeline.config_files import resolve_config_path
from pipeline.config_overrides import override_arguments
from pipeline.outputs import folder_problem
from pipeline.storage.remote import is_remote
from tfrecords.errors import UserError
from tfrecords.files import remove_stale_temporaries, write_text_atomic
from tfrecords.locks import hold_lock
from tfrecords.sources import check_outside_source

LOCK_NAME = "run.lock"
CONFIG_NAME = "run-config.yaml"
# What opening a run folder's lock raises when the folder cannot be written: a file on its
# path, no permission, a read-only file system.
_UNWRITABLE = {errno.EEXIST, errno.ENOTDIR, errno.EACCES, errno.EPERM, errno.EROFS}


class RunRootError(UserError):
    """The run root is in use by another run, belongs to another config, or cannot be written."""


def default_run_dir(config_path: str | Path) -> Path:
    """runs/<config file name>: where `pvs run` writes without --run-dir."""
    return Path("runs") / Path(config_path).stem


def check_run_folder(run_dir: str | Path, config_path: str | Path, config: PipelineConfig) -> None:
    """Refuse, before a run starts, a local run folder that it cannot use: a file, one this
    user cannot write, one holding a run of another config file, or one inside its image
    folder `data.source` (whose listing would take the run's charts and sheets for images).
    Reads only. A gs:// run folder is checked by the flow, once its record is pulled."""
    if is_remote(run_dir):
        return
    root = Path(run_dir)
    _check_writable(root)
    _check_owner(root, config_path)
    check_outside_source(config.data.source, root, role="run folder")


@contextlib.contextmanager
def claim_run_root(root: Path, config_path: Path, config: PipelineConfig,
                   overrides: dict[str, Any] | None = None) -> Iterator[int]:
    """Hold `root` for one run of `config` (read from `config_path`, with `overrides`);
    yields how many stale temporary files were swept. Raises RunRootError when the root
    is taken or cannot be written."""
    _check_writable(root)

    def in_use(holder: str) -> RunRootError:
        return RunRootError(f"{root}: another run is using this run folder ({holder}); wait for it to end, "
                            "or give this run another --run-dir")

    held = contextlib.ExitStack()
    try:
        held.enter_context(hold_lock(root / LOCK_NAME, in_use))
    except OSError as error:  # refused although os.access allowed it (NFS squashing root, ...)
        if error.errno not in _UNWRITABLE:
            raise
        raise _unwritable(root, error.strerror) from None
    with held:
        _check_owner(root, config_path)
        swept = remove_stale_temporaries(root, recursive=True)
        record = {"config_file": str(config_path), "config_path": str(resolve_config_path(config_path).resolve()),
                  "overrides": dict(overrides or {}), "config": config.model_dump(mode="json")}
        write_text_atomic(root / CONFIG_NAME, f"# The config of the last run in this folder.\n{yaml.safe_dump(record, sort_keys=False)}")
        yield swept


def recorded_config(root: Path) -> dict:
    """RUN_DIR/run-config.yaml: `config_file` (as given), `config_path` (resolved), the
    `overrides` and the resolved `config` of the last run there (runs before issue 17
    recorded the first and last only); {} when there is none or it is unreadable (its
    writer is atomic, so that is a user's edit)."""
    try:
        record = yaml.safe_load((root / CONFIG_NAME).read_text())
    except (OSError, yaml.YAMLError):
        return {}
    return record if isinstance(record, dict) else {}


def run_command(run_dir: str | Path) -> str:
    """The `pvs run` command, in backticks, that goes on with the run in `run_dir`: its
    config file and `--set` overrides from its record, quoted for a shell. A record
    written before runs recorded their overrides cannot give them, and says so."""
    record = recorded_config(Path(run_dir))
    config = str(record.get("config_file", "CONFIG"))
    command = f"pvs run --config {shlex.quote(config)} --run-dir {shlex.quote(str(run_dir))}"
    overrides = record.get("overrides")
    if not isinstance(overrides, dict):
        return f"`{command}` (with the --set options the run was started with, if any)"
    return f"`{command} {override_arguments(overrides)}`" if overrides else f"`{command}`"


def _check_owner(root: Path, config_path: str | Path) -> None:
    """Refuse a run folder whose record names another config file than `config_path`.
    Files are compared resolved: configs/a.yaml and other/a.yaml are two configs, `demo`
    and configs/demo.yaml one. A recorded file that is not found here (a run folder copied
    from another machine, or recorded relative to another working folder, as runs did
    before they recorded it resolved) is compared by file name, all that survives a move."""
    record = recorded_config(root)
    recorded = record.get("config_file")
    if not isinstance(recorded, str):
        return
    ours = resolve_config_path(config_path).resolve()
    theirs = _recorded_config_path(record)
    if (theirs == ours) if theirs else (Path(recorded).stem == ours.stem):
        return
    # The same text from two working folders names two files: then show where each is.
    shown = (theirs, ours) if recorded == str(config_path) else (recorded, config_path)
    default = default_run_dir(config_path)
    other = "give this run another --run-dir"
    if default.resolve() != root.resolve():  # the same file name in two folders has one default
        other += f" (the default is {default})"
    raise RunRootError(
        f"{root}: this run folder holds a run of {shown[0]}, not of {shown[1]}; {other}, or delete the folder "
        "to start it again"
    )


def _recorded_config_path(record: dict) -> Path | None:
    """The config file a run root's record names, resolved, when it is found here."""
    for text in (record.get("config_path"), record.get("config_file")):
        if isinstance(text, str):
            with contextlib.suppress(ConfigError):
                return resolve_config_path(text).resolve()
    return None


def _check_writable(root: Path) -> None:
    if root.exists() and not root.is_dir():
        raise RunRootError(f"{root}: exists and is not a folder; give --run-dir a folder (new, or of an earlier run "
                           "of this config)")
    problem = folder_problem(root)
    if problem:
        raise _unwritable(root, problem)


def _unwritable(root: Path, problem: str) -> RunRootError:
    return RunRootError(f"{root}: the run folder cannot be written ({problem}); a run keeps its checkpoints and "
                        "scores there: give another --run-dir, or make this one writable")


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
