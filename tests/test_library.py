"""The config library: every named config runs end to end at the tiny test size, so none rots;
`pvs configs` lists them with their descriptions; `extends` merges phases by name.

Each config is run as written (its architecture, feature blocks, phases, heads, losses,
distances, margin schedules, labels) with only its sizes shrunk by `tiny`: 32 px, random
weights, one epoch per classification phase and per margin step, small heads and batches,
and `runtime.eager` (no tf.function tracing: EfficientNetB0's train step alone takes ~20 s
to trace on 2 cores, more than a tiny epoch). The flow runs in this process on the
session's Prefect server.

All configs run into one run folder from one config file, rewritten for each, as a user
edits a config and runs it again: a step that an earlier config ran identically (the
seed's phases 1-3 under a phase-4 variant, say) is a cache hit, checked by its record,
and only what differs is trained. That is the pipeline's caching at work, and it keeps
the 20 configs to about six minutes on 2 cores.
"""

import csv
import json

import pytest
import yaml

from pipeline.config_files import library, library_configs, load_config
from tfrecords.files import sha256_file

LIBRARY = [name for name, _ in library_configs()]
RETRIEVAL = "retrieval"  # the folder of the configs that change how embeddings are retrieved


def tiny(name: str, data_dir) -> dict:
    """The library config `name` as a dict, shrunk to the test size and nothing else changed."""
    raw = load_config(name).model_dump(mode="json")
    raw["data"].update(source=str(data_dir), image_size=32, batch_size=8, shuffle_buffer=32)
    raw["model"].update(weights="none", batch_norm_calibration_batches=1)
    for phase in raw["phases"]:
        if phase["kind"] == "classification":
            phase["epochs"] = 1
        else:
            phase["margin_schedule"] = [dict(step, epochs=1) for step in phase["margin_schedule"]]
            phase.update(projection_dim=16, hidden_dim=32, labels_per_batch=4, views_per_label=2)
    raw["evaluation"].update(batch_size=64, triplet_sample=200)
    retrieval = raw["evaluation"]["retrieval"]
    if retrieval["whitening"]:
        retrieval["whitening"].update(dimensions=4, train_images=8)  # 8 train images, a 16-d embedding
    if retrieval["reranking"]:
        retrieval["reranking"].update(k1=2, k2=2, candidates=4)  # 4 index items per split
    if name.startswith(f"{RETRIEVAL}/"):
        # It changes the evaluation only (test_retrieval_configs_change_only_the_evaluation), which
        # every row, the extraction, the submission and the search sheet go through: the last phase
        # of the config it extends alone shows it at work, from a new backbone, in a fraction of the time.
        raw["phases"] = raw["phases"][-1:]
    raw["runtime"].update(eager=True, deterministic=True)
    return raw


@pytest.fixture(scope="module")
def library_data(tmp_path_factory):
    """8 products x 2 shots of 40 px, ingested: 4 train products (one batch of 8), 2 val, 2 test."""
    from tfrecords.demo_data import DemoOptions, write_demo_data
    from tfrecords.ingest import ingest
    from tfrecords.options import IngestOptions

    folder = tmp_path_factory.mktemp("library")
    write_demo_data(folder / "images", DemoOptions(products=8, shots=2, categories=2, image_size=40, seed=3))
    ingest(folder / "images", folder / "data", IngestOptions(val_fraction=0.25, test_fraction=0.25, workers=1), progress=False)
    return folder / "data"


@pytest.fixture(scope="module")
def shared_root(tmp_path_factory):
    return tmp_path_factory.mktemp("library-run")


@pytest.fixture(scope="module")
def on_server(prefect_server):
    """Flows of this module run in-process on the session's server; eager mode is reset after."""
    import tensorflow as tf
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with temporary_settings({PREFECT_API_URL: prefect_server}):
        yield
    tf.config.run_functions_eagerly(False)


@pytest.mark.slow
@pytest.mark.parametrize("name", LIBRARY)
def test_named_config_runs_end_to_end_at_the_tiny_size(name, library_data, on_server, shared_root):
    from flows import finetune

    config_file, run_dir = shared_root / "tiny.yaml", shared_root / "run"
    config_file.write_text(yaml.safe_dump(tiny(name, library_data)))
    summary = finetune(config_path=str(config_file), run_dir=str(run_dir))

    config = load_config(config_file)
    with open(summary["scores"], newline="") as handle:
        rows = list(csv.DictReader(handle))
    expected = [("baseline", "0")] + [
        (phase.name, str(epoch)) for phase in config.phases for epoch in range(1, (phase.epochs if phase.kind == "classification" else len(phase.margin_schedule)) + 1)
    ]
    assert [(row["phase"], row["epoch"]) for row in rows] == expected
    assert all(0 <= float(row["mar_at_10"]) <= 1 for row in rows)
    last = config.phases[-1]
    assert 0 <= float(rows[-1]["triplet_accuracy"]) <= 1
    embeddings = json.loads((run_dir / "run.json").read_text())["embeddings"]
    from tfrecords.manifest import EmbeddingManifest, read_manifest

    assert read_manifest(embeddings, EmbeddingManifest).dim == last.projection_dim
    assert (run_dir / "submission.csv").stat().st_size > 0
    if config.evaluation.retrieval.whitening is not None:  # saved with the run, for `pvs search`
        summary_file = json.loads((run_dir / "run.json").read_text())
        assert sha256_file(summary_file["whitening"]) == summary_file["whitening_sha256"]


