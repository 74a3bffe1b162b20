"""The machine's cache of remote content: its settings (`storage` in the config) and the
content-addressed shard cache, CACHE/shards/<sha256>.

Data shards are copied in parallel, checked against the manifest's sha256, and shared by
every phase, run and run root on the machine; the least recently used are evicted past
`storage.cache_size_gb`. A staged folder holds hard links to the cache.
"""

import os
from dataclasses import dataclass
from pathlib import Path

from pipeline.storage.remote import RemoteStorageError, download, join, parallel
from tfrecords.files import link_into_place, sha256_file, temporary_name


@dataclass(frozen=True)
class StorageSettings:
    """Where the local copies go and how they are copied (`storage` in the config)."""

    cache_dir: Path
    cache_bytes: int | None
    workers: int

    @classmethod
    def of(cls, config) -> "StorageSettings":
        storage = getattr(config, "storage", config)  # a PipelineConfig, or its StorageConfig
        size = None if storage.cache_size_gb is None else int(storage.cache_size_gb * 1e9)
        return cls(Path(storage.cache_dir).expanduser(), size, storage.workers)


class ShardCache:
    """Local copies of remote shards, one file per content: CACHE/shards/<sha256>.

    A shard is downloaded once per machine and checked against the manifest's sha256
    before it enters the cache; staging a folder links the cached files into it."""

    def __init__(self, settings: StorageSettings):
        self.folder = settings.cache_dir / "shards"
        self.limit, self.workers = settings.cache_bytes, settings.workers

    def stage(self, url: str, entries: list, into: Path) -> int:
        """Put the shards `entries` (ShardEntry) of the remote folder `url` into `into`;
        returns how many were downloaded (the others came from the cache)."""
        self.folder.mkdir(parents=True, exist_ok=True)
        into.mkdir(parents=True, exist_ok=True)
        fetched = parallel(lambda entry: self._fetch(join(url, entry.file), entry), entries, self.workers)
        for entry in entries:
            link_into_place(self.folder / entry.sha256, into / entry.file)
        self.evict(keep={entry.sha256 for entry in entries})
        return sum(fetched)

    def add(self, path: Path, sha256: str) -> None:
        """Enter a local shard (just ingested here) into the cache, sparing a download later."""
        self.folder.mkdir(parents=True, exist_ok=True)
        blob = self.folder / sha256
        if not blob.exists():
            link_into_place(path, blob)

    def _fetch(self, url: str, entry) -> bool:
        blob = self.folder / entry.sha256
        if blob.is_file() and blob.stat().st_size == entry.bytes:
            os.utime(blob)  # recently used: evicted last
            return False
        temporary = temporary_name(blob)
        try:
            download(url, temporary)  # checked below, by the manifest's sha256
            digest = sha256_file(temporary)
            if digest != entry.sha256:
                raise RemoteStorageError(
                    f"{url}: sha256 {digest[:12]}..., its manifest says {entry.sha256[:12]}...: the shard in the "
                    "bucket is damaged or was replaced; ingest again to rewrite it"
                )
            os.replace(temporary, blob)
        finally:
            temporary.unlink(missing_ok=True)
        return True

    def evict(self, keep: set[str]) -> int:
        """Remove the least recently used shards until the cache fits its limit; returns how many.
        Shards in `keep` (those just staged) stay, even over the limit."""
        if self.limit is None:
            return 0
        blobs = [(path.stat().st_mtime, path.stat().st_size, path) for path in self.folder.iterdir()
                 if path.is_file() and not path.name.startswith(".")]
        total, removed = sum(size for _, size, _ in blobs), 0
        for _, size, path in sorted(blobs):
            if total <= self.limit:
                break
            if path.name not in keep:
                path.unlink(missing_ok=True)
                total -= size
                removed += 1
        return removed
