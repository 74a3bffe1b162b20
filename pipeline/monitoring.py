"""What a training task reports while it runs: epoch lines in the Prefect log,
TensorBoard logs per phase, and an optional injected fault for resume drills.

Keras' progress bars are off (`fit(verbose=0)`): Prefect's log shows one line per
epoch from `EpochLogger` instead, and one per scored epoch from `ScoreReporter`.
"""

import logging
import os
from pathlib import Path

import keras

FAULT_AFTER = "PVS_FAIL_AFTER"  # "PHASE:EPOCH": fail after that epoch's checkpoint is saved
FAULT_ONCE = "PVS_FAIL_ONCE"  # a marker file: fail only if it does not exist yet, then create it


class InjectedFault(RuntimeError):
    """The failure asked for by PVS_FAIL_AFTER: a stand-in for a preempted machine."""


class EpochLogger(keras.callbacks.Callback):
    """One log line per training epoch: the phase, the epoch and Keras' training metrics."""

    def __init__(self, logger: logging.Logger | logging.LoggerAdapter, phase: str):
        super().__init__()
        self.logger, self.phase = logger, phase

    def on_epoch_end(self, epoch, logs=None):
        metrics = ", ".join(f"{name} {value:.4f}" for name, value in sorted((logs or {}).items()))
        self.logger.info(f"{self.phase} epoch {epoch + 1} trained: {metrics}")


class ScoreReporter:
    """The phase's `report` hook: logs each scored epoch, writes its scores to
    TensorBoard (`<phase folder>/tensorboard/scores`) and injects the configured fault."""

    def __init__(self, logger, phase: str, tensorboard_dir: Path):
        import tensorflow as tf

        self.logger, self.phase = logger, phase
        self.writer = tf.summary.create_file_writer(str(tensorboard_dir / "scores"))

    def __call__(self, row: dict) -> None:
        import tensorflow as tf

        scores = {name: value for name, value in row.items() if isinstance(value, float)}
        self.logger.info(
            f"{self.phase} epoch {row['epoch']} scored: " + ", ".join(f"{name} {value:.4f}" for name, value in scores.items())
        )
        with self.writer.as_default():
            for name, value in scores.items():
                tf.summary.scalar(name, value, step=int(row["epoch"]))
        self.writer.flush()
        inject_fault(self.phase, int(row["epoch"]))


def inject_fault(phase: str, epoch: int) -> None:
    """Raise InjectedFault when PVS_FAIL_AFTER names this phase and epoch (and, with
    PVS_FAIL_ONCE, only the first time). Runs after the epoch's checkpoint is saved,
    so a resumed run continues from it."""
    wanted = os.environ.get(FAULT_AFTER, "")
    if wanted != f"{phase}:{epoch}":
        return
    marker = os.environ.get(FAULT_ONCE)
    if marker:
        if Path(marker).exists():
            return
        Path(marker).touch()
    raise InjectedFault(f"{FAULT_AFTER}={wanted}: failing after epoch {epoch} of phase {phase!r}, as asked")


def tensorboard_callback(folder: Path) -> keras.callbacks.Callback:
    """Keras' TensorBoard logs of a phase (per epoch; no graph, no profiling)."""
    return keras.callbacks.TensorBoard(log_dir=str(folder / "tensorboard"), write_graph=False, update_freq="epoch", profile_batch=0)
