"""Where a run writes: the `RunRoot` interface and its two implementations.

`RunRoot(location, settings)` gives a `LocalRunRoot` for a folder on this machine, whose
pulls and pushes do nothing, or a `RemoteRunRoot` for any URL of `SCHEMES` (gs://, s3://),
which keeps a mirror on local disk (`storage.cache_dir`/runs/...). Tasks and phases always
write the local folder, `root.local`. For a remote root each step pulls its folder from
the bucket before it starts (only the files its record lists when it is finished there;
everything, checkpoints included, when it is not, so a phase resumes on another machine),
and pushes it back after every epoch and at its end. The bucket is the truth; the mirror
is a cache that can be deleted at any time. A folder's record (`result.json`) is uploaded
last: a record in the bucket vouches for files that are there.
"""

import hashlib
import json
import os
from collections.abc import Sequence
from pathlib import Path

from pipeline.records import RECORD_NAME
from pipeline.storage.remote import (
    delete,
    download,
    holds,
    is_remote,
    join,
    parallel,
    remote_listing_or_empty,
    upload,
)
from pipeline.storage.shard_cache import ShardCache, StorageSettings
from tfrecords.manifest import MANIFEST_NAME, ShardEntry

NEVER_PUSHED = {"run.lock", "ingest.lock"}  # local locks of the mirror mean nothing elsewhere


class RunRoot:
    """The interface of a run root; `RunRoot(location, settings)` returns the implementation
    for `location`, as `Path(...)` returns a PosixPath.

    `local` is what tasks and phases write to; `identity` names the root in cache keys (the
    URL for a remote root, so every machine computes the same keys); `remote` is that URL,
    None for a local root. Pulls and pushes return how many files they copied or deleted."""

    local: Path
    identity: str
    remote: str | None
    # A worker that is not the chief of a multi-worker cluster reads the bucket, never writes it.
    read_only: bool = False

    def __new__(cls, *arguments, **keywords):
        if cls is RunRoot:  # (unpickling and copying make the implementation itself, with no arguments)
            location = arguments[0] if arguments else keywords["location"]
            cls = RemoteRunRoot if is_remote(location) else LocalRunRoot
        return super().__new__(cls)

    def __str__(self) -> str:
        return self.remote or str(self.local)

    def url(self, folder: Path) -> str:
        """Where a folder or file of `local` is kept: its URL for a remote root."""
        raise NotImplementedError

    def show(self, path: Path) -> str:
        """A local path as users should see it: its URL for a remote root."""
        return self.url(path)

    def pull_loose_files(self) -> int:
        """The files directly in the root (run-config.yaml, scores, ...)."""
        raise NotImplementedError

    def pull(self, folder: Path, key: str) -> int:
        """A step's folder: when the bucket holds its finished record (with `key`), the files
        the record lists; otherwise everything there (checkpoints and all), so an unfinished
        step resumes. Shards listed by a manifest come through the shard cache."""
        raise NotImplementedError

    def pull_record(self, folder: Path, key: str) -> bool:
        """Whether the bucket holds a step's finished record with `key`; if so, its files are
        pulled. One listing when it does not (what a worker waiting for the chief polls)."""
        raise NotImplementedError

    def pull_checkpoints(self, folder: Path) -> int:
        """A step's `checkpoints/` as the bucket holds them: what a worker that is not the chief
        resumes from, at the chief's epoch (it pulls no feature cache: it makes its own)."""
        raise NotImplementedError

    def pull_finished(self, folder: Path, only: Sequence[str] | None = None) -> int:
        """A step's folder as the record in the bucket lists it (its key read from there), or
        with `only`, the record and those of its files; nothing when there is no record."""
        raise NotImplementedError

    def remove(self, folder: Path) -> int:
        """Delete the bucket's copy of `folder` (a step recomputed with --force)."""
        raise NotImplementedError

    def push(self, folder: Path, recursive: bool = True) -> int:
        """Make the bucket's copy of `folder` equal to the local one: upload what is new or
        changed (the record last), then delete what is no longer here (old checkpoints)."""
        raise NotImplementedError


class LocalRunRoot(RunRoot):
    """A run root on this machine: the folder is the truth, and there is nothing to copy."""

    def __init__(self, location: str | os.PathLike, settings: StorageSettings | None = None):
        self.local = Path(location)
        self.identity = str(self.local.resolve())
        self.remote = None

    def url(self, folder: Path) -> str:
        return str(folder)

    def pull_loose_files(self) -> int:
        return 0

    def pull(self, folder: Path, key: str) -> int:
        return 0

    def pull_record(self, folder: Path, key: str) -> bool:
        return False

    def pull_checkpoints(self, folder: Path) -> int:
        return 0

    def pull_finished(self, folder: Path, only: Sequence[str] | None = None) -> int:
        return 0

    def remove(self, folder: Path) -> int:
        return 0

    def push(self, folder: Path, recursive: bool = True) -> int:
        return 0


