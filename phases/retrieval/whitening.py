"""PCA whitening of embeddings, learned on train embeddings (Radenovic et al. 2018; Jegou & Chum 2012).

A whitened embedding is the L2-normalised embedding, centred on the train mean,
projected on the top principal directions of the train set, each divided by the
square root of its variance (plus a shrinkage), then L2-normalised again. Cosine
similarity then weighs every kept direction alike, instead of letting a few
high-variance directions (often shared by all products) dominate it.
"""

import dataclasses
from pathlib import Path

import numpy as np

from phases.errors import ConfigError, MetricInputError
from phases.exact_search import inverse_norms
from tfrecords.errors import IntegrityError, UserError
from tfrecords.files import atomic_writer, sha256_file

# apply() projects this many rows at a time: its float32 temporaries stay ~64 MiB at dim 512,
# where a 1M-item index at once would add two copies of it.
APPLY_BLOCK_ROWS = 32_768
_ARRAYS = ("mean", "projection")  # the whole content of a saved whitening


class WhiteningIntegrityError(IntegrityError):
    """A saved whitening (.npz) is altered: its sha256 differs from the one recorded for it."""


class WhiteningFileError(UserError):
    """A file that is not a whitening as `Whitening.save` writes it (a pickle, other arrays, other shapes)."""


