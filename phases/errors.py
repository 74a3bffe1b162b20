"""Errors of the phases that a user can fix (they are `UserError`s: shown without traceback)."""

from tfrecords.errors import IntegrityError, UserError


class ConfigError(UserError):
    """A config value that cannot work (unknown block, weights file, ...), naming the field."""


class TrainingError(UserError):
    """Training cannot go on (e.g. a NaN loss), naming the phase and the epoch."""


class ModelIntegrityError(IntegrityError):
    """A saved model (.keras) is altered: its sha256 differs from the one its checkpoint or run recorded."""


class UnsafeModelError(UserError):
    """A saved model holds code (a Lambda layer, an unknown function) that Keras safe mode refuses to load."""


class UnsafePickleError(UnsafeModelError):
    """A pickled weights file (.pth) names a Python global other than tensors and their storages."""


class MetricInputError(UserError, ValueError):
    """Embeddings or labels that cannot be scored: empty, of mismatched shapes, or not finite."""


class SubmissionError(UserError):
    """A file that is not a submission.csv as `write_submission` writes it."""
