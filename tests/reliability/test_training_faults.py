"""Faults inside a phase: a NaN loss, and a disk that fills up while a checkpoint is saved.
Either way the phase stops with an error naming what went wrong and where, and the
last good checkpoint stays the one a rerun resumes from."""

import json
import resource
import subprocess
import sys
import time

import keras
import numpy as np
import pytest

from phases.checkpoints import latest_checkpoint
from phases.config import PipelineConfig
from phases.controller import run_phase
from phases.errors import TrainingError
from phases.unit import PhaseContext
from test_phases import RUN_PHASE, tiny_config


class PoisonWeights(keras.callbacks.Callback):
    """Sets every trainable weight to NaN when `epoch` (0-based) begins: the loss of
    that epoch is NaN from its first batch on, as after an exploding update."""

    def __init__(self, epoch: int):
        super().__init__()
        self.epoch = epoch

    def on_epoch_begin(self, epoch, logs=None):
        if epoch == self.epoch:
            for weight in self.model.trainable_weights:
                weight.assign(np.full(weight.shape, np.nan, dtype="float32"))


@pytest.mark.slow
@pytest.mark.parametrize("phase", ["top", "siamese"])
def test_nan_loss_stops_the_phase_naming_it_and_keeps_the_last_good_checkpoint(ingested, tmp_path, phase):
    config = PipelineConfig.model_validate(tiny_config(ingested))
    work = tmp_path / phase
    poisoned = PhaseContext(data_dir=ingested, work_dir=work, callbacks=(PoisonWeights(epoch=1),))
    with pytest.raises(TrainingError, match=rf"phase '{phase}', epoch 2: the loss became nan; the checkpoint of epoch 1 is kept"):
        run_phase(config.phase(phase), config, poisoned)
    kept = latest_checkpoint(work / "checkpoints")
    assert kept is not None and kept.epoch == 0
    assert all(np.isfinite(np.asarray(weight)).all() for weight in kept.model.weights)
    assert not (work / "model.keras").exists() and not (work / "embedder.keras").exists()

    resumed = run_phase(config.phase(phase), config, PhaseContext(data_dir=ingested, work_dir=work))
    assert resumed.resumed_after_epoch == 1 and all(np.isfinite(row["loss"]) for row in resumed.rows)


def test_nan_loss_in_the_first_epoch_says_there_is_no_checkpoint(ingested, tmp_path):
    config = PipelineConfig.model_validate(tiny_config(ingested))
    poisoned = PhaseContext(data_dir=ingested, work_dir=tmp_path, callbacks=(PoisonWeights(epoch=0),))
    with pytest.raises(TrainingError, match="phase 'top', epoch 1: the loss became nan; no epoch had finished"):
        run_phase(config.phase("top"), config, poisoned)
    assert latest_checkpoint(tmp_path / "checkpoints") is None


@pytest.mark.slow
def test_full_disk_while_saving_a_checkpoint_names_the_file_and_keeps_the_previous_one(ingested, tmp_path):
    """The file size limit (RLIMIT_FSIZE, lowered from outside once epoch 1's checkpoint
    exists) makes the kernel refuse the writes of epoch 2's checkpoint (EFBIG), as a full
    disk would (ENOSPC): both are reported the same way."""
    work = tmp_path / "top"
    arguments = tmp_path / "top.json"
    arguments.write_text(json.dumps({"config": tiny_config(ingested), "data_dir": str(ingested), "work_dir": str(work),
                                     "phase": "top", "previous": None}))
    process = subprocess.Popen([sys.executable, str(RUN_PHASE), str(arguments)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (work / "checkpoints" / "epoch-0000.json").is_file():
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()[1][-3000:]
        time.sleep(0.02)
    resource.prlimit(process.pid, resource.RLIMIT_FSIZE, (64 * 1024, resource.RLIM_INFINITY))
    _, errors = process.communicate(timeout=300)

    assert process.returncode != 0
    assert f"StorageError: {work / 'checkpoints' / 'epoch-0001.keras'}: could not be written (File too large)" in errors
    assert "its previous version is kept" in errors
    kept = latest_checkpoint(work / "checkpoints")
    assert kept is not None and kept.epoch == 0
    assert sorted(path.name for path in (work / "checkpoints").iterdir()) == ["epoch-0000.json", "epoch-0000.keras"]

    resumed = subprocess.run([sys.executable, str(RUN_PHASE), str(arguments)], capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert json.loads(resumed.stdout.strip().splitlines()[-1])["resumed_after_epoch"] == 1
