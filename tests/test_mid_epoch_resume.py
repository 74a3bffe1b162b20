"""`runtime.checkpoint_every`: a phase killed inside an epoch resumes at the batch after its
last checkpoint and ends with the weights and scores of an uninterrupted run.

Real processes (`tests/run_phase.py`) killed with SIGKILL by the kill hook
(tests/reliability/kill_hook) at a checkpoint written inside the second epoch: just before
it is renamed into place (a kill mid-write: the checkpoint before it is used) or a moment
after (a kill mid-epoch, between checkpoints). MobileNetV3Small at 32 px keeps each run short.
"""

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

RUN_PHASE = Path(__file__).parent / "run_phase.py"
KILL_HOOK = Path(__file__).parent / "reliability" / "kill_hook"
PHASES = {
    "last": {"name": "last", "kind": "classification", "unfreeze": "from", "unfreeze_from": "expanded_conv_10",
             "learning_rate": 1e-3, "epochs": 2, "augment": "all"},  # six views: ~22 batches an epoch
    "siamese": {"name": "siamese", "kind": "siamese", "projection_dim": 16, "labels_per_batch": 4, "views_per_label": 3,
                "margin_schedule": [{"margin": 0.5, "learning_rate": 1e-3, "epochs": 1},
                                    {"margin": 0.75, "learning_rate": 1e-2, "epochs": 1}]},  # ~32 batches
}


def run(tmp_path: Path, data_dir: Path, work_dir: Path, phase: str, **kill: str) -> subprocess.CompletedProcess:
    arguments = tmp_path / f"{work_dir.name}-{phase}.json"
    arguments.write_text(json.dumps({
        "config": {
            "data": {"source": str(data_dir), "image_size": 32, "batch_size": 16, "shuffle_buffer": 64},
            "model": {"architecture": "MobileNetV3Small", "weights": "none", "batch_norm_calibration_batches": 2},
            "phases": [PHASES[phase]],
            "evaluation": {"batch_size": 64},
            "runtime": {"seed": 3, "deterministic": True, "eager": True, "checkpoint_every": "2 steps"},
        },
        "data_dir": str(data_dir), "work_dir": str(work_dir), "phase": phase, "previous": None,
    }))
    environment = {**os.environ, "PYTHONPATH": str(KILL_HOOK), "PVS_TEST_ROOT": str(work_dir), **kill}
    return subprocess.run([sys.executable, str(RUN_PHASE), str(arguments)], capture_output=True, text=True,
                          timeout=600, env=environment)


def output(process: subprocess.CompletedProcess) -> dict:
    assert process.returncode == 0, process.stderr[-3000:]
    return json.loads(process.stdout.strip().splitlines()[-1])


def weights(path: str) -> list[np.ndarray]:
    from phases.checkpoints import load_model

    return [np.asarray(weight) for weight in load_model(Path(path), compile=False).weights]


@pytest.mark.slow
@pytest.mark.parametrize(("phase", "delay"), [("last", "0.3"), ("siamese", "0")])
def test_a_phase_killed_inside_an_epoch_resumes_there_and_matches_the_uninterrupted_run(ingested, tmp_path, phase, delay):
    expected = output(run(tmp_path, ingested, tmp_path / "straight", phase))
    work = tmp_path / "killed"
    landmark = "checkpoints/epoch-0001-step-00000004.json"
    killed = run(tmp_path, ingested, work, phase, PVS_TEST_KILL_AT=landmark, PVS_TEST_KILL_DELAY=delay)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert not (work / "checkpoints" / "epoch-0001.json").exists()  # killed inside the second epoch
    resumed = output(run(tmp_path, ingested, work, phase))

    # Mid-write, the checkpoint at step 4 was never complete: the one at step 2 is used.
    assert (resumed["resumed_after_epoch"], resumed["resumed_at_step"]) == (1, 4 if delay != "0" else 2)
    assert expected["resumed_after_epoch"] is None
    assert len(resumed["rows"]) == len(expected["rows"]) == 2
    for mine, theirs in zip(resumed["rows"], expected["rows"]):
        assert mine.keys() == theirs.keys()
        for key, value in theirs.items():
            if key != "train_seconds":  # wall time; the loss is the whole epoch's mean, summed in another order
                assert mine[key] == pytest.approx(value, abs=1e-6), (mine["epoch"], key)
    assert resumed["final_scores"] == expected["final_scores"]
    differences = [np.max(np.abs(a - b)) for a, b in zip(weights(resumed["model_path"]), weights(expected["model_path"]))]
    assert max(differences) == 0.0
    kept = sorted(path.name for path in (work / "checkpoints").glob("*.json"))
    assert len(kept) == 2 and kept[-1] == "epoch-0001.json"  # the last two, whatever their kind


@pytest.mark.parametrize(("text", "steps", "seconds"), [
    ("10 minutes", None, 600.0), ("90 seconds", None, 90.0), ("500 steps", 500, None), ("1 step", 1, None),
    ("2.5 min", None, 150.0), ("never", None, None),
])
def test_checkpoint_every_reads_steps_minutes_seconds_or_never(text, steps, seconds):
    from phases.config import RuntimeConfig

    runtime = RuntimeConfig(checkpoint_every=text)
    assert (runtime.checkpoint_steps, runtime.checkpoint_seconds) == (steps, seconds)


@pytest.mark.parametrize("text", ["often", "0 steps", "1.5 steps", "10 hours", ""])
def test_an_unreadable_checkpoint_interval_is_an_error_saying_how_to_write_one(text):
    from phases.config import RuntimeConfig

    with pytest.raises(ValueError, match="write e.g."):
        RuntimeConfig(checkpoint_every=text)
