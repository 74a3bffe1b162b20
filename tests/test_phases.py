"""The phases as units: resumed after a kill they end as an uninterrupted run; the margin schedule; batches."""

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_pipeline

from phases.config import PipelineConfig
from phases.siamese import LabelBalancedBatches

RUN_PHASE = Path(__file__).parent / "run_phase.py"


# The recipe's four phases on tiny_pipeline, in graph mode: more epochs, and a margin schedule of three steps.
RECIPE = {
    "model": {"batch_norm_calibration_batches": 0},
    "phases": [
        {"name": "top", "epochs": 2},
        {"name": "full", "epochs": 3},
        {"name": "siamese", "projection_dim": 32, "margin_schedule": [
            {"margin": 0.5, "learning_rate": 1e-3, "epochs": 2},
            {"margin": 0.75, "learning_rate": 1e-3, "epochs": 1},
            {"margin": 0.75, "learning_rate": 1e-2, "epochs": 1},
        ]},
    ],
    "runtime": {"seed": 3, "eager": False},
}


def tiny_config(data_dir: Path) -> dict:
    """The recipe's four phases at 32 px on the tiny demo data, deterministic, in graph mode."""
    return tiny_pipeline(data_dir, RECIPE)


def run_phase(tmp_path: Path, data_dir: Path, work_dir: Path, phase: str, kill_after_epoch=None) -> subprocess.CompletedProcess:
    arguments = tmp_path / f"{phase}-{kill_after_epoch}-{work_dir.name}.json"
    arguments.write_text(json.dumps({
        "config": tiny_config(data_dir), "data_dir": str(data_dir), "work_dir": str(work_dir),
        "phase": phase, "previous": None, "kill_after_epoch": kill_after_epoch,
    }))
    return subprocess.run([sys.executable, str(RUN_PHASE), str(arguments)], capture_output=True, text=True, timeout=600)


def final_weights(path: str) -> list[np.ndarray]:
    import keras

    return [np.asarray(w) for w in keras.saving.load_model(path, safe_mode=True, compile=False).weights]


@pytest.mark.slow
# Phase 4 here, weights compared; every phase's resume, scores compared, in tests/reliability/test_kills.py.
@pytest.mark.parametrize(("phase", "kill_after_epoch"), [("siamese", 2)])
def test_resumed_phase_matches_uninterrupted_run(ingested, tmp_path, phase, kill_after_epoch):
    straight = run_phase(tmp_path, ingested, tmp_path / "straight", phase)
    assert straight.returncode == 0, straight.stderr[-3000:]
    expected = json.loads(straight.stdout.strip().splitlines()[-1])

    killed = run_phase(tmp_path, ingested, tmp_path / "resumed", phase, kill_after_epoch)
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert (tmp_path / "resumed" / "checkpoints" / f"epoch-{kill_after_epoch - 1:04d}.json").is_file()
    resumed_run = run_phase(tmp_path, ingested, tmp_path / "resumed", phase)
    assert resumed_run.returncode == 0, resumed_run.stderr[-3000:]
    resumed = json.loads(resumed_run.stdout.strip().splitlines()[-1])

    assert resumed["resumed_after_epoch"] == kill_after_epoch and expected["resumed_after_epoch"] is None
    assert len(resumed["rows"]) == len(expected["rows"])
    for mine, theirs in zip(resumed["rows"], expected["rows"]):
        assert mine.keys() == theirs.keys()
        for key, value in theirs.items():
            if key != "train_seconds":  # wall time
                assert mine[key] == pytest.approx(value, abs=1e-5), (mine["epoch"], key)
    differences = [np.max(np.abs(a - b)) for a, b in zip(final_weights(resumed["model_path"]), final_weights(expected["model_path"])) if a.size]
    assert max(differences) <= 1e-5


def test_margin_schedule_maps_epochs_to_steps():
    config = PipelineConfig.model_validate(tiny_config(Path("unused")))
    siamese = config.phase("siamese")
    assert siamese.epochs == 4
    assert [(siamese.step(e).margin, siamese.step(e).learning_rate) for e in range(4)] == [
        (0.5, 1e-3), (0.5, 1e-3), (0.75, 1e-3), (0.75, 1e-2),
    ]


def test_label_balanced_batches_hold_several_members_of_each_label():
    labels = np.repeat(np.arange(40), 6)  # 40 source images x 6 views
    features = np.arange(len(labels), dtype=np.float32)[:, None]
    batches = LabelBalancedBatches(features, labels, labels_per_batch=8, per_label=4, seed=0)
    assert len(batches) == len(labels) // 32
    seen = set()
    for number in range(len(batches)):
        batch_features, batch_labels = batches[number]
        values, counts = np.unique(batch_labels, return_counts=True)
        assert len(values) == 8 and set(counts) == {4}
        assert np.array_equal(labels[batch_features[:, 0].astype(int)], batch_labels)
        assert all(len(set(batch_features[batch_labels == v, 0])) == 4 for v in values)  # distinct members
        seen.update(values)
    assert len(seen) >= 0.9 * 40  # the epoch visits (nearly) every label
    again = LabelBalancedBatches(features, labels, 8, 4, seed=0)
    assert np.array_equal(again.batches, batches.batches)