def test_every_library_config_says_what_it_is_for_and_how_to_run_it():
    names = [path.stem for _, path in library_configs()]
    assert len(names) == len(set(names)), "runs go to runs/<file name>: names must differ across folders"
    for name, path in library_configs():
        text = path.read_text()
        assert text.startswith("# "), f"{path}: start with a comment saying what the config is for"
        assert "Run:" in text, f"{path}: say the command that runs it"
        assert load_config(name).description


def test_the_library_covers_the_backbones_heads_and_losses():
    configs = [load_config(name) for name in LIBRARY]
    assert {config.model.architecture for config in configs} >= {
        "EfficientNetB0", "EfficientNetB3", "MobileNetV2", "MobileNetV3Small", "MobileNetV3Large", "VGG16", "ResNet50",
    }  # and B1, B2, Lite0 by `--set model.architecture`: tests/test_model.py builds every architecture
    last = [config.phases[-1] for config in configs]
    assert {phase.loss for phase in last} == {"triplet_semihard", "triplet_hard", "contrastive", "multi_similarity", "arcface"}
    assert {config.model.classifier.kind for config in configs} == {"softmax", "arcface", "subcenter_arcface", "cosface"}
    assert {phase.distance_metric for phase in last} == {"L2", "squared-L2", "angular"}
    assert {(phase.kind, phase.head) for phase in last} >= {("siamese", "dense"), ("siamese", "mildnet"), ("end_to_end", "mildnet")}


def test_retrieval_configs_change_only_the_evaluation():
    for name, path in library_configs():
        if name.startswith(f"{RETRIEVAL}/"):
            parent = load_config((path.parent / yaml.safe_load(path.read_text())["extends"]).resolve())
            config = load_config(name)
            assert config.model_dump(exclude={"description", "evaluation"}) == parent.model_dump(
                exclude={"description", "evaluation"}), f"{name} changes more than the evaluation of what it extends"
            assert config.evaluation != parent.evaluation, name


def test_pvs_configs_lists_every_config_with_its_description(capsys):
    from pipeline.cli import main

    assert main(["configs"]) == 0
    printed = capsys.readouterr().out
    for name in LIBRARY:
        assert name.split("/")[-1] in printed and load_config(name).description in printed


def test_a_config_extends_another_by_phase_name(tmp_path):
    (tmp_path / "base.yaml").write_text((library() / "seed.yaml").read_text())
    (tmp_path / "variant.yaml").write_text(yaml.safe_dump({
        "extends": "base.yaml",
        "description": "variant",
        "model": {"dropout": 0.3},
        "phases": [{"name": "block7a", "remove": True}, {"name": "siamese", "loss": "contrastive"},
                   {"name": "top", "epochs": 5}],
    }))
    config = load_config(tmp_path / "variant.yaml")
    assert [phase.name for phase in config.phases] == ["top", "full", "siamese"]
    assert (config.phase("top").epochs, config.phase("top").learning_rate) == (5, 1e-2)
    assert (config.phase("siamese").loss, config.phase("siamese").margin_schedule[0].margin) == ("contrastive", 0.5)
    assert (config.model.dropout, config.model.weights, config.description) == (0.3, "imagenet", "variant")


def test_a_config_extending_a_missing_or_its_own_file_is_refused(tmp_path):
    from phases.errors import ConfigError

    (tmp_path / "a.yaml").write_text("extends: b.yaml\ndescription: a\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\ndescription: b\n")
    (tmp_path / "c.yaml").write_text("extends: missing.yaml\n")
    with pytest.raises(ConfigError, match="a config cannot extend itself"):
        load_config(tmp_path / "a.yaml")
    with pytest.raises(ConfigError, match=r"extends: 'missing.yaml' is no config file"):
        load_config(tmp_path / "c.yaml")


def test_a_library_name_stands_for_its_file():
    assert load_config("recipe/no-block7a") == load_config("configs/recipe/no-block7a.yaml")
