"""Remote inputs of a run: a source of images and a weights file staged into the local
cache (only what changed is copied again), and the checks `pvs run` makes before it
starts that every remote location it names is there.
"""

import csv
import hashlib
from pathlib import Path

from pipeline.storage.remote import (
    RemoteStorageError,
    download,
    filesystem,
    holds,
    is_remote,
    join,
    missing_message,
    object_path,
    parallel,
    remote_errors,
    remote_listing,
    remote_listing_or_empty,
    scheme_of,
)
from pipeline.storage.schemes import SCHEMES
from pipeline.storage.shard_cache import StorageSettings
from tfrecords.errors import UserError
from tfrecords.files import sha256_file
from tfrecords.manifest import MANIFEST_NAME


def stage_file(url: str, settings: StorageSettings) -> tuple[Path, str]:
    """A remote file (weights, say) in the local cache: (path, sha256). Downloaded again
    only when the object changed."""
    listing_url, name = url.rsplit("/", 1)
    entry = remote_listing(listing_url).get(name)
    if entry is None:
        raise RemoteStorageError(missing_message(url, "reading"))
    path = settings.cache_dir / "files" / hashlib.sha256(url.encode()).hexdigest()[:16] / name
    if not holds(path, url, entry):
        download(url, path, entry)
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
        if not holds(csv_path, url, listing[name]):
            download(url, csv_path, listing[name])
        wanted = _csv_paths(csv_path, url)
        missing = sorted(wanted - listing.keys())
        if missing:
            raise RemoteStorageError(
                f"{url}: {len(missing)} image(s) it names are not in {base}/, first {', '.join(missing[:3])}"
            )
        listing = {name: entry for name, entry in listing.items() if name in wanted}
        target = csv_path
    else:
        target = folder
    todo = [name for name, entry in listing.items() if not holds(folder / name, join(base, name), entry)]
    parallel(lambda name: download(join(base, name), folder / name, listing[name]), todo, settings.workers)
    return target


def _csv_paths(csv_path: Path, url: str) -> set[str]:
    """The image paths a source CSV names (relative to its folder)."""
    with open(csv_path, newline="", encoding="utf-8-sig") as handle:
        rows = list(csv.DictReader(handle))
    paths = {(row.get("path") or "").strip() for row in rows} - {""}
    absolute = sorted(path for path in paths if "://" in path or path.startswith("/"))
    if absolute:
        raise RemoteStorageError(
            f"{url}: a CSV in a bucket must name its images relative to its own folder; it names {absolute[0]}"
        )
    return paths


def source_listing(url: str) -> tuple[str, dict[str, dict]]:
    """The folder of a remote source (a CSV's folder, or the image folder) and its listing;
    RemoteStorageError when the CSV, or any object in the folder, is not there."""
    base = url.rsplit("/", 1)[0] if url.endswith(".csv") else url
    listing = remote_listing(base)
    if not listing or (url.endswith(".csv") and url.rsplit("/", 1)[1] not in listing):
        raise RemoteStorageError(missing_message(url, "reading the source"))
    return base, listing


def source_listing_digest(url: str) -> str:
    """What ingesting a remote source reads: every object's name, size and fingerprint (one
    listing, no download), for the ingestion's cache key."""
    digest = hashlib.sha256()
    _, listing = source_listing(url)
    for name in sorted(listing):
        digest.update(f"{name}\0{listing[name]['size']}\0{listing[name]['fingerprint']}\n".encode())
    return digest.hexdigest()


def remote_ingested(url: str) -> bool:
    """Whether a remote source is a folder written by `pvs ingest` (it holds a manifest)."""
    if url.endswith(".csv"):
        return False
    fs = filesystem(url)
    with remote_errors(url, "reading the source"):
        return fs.exists(object_path(join(url, MANIFEST_NAME)))


def check_direct_read(source: str, read_shards: str) -> None:
    """`storage.read_shards: direct` needs an ingested source in a bucket that TensorFlow's
    own file systems read (gs://, not s3://): UserError otherwise."""
    if read_shards != "direct":
        return
    readable = " or ".join(scheme.prefix for scheme in SCHEMES.values() if scheme.tensorflow_reads)
    if is_remote(source) and not scheme_of(source).tensorflow_reads:
        raise UserError(f"storage.read_shards: direct reads shards through TensorFlow's own file systems, which read "
                        f"{readable} but not {scheme_of(source).prefix} (data.source {source}); use read_shards: stage")
    if is_remote(source) and remote_ingested(source):
        return
    raise UserError(f"storage.read_shards: direct reads the shards of an ingested {readable} folder where they are, "
                    f"but data.source {source} is not one; ingest it into a bucket first (pvs ingest SOURCE DIR, "
                    "then gcloud storage cp -r DIR gs://BUCKET/FOLDER; or the data/ folder of a gs:// run) or use "
                    "read_shards: stage")


def check_locations(run_dir: str, source: str, weights: str, read_shards: str = "stage") -> None:
    """Before a run starts (before Prefect): every URL names a scheme of `SCHEMES`, the bucket
    of a remote run folder exists, and a remote source or weights file is there;
    `read_shards: direct` has an ingested source TensorFlow reads. Raises RemoteStorageError
    naming what is missing."""
    for role, location in (("the run folder", run_dir), ("data.source", source), ("model.weights", weights)):
        scheme, separator, _ = str(location).partition("://")
        if separator and scheme not in SCHEMES:
            known = ", ".join(known.prefix for known in SCHEMES.values())
            raise RemoteStorageError(f"{location}: {role} names a storage pvs cannot read ({scheme}://); use a "
                                     f"local path or a URL of {known}")
    if is_remote(run_dir):
        remote_listing_or_empty(run_dir.rstrip("/"))
    if is_remote(source):
        source_listing(source)
    if is_remote(weights):
        base, name = weights.rsplit("/", 1)
        if name not in remote_listing(base):
            raise RemoteStorageError(missing_message(weights, "reading the weights"))
    check_direct_read(source, read_shards)
