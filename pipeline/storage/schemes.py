"""What differs between the object stores a URL may name, in one place: `SCHEMES`.

gs:// is Cloud Storage (gcsfs), s3:// is S3 or an S3-compatible server (s3fs). A scheme
says how its service is named and reached, and how to tell, without downloading, whether
a local file holds what an object holds, and whether a download arrived whole. Everything
else in `pipeline/storage/` is the same for every scheme.
"""

import base64
import hashlib
from dataclasses import dataclass
from pathlib import Path

_CHUNK = 1 << 20
_local_digests: dict[tuple, str] = {}


def local_digest(path: Path, algorithm: str) -> str:
    """The hex digest (`md5` or `sha256`) of a local file, remembered per size, mtime and
    inode: a mirror is compared with its bucket after every epoch, and most files did not change."""
    stat = path.stat()
    key = (str(path), stat.st_size, stat.st_mtime_ns, stat.st_ino, algorithm)
    if key not in _local_digests:
        digest = hashlib.new(algorithm)
        with open(path, "rb") as handle:
            for chunk in iter(lambda: handle.read(_CHUNK), b""):
                digest.update(chunk)
        _local_digests[key] = digest.hexdigest()
    return _local_digests[key]


@dataclass(frozen=True)
class Scheme:
    """A kind of object store. `fingerprint_field` is the listing's field that changes with an
    object's content: it goes into listings as `fingerprint` (and so into the ingestion's cache
    key of a remote source). `tensorflow_reads`: whether TensorFlow's own file systems read
    such URLs, which `storage.read_shards: direct` needs."""

    name: str
    service: str  # for messages: "Cloud Storage"
    credentials: str  # where credentials come from, named when permission is denied
    fingerprint_field: str
    tensorflow_reads: bool

    @property
    def prefix(self) -> str:
        return f"{self.name}://"

    def upload_options(self, path: Path) -> dict:
        """Keyword arguments of the file system's `put_file` for the local file `path`."""
        return {}

    def holds(self, fs, key: str, entry: dict, path: Path) -> bool:
        """Whether the local file `path` holds the object `key`, whose listing `entry` is
        {size, fingerprint}. A wrong False only costs a copy; a wrong True would lose data."""
        raise NotImplementedError

    def download_problem(self, fs, key: str, entry: dict, path: Path) -> str | None:
        """What shows that `path`, just downloaded from the object of `entry`, is not that
        object's content; None when it is, or when nothing can tell."""
        raise NotImplementedError


class CloudStorage(Scheme):
    """gs://: every object written in one piece has an MD5 (md5Hash, base64) in its listing.
    Composite objects (parallel composite uploads) have none: copied again, checked by size."""

    def holds(self, fs, key: str, entry: dict, path: Path) -> bool:
        md5 = entry["fingerprint"]
        return _same_size(path, entry) and md5 is not None and _md5_base64(path) == md5

    def download_problem(self, fs, key: str, entry: dict, path: Path) -> str | None:
        if entry["fingerprint"] is not None and _md5_base64(path) != entry["fingerprint"]:
            return "the downloaded copy does not match the object's MD5 (a damaged transfer); run again"
        return None


class S3(Scheme):
    """s3://: the ETag in a listing is the object's MD5 (hex) only when it was uploaded in one
    part and not encrypted with KMS; a multipart upload's is "<md5 of the parts' MD5s>-<parts>",
    and a KMS-encrypted object's is opaque. So every upload also stores the file's sha256 as
    object metadata (x-amz-meta-sha256), which survives multipart uploads:
    - an ETag equal to the local MD5 proves the content without a request;
    - otherwise, with equal sizes, the stored sha256 decides (one HEAD request, remembered
      by the ETag, so a mirror pushed every epoch asks once per object);
    - an object another tool wrote in parts, or under KMS, has neither: its local copy is
      taken as different (copied again), and a download of it is checked by size only."""

    def upload_options(self, path: Path) -> dict:
        return {"Metadata": {"sha256": local_digest(path, "sha256")}}

    def holds(self, fs, key: str, entry: dict, path: Path) -> bool:
        if not _same_size(path, entry):
            return False
        if _plain_md5(entry) == local_digest(path, "md5"):
            return True
        stored = _stored_sha256(fs, key, entry)
        return stored is not None and stored == local_digest(path, "sha256")

    def download_problem(self, fs, key: str, entry: dict, path: Path) -> str | None:
        if not _same_size(path, entry):
            return (f"the downloaded copy has {path.stat().st_size} bytes, the object {entry['size']} (a damaged "
                    "transfer); run again")
        if _plain_md5(entry) == local_digest(path, "md5"):
            return None
        stored = _stored_sha256(fs, key, entry)
        if stored is not None and stored != local_digest(path, "sha256"):
            return ("the downloaded copy does not match the sha256 stored with the object (a damaged transfer); "
                    "run again")
        return None


# The stores a URL may name, by scheme. `is_remote` is true for exactly these.
SCHEMES: dict[str, Scheme] = {
    "gs": CloudStorage("gs", "Cloud Storage", "GOOGLE_APPLICATION_CREDENTIALS, gcloud auth or the metadata server",
                       fingerprint_field="md5Hash", tensorflow_reads=True),
    # The endpoint and credentials come from the standard AWS settings: AWS_ENDPOINT_URL_S3 or
    # AWS_ENDPOINT_URL for another server than AWS (MinIO, a test server), AWS_ACCESS_KEY_ID /
    # AWS_SECRET_ACCESS_KEY, AWS_PROFILE, ~/.aws. TensorFlow has no s3:// file system since 2.6.
    "s3": S3("s3", "S3", "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, AWS_PROFILE or ~/.aws/credentials",
             fingerprint_field="ETag", tensorflow_reads=False),
}

_stored_sha256s: dict[tuple[str, str], str] = {}


def _stored_sha256(fs, key: str, entry: dict) -> str | None:
    """The sha256 an upload stored with the object `key`: one HEAD request, remembered by the
    ETag (which changes with the content). An object without one is asked again each time:
    the same bytes uploaded again with their sha256 keep their ETag."""
    version = (key, entry["fingerprint"] or "")
    if version not in _stored_sha256s:
        try:
            stored = fs.metadata(key, refresh=True).get("sha256")
        except FileNotFoundError:
            return None
        if stored is None:
            return None
        _stored_sha256s[version] = stored
    return _stored_sha256s[version]


def _plain_md5(entry: dict) -> str | None:
    """An S3 ETag that may be the object's MD5 (hex): one without a part count."""
    etag = entry["fingerprint"]
    return etag if etag and "-" not in etag else None


def _same_size(path: Path, entry: dict) -> bool:
    return path.is_file() and path.stat().st_size == entry["size"]


def _md5_base64(path: Path) -> str:
    """MD5 as Cloud Storage gives it (base64)."""
    return base64.b64encode(bytes.fromhex(local_digest(path, "md5"))).decode()
