"""RUN_DIR/tensorboard: one TensorBoard run per phase, named after it, on one step axis;
written from score rows as `pvs run` writes them (no training here)."""

import json
from pathlib import Path

import numpy as np
import pytest
import tensorflow as tf
from tensorboard.plugins.hparams import plugin_data_pb2

from phases.config import PipelineConfig
from pipeline.storage import RunRoot, StorageSettings
from pipeline.tensorboard_logs import END_RUN, PhaseLog, log_baseline, log_run_end

PHASES = [
    {"name": "top", "kind": "classification", "unfreeze": "none", "learning_rate": 1e-2, "epochs": 2},
    {"name": "block7a", "kind": "classification", "unfreeze": "from", "unfreeze_from": "block7a",
     "learning_rate": 1e-3, "epochs": 1},
    {"name": "full", "kind": "classification", "unfreeze": "all", "learning_rate": 1e-4, "epochs": 2},
    {"name": "siamese", "kind": "siamese",
     "margin_schedule": [{"margin": 0.5, "learning_rate": 1e-3, "epochs": 1}, {"margin": 0.75, "learning_rate": 1e-2, "epochs": 2}]},
]
HPARAMS = "_hparams_/session_start_info"  # the tag of a run's HParams
CONFIG = PipelineConfig.model_validate({"data": {"source": "images"}, "model": {"weights": "none"}, "phases": PHASES})


def read_run(folder: Path) -> dict[str, dict[int, object]]:
    """Every value of a TensorBoard run folder's event files: tag -> step -> value (a float for
    scalars, the encoded PNG for images, the HParams by name for the hparams summary)."""
    found, plugins = {}, {}
    for path in sorted(folder.glob("events.out.tfevents.*")):
        for event in tf.compat.v1.train.summary_iterator(str(path)):
            for value in event.summary.value:  # (a writer names the plugin with a tag's first value only)
                plugin = plugins.setdefault(value.tag, value.metadata.plugin_data.plugin_name)
                if plugin == "scalars":
                    item = float(tf.make_ndarray(value.tensor))
                elif plugin == "images":
                    item = tf.make_ndarray(value.tensor)[2]
                elif plugin == "hparams":
                    data = plugin_data_pb2.HParamsPluginData.FromString(value.metadata.plugin_data.content)
                    item = {name: getattr(hp, hp.WhichOneof("kind")) for name, hp in data.session_start_info.hparams.items()}
                else:
                    continue
                found.setdefault(value.tag, {})[event.step] = item
    return found


def count(folder: Path, tag: str) -> int:
    """How many values of `tag` a run's event files hold (at any step)."""
    paths = sorted(folder.glob("events.out.tfevents.*"))
    return sum(value.tag == tag for path in paths for event in tf.compat.v1.train.summary_iterator(str(path))
               for value in event.summary.value)


def scalar_steps(folder: Path, tag: str) -> list[int]:
    """The steps at which a run has `tag`, in order."""
    return sorted(read_run(folder).get(tag, {}))


def row(phase: str, epoch: int, score: float) -> dict:
    return {"phase": phase, "epoch": epoch, "loss": 2.0 - score, "accuracy": score / 2, "train_seconds": 7.5,
            "mar_at_10": score, "recall_at_1": score / 3, "n_queries": 12, "triplet_accuracy": 0.5, "val_accuracy": 0.25}


def work_dir(root: RunRoot, number: int, phase: str, key: str = "c33794ecef9a") -> Path:
    folder = root.local / "phases" / f"{number:02d}-{phase}-{key}"
    (folder / "checkpoints").mkdir(parents=True, exist_ok=True)
    return folder


def checkpoint(folder: Path, epoch: int) -> None:
    """What a phase's checkpoint folder holds after `epoch` (0-based) finished, as far as the log looks."""
    (folder / "checkpoints" / f"epoch-{epoch:04d}.json").write_text(json.dumps({"epoch": epoch}))


