"""`pvs run` end to end: scores.csv, submission.csv and embeddings; a rerun reuses finished phases."""

import csv
import json
import os
import re
import subprocess
import sys

import httpx
import pytest
import yaml
from conftest import states
from test_tensorboard import scalar_steps

from phases.submission import read_submission
from phases.metrics import SCORE_NAMES
from tfrecords.embeddings import load_embeddings
from tfrecords.manifest import EmbeddingManifest, ImageManifest, read_manifest


def write_config(path, data_dir, full_learning_rate=1e-3):
    config = {
        "description": "tiny end-to-end test",
        "data": {"source": str(data_dir), "image_size": 32, "batch_size": 16, "shuffle_buffer": 64},
        "model": {"weights": "none", "batch_norm_calibration_batches": 2},
        "phases": [
            {"name": "top", "kind": "classification", "unfreeze": "none", "learning_rate": 1e-2, "epochs": 1},
            {"name": "block7a", "kind": "classification", "unfreeze": "from", "unfreeze_from": "block7a", "learning_rate": 1e-3, "epochs": 1},
            {"name": "full", "kind": "classification", "unfreeze": "all", "learning_rate": full_learning_rate, "epochs": 1},
            {"name": "siamese", "kind": "siamese", "projection_dim": 16, "labels_per_batch": 6, "views_per_label": 3,
             "margin_schedule": [{"margin": 0.5, "learning_rate": 1e-3, "epochs": 1}, {"margin": 0.75, "learning_rate": 1e-2, "epochs": 1}]},
        ],
        "evaluation": {"batch_size": 64},
        "runtime": {"seed": 1, "deterministic": True, "eager": True},  # graph mode: test_demo and test_phases
    }
    path.write_text(yaml.safe_dump(config))
    return path


def pvs_run(config, run_dir, *extra, server=None):
    """`pvs run` in its own process (on the session's Prefect server when given); stdout + stderr."""
    command = [sys.executable, "-m", "pipeline.cli", "run", "--config", str(config), "--run-dir", str(run_dir), *extra]
    environment = {**os.environ, **({"PREFECT_API_URL": server} if server else {})}
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, env=environment)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result.stdout + result.stderr


def flow_run_of(printed: str, server: str) -> dict:
    """The flow run whose page `pvs run` printed ("View at .../runs/flow-run/ID"), from the API."""
    flow_run_id = re.search(r"/runs/flow-run/([0-9a-f-]{36})", printed).group(1)
    return httpx.get(f"{server}/flow_runs/{flow_run_id}").json()


def read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


