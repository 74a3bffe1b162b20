"""Cloud Storage (gs://) for run roots, data and weights, through fsspec and gcsfs.

Training always reads local files. A remote location is used through a local copy:
- a run root `gs://bucket/runs/x` has a mirror on local disk (`storage.cache_dir`/runs/...).
  Each step pulls its folder from the bucket before it starts (only the files its record
  lists when it is finished there; everything, checkpoints included, when it is not, so
  a phase resumes on another machine), and pushes it back after every epoch and at its
  end. The bucket is the truth; the mirror is a cache that can be deleted at any time.
- data shards are staged through a content-addressed cache (`cache_dir`/shards/<sha256>):
  copied in parallel, checked against the manifest's sha256, and shared by every phase,
  run and run root on the machine; the least recently used are evicted past
  `storage.cache_size_gb`. A staged folder holds hard links to the cache.
- a source of images and a weights file are downloaded into the cache before use.

Objects are written whole (Cloud Storage has no partial objects), a folder's record
(`result.json`) last: a record in the bucket vouches for files that are there. Every
download is checked against the object's MD5 (and shards against their sha256).
"""

import base64
import contextlib
import hashlib
import json
import os
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from pipeline.records import RECORD_NAME  # uploaded after the files it vouches for
from tfrecords.errors import UserError
from tfrecords.files import link_into_place, sha256_file, temporary_name
from tfrecords.manifest import MANIFEST_NAME

SCHEME = "gs://"
NEVER_PUSHED = {"run.lock", "ingest.lock"}  # local locks of the mirror mean nothing elsewhere
_CHUNK = 1 << 20


class RemoteStorageError(UserError):
    """A bucket or object that is missing, unreadable or damaged."""


def is_remote(location: str | os.PathLike) -> bool:
    return str(location).startswith(SCHEME)


def join(url: str, *parts: str) -> str:
    return "/".join([url.rstrip("/"), *(part.strip("/") for part in parts if part and part != ".")])


def filesystem(url: str):
    """The fsspec filesystem of `url` (gcsfs for gs://), or a clear error when unusable.

    STORAGE_EMULATOR_HOST points gcsfs at an emulator (tests); credentials come from
    the usual places (GOOGLE_APPLICATION_CREDENTIALS, gcloud, the metadata server)."""
    import fsspec

    try:
        fs, _ = fsspec.core.url_to_fs(url)
    except ImportError as error:  # gcsfs is a dependency; a broken install says so
        raise RemoteStorageError(f"{url}: cannot open Cloud Storage ({error}); reinstall with `make`") from None
    return fs


def _bucket(url: str) -> str:
    return url[len(SCHEME):].split("/", 1)[0]


@contextlib.contextmanager
def remote_errors(url: str, doing: str) -> Iterator[None]:
    """Turn gcsfs' errors while `doing` something with `url` into one clear line."""
    try:
        yield
    except RemoteStorageError:
        raise
    except FileNotFoundError:
        raise RemoteStorageError(_missing(url, doing)) from None
    except PermissionError as error:
        raise RemoteStorageError(
            f"{url}: permission denied while {doing} ({error}); check that the credentials "
            "(GOOGLE_APPLICATION_CREDENTIALS) may read and write this bucket"
        ) from None
    except OSError as error:
        raise RemoteStorageError(f"{url}: Cloud Storage failed while {doing}: {error}") from None
    except Exception as error:  # aiohttp and google-auth errors do not derive from OSError
        name = type(error).__name__
        if "HttpError" in name or "ClientError" in name or "TransportError" in name or "RefreshError" in name:
            raise RemoteStorageError(f"{url}: Cloud Storage failed while {doing}: {name}: {error}") from None
        raise


def _missing(url: str, doing: str) -> str:
    bucket = _bucket(url)
    try:
        exists = filesystem(url).exists(bucket)
    except Exception:  # noqa: BLE001 - only to word the message; the original error stands
        exists = True
    if not exists:
        return f"gs://{bucket}: no such bucket (while {doing} {url}); create it, or check the name and the project"
    return f"{url}: no such object (while {doing})"