def train(root: RunRoot, number: int, phase: str, epochs=None, key: str = "c33794ecef9a", final: dict | None = None):
    """A phase trained (or resumed) through its PhaseLog: its epochs' rows, then its final scores."""
    folder = work_dir(root, number, phase, key)
    log = PhaseLog(root, CONFIG, phase, folder)
    for epoch in epochs or range(1, CONFIG.phase(phase).epochs + 1):
        log.epoch(row(phase, epoch, 0.1 * number + 0.01 * epoch))
        checkpoint(folder, epoch - 1)
    log.finish(final)
    return folder


@pytest.fixture
def run(tmp_path) -> RunRoot:
    """A run folder with the baseline and every phase logged, each phase's test scores at its end."""
    root = RunRoot(tmp_path / "run")
    log_baseline(root, CONFIG, {"phase": "baseline", "epoch": 0, "mar_at_10": 0.05, "n_queries": 12, "test_mar_at_10": 0.07})
    for number, phase in enumerate(CONFIG.phases, start=1):
        train(root, number, phase.name, final={"mar_at_10": 0.9 + number / 100, "test_accuracy": 0.5, "n_queries": 9})
    return root


def test_each_phase_is_a_run_named_after_it_in_the_run_folder(run):
    board = run.local / "tensorboard"
    assert sorted(path.name for path in board.iterdir()) == ["baseline", "block7a", "full", "siamese", "top"]
    assert not list((run.local / "phases").rglob("events.out.tfevents.*"))


def test_steps_count_epochs_across_phases_from_the_baseline_at_zero(run):
    board = run.local / "tensorboard"
    assert scalar_steps(board / "baseline", "val/mar_at_10") == [0]
    assert scalar_steps(board / "top", "val/mar_at_10") == [1, 2]
    assert scalar_steps(board / "block7a", "val/mar_at_10") == [3]
    assert scalar_steps(board / "full", "val/mar_at_10") == [4, 5]
    assert scalar_steps(board / "siamese", "val/mar_at_10") == [6, 7, 8]  # its margin schedule's 1 + 2 epochs


def test_an_epochs_train_metrics_and_scores_share_its_step(run):
    values = read_run(run.local / "tensorboard" / "full")
    assert values["train/loss"] == {4: pytest.approx(2.0 - 0.31), 5: pytest.approx(2.0 - 0.32)}
    assert values["val/mar_at_10"] == {4: pytest.approx(0.31), 5: pytest.approx(0.32)}
    for tag in ("train/accuracy", "train/seconds", "val/recall_at_1", "val/triplet_accuracy", "val/accuracy"):
        assert sorted(values[tag]) == [4, 5], tag
    assert not [tag for tag in values if "n_queries" in tag or "epoch" in tag]


def test_the_test_score_is_at_the_phases_last_step_and_the_baselines_at_zero(run):
    board = run.local / "tensorboard"
    for phase, step, score in (("top", 2, 0.91), ("block7a", 3, 0.92), ("full", 5, 0.93), ("siamese", 8, 0.94)):
        values = read_run(board / phase)
        assert values["test/mar_at_10"] == {step: pytest.approx(score)}
        assert values["test/accuracy"] == {step: pytest.approx(0.5)}
    assert read_run(board / "baseline")["test/mar_at_10"] == {0: pytest.approx(0.07)}


def test_a_phase_started_from_scratch_drops_its_old_events(run):
    train(run, 3, "full", epochs=[1], key="0123456789ab")  # a config change: a new folder, no checkpoint
    values = read_run(run.local / "tensorboard" / "full")
    assert values["val/mar_at_10"] == {4: pytest.approx(0.31)}
    assert count(run.local / "tensorboard" / "full", HPARAMS) == 1


def test_a_forced_phase_drops_its_old_events(run):
    folder = work_dir(run, 3, "full")
    for path in (folder / "checkpoints").iterdir():  # forced: the flow clears the phase's folder
        path.unlink()
    train(run, 3, "full", epochs=[1])
    assert read_run(run.local / "tensorboard" / "full")["val/mar_at_10"] == {4: pytest.approx(0.31)}