@pytest.mark.slow
def test_run_writes_scores_submission_and_embeddings_and_a_rerun_reuses_every_phase(ingested, tmp_path, prefect_server):
    config = write_config(tmp_path / "tiny.yaml", ingested)
    run_dir = tmp_path / "run"
    printed = pvs_run(config, run_dir, server=prefect_server)
    steps = ["ingest", "baseline", "top", "block7a", "full", "siamese", "extraction"]
    assert states(printed) == dict.fromkeys(steps, "Completed")
    assert "phase" in printed and "mar_at_10" in printed and f"submission: {run_dir / 'submission.csv'}" in printed
    # It ends with a verdict (baseline -> final on val and test, the best epoch), and its flow run is
    # named after its run folder and config, and tagged.
    assert re.search(r"^val mar_at_10: baseline [0-9.]+ -> final [0-9.]+ \([-+][0-9.]+; noise about", printed, re.MULTILINE)
    assert re.search(r"^test mar_at_10: baseline [0-9.]+ -> final ", printed, re.MULTILINE) and "best epoch: " in printed
    flow_run = flow_run_of(printed, prefect_server)
    assert flow_run["name"] == f"{run_dir} · {config}"
    assert {"config:tiny", "architecture:EfficientNetB0"} <= set(flow_run["tags"])

    rows = read_csv(run_dir / "scores.csv")
    assert list(rows[0])[: 3 + len(SCORE_NAMES)] == ["phase", "epoch", "loss", *SCORE_NAMES]
    assert [(row["phase"], row["epoch"]) for row in rows] == [
        ("baseline", "0"), ("top", "1"), ("block7a", "1"), ("full", "1"), ("siamese", "1"), ("siamese", "2"),
    ]
    assert [row["margin"] for row in rows[-2:]] == ["0.5", "0.75"]
    # The baseline and each phase's last row also carry the test scores, measured at the phase's end.
    assert [bool(row["test_mar_at_10"]) for row in rows] == [True, True, True, True, False, True]
    assert rows[3]["test_accuracy"] != "" and rows[1]["val_accuracy"] != ""
    assert all(0 <= float(row["mar_at_10"]) <= 1 for row in rows)
    assert (run_dir / "scores.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # TensorBoard: a run per phase in RUN_DIR/tensorboard, the epochs counted across phases.
    board = run_dir / "tensorboard"
    for phase, epochs in {"baseline": [0], "top": [1], "block7a": [2], "full": [3], "siamese": [4, 5]}.items():
        assert scalar_steps(board / phase, "val/mar_at_10") == epochs
        assert scalar_steps(board / phase, "train/loss") == ([] if phase == "baseline" else epochs)
    assert scalar_steps(board / "siamese", "test/mar_at_10") == [5] and scalar_steps(board / "end-of-run", "search_sheet") == [5]

    summary = json.loads((run_dir / "run.json").read_text())
    embeddings_dir = summary["embeddings"]
    manifest = read_manifest(ingested, ImageManifest)
    submission = read_submission(run_dir / "submission.csv")
    embeddings = read_manifest(embeddings_dir, EmbeddingManifest)
    assert len(submission) == manifest.counts["test_query"]
    assert embeddings.count == manifest.counts["test_query"] + manifest.counts["test_index"] and embeddings.dim == 16
    index_ids = {i.decode() for i in load_embeddings(embeddings_dir, "test_index").image_ids}
    query_ids = {i.decode() for i in load_embeddings(embeddings_dir, "test_query").image_ids}
    assert set(submission) == query_ids
    for neighbours in submission.values():
        assert len(neighbours) == min(10, len(index_ids)) and set(neighbours) <= index_ids

    # A new run of the same config: every step is Cached, nothing is trained again.
    again = pvs_run(config, run_dir, server=prefect_server)
    assert states(again) == dict.fromkeys(steps, "Cached")
    assert read_csv(run_dir / "scores.csv") == rows

    # Changing phase 3 reruns phase 3, phase 4 and the extraction; phases 1 and 2 stay Cached.
    changed = states(pvs_run(config, run_dir, "--set", "phases.full.learning_rate=0.0005", server=prefect_server))
    assert changed == {"ingest": "Cached", "baseline": "Cached", "top": "Cached", "block7a": "Cached",
                       "full": "Completed", "siamese": "Completed", "extraction": "Completed"}
    # Damaged files behind a cache hit: tests/reliability/test_kills.py.


def test_a_weights_file_replaced_in_place_changes_every_model_key(tmp_path):
    from pipeline.config_files import load_config
    from pipeline.keys import baseline_work, extraction_work, phase_work
    from pipeline.steps import IngestedData, ModelFile
    from pipeline.storage import RunRoot

    weights = tmp_path / "backbone.weights.h5"
    weights.write_bytes(b"first")
    config = load_config(write_config(tmp_path / "tiny.yaml", tmp_path), {"model.weights": str(weights)})
    root, data = RunRoot(tmp_path / "run"), IngestedData(tmp_path / "data" / "manifest.json", "0" * 64)

    def keys():
        return (baseline_work(config, root, data).key, phase_work(config, root, 1, data, None).key,
                extraction_work(config, root, data, ModelFile(tmp_path / "model.keras", "1" * 64), []).key)

    first = keys()
    os.utime(weights, ns=(1, 10**18))  # touched: the same content, the same keys
    assert keys() == first
    stat = weights.stat()
    weights.write_bytes(b"other")  # the same size and modification time, other weights
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert all(new != old for new, old in zip(keys(), first))
