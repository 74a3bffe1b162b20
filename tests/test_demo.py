"""The demo config does what its header promises: MAR@10 rises through phase 3 and phase 4."""

import csv
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]


@pytest.mark.slow
def test_demo_config_beats_the_baseline_after_phase_3_and_phase_3_after_phase_4(tmp_path):
    images, run_dir = tmp_path / "images", tmp_path / "run"
    cli = [sys.executable, "-m", "pipeline.cli"]
    subprocess.run([*cli, "demo-data", str(images), "--products", "120"], check=True, capture_output=True, cwd=ROOT)
    result = subprocess.run(
        [*cli, "run", "--config", "configs/demo.yaml", "--run-dir", str(run_dir), "--set", f"data.source={images}"],
        capture_output=True, text=True, cwd=ROOT, timeout=1200,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with open(run_dir / "scores.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    last = {row["phase"]: float(row["mar_at_10"]) for row in rows}  # each phase's last epoch
    assert last["full"] > last["baseline"]
    assert last["siamese"] > last["full"]
