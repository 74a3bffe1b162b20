"""A run's TensorBoard logs, RUN_DIR/tensorboard/: the score journey on one axis.

    tensorboard --logdir runs/demo/tensorboard

One TensorBoard run per step of the journey, named as the config names it: `baseline` (the
untrained model's scores at step 0), one per phase (`top`, `block7a`, `full`, `siamese`), and
`end-of-run` (the search sheet and the score chart; no phase can be named so: phase names
have no hyphen). The step is the epoch counted across the run's phases: phase k's epoch e is
at step (epochs of the phases before k) + e, so the phases follow each other instead of
overlapping. At each epoch's step a phase's run has `train/loss`, `train/accuracy`, ... (the
epoch's training metrics, `train/seconds`, a schedule's `train/margin`) and `val/mar_at_10`,
... (the scores of `evaluation.split`); at its last step, `test/mar_at_10`, ... (the final
split, scored once at the phase's end). Every run's HParams are the config, flattened, and a
phase's own settings as `phase.*`, so the HParams dashboard lists each phase with its scores.

Both train and val values come from the epoch's score row, not from Keras' TensorBoard
callback: the row's metrics are those of the whole epoch even when the phase resumed inside
it (Keras' own would cover the batches after the resume only), and they land on one step.

A phase's event files are named after its folder (NN-NAME-KEY). When the phase starts from
scratch (no checkpoint in its folder: a new key after a config change, or forced), its run's
old events are deleted; when it resumes from a checkpoint, those of the same folder are kept
and the new epochs follow them. Costs: one event file flush per epoch, and under a gs://
root one push of the run's folder (pulled first when the phase starts, so a phase resumed
on another machine keeps its events). Events are flushed after every epoch: a run killed
mid-phase leaves them readable.

Left as they are: a phase reused from the cache writes nothing, so after a config change
and back, a phase's run shows the events of the last phase trained under its name; an epoch
whose process died between its checkpoint and its report has no events (its row is in
scores.csv).
"""

import json
from collections.abc import Callable
from pathlib import Path

import tensorflow as tf
from tensorboard.plugins.hparams import api as hparams_api

from phases.config import PipelineConfig
from phases.metrics import SCORE_NAMES
from pipeline.storage import RunRoot

FOLDER = "tensorboard"  # RUN_DIR/tensorboard
BASELINE_RUN = "baseline"  # a name no phase may have (phases/config.py)
END_RUN = "end-of-run"
EVENTS = "events.out.tfevents.*"
# The scores of one split (`scoring.score_split`) besides `<split>_accuracy`.
SCORES = {*SCORE_NAMES, "triplet_accuracy"}


def first_step(config: PipelineConfig, phase_name: str) -> int:
    """The global step before the first epoch of phase `phase_name`: the epochs of the phases before it."""
    names = [phase.name for phase in config.phases]
    return sum(phase.epochs for phase in config.phases[: names.index(phase_name)])


def last_step(config: PipelineConfig) -> int:
    """The global step of the last epoch of the last phase: the run's epochs."""
    return sum(phase.epochs for phase in config.phases)


def tags(row: dict, split: str, final_split: str) -> dict[str, float]:
    """A score row's numbers by TensorBoard tag: its scores (`mar_at_10`, ...) as scores of
    `split`, `<split>/NAME`; those named after a split (`val_accuracy`; the baseline's
    `test_mar_at_10`) as that split's, `val/accuracy`, `test/mar_at_10`; everything else
    (loss, accuracy, margin, train_seconds) as `train/NAME` (`train/seconds`). Counts (ints)
    and texts are left out."""
    found = {}
    for name, value in row.items():
        if not isinstance(value, float):
            continue
        named = next((group for group in (split, final_split) if name.startswith(f"{group}_")), None)
        if named is not None:
            found[f"{named}/{name.removeprefix(f'{named}_')}"] = value
        elif name in SCORES:
            found[f"{split}/{name}"] = value
        else:
            found[f"train/{name.removeprefix('train_')}"] = value
    return found


def config_hparams(config: PipelineConfig, phase=None) -> dict[str, bool | int | float | str]:
    """The config as HParams: dotted names (`model.architecture`, `phases.top.learning_rate`,
    `phases.siamese.margin_schedule.1.margin`) to bools, numbers and texts (lists of values and
    None as JSON text: `[]`, `null`). With `phase` (a phase section), its settings again as
    `phase.*` (its epochs included), so every phase's run fills the same columns. `storage` is
    left out: how a machine caches files, not what a run computes."""
    values = config.model_dump(exclude={"storage"})
    values["phases"] = {section["name"]: section for section in values["phases"]}
    if phase is not None:
        values["phase"] = {**phase.model_dump(), "epochs": phase.epochs}
    return dict(_flatten("", values))