def _md5_base64(path: Path) -> str:
    digest = hashlib.md5()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(chunk)
    return base64.b64encode(digest.digest()).decode()


_local_md5_cache: dict[tuple, str] = {}


def local_md5(path: Path) -> str:
    """MD5 (base64, as Cloud Storage gives it) of a local file, remembered per size and mtime."""
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns, stat.st_ino)
    if key not in _local_md5_cache:
        _local_md5_cache[key] = _md5_base64(path)
    return _local_md5_cache[key]


def remote_listing(url: str) -> dict[str, dict]:
    """Every object under the folder `url`: relative name -> {size, md5}."""
    fs = filesystem(url)
    prefix = url[len(SCHEME):].rstrip("/")
    with remote_errors(url, "listing"):
        fs.invalidate_cache(prefix)
        if not fs.exists(_bucket(url)):
            raise FileNotFoundError(url)
        found = fs.find(prefix, detail=True)
    return {
        name[len(prefix) + 1:]: {"size": int(info["size"]), "md5": info.get("md5Hash")}
        for name, info in found.items()
        if name.startswith(prefix + "/") and info.get("type") != "directory"
    }


def download(url: str, path: Path, md5: str | None = None) -> Path:
    """Copy the object `url` to `path` atomically; checked against its MD5 when known."""
    fs = filesystem(url)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_name(path)
    try:
        with remote_errors(url, "downloading"):
            fs.get_file(url[len(SCHEME):], str(temporary))
        if md5 is not None and _md5_base64(temporary) != md5:
            raise RemoteStorageError(f"{url}: the downloaded copy does not match the object's MD5 (a damaged transfer); run again")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def upload(path: Path, url: str) -> None:
    """Copy a local file to the object `url` (an object appears whole or not at all)."""
    fs = filesystem(url)
    with remote_errors(url, "uploading"):
        fs.put_file(str(path), url[len(SCHEME):])


def delete(url: str) -> None:
    fs = filesystem(url)
    with remote_errors(url, "deleting"), contextlib.suppress(FileNotFoundError):
        fs.rm_file(url[len(SCHEME):])


def read_text(url: str) -> str:
    fs = filesystem(url)
    with remote_errors(url, "reading"):
        return fs.cat_file(url[len(SCHEME):]).decode("utf-8")


