"""What a training task reports while it runs: epoch lines in the Prefect log,
TensorBoard logs per phase, and the fault drill's injected fault (pipeline/fault_drill.py).

Keras' progress bars are off (`fit(verbose=0)`): Prefect's log shows one line per
epoch from `EpochLogger` instead, and one per scored epoch from `ScoreReporter`.
"""

import logging
from pathlib import Path

import keras

from pipeline.fault_drill import inject_fault


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


def tensorboard_callback(folder: Path) -> keras.callbacks.Callback:
    """Keras' TensorBoard logs of a phase (per epoch; no graph, no profiling)."""
    return keras.callbacks.TensorBoard(log_dir=str(folder / "tensorboard"), write_graph=False, update_freq="epoch", profile_batch=0)