def _flatten(name: str, value):
    if isinstance(value, dict):
        for key, item in value.items():
            yield from _flatten(f"{name}.{key}" if name else key, item)
    elif isinstance(value, list) and value and all(isinstance(item, dict) for item in value):
        for number, item in enumerate(value):
            yield from _flatten(f"{name}.{number}", item)
    elif isinstance(value, (bool, int, float, str)):
        yield name, value
    else:
        yield name, json.dumps(value)


class PhaseLog:
    """The TensorBoard run of one phase while it trains in `work_dir`: its old events kept
    (a resumed phase) or deleted (one starting from scratch), then one write per epoch
    (`epoch`) and the final split's scores (`finish`). Writes nothing on a worker that is
    not the chief (`root.read_only`)."""

    def __init__(self, root: RunRoot, config: PipelineConfig, phase_name: str, work_dir: Path):
        self.root, self.name = root, phase_name
        self.phase = config.phase(phase_name)
        self.first = first_step(config, phase_name)
        self.split, self.final_split = config.evaluation.split, config.evaluation.final_split
        self.folder = root.local / FOLDER / phase_name
        self.writer = None
        if root.read_only:
            return
        root.pull(self.folder, key="")  # a gs:// root: the events so far (the folder has no record: all of it)
        suffix = f".{work_dir.name}.v2"
        resumed = any((work_dir / "checkpoints").glob("epoch-*.json"))
        started = _drop_events(self.folder, keep=suffix if resumed else None)
        self.writer = tf.summary.create_file_writer(str(self.folder), filename_suffix=suffix)
        if not started:
            with self.writer.as_default():
                hparams_api.hparams(config_hparams(config, self.phase))
            self.writer.flush()

    def epoch(self, row: dict) -> None:
        """An epoch's score row (`epoch` from 1), at its global step."""
        self._write(tags(row, self.split, self.final_split), self.first + int(row["epoch"]))

    def finish(self, final_scores: dict | None) -> None:
        """The final split's scores (None: the data has none) at the phase's last step; closes the run."""
        self._write(tags(final_scores or {}, self.final_split, self.final_split), self.first + self.phase.epochs)
        if self.writer is not None:
            self.writer.close()

    def _write(self, scalars: dict[str, float], step: int) -> None:
        if self.writer is None:
            return
        with self.writer.as_default():
            for tag, value in scalars.items():
                tf.summary.scalar(tag, value, step=step)
        self.writer.flush()
        self.root.push(self.folder)


def log_baseline(root: RunRoot, config: PipelineConfig, row: dict) -> None:
    """The `baseline` run, written anew: the config's HParams and the baseline row's scores
    (of both splits, when it has the final split's) at step 0."""

    def write() -> None:
        hparams_api.hparams(config_hparams(config))
        for tag, value in tags(row, config.evaluation.split, config.evaluation.final_split).items():
            tf.summary.scalar(tag, value, step=0)

    _rewrite(root, BASELINE_RUN, write)


def log_run_end(root: RunRoot, config: PipelineConfig, images: dict[str, Path]) -> None:
    """The `end-of-run` run, written anew: `images` (tag -> PNG file; e.g. the search sheet and
    the score chart) at the run's last step. A missing file is left out."""

    def write() -> None:
        for tag, path in images.items():
            if Path(path).is_file():
                pixels = tf.image.decode_png(Path(path).read_bytes())
                tf.summary.image(tag, pixels[tf.newaxis], step=last_step(config))

    _rewrite(root, END_RUN, write)


def _rewrite(root: RunRoot, name: str, write: Callable[[], None]) -> None:
    """Run `name`'s events replaced by what `write()` writes, then pushed; nothing on a worker
    that is not the chief."""
    if root.read_only:
        return
    folder = root.local / FOLDER / name
    _drop_events(folder, keep=None)
    writer = tf.summary.create_file_writer(str(folder))
    with writer.as_default():
        write()
    writer.close()
    root.push(folder)


def _drop_events(folder: Path, keep: str | None) -> bool:
    """Delete the event files in `folder` but those whose name ends with `keep`; returns
    whether any is left."""
    left = False
    for path in folder.glob(EVENTS):
        if keep is not None and path.name.endswith(keep):
            left = True
        else:
            path.unlink()
    return left