def _parallel(function: Callable, items: Iterable, workers: int) -> list:
    items = list(items)
    if len(items) <= 1 or workers <= 1:
        return [function(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(workers, len(items))) as pool:
        return list(pool.map(function, items))


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
        fetched = _parallel(lambda entry: self._fetch(join(url, entry.file), entry), entries, self.workers)
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
            download(url, temporary)
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


class RunRoot:
    """Where a run writes: a local folder, or a gs:// folder and its local mirror.

    `local` is what tasks and phases write to; `identity` names the root in cache keys
    (the URL for a remote root, so every machine computes the same keys)."""

    def __init__(self, location: str | os.PathLike, settings: StorageSettings | None = None):
        self.remote = str(location).rstrip("/") if is_remote(location) else None
        if self.remote is not None:
            if settings is None:
                raise ValueError("a gs:// run root needs storage settings")
            self.local = mirror_path(self.remote, settings.cache_dir)
            self.shards, self.workers = ShardCache(settings), settings.workers
        else:
            self.local = Path(location)
        self.identity = self.remote or str(self.local.resolve())
        # A worker that is not the chief of a multi-worker cluster reads the bucket, never writes it.
        self.read_only = False

    def __str__(self) -> str:
        return self.remote or str(self.local)

    def url(self, folder: Path) -> str:
        """The remote URL of a local folder or file of the mirror."""
        return join(self.remote, Path(os.path.relpath(folder, self.local)).as_posix())

    def show(self, path: Path) -> str:
        """A local path as users should see it: its URL for a remote root."""
        return self.url(path) if self.remote else str(path)

    # Pull: the bucket into the mirror.

    def pull_loose_files(self) -> int:
        """The files directly in the root (run-config.yaml, scores, ...); 0 for a local root."""
        if self.remote is None:
            return 0
        listing = {name: info for name, info in remote_listing_or_empty(self.remote).items() if "/" not in name}
        return self._download(self.local, self.remote, listing)

    def pull(self, folder: Path, key: str) -> int:
        """Bring a step's folder from the bucket: when the bucket holds its finished record
        (with `key`), the files the record lists; otherwise everything there (checkpoints
        and all), so an unfinished step resumes. Shards listed by a manifest come through
        the shard cache. Returns the number of files copied."""
        if self.remote is None:
            return 0
        url = self.url(folder)
        return self._pull_listed(folder, url, remote_listing_or_empty(url), key)

    def pull_record(self, folder: Path, key: str) -> bool:
        """Whether the bucket holds a step's finished record with `key`; if so, its files are
        pulled. One listing when it does not (what a worker waiting for the chief polls)."""
        if self.remote is None:
            return False
        url = self.url(folder)
        listing = remote_listing_or_empty(url)
        _, record = self._fetch_record(folder, url, listing)
        if record is None or record.get("key") != key:
            return False
        self._pull_listed(folder, url, listing, key)
        return True

    def pull_checkpoints(self, folder: Path) -> int:
        """A step's `checkpoints/` as the bucket holds them: what a worker that is not the chief
        resumes from, at the chief's epoch (it pulls no feature cache: it makes its own)."""
        if self.remote is None:
            return 0
        url = self.url(folder)
        listing = {name: info for name, info in remote_listing_or_empty(url).items() if name.startswith("checkpoints/")}
        return self._download(folder, url, listing)

    def pull_finished(self, folder: Path, only: Sequence[str] | None = None) -> int:
        """A step's folder as the record in the bucket lists it (its key read from there),
        or with `only`, the record and those of its files; nothing when there is no record."""
        if self.remote is None:
            return 0
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
        todo = [name for name, info in listing.items() if not _same(folder / name, info)]
        _parallel(lambda name: download(join(url, name), folder / name, listing[name]["md5"]), todo, self.workers)
        return len(todo)

    def remove(self, folder: Path) -> int:
        """Delete the bucket's copy of `folder` (a step recomputed with --force)."""
        if self.remote is None or self.read_only:
            return 0
        url = self.url(folder)
        names = list(remote_listing_or_empty(url))
        _parallel(lambda name: delete(join(url, name)), names, self.workers)
        return len(names)

    # Push: the mirror into the bucket.

    def push(self, folder: Path, recursive: bool = True) -> int:
        """Make the bucket's copy of `folder` equal to the local one: upload what is new or
        changed (the record last), then delete what is no longer here (old checkpoints).
        Returns the number of objects written or deleted; 0 for a local or read-only root."""
        if self.remote is None or self.read_only or not folder.is_dir():
            return 0
        url = self.url(folder)
        listing = remote_listing_or_empty(url)
        if not recursive:
            listing = {name: info for name, info in listing.items() if "/" not in name}
        local = {path.relative_to(folder).as_posix(): path for path in _files(folder, recursive)}
        todo = [name for name, path in local.items() if not _same(path, listing.get(name))]
        last = [name for name in todo if name.rsplit("/", 1)[-1] == RECORD_NAME]
        _parallel(lambda name: upload(local[name], join(url, name)), [name for name in todo if name not in last], self.workers)
        for name in last:
            upload(local[name], join(url, name))
        gone = [name for name in listing if name not in local and name.rsplit("/", 1)[-1] not in NEVER_PUSHED]
        _parallel(lambda name: delete(join(url, name)), gone, self.workers)
        if (folder / MANIFEST_NAME).is_file():  # shards made here: staging them later needs no download
            for entry in _manifest_shards(folder / MANIFEST_NAME):
                if (folder / entry.file).is_file():
                    self.shards.add(folder / entry.file, entry.sha256)
        return len(todo) + len(gone)


RUN_PARTS = ("model", "embeddings", "embeddings manifest", "data")


def fetch_run(location: str, settings: StorageSettings, parts: Sequence[str] = ()) -> Path:
    """A run folder for the commands that read one (`pvs report`, `compare`, `search`): a
    local folder as it is; a gs:// one pulled into its local mirror, which is returned:
    the files at its root (scores, run.json, run-config.yaml, charts), then each of
    `parts` the finished run.json names: "model" (the final model's step folder),
    "embeddings" (the extraction's), "embeddings manifest" (only the embeddings'
    manifest), "data" (the ingested images, through the shard cache)."""
    root = RunRoot(location, settings)
    if root.remote is None:
        return root.local
    if not remote_listing_or_empty(root.remote):
        raise RemoteStorageError(_missing(root.remote, "reading the run folder"))
    root.pull_loose_files()
    try:
        summary = json.loads((root.local / "run.json").read_text())
    except (OSError, ValueError):
        return root.local  # unfinished: the commands say so
    # The step folder in the mirror of a file or folder run.json names (by URL).
    steps = {key: (root.local / value[len(root.remote) + 1:]).parent for key, value in summary.items()
             if key in ("final_model", "embeddings") and isinstance(value, str) and value.startswith(root.remote + "/")}
    for part in parts:
        if part not in RUN_PARTS:
            raise ValueError(f"unknown part of a run {part!r}; one of {', '.join(RUN_PARTS)}")
        if part == "model" and "final_model" in steps:
            root.pull_finished(steps["final_model"])
        elif part == "embeddings" and "embeddings" in steps:
            root.pull_finished(steps["embeddings"])
        elif part == "embeddings manifest" and "embeddings" in steps:
            root.pull_finished(steps["embeddings"], only=[f"embeddings/{MANIFEST_NAME}"])
        elif part == "data":
            root.pull_finished(root.local / "data")
    return root.local


def remote_listing_or_empty(url: str) -> dict[str, dict]:
    """remote_listing, or {} for a folder that does not exist yet (the bucket must)."""
    fs = filesystem(url)
    with remote_errors(url, "opening the run folder"):
        if not fs.exists(_bucket(url)):
            raise FileNotFoundError(url)
    try:
        return remote_listing(url)
    except RemoteStorageError:
        if fs.exists(url[len(SCHEME):]):
            raise
        return {}


def _files(folder: Path, recursive: bool) -> list[Path]:
    paths = folder.rglob("*") if recursive else folder.glob("*")
    return sorted(
        path for path in paths
        if path.is_file() and path.name not in NEVER_PUSHED and not (path.name.startswith(".") and path.name.endswith((".tmp", ".tmp.keras")))
    )


def _same(path: Path, info: dict | None) -> bool:
    """Whether a local file holds what an object of `info` ({size, md5}) holds."""
    if info is None or not path.is_file() or path.stat().st_size != info["size"]:
        return False
    return info.get("md5") is not None and local_md5(path) == info["md5"]


def _manifest_shards(path: Path) -> list:
    from tfrecords.manifest import ShardEntry

    try:
        raw = json.loads(path.read_text())
        return [ShardEntry.model_validate(entry) for entry in raw.get("shards", [])]
    except (OSError, ValueError):
        return []


def mirror_path(url: str, cache_dir: Path) -> Path:
    """The local mirror of a remote run root: CACHE/runs/<its last name>-<12 hex of the URL>."""
    name = url.rstrip("/").rsplit("/", 1)[-1] or "root"
    return Path(cache_dir).expanduser() / "runs" / f"{name}-{hashlib.sha256(url.encode()).hexdigest()[:12]}"


def stage_file(url: str, settings: StorageSettings) -> tuple[Path, str]:
    """A remote file (weights, say) in the local cache: (path, sha256). Downloaded again
    only when the object changed (its MD5)."""
    listing_url, name = url.rsplit("/", 1)
    info = remote_listing(listing_url).get(name)
    if info is None:
        raise RemoteStorageError(_missing(url, "reading"))
    folder = settings.cache_dir / "files" / hashlib.sha256(url.encode()).hexdigest()[:16]
    path = folder / name
    if not _same(path, info):
        download(url, path, info["md5"])
    return path, sha256_file(path)


def stage_source(url: str, settings: StorageSettings) -> Path:
    """A remote source (a CSV and the images it names, relative to its folder, or an image
    folder) copied into CACHE/sources/..., in parallel; only what changed is copied again.
    Returns the local CSV or folder, whose image ids are those of the remote source."""
    folder = settings.cache_dir / "sources" / hashlib.sha256(url.encode()).hexdigest()[:16]
    base, listing = source_listing(url)
    if url.endswith(".csv"):
        name = url.rsplit("/", 1)[1]
        csv_path = folder / name
        if not _same(csv_path, listing[name]):
            download(url, csv_path, listing[name]["md5"])
        wanted = _csv_paths(csv_path, url)
        missing = sorted(wanted - listing.keys())
        if missing:
            raise RemoteStorageError(
                f"{url}: {len(missing)} image(s) it names are not in {base}/, first {', '.join(missing[:3])}"
            )
        listing = {name: info for name, info in listing.items() if name in wanted}
        target = csv_path
    else:
        target = folder
    todo = [name for name, info in listing.items() if not _same(folder / name, info)]
    _parallel(lambda name: download(join(base, name), folder / name, listing[name]["md5"]), todo, settings.workers)
    return target


def _csv_paths(csv_path: Path, url: str) -> set[str]:
    """The image paths a source CSV names (relative to its folder)."""
    import csv

    with open(csv_path, newline="", encoding="utf-8-sig") as handle:
        rows = list(csv.DictReader(handle))
    paths = {(row.get("path") or "").strip() for row in rows} - {""}
    absolute = sorted(path for path in paths if "://" in path or path.startswith("/"))
    if absolute:
        raise RemoteStorageError(
            f"{url}: a CSV in Cloud Storage must name its images relative to its own folder; it names {absolute[0]}"
        )
    return paths


def source_listing(url: str) -> tuple[str, dict[str, dict]]:
    """The folder of a remote source (a CSV's folder, or the image folder) and its listing;
    RemoteStorageError when the CSV, or any object in the folder, is not there."""
    base = url.rsplit("/", 1)[0] if url.endswith(".csv") else url
    listing = remote_listing(base)
    if not listing or (url.endswith(".csv") and url.rsplit("/", 1)[1] not in listing):
        raise RemoteStorageError(_missing(url, "reading the source"))
    return base, listing


def source_listing_digest(url: str) -> str:
    """What ingesting a remote source reads: every object's name, size and MD5 (one listing,
    no download), for the ingestion's cache key."""
    digest = hashlib.sha256()
    _, listing = source_listing(url)
    for name in sorted(listing):
        digest.update(f"{name}\0{listing[name]['size']}\0{listing[name]['md5']}\n".encode())
    return digest.hexdigest()


def remote_ingested(url: str) -> bool:
    """Whether a gs:// source is a folder written by `pvs ingest` (it holds a manifest)."""
    if url.endswith(".csv"):
        return False
    fs = filesystem(url)
    with remote_errors(url, "reading the source"):
        return fs.exists(join(url, MANIFEST_NAME)[len(SCHEME):])


def check_direct_read(source: str, read_shards: str) -> None:
    """`storage.read_shards: direct` needs an ingested gs:// source: UserError otherwise."""
    if read_shards != "direct" or (is_remote(source) and remote_ingested(source)):
        return
    raise UserError(f"storage.read_shards: direct reads the shards of an ingested gs:// folder where they are, but "
                    f"data.source {source} is not one; ingest it into a bucket first (pvs ingest SOURCE DIR, then "
                    "gcloud storage cp -r DIR gs://BUCKET/FOLDER; or the data/ folder of a gs:// run) or use "
                    "read_shards: stage")


def check_locations(run_dir: str, source: str, weights: str, read_shards: str = "stage") -> None:
    """Before a run starts (before Prefect): the bucket of a gs:// run folder exists, and a
    gs:// source or weights file is there; `read_shards: direct` has an ingested gs://
    source. Raises RemoteStorageError naming what is missing."""
    if is_remote(run_dir):
        remote_listing_or_empty(run_dir.rstrip("/"))
    if is_remote(source):
        source_listing(source)
    if is_remote(weights):
        base, name = weights.rsplit("/", 1)
        if name not in remote_listing(base):
            raise RemoteStorageError(_missing(weights, "reading the weights"))
    check_direct_read(source, read_shards)
