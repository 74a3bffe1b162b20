"""`pvs compare` and the `compare_runs` flow: runs side by side, with their model sizes."""

import json
import shutil

import keras
import numpy as np
import pytest
import yaml

from phases.checkpoints import load_model, save_model
from phases.errors import ModelIntegrityError
from pipeline.cli import main
from pipeline.compare import count_parameters, read_runs, render_markdown
from pipeline.scores import ScoreTable
from tfrecords.embeddings import EmbeddingWriter

PNG = b"\x89PNG\r\n\x1a\n"
# (phase, epoch, mar_at_10, test_mar_at_10 or None, train_seconds)
FOUR_PHASES = [("baseline", 0, 0.30, None, None), ("top", 1, 0.31, None, 2.5), ("top", 2, 0.33, 0.32, 2.25),
               ("block7a", 1, 0.36, 0.35, 4.0), ("full", 1, 0.41, 0.40, 8.5), ("siamese", 1, 0.45, 0.44, 3.0)]
NO_BLOCK7A = [("baseline", 0, 0.30, None, None), ("top", 1, 0.32, 0.31, 1.5), ("full", 1, 0.38, None, 6.0),
              ("full", 2, 0.39, 0.37, 6.5)]


def embedder(units: int) -> keras.Model:
    """A small model shaped like phase 4's embedder: a backbone (with BatchNormalization's
    statistics) and a compiled projection model nested in it, both with optimizer state."""
    projection = keras.Sequential([keras.Input((6,)), keras.layers.Dense(units)], name="projection")
    projection.compile(optimizer="adam", loss="mse")
    projection.optimizer.build(projection.trainable_variables)
    inputs = keras.Input((8, 8, 3))
    features = keras.layers.Conv2D(4, 3)(inputs)
    features = keras.layers.BatchNormalization()(features)
    features = keras.layers.Dense(6)(keras.layers.GlobalAveragePooling2D()(features))
    model = keras.Model(inputs, projection(features))
    model.compile(optimizer="adam", loss="mse")
    model.optimizer.build(model.trainable_variables)
    return model


def write_run(folder, journey, model=None, architecture="EfficientNetB0"):
    """A run folder as `pvs run` leaves it: scores.csv and run-config.yaml, and when `model`
    is given (a finished run), the final model, the final embeddings and run.json."""
    table = ScoreTable(folder / "scores.csv")
    folder.mkdir(parents=True)
    for phase, epoch, mar, test, seconds in journey:
        row = {"phase": phase, "epoch": epoch, "loss": "" if phase == "baseline" else 1.0, "mar_at_10": mar}
        row |= {"test_mar_at_10": test} if test is not None else {}
        table.add(row | ({"train_seconds": seconds} if seconds is not None else {}))
    record = {"config_file": f"configs/{folder.name}.yaml", "overrides": {},
              "config": {"description": f"the {folder.name} recipe", "model": {"architecture": architecture}}}
    (folder / "run-config.yaml").write_text(f"# The config of the last run in this folder.\n{yaml.safe_dump(record)}")
    if model is None:
        return folder
    model_path = folder / "phases" / "04-siamese-0123" / "embedder.keras"
    digest = save_model(model, model_path)
    dim = model.output_shape[-1]
    with EmbeddingWriter(folder / "extraction-0123" / "embeddings", dim=dim) as writer:
        writer.add("test_query", np.ones((3, dim)), ["a", "b", "c"], [0, 1, 2])
    summary = {"run_dir": str(folder.resolve()), "scores": str((folder / "scores.csv").resolve()),
               "embeddings": str((folder / "extraction-0123" / "embeddings").resolve()),
               "final_model": str(model_path.resolve()), "final_model_sha256": digest, "final_split": "test"}
    (folder / "run.json").write_text(json.dumps(summary, indent=1))
    return folder


@pytest.fixture(scope="module")
def models():
    return {"small": embedder(8), "large": embedder(64)}


@pytest.fixture
def two_runs(tmp_path, models):
    return (write_run(tmp_path / "seed", FOUR_PHASES, models["small"]),
            write_run(tmp_path / "no-block7a", NO_BLOCK7A, models["large"], architecture="EfficientNetB3"))


def markdown_rows(table: str) -> list[dict]:
    header, _, *rows = ([cell.strip() for cell in line.split("|")[1:-1]] for line in table.splitlines())
    return [dict(zip(header, row)) for row in rows]


def model_file(run):
    return run / "phases" / "04-siamese-0123" / "embedder.keras"


def test_parameters_are_counted_as_keras_counts_them_without_optimizer_state(tmp_path, models):
    for model in models.values():
        path = tmp_path / f"{model.name}.keras"
        digest = save_model(model, path)
        assert count_parameters(path, digest) == model.count_params()


def test_an_altered_model_file_is_a_model_integrity_error_wherever_it_is_read(tmp_path, models):
    path = tmp_path / "embedder.keras"
    digest = save_model(models["small"], path)
    path.write_bytes(path.read_bytes() + b"\0")
    for read in (count_parameters, load_model):
        with pytest.raises(ModelIntegrityError, match="sha256 differs"):
            read(path, digest)


