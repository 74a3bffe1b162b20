"""The recipe at test size on real pretrained features: what a broken recipe would fail.

240 generated products x 5 shots at 64 px (115 val queries: one query moves MAR@10 by at
most 0.009), EfficientNet-Lite0 with its ImageNet weights (the installed package,
converted offline). Measured when these tests were written, on two data seeds: pretrained
baselines 0.174 and 0.189 against 0.017 and 0.020 from random weights; phase 4 on product
labels 0.250 and 0.259. configs/demo.yaml's own journey, over three seeds, is
benchmarks/quality.py's (BENCHMARKS.md); the library test runs it at the tiny size.
"""

import pytest
from conftest import tiny_pipeline

from phases.config import PipelineConfig


def quality_config(data_dir, **model) -> PipelineConfig:
    """Phase 4 alone, on product labels, from pretrained Lite0 at 64 px, in graph mode; `model`
    changes fields of the model section."""
    model = {"architecture": "EfficientNetLite0", "weights": "imagenet", "batch_norm_calibration_batches": 0, **model}
    return PipelineConfig.model_validate(tiny_pipeline(data_dir, {
        "data": {"image_size": 64, "batch_size": 32},
        "model": model,
        "phases": [{
            "name": "siamese", "projection_dim": 128, "labels": "product", "labels_per_batch": 16, "views_per_label": 4,
            "margin_schedule": [{"margin": 0.5, "learning_rate": 1e-3, "epochs": 4}],
        }],
        "evaluation": {"batch_size": 128},
        "runtime": {"seed": 0, "eager": False},
    }, phases=("siamese",)))


@pytest.fixture(scope="module")
def quality_data(tmp_path_factory):
    from tfrecords.demo_data import DemoOptions, write_demo_data
    from tfrecords.ingest import ingest
    from tfrecords.options import IngestOptions

    folder = tmp_path_factory.mktemp("quality")
    write_demo_data(folder / "images", DemoOptions(products=240, shots=5, categories=8, image_size=64, seed=4))
    options = IngestOptions(shard_size=200_000, val_fraction=0.5, test_fraction=0.1, workers=1)
    manifest = ingest(folder / "images", folder / "data", options, progress=False)
    assert manifest.counts["val_query"] >= 100
    return folder / "data"


@pytest.fixture(scope="module")
def pretrained_baseline(quality_data) -> float:
    from phases.starting import baseline_row

    return baseline_row(quality_config(quality_data), quality_data)["mar_at_10"]


@pytest.mark.slow
def test_pretrained_baseline_beats_random_weights_by_a_wide_margin(quality_data, pretrained_baseline):
    from phases.starting import baseline_row

    random_start = quality_config(quality_data, weights="none", batch_norm_calibration_batches=4)
    random_baseline = baseline_row(random_start, quality_data)["mar_at_10"]
    assert pretrained_baseline > 0.12
    assert pretrained_baseline > 3 * random_baseline and pretrained_baseline - random_baseline > 0.1


@pytest.mark.slow
def test_phase_four_on_product_labels_beats_the_pretrained_baseline(quality_data, pretrained_baseline, tmp_path):
    from phases.controller import run_phase
    from phases.unit import PhaseContext

    config = quality_config(quality_data)
    result = run_phase(config.phases[0], config, PhaseContext(data_dir=quality_data, work_dir=tmp_path))
    assert result.rows[-1]["mar_at_10"] > pretrained_baseline + 0.04, (pretrained_baseline, result.rows)
