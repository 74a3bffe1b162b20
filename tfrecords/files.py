"""Atomic writes and content digests: the two rules every file of a run follows.

A reader never sees a half-written file: everything is written under a temporary
name in the same folder, flushed to disk, then renamed (atomic on POSIX).
A file is trusted only after its sha256 matches the one recorded for it.
"""

import contextlib
import errno
import functools
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import BinaryIO

from tfrecords.errors import StorageError

_CHUNK = 1 << 20  # 1 MiB reads: hashing a 128 MB shard costs ~0.2 s, not memory.
# Errors of the disk rather than of the data: no space, quota, file size limit, read-only.
_DISK_ERRORS = {errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EROFS}


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's content, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def raise_if_disk_error(path: str | os.PathLike, error: BaseException) -> None:
    """Raise a StorageError naming `path` when `error` (or its cause) is a disk error;
    return otherwise, for the caller to re-raise `error` as it is.

    Libraries that write files (Keras, h5py) may wrap the OSError; its errno is looked
    for along the chain of causes."""
    cause = error
    while cause is not None:
        if isinstance(cause, OSError) and cause.errno in _DISK_ERRORS:
            raise StorageError(
                f"{path}: could not be written ({os.strerror(cause.errno)}); its previous version is kept. "
                "Free some space (or raise the limit) and run the same command again to resume"
            ) from error
        cause = cause.__cause__ or cause.__context__


def temporary_name(path: Path) -> Path:
    """A unique sibling name for `path`, hidden and marked as temporary, created empty with
    the mode a plain `open` gives (0666 less the umask): mkstemp's 0600 would follow the
    file through its rename and keep a team's other accounts from reading it."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~current_umask())
    finally:
        os.close(fd)
    return Path(name)


def current_umask() -> int:
    """The process's umask, read without changing it: from /proc/self/status (Linux 4.7+;
    ~0.1 ms, little beside the fsync of an atomic write). Elsewhere, the umask found by
    setting and restoring it once, at the first call (process-wide, so racy with threads
    creating files at that instant; a later change of the umask is not seen there)."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    return _umask_by_setting()


@functools.cache
def _umask_by_setting() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_writer(path: str | os.PathLike) -> Iterator[BinaryIO]:
    """Open a binary file that appears at `path` only if the block finishes.

    On an exception (or a kill) the destination keeps its previous content and the
    temporary file is removed (or, after a kill, left as a `.tmp` to be swept).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_name(path)
    try:
        with open(temporary, "wb") as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException as error:
        temporary.unlink(missing_ok=True)
        raise_if_disk_error(path, error)
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically."""
    with atomic_writer(path) as handle:
        handle.write(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 `text` to `path` atomically."""
    write_bytes_atomic(path, text.encode("utf-8"))


def remove_stale_temporaries(folder: Path, recursive: bool = False) -> int:
    """Delete the temporary files left by killed writers (`.*.tmp`, and `.*.tmp.keras`
    of model saves) in `folder` (and below it when `recursive`); returns how many.
    Only safe while no other process writes there (a run holds its run root's lock)."""
    removed = 0
    for pattern in (".*.tmp", ".*.tmp.keras"):
        for stale in folder.rglob(pattern) if recursive else folder.glob(pattern):
            stale.unlink(missing_ok=True)
            removed += 1
    return removed


def link_into_place(source: Path, destination: Path) -> None:
    """`destination` becomes the same file as `source`, renamed into place: a hard link,
    or a copy where a link cannot be made (across file systems)."""
    if destination.exists() and os.path.samefile(source, destination):
        return
    temporary = temporary_name(destination)
    temporary.unlink()
    try:
        try:
            os.link(source, temporary)
        except OSError:
            shutil.copyfile(source, temporary)
        os.replace(temporary, destination)
    finally:
        temporary.unlink(missing_ok=True)
