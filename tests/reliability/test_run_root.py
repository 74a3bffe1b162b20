"""A run root is used by one run at a time, and belongs to one config."""

import os
import signal
import subprocess
import sys

import pytest
import yaml

from conftest import REPO, states
from phases.config import PipelineConfig
from pipeline.run_root import RunRootError, claim_run_root
from reliability.conftest import assert_same_scores, read_scores, start_run, tiny_config

STEPS = ["ingest", "baseline", "top", "block7a", "full", "siamese", "extraction"]


@pytest.mark.slow
def test_a_second_run_on_a_busy_run_root_fails_clearly_and_the_first_is_untouched(reference):
    """`reference` started a rival run of the same config on its root once phase 1 had
    its first checkpoint: the rival stops at once with one message naming the holder."""
    assert reference.rival_exit == 2, reference.rival_output[-3000:]
    assert f"error: {reference.run_dir}: another run is using this run folder (pid " in reference.rival_output
    assert "wait for it to end, or give this run another --run-dir" in reference.rival_output
    assert "Task run" not in reference.rival_output  # refused before any step started
    assert states(reference.output) == dict.fromkeys(STEPS, "Completed")
    assert (reference.run_dir / "run.lock").read_text() == ""  # released at the end
    assert_same_scores(read_scores(reference.run_dir), reference.scores)


@pytest.mark.slow
def test_a_run_root_of_another_config_is_refused_and_left_as_it_was(reference, demo_images, prefect_server, tmp_path):
    other = tiny_config(tmp_path / "other.yaml", demo_images)
    before = {path: path.stat().st_mtime_ns for path in reference.run_dir.rglob("*") if path.is_file()}
    run = start_run(other, reference.run_dir, prefect_server, tmp_path / "other.log")
    assert run.wait() == 2, run.output()[-3000:]
    assert (f"error: {reference.run_dir}: this run folder holds a run of {reference.config}, not of {other}; "
            "give this run another --run-dir (the default is runs/other)") in run.output()
    assert "Traceback" not in run.output()
    after = {path: path.stat().st_mtime_ns for path in reference.run_dir.rglob("*") if path.is_file()}
    changed = sorted(str(path.relative_to(reference.run_dir)) for path in after if before.get(path) != after[path])
    assert changed == [], changed  # refused before the run starts: not even the lock is taken


def test_the_lock_refuses_a_second_holder_until_the_first_lets_go(tmp_path):
    config = PipelineConfig.model_validate(yaml.safe_load(tiny_config(tmp_path / "c.yaml", tmp_path).read_text()))
    with claim_run_root(tmp_path / "run", tmp_path / "c.yaml", config):
        with pytest.raises(RunRootError, match=rf"another run is using this run folder \(pid {os.getpid()} on "):
            with claim_run_root(tmp_path / "run", tmp_path / "c.yaml", config):
                pass
    with claim_run_root(tmp_path / "run", tmp_path / "c.yaml", config):
        pass


def test_a_killed_holder_leaves_no_stale_lock(tmp_path):
    """The kernel drops an flock when its process dies: SIGKILL cannot leave the root locked."""
    config_path = tiny_config(tmp_path / "c.yaml", tmp_path)
    holder = (
        "import os, signal, sys, yaml; from pathlib import Path; from phases.config import PipelineConfig; "
        "from pipeline.run_root import claim_run_root; "
        f"config = PipelineConfig.model_validate(yaml.safe_load(Path({str(config_path)!r}).read_text())); "
        f"claim = claim_run_root(Path({str(tmp_path / 'run')!r}), Path({str(config_path)!r}), config); claim.__enter__(); "
        "print('held', flush=True); os.kill(os.getpid(), signal.SIGKILL)"
    )
    result = subprocess.run([sys.executable, "-c", holder], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert result.returncode == -signal.SIGKILL and result.stdout == "held\n", result.stderr[-2000:]
    assert (tmp_path / "run" / "run.lock").read_text().startswith("pid ")  # what it wrote is still there
    config = PipelineConfig.model_validate(yaml.safe_load(config_path.read_text()))
    with claim_run_root(tmp_path / "run", config_path, config):
        assert (tmp_path / "run" / "run.lock").read_text().startswith(f"pid {os.getpid()} ")
