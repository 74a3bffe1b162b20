"""Where commands write: a file the user names (`--chart`, `--table`, `--sheet`, `--out`)
or its default inside a run or data folder, and run folders themselves.

Checked before the work, so a path that cannot be written costs one line at once, not a
traceback after minutes of embedding. The check asks `os.access`, which cannot see every
refusal (NFS squashing root, some FUSE mounts), so `output_file` also turns a write
refused all the same into that line.
"""

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from tfrecords.errors import UserError


class OutputError(UserError):
    """A file cannot be written where the command would write it."""


def folder_problem(folder: str | os.PathLike) -> str | None:
    """Why files cannot be made in `folder` (or, while it does not exist, in the nearest
    folder above it, which would hold it), in words naming the culprit; None when they can."""
    existing = Path(folder)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        return f"{existing} is a file, not a folder"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{existing} is read-only for this user"
    return None


def check_output(path: str | os.PathLike, option: str, example: str, default: bool = False) -> None:
    """Raise OutputError unless a file can be written at `path`. `option` is the command's
    option that names it (`--chart`), `example` a file name to suggest (`chart.png`), and
    `default` says the user did not give the option (the path is the command's default)."""
    path = Path(path)
    if path.is_dir():
        raise OutputError(f"{option} {path}: is a folder; give a file's path, e.g. {option} {path / example}")
    problem = folder_problem(path.parent)
    if problem is None:
        return
    if default:
        raise OutputError(f"{path}: cannot be written ({problem}); give {option} to write it elsewhere, "
                          f"e.g. {option} {example}")
    raise OutputError(f"{option} {path}: cannot be written ({problem}); give a path in a folder you can write")


@contextlib.contextmanager
def output_file(path: str | os.PathLike | None, option: str, example: str, default: bool = False) -> Iterator[None]:
    """`check_output` now (nothing when `path` is None); then, around the command's work,
    a refused write of `path` becomes the same one-line OutputError."""
    if path is None:
        yield
        return
    check_output(path, option, example, default)
    try:
        yield
    except PermissionError as error:
        if not _is_write_of(error, Path(path)):
            raise
        raise OutputError(f"{option} {path}: cannot be written ({error.strerror}); give a path in a folder you "
                          "can write") from None


def _is_write_of(error: OSError, path: Path) -> bool:
    """Whether a refused operation wrote `path`: the file, its temporary sibling
    (`tfrecords.files.atomic_writer`'s `.NAME.*.tmp`) or a folder made to hold it."""
    if not error.filename:
        return False
    written, target = Path(os.fsdecode(error.filename)).resolve(), path.resolve()
    sibling = written.parent == target.parent and written.name.startswith(f".{target.name}.")
    return written == target or sibling or written in target.parents
