"""Cache keys come from an explicit version per step and the typed outputs of the steps
before, not from the code's text: a comment or docstring edit keeps a finished run Cached,
a raised version reruns its step. `pvs run` says why each step is reused or runs."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO, states, write_yaml
from test_extraction import tiny_config

from pipeline import keys
from pipeline.reasons import reason_to_run
from pipeline.records import read_record, write_record
from pipeline.steps import IngestedData, ModelFile, PhaseOutput, ShardEmbeddings
from pipeline.storage import RunRoot


@pytest.fixture
def config(tmp_path):
    """test_run's tiny config: four phases."""
    from test_run import write_config

    from pipeline.config_files import load_config

    return load_config(write_config(tmp_path / "tiny.yaml", tmp_path))


def data(sha256: str = "0" * 64) -> IngestedData:
    return IngestedData(Path("/data/manifest.json"), sha256)


def phase_output(model_sha256: str, **fields) -> PhaseOutput:
    return PhaseOutput(**{"phase": "top", "model": ModelFile(Path("/m/model.keras"), model_sha256), "rows": [], **fields})


def test_a_phase_key_is_the_digest_of_its_version_its_config_and_its_inputs_fields(config, tmp_path):
    root = RunRoot(tmp_path / "run")
    parent = phase_output("1" * 64)
    work = keys.phase_work(config, root, 2, data(), parent.model)
    parts = {"phase": config.phases[1].model_dump(), "number": 2, "parent": "1" * 64,
             "settings": keys.shared_settings(config), "data": "0" * 64}
    digests = {name: keys.part_digest(value) for name, value in parts.items()}
    assert work.key_parts == digests and work.version == keys.STEP_VERSIONS["phase"]
    assert work.key == keys.part_digest({"kind": "phase", "version": keys.STEP_VERSIONS["phase"],
                                         "folder": root.identity, "parts": digests})


def test_keys_read_output_fields_not_record_entries(config, tmp_path):
    """What a phase hands on is read back from its record; the next key depends on the model's
    sha256 alone, whatever else the output holds or where its files are."""
    root = RunRoot(tmp_path / "run")
    folder = tmp_path / "phase"
    folder.mkdir()
    (folder / "model.keras").write_bytes(b"model")
    work = keys.phase_work(config, root, 1, data(), None)
    write_record(folder, work.key, {"phase": "top", "rows": [{"epoch": 1}], "final_scores": None,
                                    "resumed_after_epoch": None, "extra": {}}, {"model": folder / "model.keras"})
    written = PhaseOutput.from_record(read_record(folder, work.key))
    other = phase_output(written.model.sha256, rows=[{"epoch": 7}], embedder=ModelFile(Path("/e.keras"), "2" * 64),
                         extra={"train_views": 3})
    assert (keys.phase_work(config, root, 2, data(), written.model).key
            == keys.phase_work(config, root, 2, data(), ModelFile(Path("/elsewhere.keras"), other.model.sha256)).key)
    assert keys.phase_work(config, root, 2, data(), phase_output("3" * 64).model).key != keys.phase_work(
        config, root, 2, data(), written.model).key


def test_a_raised_version_changes_its_steps_key_and_a_new_output_changes_every_later_key(config, tmp_path, monkeypatch):
    root = RunRoot(tmp_path / "run")
    before = keys.phase_work(config, root, 1, data(), None).key
    monkeypatch.setitem(keys.STEP_VERSIONS, "phase", keys.STEP_VERSIONS["phase"] + 1)
    assert keys.phase_work(config, root, 1, data(), None).key != before
    assert keys.baseline_work(config, root, data()).key == keys.baseline_work(config, root, data()).key
    # A rerun step's output, when it differs, reaches its dependents through their keys.
    first, second = ModelFile(Path("/m.keras"), "1" * 64), ModelFile(Path("/m.keras"), "2" * 64)
    assert keys.phase_work(config, root, 2, data(), first).key != keys.phase_work(config, root, 2, data(), second).key
    assert keys.extraction_work(config, root, data(), first, []).key != keys.extraction_work(config, root, data(), second, []).key
    shard = ShardEmbeddings("test_query", "test_query-00000.tfrecord", Path("/e/manifest.json"), "4" * 64)
    other = ShardEmbeddings("test_query", "test_query-00000.tfrecord", Path("/e/manifest.json"), "5" * 64)
    assert (keys.extraction_work(config, root, data(), first, [shard]).key
            != keys.extraction_work(config, root, data(), first, [other]).key)
    assert keys.baseline_work(config, root, data("6" * 64)).key != keys.baseline_work(config, root, data()).key