def test_each_run_shows_its_phase_scores_test_score_size_time_and_embedding_size(two_runs, models):
    seed, no_block7a = read_runs(list(two_runs))
    assert seed.phase_scores() == {"baseline": 0.30, "top": 0.33, "block7a": 0.36, "full": 0.41, "siamese": 0.45}
    assert no_block7a.phase_scores() == {"baseline": 0.30, "top": 0.32, "full": 0.39}
    assert (seed.test_score(), no_block7a.test_score()) == (0.44, 0.37)
    assert seed.parameters == models["small"].count_params() and no_block7a.parameters == models["large"].count_params()
    assert seed.model_bytes == model_file(two_runs[0]).stat().st_size
    assert seed.train_seconds() == pytest.approx(2.5 + 2.25 + 4.0 + 8.5 + 3.0)
    assert (seed.embedding_dim, no_block7a.embedding_dim) == (8, 64)
    assert (seed.architecture, no_block7a.config_file, seed.description) == (
        "EfficientNetB0", "configs/no-block7a.yaml", "the seed recipe")


def test_compare_prints_the_table_and_writes_the_chart_and_markdown(two_runs, tmp_path, capsys, models):
    chart, table = tmp_path / "out" / "comparison.png", tmp_path / "comparison.md"
    assert main(["compare", *map(str, two_runs), "--chart", str(chart), "--table", str(table)]) == 0
    printed = capsys.readouterr().out.splitlines()
    header = printed[2].split()
    # Phases in one order that keeps each run's own: block7a between top and full.
    assert header == ["run", "config_file", "architecture", "baseline", "top", "block7a", "full", "siamese",
                      "test_mar_at_10", "parameters", "model_mb", "train_seconds", "embedding_dim", "description"]
    seed = printed[3].split()
    size = model_file(two_runs[0]).stat().st_size
    assert seed[:13] == ["seed", "configs/seed.yaml", "EfficientNetB0", "0.3000", "0.3300", "0.3600", "0.4100",
                         "0.4500", "0.4400", f"{models['small'].count_params():,}", f"{size / 1e6:.2f}", "20.2", "8"]
    no_block7a = markdown_rows(table.read_text())[1]
    assert no_block7a["block7a"] == no_block7a["siamese"] == "" and no_block7a["full"] == "0.3900"  # lacks: blank
    assert chart.read_bytes()[:8] == PNG and f"chart: {chart}" in printed


def test_an_unfinished_run_is_compared_on_its_scores_with_its_model_blank(two_runs, tmp_path, capsys):
    killed = write_run(tmp_path / "killed", FOUR_PHASES[:4])  # no run.json: killed in phase block7a's scoring
    assert main(["compare", str(two_runs[0]), str(killed), "--chart", str(tmp_path / "c.png")]) == 0
    run = read_runs([killed])[0]
    assert (run.finished, run.parameters, run.model_bytes, run.embedding_dim) == (False, None, None, None)
    assert run.train_seconds() == pytest.approx(2.5 + 2.25 + 4.0)  # the epochs it has scored
    row = markdown_rows(render_markdown([run]))[0]
    assert row["run"] == "killed (unfinished)" and row["parameters"] == row["model_mb"] == row["embedding_dim"] == ""
    assert "killed (unfinished)" in capsys.readouterr().out


def test_a_run_of_a_version_without_train_seconds_has_a_blank_time(tmp_path):
    old = write_run(tmp_path / "old", [row[:4] + (None,) for row in NO_BLOCK7A])
    assert read_runs([old])[0].train_seconds() is None


def test_a_moved_or_copied_run_folder_is_read_where_it_is_now(two_runs, tmp_path, models):
    copied = shutil.copytree(two_runs[0], tmp_path / "copied-from-the-gpu-machine")
    moved = shutil.move(two_runs[1], tmp_path / "moved")
    model_file(two_runs[0]).unlink()  # the copy must not read the original's files
    small, large = read_runs([copied, moved])
    assert small.parameters == models["small"].count_params() and small.embedding_dim == 8
    assert large.parameters == models["large"].count_params() and large.embedding_dim == 64


def test_a_folder_that_is_not_a_run_is_one_error_line(tmp_path, capsys):
    assert main(["compare", str(tmp_path), "--chart", str(tmp_path / "c.png")]) == 2
    error = capsys.readouterr().err
    assert error.startswith("error: ") and error.count("\n") == 1 and f"is {tmp_path} a run folder" in error


@pytest.mark.parametrize("damage, message", [
    ("delete", "final model {path} is missing; run `pvs run --config configs/seed.yaml --run-dir {run}` again"),
    ("alter", "{path}: sha256 differs from the one in run.json"),
])
def test_a_finished_run_whose_model_is_missing_or_altered_is_one_error_line(two_runs, tmp_path, capsys, damage, message):
    path = model_file(two_runs[0])
    path.unlink() if damage == "delete" else path.write_bytes(path.read_bytes() + b"\0")
    assert main(["compare", *map(str, two_runs), "--chart", str(tmp_path / "c.png")]) == 2
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and message.format(path=path, run=two_runs[0]) in error


def test_compare_runs_flow_writes_the_chart_and_a_markdown_artifact(two_runs, tmp_path, monkeypatch):
    # The flow's body without a Prefect server (starting one costs ~20 s here); the
    # deployment tests run flows on a real one.
    import flows

    created = {}
    monkeypatch.setattr(flows, "create_markdown_artifact", lambda markdown, key, description: created.update(
        {key: markdown}))
    result = flows.compare_runs.fn([str(run) for run in two_runs], out_dir=str(tmp_path))
    assert result["chart"] == str((tmp_path / "comparison.png").resolve())
    markdown = created["comparison-seed-no-block7a"]
    assert "![comparison chart](data:image/png;base64," in markdown and "| no-block7a |" in markdown
