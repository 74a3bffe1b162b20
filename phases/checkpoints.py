"""Per-epoch checkpoints that a killed phase resumes from, and final models with digests.

A checkpoint is `epoch-NNNN.keras` (weights, optimizer state, model config) plus
`epoch-NNNN.json`: the epoch, the model file's sha256, the random generator
states of layers such as Dropout (Keras does not save them, and a resumed run
must draw the same dropout masks) and whatever the phase needs to continue (its
score rows). The JSON is written last: it is the mark of a complete checkpoint,
and a checkpoint whose model does not match its sha256 is ignored.

A checkpoint inside an epoch (`runtime.checkpoint_every`) is `epoch-NNNN-step-SSSSSSSS`:
epoch NNNN (0-based) unfinished, SSSSSSSS of its batches trained. Names sort in the order
they were written ("-step-" sorts before ".json"), so the newest is the last.
"""

import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras
import numpy as np

# Our registered Keras classes (losses a compiled model refers to, preprocessing layers):
# imported so that any saved model of the pipeline loads wherever load_model is called.
import phases.layers
import phases.losses  # noqa: F401
from phases.errors import ModelIntegrityError, UnsafeModelError
from tfrecords.files import raise_if_disk_error, sha256_file, write_text_atomic

KEEP = 2  # checkpoints kept per phase: the last, and one in case the last is damaged


@dataclass
class Checkpoint:
    """A checkpoint read back. `epoch` (0-based) is the last finished epoch, or with `step`
    the epoch it was saved inside, after `step` of its batches."""

    model: keras.Model
    epoch: int
    state: dict
    step: int | None = None

    @property
    def next_epoch(self) -> int:
        """The epoch training continues with (0-based); also the number of finished epochs."""
        return self.epoch if self.step is not None else self.epoch + 1

    @property
    def batches_done(self) -> int:
        """Batches of `next_epoch` already trained, to skip."""
        return self.step or 0


def save_model(model: keras.Model, path: Path) -> str:
    """Save `model` to `path` (.keras) atomically; returns its sha256."""
    return save_atomically(path, ".keras", model.save)


def save_atomically(path: Path, suffix: str, write: Callable[[Path], None]) -> str:
    """`write(temporary)` (a temporary name beside `path` ending in `suffix`: Keras insists on
    its suffixes), synced to disk, then renamed to `path`; returns its sha256. A refused
    write raises StorageError naming `path` (its previous version is kept)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp{suffix}")
    try:
        write(temporary)
        with open(temporary, "rb") as handle:
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except Exception as error:
        raise_if_disk_error(path, error)
        raise
    finally:
        temporary.unlink(missing_ok=True)
    return sha256_file(path)


def load_model(path: Path, sha256: str | None = None, compile: bool = True) -> keras.Model:
    """Load a `.keras` model in safe mode, after checking its sha256 when one is given.

    `compile=False` drops the optimizer: a new phase starts its own. A model holding code
    (a Lambda layer) is refused without running any of it: UnsafeModelError."""
    if sha256 is not None and sha256_file(path) != sha256:
        raise ModelIntegrityError(f"{path}: sha256 differs from the recorded one; the file was altered")
    try:
        return keras.saving.load_model(path, safe_mode=True, compile=compile)
    except (ValueError, TypeError) as error:
        # How Keras 3 words its refusals: a Python lambda (ValueError naming safe_mode), a
        # function or class neither Keras' nor registered (TypeError), a Keras utility that
        # is not a layer (e.g. keras.utils.get_file), a class that is not Keras'.
        refusals = ("safe_mode", "Could not locate", "Non-modeling APIs", "not a KerasSaveable")
        if not any(refusal in str(error) for refusal in refusals):
            raise
        raise UnsafeModelError(
            f"{path}: holds code (a Lambda layer or a function Keras does not know) that Keras safe mode "
            "refuses to run; it was not loaded and none of it ran. This pipeline's models hold no code: "
            "if you did not make this file, delete it, and the step that wrote it runs again"
        ) from None


def random_states(model: keras.Model) -> dict[str, list[int]]:
    """The state of every layer's seed generator (e.g. Dropout), by layer name
    (unique inside a model; EfficientNet alone has 16 Dropout layers)."""
    return {
        layer.name: np.asarray(layer.seed_generator.state.value).tolist()
        for layer in _layers(model)
        if getattr(layer, "seed_generator", None) is not None
    }


def restore_random_states(model: keras.Model, states: dict[str, list[int]]) -> None:
    for layer in _layers(model):
        if layer.name in states and getattr(layer, "seed_generator", None) is not None:
            layer.seed_generator.state.assign(np.asarray(states[layer.name], dtype="int64"))


def _layers(model: keras.Model):
    """Every layer inside `model`, nested models included."""
    for layer in model.layers:
        yield layer
        if isinstance(layer, keras.Model):
            yield from _layers(layer)


def save_checkpoint(folder: Path, epoch: int, model: keras.Model, state: dict, step: int | None = None) -> Path:
    """Write the checkpoint of a finished epoch (or, with `step`, of epoch `epoch` after
    `step` of its batches), then drop all but the last KEEP."""
    stem = f"epoch-{epoch:04d}" if step is None else f"epoch-{epoch:04d}-step-{step:08d}"
    model_path = folder / f"{stem}.keras"
    digest = save_model(model, model_path)
    record = {"epoch": epoch, "model": model_path.name, "sha256": digest, "random": random_states(model), **state}
    if step is not None:
        record["step"] = step
    state_path = folder / f"{stem}.json"
    write_text_atomic(state_path, json.dumps(record, indent=1))
    for old in sorted(folder.glob("epoch-*.json"))[:-KEEP]:
        old.with_name(f"{old.stem}.keras").unlink(missing_ok=True)
        old.unlink()
    return state_path


def latest_checkpoint(folder: Path) -> Checkpoint | None:
    """The newest complete checkpoint whose model matches its sha256, or None."""
    for state_path in sorted(folder.glob("epoch-*.json"), reverse=True):
        try:
            state = json.loads(state_path.read_text())
            model_path = folder / state["model"]
            if not model_path.is_file() or sha256_file(model_path) != state["sha256"]:
                continue
        except (ValueError, KeyError):
            continue
        model = load_model(model_path)
        restore_random_states(model, state.get("random", {}))
        return Checkpoint(model=model, epoch=state["epoch"], state=state, step=state.get("step"))
    return None
