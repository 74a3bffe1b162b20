"""One process at a time in a folder: an exclusive flock on a lock file inside it.

A second process that asks for the lock fails at once, with the holder's line read from
the lock file (`pid N on HOST, since T`). The kernel drops the lock when its process
dies, so a killed holder never leaves a stale lock behind; the file itself stays (it is
never deleted: a process that opened it before the deletion would lock a file no one
else sees). flock works on local disks and NFSv4, not across gs:// buckets.
"""

import contextlib
import fcntl
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from tfrecords.errors import UserError


@contextlib.contextmanager
def hold_lock(lock_path: Path, in_use: Callable[[str], UserError]) -> Iterator[None]:
    """Hold `lock_path` (created, with its folder, when missing) for the block.

    When another process holds it, raise `in_use(holder)`, where `holder` is that
    process's line (e.g. `pid 12 on host-a, since 2027-01-05 10:00:00`), without
    changing the file. The holder line is written while the lock is held and cleared
    on release."""
    lock_path.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_path, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            raise in_use(lock.read().strip() or "another process") from None
        try:
            lock.seek(0)
            lock.truncate()
            lock.write(f"pid {os.getpid()} on {socket.gethostname()}, since {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
            lock.flush()
            yield
        finally:
            lock.seek(0)
            lock.truncate()
            fcntl.flock(lock, fcntl.LOCK_UN)
