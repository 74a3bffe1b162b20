"""Errors a user can cause, shown by the CLI as one message without a traceback.

Every layer (tfrecords, phases, pipeline) raises subclasses of `UserError`, defined
here once; the message says what was wrong, where (file, row, field) and how to fix it.
This module holds the errors of `tfrecords/`, `phases/errors.py` those of `phases/`;
`pipeline/` and flows.py define each of theirs beside the one module that raises it.
"""


class UserError(Exception):
    """A problem with the user's input or setup, not a bug in this package."""


class SourceError(UserError):
    """The image source (CSV or folder) cannot be ingested as given."""


class ImageError(UserError):
    """An image could not be read or decoded (raised only in strict mode)."""


class IntegrityError(UserError):
    """A file is missing, truncated or altered: its sha256 differs from the one recorded for it."""


class ShardIntegrityError(IntegrityError):
    """A shard is missing, truncated or altered: its sha256 differs from the manifest."""


class ManifestError(UserError):
    """A manifest is missing, unreadable, or of an unknown schema version."""


class StorageError(UserError):
    """A file could not be written (disk full, quota, file size limit, read-only disk);
    the message names the file, and its previous version is kept."""


class FolderInUseError(UserError):
    """Another process holds the folder's lock (e.g. a second `pvs ingest` into one folder)."""