def test_the_reason_to_run_names_what_changed_since_the_earlier_record(config, tmp_path, monkeypatch):
    root = RunRoot(tmp_path / "run")
    work = keys.phase_work(config, root, 1, data(), None)
    assert reason_to_run(work) == "first time"
    work.folder.mkdir(parents=True)
    write_record(work.folder, work.key, {}, {}, work.version, work.key_parts)

    monkeypatch.setitem(keys.STEP_VERSIONS, "phase", work.version + 1)
    raised = keys.phase_work(config, root, 1, data(), None)
    assert reason_to_run(raised) == f"version raised ({work.version} -> {work.version + 1})"
    monkeypatch.setitem(keys.STEP_VERSIONS, "phase", work.version)

    changed = config.model_copy(update={"phases": [config.phases[0].model_copy(update={"learning_rate": 0.5}),
                                                   *config.phases[1:]]})
    assert reason_to_run(keys.phase_work(changed, root, 1, data(), None)) == "config changed (phase)"
    assert reason_to_run(keys.phase_work(config, root, 1, data("7" * 64), None)) == "input changed (data)"


def copy_source(to: Path) -> Path:
    """The project's code and configs copied to `to`, as a user's other checkout would be."""
    for name in ("phases", "tfrecords", "pipeline", "configs"):
        shutil.copytree(REPO / name, to / name, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy2(REPO / "flows.py", to / "flows.py")
    return to


def pvs_run_in(source: Path, config: Path, run_dir: Path, server: str) -> str:
    """`pvs run` of the code in `source` (its folder first on the path); stdout + stderr."""
    command = [sys.executable, "-m", "pipeline.cli", "run", "--config", str(config), "--run-dir", str(run_dir)]
    environment = {**os.environ, "PREFECT_API_URL": server, "PYTHONPATH": str(source)}
    result = subprocess.run(command, capture_output=True, text=True, timeout=900, env=environment, cwd=source)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return result.stdout + result.stderr


def edit(path: Path, old: str, new: str) -> None:
    text = path.read_text()
    assert old in text, (path, old)
    path.write_text(text.replace(old, new, 1))


@pytest.mark.slow
def test_a_docstring_edit_keeps_a_finished_run_cached_and_a_raised_version_reruns_its_step(ingested, tmp_path, prefect_server):
    config = write_yaml(tmp_path / "tiny.yaml", tiny_config(ingested))
    run_dir, steps = tmp_path / "run", ["ingest", "baseline", "siamese", "extraction"]
    first = pvs_run_in(REPO, config, run_dir, prefect_server)
    assert states(first) == dict.fromkeys(steps, "Completed")
    assert all(f"{step}: runs: first time" in first for step in steps)
    before = json.loads((run_dir / "run.json").read_text())

    # Another checkout whose steps' code differs only in comments and docstrings.
    source = copy_source(tmp_path / "source")
    for module in ("phases/siamese.py", "phases/extraction.py", "tfrecords/ingest.py", "tfrecords/shard_writer.py"):
        edit(source / module, '"""', '"""Edited: ')
        (source / module).write_text((source / module).read_text() + "\n# a comment added after a release\n")
    where = subprocess.run([sys.executable, "-c", "import phases.siamese; print(phases.siamese.__file__)"],
                           capture_output=True, text=True, cwd=source, env={**os.environ, "PYTHONPATH": str(source)})
    assert where.stdout.strip() == str(source / "phases" / "siamese.py")
    again = pvs_run_in(source, config, run_dir, prefect_server)
    assert states(again) == dict.fromkeys(steps, "Cached")
    assert all(f"{step}: reused: key equal" in again for step in steps)

    # The phase's version raised: the phase runs again, and what reads its model if the model changed.
    version = keys.STEP_VERSIONS["phase"]
    edit(source / "pipeline" / "keys.py", f'"phase": {version},', f'"phase": {version + 1},')
    raised = pvs_run_in(source, config, run_dir, prefect_server)
    after = json.loads((run_dir / "run.json").read_text())
    dependents = "Completed" if after["final_model_sha256"] != before["final_model_sha256"] else "Cached"
    assert states(raised) == {"ingest": "Cached", "baseline": "Cached", "siamese": "Completed", "extraction": dependents}
    assert f"siamese: runs: version raised ({version} -> {version + 1})" in raised
    assert "ingest: reused: key equal" in raised and "baseline: reused: key equal" in raised
    if dependents == "Completed":
        assert "extraction: runs: input changed (model" in raised