def test_a_resumed_phase_keeps_the_events_written_so_far(tmp_path):
    root = RunRoot(tmp_path / "run")
    train(root, 1, "top")
    folder = work_dir(root, 2, "block7a")
    log = PhaseLog(root, CONFIG, "block7a", folder)
    log.epoch(row("block7a", 1, 0.5))
    checkpoint(folder, 0)  # killed here: the writer is never closed
    train(root, 3, "full", epochs=[1])
    train(root, 3, "full", epochs=[2])  # resumed from epoch 1's checkpoint
    values = read_run(root.local / "tensorboard" / "full")
    assert sorted(values["val/mar_at_10"]) == [4, 5] and count(root.local / "tensorboard" / "full", HPARAMS) == 1
    assert scalar_steps(root.local / "tensorboard" / "block7a", "val/mar_at_10") == [3]


def test_resuming_another_folder_of_the_phase_drops_the_events_of_this_one(run):
    checkpoint(work_dir(run, 3, "full", "0123456789ab"), 0)  # trained under another config before, then resumed
    train(run, 3, "full", epochs=[2], key="0123456789ab")
    assert scalar_steps(run.local / "tensorboard" / "full", "val/mar_at_10") == [5]


def test_every_run_has_the_config_as_hparams_and_each_phase_its_own_settings(run):
    board = run.local / "tensorboard"
    full = read_run(board / "full")[HPARAMS][0]
    assert full["model.architecture"] == "EfficientNetB0" and full["data.image_size"] == 224
    assert full["phases.top.learning_rate"] == pytest.approx(1e-2)
    assert full["phases.siamese.margin_schedule.1.margin"] == pytest.approx(0.75)
    assert full["model.feature_blocks"] == "[]" and full["runtime.deterministic"] is False
    assert full["phase.name"] == "full" and full["phase.unfreeze"] == "all" and full["phase.epochs"] == 2
    assert full["phase.learning_rate"] == pytest.approx(1e-4)
    assert read_run(board / "siamese")[HPARAMS][0]["phase.epochs"] == 3
    baseline = read_run(board / "baseline")[HPARAMS][0]
    assert baseline["model.weights"] == "none" and not [name for name in baseline if name.startswith(("phase.", "storage."))]


def test_the_search_sheet_and_score_chart_are_images_at_the_last_step(run, tmp_path):
    sheet, chart = tmp_path / "search-sheet.png", tmp_path / "scores.png"
    pixels = np.zeros((6, 8, 3), np.uint8)
    pixels[:, :4] = 255
    sheet.write_bytes(tf.io.encode_png(pixels).numpy())
    chart.write_bytes(tf.io.encode_png(pixels[:3]).numpy())
    log_run_end(run, CONFIG, {"search_sheet": sheet, "score_chart": chart})
    log_run_end(run, CONFIG, {"search_sheet": sheet, "score_chart": chart})  # a rerun of a finished run: written anew
    values = read_run(run.local / "tensorboard" / END_RUN)
    assert list(values["search_sheet"]) == [8] and list(values["score_chart"]) == [8]
    assert (tf.io.decode_png(values["search_sheet"][8]).numpy() == pixels).all()


def test_a_worker_that_is_not_the_chief_writes_no_events(tmp_path):
    root = RunRoot(tmp_path / "run")
    root.read_only = True
    log_baseline(root, CONFIG, {"phase": "baseline", "epoch": 0, "mar_at_10": 0.05})
    train(root, 1, "top", final={"mar_at_10": 0.9})
    assert not (root.local / "tensorboard").exists()


def test_a_phase_resumed_on_another_machine_keeps_the_events_in_the_bucket(storage_emulator, tmp_path):
    url = storage_emulator.url("tensorboard", "run")
    here = RunRoot(url, StorageSettings(tmp_path / "here", None, workers=2))
    checkpoint(train(here, 3, "full", epochs=[1]), 0)
    there = RunRoot(url, StorageSettings(tmp_path / "there", None, workers=2))
    checkpoint(work_dir(there, 3, "full"), 0)  # the phase's folder as the flow pulls it there
    train(there, 3, "full", epochs=[2])
    assert scalar_steps(there.local / "tensorboard" / "full", "val/mar_at_10") == [4, 5]
    here.pull(here.local / "tensorboard" / "full", key="")
    assert scalar_steps(here.local / "tensorboard" / "full", "val/mar_at_10") == [4, 5]
