"""What a training task reports while it runs: epoch lines in the Prefect log and the
phase's TensorBoard run (pipeline/tensorboard_logs.py).

Keras' progress bars are off (`fit(verbose=0)`): Prefect's log shows one line per
epoch from `EpochLogger` instead, and one per scored epoch from `ScoreReporter`.
"""

import logging

import keras

from phases.unit import PhaseResult
from pipeline.tensorboard_logs import PhaseLog


class EpochLogger(keras.callbacks.Callback):
    """One log line per training epoch: the phase, the epoch and Keras' training metrics."""

    def __init__(self, logger: logging.Logger | logging.LoggerAdapter, phase: str):
        super().__init__()
        self.logger, self.phase = logger, phase

    def on_epoch_end(self, epoch, logs=None):
        metrics = ", ".join(f"{name} {value:.4f}" for name, value in sorted((logs or {}).items()))
        self.logger.info(f"{self.phase} epoch {epoch + 1} trained: {metrics}")


class ScoreReporter:
    """The phase's `report` hook: logs each scored epoch, writes its row to the phase's
    TensorBoard run; `finish` adds the final split's scores."""

    def __init__(self, logger: logging.Logger | logging.LoggerAdapter, board: PhaseLog):
        self.logger, self.board = logger, board

    def __call__(self, row: dict) -> None:
        phase = self.board.name
        scores = {name: value for name, value in row.items() if isinstance(value, float)}
        self.logger.info(
            f"{phase} epoch {row['epoch']} scored: " + ", ".join(f"{name} {value:.4f}" for name, value in scores.items())
        )
        self.board.epoch(row)

    def finish(self, result: PhaseResult) -> None:
        self.board.finish(result.final_scores)
