"""`result.json`: what a finished step leaves in its folder, and the check before reusing it.

A record names the step's key, the step version and the parts its key was computed from
(so a later run can say why it reuses or reruns the step), the step's output (small: paths
relative to the folder, digests, scores) and the sha256 of every file the output points
to. A folder is reused only when its record has the expected key and every listed file
matches; anything else (missing, truncated, altered, another config's key) means the step
runs again. Prefect's own cached result is only a pointer to this folder: the record is
what is trusted. What each step's output holds: `pipeline/steps.py`.

    {"key": "...", "version": 1, "key_parts": {"phase": "<sha256>", ...},
     "output": {...}, "files": {"model": {"path": "model.keras", "sha256": "..."}, ...}}
"""

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from tfrecords.files import sha256_file, write_text_atomic

RECORD_NAME = "result.json"


@dataclass(frozen=True)
class RecordedFile:
    """A file a record vouches for: its absolute path here and its sha256."""

    path: Path
    sha256: str


@dataclass(frozen=True)
class Record:
    """A folder's `result.json`, its files resolved to absolute paths. `version` and
    `key_parts` are None and {} in records written before steps had versions."""

    key: str
    output: dict
    files: dict[str, RecordedFile]
    version: int | None = None
    key_parts: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Work:
    """One step's unit of work: its name in the UI, its cache key, its output folder, and
    what the key was computed from: the step kind, its version (`keys.STEP_VERSIONS`) and a
    digest per part of the key (`keys.py`)."""

    name: str
    key: str
    folder: Path
    kind: str = ""
    version: int | None = None
    key_parts: dict[str, str] = field(default_factory=dict)

    def finished(self) -> Record | None:
        """The record of this work if its folder holds a trustworthy one."""
        return read_record(self.folder, self.key)


def write_record(folder: Path, key: str, output: dict, files: dict[str, Path] | None = None,
                 version: int | None = None, key_parts: dict[str, str] | None = None) -> Record:
    """Write the record of the step finished in `folder` under `key`; `files` maps output
    names to files, stored relative to `folder` (usually inside it)."""
    record = {
        "key": key,
        "version": version,
        "key_parts": key_parts or {},
        "output": output,
        "files": {
            name: {"path": Path(os.path.relpath(path, folder)).as_posix(), "sha256": sha256_file(path)}
            for name, path in (files or {}).items()
        },
    }
    write_text_atomic(folder / RECORD_NAME, json.dumps(record, indent=1, default=str))
    return _resolved(folder, record)


def read_record(folder: Path, key: str) -> Record | None:
    """The record in `folder` if it has `key` and every file it lists matches its sha256;
    None when there is none to trust."""
    record = peek_record(folder)
    if record is None or record.key != key:
        return None
    for entry in record.files.values():
        if not entry.path.is_file() or sha256_file(entry.path) != entry.sha256:
            return None
    return record


def peek_record(folder: Path) -> Record | None:
    """The record in `folder` as it is, its files unchecked: for one just checked or
    written (a cached result may hold another machine's paths), and to compare keys."""
    try:
        record = json.loads((folder / RECORD_NAME).read_text())
        return _resolved(folder, record)
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return None


def _resolved(folder: Path, record: dict) -> Record:
    files = {name: RecordedFile((folder / entry["path"]).resolve(), entry["sha256"])
             for name, entry in record["files"].items()}
    return Record(record["key"], dict(record["output"]), files, record.get("version"), dict(record.get("key_parts") or {}))
