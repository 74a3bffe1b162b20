"""Run roots, data and weights in object stores (gs://, s3://), through fsspec.

Training always reads local files; a remote location is used through a local copy. One
module per job:
- `schemes`: what differs between gs:// (gcsfs) and s3:// (s3fs), in one table, `SCHEMES`:
  how an object's content is compared with a local file, how a download is checked;
- `remote`: the primitives: a URL's file system, listings, checked downloads and uploads,
  one clear `RemoteStorageError` for what the stores raise;
- `shard_cache`: the machine's cache settings and the content-addressed shard cache;
- `run_store`: the `RunRoot` interface: a local root (nothing to copy) or a remote one and
  its local mirror, pulled before each step and pushed after each epoch;
- `fetch`: a remote run pulled for the commands that read runs (`pvs report`, ...);
- `staging`: remote sources and weights staged into the cache, and the checks before a run.

The names most callers need are importable from here as well.
"""

from pipeline.storage.fetch import fetch_run
from pipeline.storage.remote import RemoteStorageError, download, is_remote, join, remote_listing
from pipeline.storage.run_store import LocalRunRoot, RemoteRunRoot, RunRoot, mirror_path
from pipeline.storage.shard_cache import ShardCache, StorageSettings
from pipeline.storage.staging import (
    check_direct_read,
    check_locations,
    remote_ingested,
    source_listing_digest,
    stage_file,
    stage_source,
)

__all__ = [
    "LocalRunRoot", "RemoteRunRoot", "RemoteStorageError", "RunRoot", "ShardCache", "StorageSettings",
    "check_direct_read", "check_locations", "download", "fetch_run", "is_remote", "join", "mirror_path",
    "remote_ingested", "remote_listing", "source_listing_digest", "stage_file", "stage_source",
]
