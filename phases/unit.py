"""What every phase takes and returns: a context (data, work folder, hooks), what a trainer
tells the controller (an epoch's plan, the final models) and a result."""

import hashlib
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import keras

from phases.errors import TrainingError

EMBEDDER_FILE = "embedder.keras"  # a phase's images -> embeddings model, in its work folder


def _ignore(*args) -> None:
    return None


@dataclass
class PhaseContext:
    """Where a phase reads and writes, and how it reports.

    `data_dir`: an ingested folder (manifest.json + shards). `work_dir`: this phase's
    own folder (checkpoints, final model, caches); nothing is written elsewhere.
    `report(row)` is called once per scored epoch, after its checkpoint is saved.
    `resuming(epoch, step, epochs)` is called before training when the phase resumes from
    a checkpoint: at 0-based `epoch` of `epochs`, after `step` of its batches (None: at
    the epoch's start).
    `callbacks` are extra Keras callbacks (the epoch log lines) from the caller.
    """

    data_dir: Path
    work_dir: Path
    report: Callable[[dict], None] = _ignore
    resuming: Callable[[int, int | None, int], None] = _ignore
    callbacks: Sequence[keras.callbacks.Callback] = ()


@dataclass
class PhaseResult:
    """A finished phase: its final model (path and sha256; for a classifier also the model
    it embeds with, `embedder_path`), one score row per epoch,
    the scores of the final split (None when the data has none), and the epoch it
    resumed after (None when it started from scratch). On a worker that is not the chief
    of a multi-worker strategy, which writes nothing, `model_path` is where the chief
    saved the model, `model_sha256` is "" and `extra` holds {"chief": False}."""

    name: str
    model_path: Path
    model_sha256: str
    rows: list[dict]
    # A classifier's images -> embeddings model (`model.features`) when `model_path` is not
    # one: what extraction and search use if this phase is the last. None for embedding phases.
    embedder_path: Path | None = None
    embedder_sha256: str = ""
    final_scores: dict | None = None
    # Resumed from a checkpoint: the epochs it had finished, and, for one saved inside an
    # epoch, the batches of the next epoch it had trained. None: started from the beginning.
    resumed_after_epoch: int | None = None
    resumed_at_step: int | None = None
    extra: dict = field(default_factory=dict)


@dataclass
class EpochPlan:
    """What a trainer sets before an epoch: row fields known beforehand (the margin and
    learning rate of a schedule step) and the advice a NaN loss gets."""

    fields: dict = field(default_factory=dict)
    advice: str = "Lower the learning rate and run again."


@dataclass
class FinalModels:
    """The files a finished phase leaves in its work folder, saved in this order:
    `others` (kept beside, e.g. the projection alone), `model` (what the next phase starts
    from), then `embedder` (images -> embeddings) when `model` is not one."""

    model: tuple[str, keras.Model]
    embedder: tuple[str, keras.Model] | None = None
    others: tuple[tuple[str, keras.Model], ...] = ()


def epoch_seed(seed: int, phase: str, epoch: int) -> int:
    """A seed for one epoch of one phase: the data order of epoch e does not depend on
    what ran before it, so a resumed phase reads exactly what an uninterrupted one would."""
    digest = hashlib.sha256(f"{seed}:{phase}:{epoch}".encode()).digest()
    return int.from_bytes(digest[:4], "big") & 0x7FFFFFFF


def seed_everything(seed: int) -> None:
    """`keras.utils.set_random_seed` (Python, NumPy, TensorFlow's global seed, Keras), made
    safe from other threads; for the start of a run and its first model.

    Keras draws the seed of every unseeded initializer from Python's shared `random`
    (`seed_generator.make_default_seed`). In a Prefect run, the engine's background
    threads draw from that same `random` while a model is being built, so weights
    came out different from run to run. Keras is given its own `random.Random(seed)`
    instead: the same sequence an undisturbed `random.seed(seed)` gives (so the same
    weights as a plain process), which no other thread touches."""
    keras.utils.set_random_seed(seed)
    seed_model_randomness(seed)


def seed_model_randomness(seed: int) -> None:
    """Seed what building or loading a model draws (Keras' default seeds of initializers
    and Dropout layers, NumPy, `random`), and nothing else.

    TensorFlow's global seed is left alone: tf.data combines it with each pipeline's
    own seed (shuffles, augmentation draws), so it must stay the run's seed whatever
    ran before in the process; a phase that reseeded it would read its data in another
    order when resumed in a new process than when run straight on."""
    import random

    import numpy as np
    from keras.src.random import seed_generator

    random.seed(seed)
    np.random.seed(seed)
    seed_generator.python_random = random.Random(seed)


def check_loss(phase: str, epoch: int, loss: float, advice: str) -> None:
    """Raise TrainingError when the loss of (0-based) `epoch` is NaN or infinite.

    Called before the epoch's checkpoint is saved, so the last good one stays the
    latest and a rerun (with, say, a lower learning rate) resumes from it."""
    if math.isfinite(loss):
        return
    kept = f"the checkpoint of epoch {epoch} is kept" if epoch else "no epoch had finished, so there is no checkpoint"
    raise TrainingError(f"phase {phase!r}, epoch {epoch + 1}: the loss became {loss}; {kept}. {advice}")
