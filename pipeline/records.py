"""`result.json`: what a finished task leaves in its folder, and the check before reusing it.

A record names the task's key, its output (small: paths relative to the folder,
digests, scores) and the sha256 of every file the output points to. A folder is
reused only when its record has the expected key and every listed file matches;
anything else (missing, truncated, altered, another config's key) means the task
runs again. Prefect's own cached result is only a pointer to this folder: the
record is what is trusted.
"""

import json
import os
from dataclasses import dataclass
from pathlib import Path

from tfrecords.files import sha256_file, write_text_atomic

RECORD_NAME = "result.json"


def write_record(folder: Path, key: str, output: dict, files: dict[str, Path] | None = None) -> dict:
    """Write the record of a finished task; `files` maps output names to
    files, stored relative to `folder` (usually inside it)."""
    record = {
        "key": key,
        "output": output,
        "files": {
            name: {"path": Path(os.path.relpath(path, folder)).as_posix(), "sha256": sha256_file(path)}
            for name, path in (files or {}).items()
        },
    }
    write_text_atomic(folder / RECORD_NAME, json.dumps(record, indent=1, default=str))
    return resolved(folder, record)


def read_record(folder: Path, key: str) -> dict | None:
    """The output of the finished task in `folder` with `key`, files resolved to paths
    and checked by sha256; None when there is none to trust."""
    path = folder / RECORD_NAME
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if record.get("key") != key:
        return None
    for entry in record["files"].values():
        file = folder / entry["path"]
        if not file.is_file() or sha256_file(file) != entry["sha256"]:
            return None
    return resolved(folder, record)


def recorded_output(folder: Path) -> dict:
    """The output in `folder`'s record, its paths resolved here, without checking the files:
    for a record just checked or written (a cached result may hold another machine's paths)."""
    return resolved(folder, json.loads((folder / RECORD_NAME).read_text()))


def resolved(folder: Path, record: dict) -> dict:
    """The record's output plus, per listed file, `<name>` (absolute path) and `<name>_sha256`."""
    output = dict(record["output"])
    for name, entry in record["files"].items():
        output[name] = str((folder / entry["path"]).resolve())
        output[f"{name}_sha256"] = entry["sha256"]
    return output


@dataclass(frozen=True)
class Work:
    """One task's unit of work: its name in the UI, its cache key, its output folder."""

    name: str
    key: str
    folder: Path

    def finished(self) -> dict | None:
        """The output of this work if its folder holds a trustworthy record of it."""
        return read_record(self.folder, self.key)
