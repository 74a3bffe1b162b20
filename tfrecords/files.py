"""Atomic writes and content digests: the two rules every file of a run follows.

A reader never sees a half-written file: everything is written under a temporary
name in the same folder, flushed to disk, then renamed (atomic on POSIX).
A file is trusted only after its sha256 matches the one recorded for it.
"""

import contextlib
import hashlib
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterator

_CHUNK = 1 << 20  # 1 MiB reads: hashing a 128 MB shard costs ~0.2 s, not memory.


def sha256_file(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's content, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def temporary_name(path: Path) -> Path:
    """A unique sibling name for `path`, hidden and marked as temporary."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    return Path(name)


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
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise


def write_bytes_atomic(path: str | os.PathLike, data: bytes) -> None:
    """Write `data` to `path` atomically."""
    with atomic_writer(path) as handle:
        handle.write(data)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    """Write UTF-8 `text` to `path` atomically."""
    write_bytes_atomic(path, text.encode("utf-8"))


def remove_stale_temporaries(folder: Path) -> int:
    """Delete `.*.tmp` files left by killed writers; returns how many were removed."""
    removed = 0
    for stale in folder.glob(".*.tmp"):
        stale.unlink(missing_ok=True)
        removed += 1
    return removed