@pytest.mark.slow
def test_end_to_end_phase_trains_a_mildnet_head_in_graph_mode_and_resumes_from_its_checkpoint(ingested, tmp_path):
    """MILDNet's way (VGG16, multi-scale features, its head, triplets on images), compiled
    with tf.function as real runs are (the library test runs every config eagerly)."""
    import tensorflow as tf

    from phases.checkpoints import load_model
    from phases.controller import run_phase as train
    from phases.unit import PhaseContext

    config = PipelineConfig.model_validate(tiny_pipeline(ingested, {
        "model": {"architecture": "VGG16", "feature_blocks": ["block1", "block4"], "batch_norm_calibration_batches": 0},
        "phases": [{
            "name": "mildnet", "kind": "end_to_end", "head": "mildnet", "projection_dim": 8, "hidden_dim": 16,
            "labels": "product", "labels_per_batch": 4, "views_per_label": 2,
            "margin_schedule": [{"margin": 0.5, "learning_rate": 1e-3, "epochs": 1}, {"margin": 0.3, "learning_rate": 1e-4, "epochs": 1}],
        }],
        "runtime": {"seed": 2, "deterministic": False, "eager": False},
    }, phases=("mildnet",)))
    assert not tf.config.functions_run_eagerly()
    work = tmp_path / "work"
    result = train(config.phases[0], config, PhaseContext(data_dir=ingested, work_dir=work))
    assert [(row["epoch"], row["margin"], row["learning_rate"]) for row in result.rows] == [(1, 0.5, 1e-3), (2, 0.3, 1e-4)]
    assert all(np.isfinite(row["loss"]) and 0 <= row["mar_at_10"] <= 1 for row in result.rows)
    model = load_model(result.model_path, result.model_sha256, compile=False)
    vectors = model.predict(np.full((2, 32, 32, 3), 100.0, dtype="float32"), verbose=0)
    assert vectors.shape == (2, 8)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)

    (work / "checkpoints" / "epoch-0001.json").unlink()  # as if killed during the last epoch's save
    resumed = train(config.phases[0], config, PhaseContext(data_dir=ingested, work_dir=work))
    assert resumed.resumed_after_epoch == 1 and [row["epoch"] for row in resumed.rows] == [1, 2]


@pytest.mark.slow
def test_phase_four_trains_on_the_head_batch_norm_output_and_a_classifier_extracts_what_it_was_scored_with(ingested, tmp_path):
    """The seed's phase-4 input is the classifier head's BatchNormalization output (inference
    mode), and a run that ends with a classifier embeds its final split with the features its
    rows were scored with, not its class probabilities."""
    from phases.checkpoints import load_model
    from phases.controller import run_phase as train
    from phases.extraction import embed_shard, final_shards, merge
    from phases.model import backbone_of, features_of
    from phases.unit import PhaseContext
    from tfrecords.embeddings import load_embeddings
    from tfrecords.options import ReadOptions
    from tfrecords.reader import read_images

    config = PipelineConfig.model_validate(tiny_pipeline(ingested, RECIPE, {
        "phases": [{"name": "top", "epochs": 1, "learning_rate": 0.1},
                   {"name": "siamese", "margin_schedule": [{"margin": 0.5, "learning_rate": 1e-3, "epochs": 1}]}],
        "runtime": {"eager": True},  # no tracing: a few seconds
    }, phases=("top", "siamese")))
    top = train(config.phases[0], config, PhaseContext(data_dir=ingested, work_dir=tmp_path / "top"))

    classifier = load_model(top.model_path, top.model_sha256, compile=False)
    embedder = load_model(top.embedder_path, top.embedder_sha256, compile=False)
    # deterministic: the order the phase cached its features in, even when busy cores finish reads out of order
    images = next(read_images(ingested, "val_query", ReadOptions(image_size=32, batch_size=64, deterministic=True))
                  .as_numpy_iterator())
    after_norm = features_of(classifier).predict(images["image"], verbose=0)
    pooled = backbone_of(classifier).predict(images["image"], verbose=0)
    np.testing.assert_allclose(embedder.predict(images["image"], verbose=0), after_norm, atol=1e-5)
    assert np.abs(after_norm - pooled).max() > 0.1  # the trained head's normalisation moved them

    group, shards = final_shards(config, ingested)
    parts = [tmp_path / "shards" / shard.file for shard in shards]
    for shard, part in zip(shards, parts):
        embed_shard(top.embedder_path, top.embedder_sha256, config, ingested, shard, part)
    extracted = merge(parts, top.embedder_path, top.embedder_sha256, config, ingested, group, tmp_path / "extraction")
    assert load_embeddings(extracted.embeddings_dir, f"{group}_query").vectors.shape[1] == 1280  # features, not classes
    assert extracted.scores["mar_at_10"] == pytest.approx(top.final_scores["mar_at_10"], abs=1e-6)

    siamese = train(config.phases[1], config, PhaseContext(data_dir=ingested, work_dir=tmp_path / "siamese"),
                                (top.model_path, top.model_sha256))
    cached = load_embeddings(tmp_path / "siamese" / "features", "val_query")
    assert cached.image_ids.tolist() == images["image_id"].tolist()  # the whole split: one batch
    np.testing.assert_allclose(cached.vectors, after_norm, atol=1e-4)
    assert siamese.rows and siamese.embedder_path is None