@dataclasses.dataclass(frozen=True, eq=False)
class Whitening:
    """A learned whitening: y = normalise((normalise(x) - mean) @ projection).

    Attributes:
        mean: [dim] float32, the mean of the L2-normalised train embeddings.
        projection: [dim, dimensions] float32, the principal directions (by decreasing
            variance, each with its largest component positive) divided by
            sqrt(variance + shrinkage).
    """

    mean: np.ndarray
    projection: np.ndarray

    def __post_init__(self):
        for name in _ARRAYS:
            array = np.array(getattr(self, name), dtype=np.float32)  # a read-only copy of our own
            array.setflags(write=False)
            object.__setattr__(self, name, array)

    @property
    def dimensions(self) -> int:
        """The size of a whitened embedding."""
        return self.projection.shape[1]

    @classmethod
    def fit(cls, train_vectors, dimensions: int | None = None, shrinkage: float = 1e-3) -> "Whitening":
        """Learn the whitening of train embeddings.

        Args:
            train_vectors: [n_train, dim] floats, normalised here (a zero row stays zero).
            dimensions: principal directions kept, 1 to min(n_train - 1, dim);
                None: all of them.
            shrinkage: added to each eigenvalue of the covariance, as a fraction of
                their mean (trace / dim), before its inverse square root is taken.

        Raises:
            ConfigError: dimensions beyond what the train set supports, or a kept
                direction without variance (raise shrinkage or lower dimensions).
        Cost: O(n_train x dim^2) in float64, and a dim x dim eigendecomposition.
        """
        vectors = np.asarray(train_vectors, dtype=np.float32)
        if vectors.ndim != 2 or len(vectors) < 2:
            raise MetricInputError(f"whitening needs [n_train >= 2, dim] train embeddings; got {list(vectors.shape)}")
        n_train, dim = vectors.shape
        supported = min(n_train - 1, dim)  # centred, n points span at most n - 1 directions
        dimensions = supported if dimensions is None else dimensions
        if not 1 <= dimensions <= supported:
            raise ConfigError(
                f"evaluation.retrieval.whitening.dimensions is {dimensions}, but {n_train} train embeddings of dim "
                f"{dim} support 1 to min(n_train - 1, dim) = {supported}: lower it (null takes {supported}), or "
                "raise whitening.train_images"
            )
        unit = vectors.astype(np.float64) * inverse_norms("train", vectors)[:, None]
        mean = unit.mean(axis=0)
        centred = unit - mean
        eigenvalues, eigenvectors = np.linalg.eigh(centred.T @ centred / (n_train - 1))
        kept = np.argsort(eigenvalues)[::-1][:dimensions]  # by decreasing variance
        variances = eigenvalues[kept] + shrinkage * max(eigenvalues.mean(), 0)
        if not variances.min() > 0:
            raise ConfigError(
                f"evaluation.retrieval.whitening: {int(np.sum(variances <= 0))} of the {dimensions} kept directions "
                f"of the {n_train} train embeddings have no variance (shrinkage {shrinkage}): raise shrinkage above 0, "
                "lower dimensions, or check that the embeddings have not collapsed"
            )
        directions = eigenvectors[:, kept]
        # eigh's signs are arbitrary (they may differ between LAPACK builds): fixed so the file is reproducible.
        largest = np.abs(directions).argmax(axis=0)
        directions *= np.sign(directions[largest, np.arange(dimensions)])
        return cls(mean=mean, projection=directions / np.sqrt(variances))

    def apply(self, vectors) -> np.ndarray:
        """[n, dimensions] float32 whitened, L2-normalised embeddings of [n, dim] vectors.

        A zero vector stays zero (cosine 0 with everything, as in the plain search), and
        one equal to the train mean once normalised becomes zero, not NaN.
        """
        vectors = np.asarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != len(self.mean):
            raise MetricInputError(
                f"this whitening was learned on [n, {len(self.mean)}] embeddings; got {list(vectors.shape)}: "
                "learn it again on the embeddings of the model being scored"
            )
        scale = inverse_norms("whitening input", vectors)
        whitened = np.empty((len(vectors), self.dimensions), dtype=np.float32)
        for start in range(0, len(vectors), APPLY_BLOCK_ROWS):
            rows = slice(start, start + APPLY_BLOCK_ROWS)
            block = (vectors[rows] * scale[rows, None] - self.mean) @ self.projection
            whitened[rows] = block * (inverse_norms("whitened", block) * (scale[rows] > 0))[:, None]
        return whitened

    def save(self, path: str | Path) -> str:
        """Write the whitening to `path` (.npz, no pickles) atomically; returns its sha256 for `load`."""
        with atomic_writer(path) as handle:
            np.savez(handle, allow_pickle=False, **{name: getattr(self, name) for name in _ARRAYS})
        return sha256_file(path)

    @classmethod
    def load(cls, path: str | Path, sha256: str) -> "Whitening":
        """Read a whitening written by `save`, after checking its sha256.

        Raises:
            WhiteningIntegrityError: the file's sha256 is not `sha256` (it was altered).
            WhiteningFileError: not such a file (a pickle, other arrays or shapes); nothing
                in it was unpickled or run.
        """
        if sha256_file(path) != sha256:
            raise WhiteningIntegrityError(
                f"{path}: sha256 differs from the recorded one; the whitening was altered. Delete it, and the step "
                "that learns it runs again"
            )
        try:
            with np.load(path, allow_pickle=False) as stored:
                arrays = {name: stored[name] for name in stored.files}
        except (ValueError, OSError) as error:  # numpy's refusal of a pickle, or no .npz at all
            message = f"{path}: not a whitening saved by Whitening.save ({error}); it was not loaded"
            raise WhiteningFileError(message) from error
        if sorted(arrays) != sorted(_ARRAYS) or not _shapes_fit(**arrays):
            shapes = {name: list(array.shape) for name, array in arrays.items()}
            raise WhiteningFileError(
                f"{path}: holds {shapes}, where a whitening holds mean [dim] and projection [dim, dimensions] floats"
            )
        return cls(**arrays)


def _shapes_fit(mean: np.ndarray, projection: np.ndarray) -> bool:
    """True when mean [dim] and projection [dim, d] are finite floats of one dim."""
    return (
        mean.ndim == 1
        and projection.ndim == 2
        and projection.shape[0] == len(mean)
        and all(np.issubdtype(array.dtype, np.floating) and np.isfinite(array).all() for array in (mean, projection))
    )
