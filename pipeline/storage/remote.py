"""The primitives of remote storage, for any URL of `SCHEMES`: its fsspec file system, a
folder's listing, downloads and uploads checked by the scheme's rules, and the stores'
errors turned into one clear `RemoteStorageError`.

Objects are written whole (object stores have no partial objects).
"""

import contextlib
import os
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from pipeline.storage.schemes import SCHEMES, Scheme
from tfrecords.errors import UserError
from tfrecords.files import temporary_name


# Names of the errors of aiohttp, google-auth and botocore that are about the store, not a bug.
_CLIENT_ERRORS = ("HttpError", "ClientError", "TransportError", "RefreshError", "NoCredentials")


class RemoteStorageError(UserError):
    """A bucket or object that is missing, unreadable or damaged."""


def is_remote(location: str | os.PathLike) -> bool:
    """Whether `location` is a URL of an object store (gs://, s3://) rather than a local path."""
    scheme, separator, _ = str(location).partition("://")
    return bool(separator) and scheme in SCHEMES


def scheme_of(url: str) -> Scheme:
    return SCHEMES[url.partition("://")[0]]


def object_path(url: str) -> str:
    """`url` as its file system names it: bucket/key, without the scheme."""
    return url.partition("://")[2]


def bucket_of(url: str) -> str:
    return object_path(url).split("/", 1)[0]


def join(url: str, *parts: str) -> str:
    return "/".join([url.rstrip("/"), *(part.strip("/") for part in parts if part and part != ".")])


def filesystem(url: str):
    """The fsspec file system of `url` (gcsfs for gs://, s3fs for s3://), or a clear error.

    STORAGE_EMULATOR_HOST points gcsfs at an emulator, AWS_ENDPOINT_URL_S3 s3fs at another
    S3 server (tests); credentials come from where each scheme says (`SCHEMES`)."""
    import fsspec

    try:
        fs, _ = fsspec.core.url_to_fs(url)
    except ImportError as error:  # gcsfs and s3fs are dependencies; a broken install says so
        service = scheme_of(url).service
        raise RemoteStorageError(f"{url}: cannot open {service} ({error}); reinstall with `make`") from None
    return fs


@contextlib.contextmanager
def remote_errors(url: str, doing: str) -> Iterator[None]:
    """Turn the file system's errors while `doing` something with `url` into one clear line."""
    scheme = scheme_of(url)
    try:
        yield
    except RemoteStorageError:
        raise
    except FileNotFoundError:
        raise RemoteStorageError(missing_message(url, doing)) from None
    except PermissionError as error:
        raise RemoteStorageError(
            f"{url}: permission denied while {doing} ({error}); check that the credentials "
            f"({scheme.credentials}) may read and write this bucket"
        ) from None
    except OSError as error:
        raise RemoteStorageError(f"{url}: {scheme.service} failed while {doing}: {error}") from None
    except Exception as error:  # aiohttp, google-auth and botocore errors do not all derive from OSError
        name = type(error).__name__
        if any(kind in name for kind in _CLIENT_ERRORS):
            raise RemoteStorageError(f"{url}: {scheme.service} failed while {doing}: {name}: {error}") from None
        raise


def missing_message(url: str, doing: str) -> str:
    """The message for `url` not found while `doing` something: a missing bucket or object."""
    bucket = bucket_of(url)
    try:
        exists = filesystem(url).exists(bucket)
    except Exception:  # noqa: BLE001 - only to word the message; the original error stands
        exists = True
    if not exists:
        return (f"{scheme_of(url).prefix}{bucket}: no such bucket (while {doing} {url}); create it, or check the "
                "name and the project")
    return f"{url}: no such object (while {doing})"


def remote_listing(url: str) -> dict[str, dict]:
    """Every object under the folder `url`: relative name -> {size (bytes), fingerprint (what
    changes with the content: Cloud Storage's MD5, S3's ETag)}."""
    fs, field = filesystem(url), scheme_of(url).fingerprint_field
    prefix = object_path(url).rstrip("/")
    with remote_errors(url, "listing"):
        fs.invalidate_cache(prefix)
        if not fs.exists(bucket_of(url)):
            raise FileNotFoundError(url)
        found = fs.find(prefix, detail=True)
    return {
        name[len(prefix) + 1:]: {"size": int(info["size"]), "fingerprint": _unquoted(info.get(field))}
        for name, info in found.items()
        if name.startswith(prefix + "/") and info.get("type") != "directory"
    }


def remote_listing_or_empty(url: str) -> dict[str, dict]:
    """remote_listing, or {} for a folder that does not exist yet (the bucket must)."""
    fs = filesystem(url)
    with remote_errors(url, "opening the run folder"):
        if not fs.exists(bucket_of(url)):
            raise FileNotFoundError(url)
    try:
        return remote_listing(url)
    except RemoteStorageError:
        if fs.exists(object_path(url)):
            raise
        return {}


def holds(path: Path, url: str, entry: dict | None) -> bool:
    """Whether the local file `path` holds what the object `url` of listing `entry` holds."""
    return entry is not None and scheme_of(url).holds(filesystem(url), object_path(url), entry, path)


def download(url: str, path: Path, entry: dict | None = None) -> Path:
    """Copy the object `url` to `path` atomically; checked by its scheme's rules against its
    listing `entry` ({size, fingerprint}) when given."""
    fs = filesystem(url)
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = temporary_name(path)
    try:
        with remote_errors(url, "downloading"):
            fs.get_file(object_path(url), str(temporary))
            problem = entry and scheme_of(url).download_problem(fs, object_path(url), entry, temporary)
        if problem:
            raise RemoteStorageError(f"{url}: {problem}")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)
    return path


def upload(path: Path, url: str) -> None:
    """Copy a local file to the object `url` (an object appears whole or not at all)."""
    fs = filesystem(url)
    with remote_errors(url, "uploading"):
        fs.put_file(str(path), object_path(url), **scheme_of(url).upload_options(path))


def delete(url: str) -> None:
    fs = filesystem(url)
    with remote_errors(url, "deleting"), contextlib.suppress(FileNotFoundError):
        fs.rm_file(object_path(url))


def parallel(function: Callable, items: Iterable, workers: int) -> list:
    """`function` of every item, on up to `workers` threads (transfers wait on the network)."""
    items = list(items)
    if len(items) <= 1 or workers <= 1:
        return [function(item) for item in items]
    with ThreadPoolExecutor(max_workers=min(workers, len(items))) as pool:
        return list(pool.map(function, items))


def _unquoted(fingerprint: str | None) -> str | None:
    return fingerprint.strip('"') if isinstance(fingerprint, str) else fingerprint