class RemoteRunRoot(RunRoot):
    """A run root at an fsspec URL (gs://, s3://) and its local mirror."""

    def __init__(self, location: str, settings: StorageSettings | None = None):
        if settings is None:
            raise ValueError(f"a remote run root ({location}) needs storage settings")
        self.remote = self.identity = str(location).rstrip("/")
        self.local = mirror_path(self.remote, settings.cache_dir)
        self.shards, self.workers = ShardCache(settings), settings.workers

    def url(self, folder: Path) -> str:
        return join(self.remote, Path(os.path.relpath(folder, self.local)).as_posix())

    # Pull: the bucket into the mirror.

    def pull_loose_files(self) -> int:
        listing = {name: info for name, info in remote_listing_or_empty(self.remote).items() if "/" not in name}
        return self._download(self.local, self.remote, listing)

    def pull(self, folder: Path, key: str) -> int:
        url = self.url(folder)
        return self._pull_listed(folder, url, remote_listing_or_empty(url), key)

    def pull_record(self, folder: Path, key: str) -> bool:
        url = self.url(folder)
        listing = remote_listing_or_empty(url)
        _, record = self._fetch_record(folder, url, listing)
        if record is None or record.get("key") != key:
            return False
        self._pull_listed(folder, url, listing, key)
        return True

    def pull_checkpoints(self, folder: Path) -> int:
        url = self.url(folder)
        listing = {name: info for name, info in remote_listing_or_empty(url).items() if name.startswith("checkpoints/")}
        return self._download(folder, url, listing)

    def pull_finished(self, folder: Path, only: Sequence[str] | None = None) -> int:
        url = self.url(folder)
        listing = remote_listing_or_empty(url)
        copied, record = self._fetch_record(folder, url, listing)
        key = None if record is None else record.get("key")
        if key is None:
            return copied
        if only is not None:
            return copied + self._download(folder, url, {name: listing[name] for name in only if name in listing})
        return copied + self._pull_listed(folder, url, listing, key)

    def _pull_listed(self, folder: Path, url: str, listing: dict[str, dict], key: str) -> int:
        """`pull` from the folder's `listing`, already made."""
        if not listing:
            return 0
        copied, record = self._fetch_record(folder, url, listing)
        if record is not None and record.get("key") == key:
            wanted = {entry["path"] for entry in record.get("files", {}).values()} | {RECORD_NAME}
            listing = {name: info for name, info in listing.items() if name in wanted}
        shards = {}
        if MANIFEST_NAME in listing:
            copied += self._download(folder, url, {MANIFEST_NAME: listing[MANIFEST_NAME]})
            shards = {entry.file: entry for entry in _manifest_shards(folder / MANIFEST_NAME) if entry.file in listing}
        if shards:
            copied += self.shards.stage(url, list(shards.values()), folder)
        rest = {name: info for name, info in listing.items() if name not in shards and name not in (RECORD_NAME, MANIFEST_NAME)}
        return copied + self._download(folder, url, rest)

    def _fetch_record(self, folder: Path, url: str, listing: dict[str, dict]) -> tuple[int, dict | None]:
        """The step's record as the bucket holds it, downloaded into `folder` when it changed:
        (files copied, the record); None for no record or one that is not a JSON object."""
        if RECORD_NAME not in listing:
            return 0, None
        copied = self._download(folder, url, {RECORD_NAME: listing[RECORD_NAME]})
        try:
            record = json.loads((folder / RECORD_NAME).read_text())
        except (OSError, ValueError):
            return copied, None
        return copied, record if isinstance(record, dict) else None

    def _download(self, folder: Path, url: str, listing: dict[str, dict]) -> int:
        """Download the listed objects whose local copy is missing or different."""
        todo = [name for name, entry in listing.items() if not holds(folder / name, join(url, name), entry)]
        parallel(lambda name: download(join(url, name), folder / name, listing[name]), todo, self.workers)
        return len(todo)

    def remove(self, folder: Path) -> int:
        if self.read_only:
            return 0
        url = self.url(folder)
        names = list(remote_listing_or_empty(url))
        parallel(lambda name: delete(join(url, name)), names, self.workers)
        return len(names)

    # Push: the mirror into the bucket.

    def push(self, folder: Path, recursive: bool = True) -> int:
        if self.read_only or not folder.is_dir():
            return 0
        url = self.url(folder)
        listing = remote_listing_or_empty(url)
        if not recursive:
            listing = {name: info for name, info in listing.items() if "/" not in name}
        local = {path.relative_to(folder).as_posix(): path for path in _files(folder, recursive)}
        todo = [name for name, path in local.items() if not holds(path, join(url, name), listing.get(name))]
        last = [name for name in todo if name.rsplit("/", 1)[-1] == RECORD_NAME]
        parallel(lambda name: upload(local[name], join(url, name)), [name for name in todo if name not in last], self.workers)
        for name in last:
            upload(local[name], join(url, name))
        gone = [name for name in listing if name not in local and name.rsplit("/", 1)[-1] not in NEVER_PUSHED]
        parallel(lambda name: delete(join(url, name)), gone, self.workers)
        if (folder / MANIFEST_NAME).is_file():  # shards made here: staging them later needs no download
            for entry in _manifest_shards(folder / MANIFEST_NAME):
                if (folder / entry.file).is_file():
                    self.shards.add(folder / entry.file, entry.sha256)
        return len(todo) + len(gone)


def mirror_path(url: str, cache_dir: Path) -> Path:
    """The local mirror of a remote run root: CACHE/runs/<its last name>-<12 hex of the URL>."""
    name = url.rstrip("/").rsplit("/", 1)[-1] or "root"
    return Path(cache_dir).expanduser() / "runs" / f"{name}-{hashlib.sha256(url.encode()).hexdigest()[:12]}"


def _files(folder: Path, recursive: bool) -> list[Path]:
    paths = folder.rglob("*") if recursive else folder.glob("*")
    return sorted(
        path for path in paths
        if path.is_file() and path.name not in NEVER_PUSHED and not (path.name.startswith(".") and path.name.endswith((".tmp", ".tmp.keras")))
    )


def _manifest_shards(path: Path) -> list[ShardEntry]:
    try:
        raw = json.loads(path.read_text())
        return [ShardEntry.model_validate(entry) for entry in raw.get("shards", [])]
    except (OSError, ValueError):
        return []
