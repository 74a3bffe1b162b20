"""User errors, part II (issue 17): configs with a key given twice, run folders that belong to
another config file of the same name, a finish command that forgets the run's `--set`
options, outputs that cannot be written, damaged files and sizes that cannot fit. Each
refused case is one `error:` message naming the culprit and the fix (exit status 2, no
traceback) and leaves the folders it names as they were. Quick: hand-written run
folders, no training. RELIABILITY.md lists the cases and their messages."""

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import REPO, write_image

from pipeline.cli import main
from pipeline.config_files import load_config
from pipeline.config_overrides import parse_overrides
from pipeline.run_root import RunRootError, check_run_folder, claim_run_root
from reliability.test_bad_input import accepted, demo_config, refused, snapshot
from tfrecords.embeddings import EmbeddingWriter
from tfrecords.errors import SourceError

SCORES = "phase,epoch,loss,mar_at_10\nbaseline,0,,0.1\ntop,1,2.3,0.2\n"


@pytest.fixture
def run_dir(tmp_path) -> Path:
    """An unfinished run folder of configs/demo.yaml, as a run killed in phase 2 leaves it."""
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "scores.csv").write_text(SCORES)
    record = {"config_file": "configs/demo.yaml", "config": {"model": {"architecture": "EfficientNetLite0"}}}
    (folder / "run-config.yaml").write_text(f"# The config of the last run in this folder.\n{yaml.safe_dump(record)}")
    return folder


@pytest.fixture
def read_only(run_dir):
    """`run_dir`, made read-only for this user (and writable again after the test). Root
    writes into read-only folders: as root these tests run through
    `test_read_only_folders_as_an_ordinary_user` instead."""
    if os.geteuid() == 0:
        pytest.skip("root writes into read-only folders; test_read_only_folders_as_an_ordinary_user runs this")
    run_dir.chmod(0o555)
    yield run_dir
    run_dir.chmod(0o755)


def test_read_only_folders_as_an_ordinary_user(tmp_path):
    """As root (CI's containers), the tests of read-only folders run in a nested pytest as
    uid 1000 of a user namespace, where chmod binds again; as anyone else they run as they are."""
    if os.geteuid() != 0:
        pytest.skip("not root: the read-only tests run directly")
    as_user = ["unshare", "--user", "--map-user=1000", "--map-group=1000"]
    if shutil.which("unshare") is None or subprocess.run([*as_user, "true"], capture_output=True).returncode != 0:
        pytest.skip("as root without user namespaces (unshare --user): no way to make a folder read-only")
    command = [*as_user, sys.executable, "-m", "pytest", __file__,
               "-k", "read_only and not ordinary_user", "-p", "no:cacheprovider", "-p", "no:randomly", "-q",
               f"--basetemp={tmp_path / 'nested'}", "-o", "addopts="]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0 and re.search(r"\b3 passed\b", result.stdout), result.stdout[-3000:] + result.stderr[-2000:]


def config_file(path: Path, **edits) -> Path:
    path.write_text(yaml.safe_dump(demo_config(**edits)))
    return path


# --- Configs with a key given twice ---------------------------------------------------------

REPEATS = [
    pytest.param("data:\n  source: images\nmodel:\n  weights: none\ndata:\n  image_size: 64\n",
                 "line 5, column 1: not valid YAML: data is given twice, on lines 1 and 5", id="a second data section"),
    pytest.param("data:\n  source: images\n  batch_size: 8\n  batch_size: 16\n",
                 "line 4, column 3: not valid YAML: data.batch_size is given twice, on lines 3 and 4", id="a field"),
    pytest.param("phases:\n  - name: top\n    kind: classification\n    epochs: 1\n    epochs: 3\n",
                 "line 5, column 5: not valid YAML: phases.top.epochs is given twice, on lines 4 and 5",
                 id="a field of a phase"),
]


@pytest.mark.parametrize(("text", "problem"), REPEATS)
def test_a_key_given_twice_in_a_config_is_refused_naming_it_and_both_lines(capsys, tmp_path, run_dir, text, problem):
    config = tmp_path / "twice.yaml"
    config.write_text(text)
    before = snapshot(run_dir)
    message = refused(capsys, "run", "--config", config, "--run-dir", run_dir)
    assert message == f"{config}: {problem}, and only the second would count: delete one, or merge the two"
    assert snapshot(run_dir) == before


def test_a_key_given_twice_in_the_config_that_a_config_extends_is_refused_naming_that_file(capsys, tmp_path):
    (tmp_path / "parent.yaml").write_text("description: a\ndescription: b\n")
    child = tmp_path / "child.yaml"
    child.write_text("extends: parent.yaml\ndata:\n  source: images\n")
    message = refused(capsys, "run", "--config", child, "--run-dir", tmp_path / "run")
    assert message.startswith(f"{tmp_path / 'parent.yaml'}: line 2, column 1: not valid YAML: description is given "
                              "twice, on lines 1 and 2")
    assert not (tmp_path / "run").exists()


def test_an_empty_data_source_is_refused_rather_than_reading_the_working_folder(capsys, tmp_path):
    message = refused(capsys, "run", "--config", "configs/demo.yaml", "--set", "data.source=",
                      "--run-dir", tmp_path / "run")
    assert message == ("configs/demo.yaml: invalid config\n  data.source: is empty; give a CSV file, an image folder "
                       "or a folder written by `pvs ingest`")
    assert not (tmp_path / "run").exists()


# --- Run folders: whose they are, and whether a run can use them ----------------------------

def test_a_run_folder_of_another_config_file_of_the_same_name_is_refused(tmp_path):
    ours, theirs = tmp_path / "configs" / "a.yaml", tmp_path / "other" / "a.yaml"
    for path in (ours, theirs):
        path.parent.mkdir()
        config_file(path, **{"data.source": str(tmp_path)})
    config, root = load_config(ours), tmp_path / "runs" / "a"
    with claim_run_root(root, ours, config):
        pass
    before = snapshot(root)
    expected = (f"{root}: this run folder holds a run of {ours}, not of {theirs}; give this run another --run-dir "
                "(the default is runs/a), or delete the folder to start it again")
    with pytest.raises(RunRootError, match=f"^{re.escape(expected)}$"):
        check_run_folder(root, theirs, config)  # before the run starts
    with pytest.raises(RunRootError, match=f"^{re.escape(expected)}$"):
        with claim_run_root(root, theirs, config):  # and in the flow
            pass
    changed = [name for name, state in snapshot(root).items() if before.get(name) != state]
    assert changed == ["run.lock"]  # taken and given back


def test_a_library_name_and_its_file_are_one_owner_of_a_run_folder(tmp_path):
    config, root = load_config("demo"), tmp_path / "run"
    with claim_run_root(root, Path("demo"), config):
        pass
    check_run_folder(root, "configs/demo.yaml", config)
    with claim_run_root(root, Path("configs/demo.yaml"), config):
        pass


def test_a_run_folder_recorded_with_a_path_not_found_here_is_owned_by_the_file_of_its_name(tmp_path, run_dir):
    """Records of older runs (and run folders copied from another machine) name a path that
    may not resolve here: the file name decides, as it did before."""
    record = {"config_file": "elsewhere/demo.yaml", "config": {}}
    (run_dir / "run-config.yaml").write_text(yaml.safe_dump(record))
    config = load_config("demo")
    check_run_folder(run_dir, "configs/demo.yaml", config)
    with pytest.raises(RunRootError, match="holds a run of elsewhere/demo.yaml, not of configs/seed.yaml"):
        check_run_folder(run_dir, "configs/seed.yaml", load_config("seed"))


def test_a_run_folder_that_is_a_file_is_refused(tmp_path):
    (tmp_path / "run").write_text("my notes")
    with pytest.raises(RunRootError) as refusal:
        check_run_folder(tmp_path / "run", "configs/demo.yaml", load_config("demo"))
    assert str(refusal.value) == (f"{tmp_path / 'run'}: exists and is not a folder; give --run-dir a folder (new, or "
                                  "of an earlier run of this config)")
    with pytest.raises(RunRootError, match="exists and is not a folder"):
        claim_run_root(tmp_path / "run", Path("configs/demo.yaml"), load_config("demo")).__enter__()
    assert (tmp_path / "run").read_text() == "my notes"


def test_a_read_only_run_folder_is_refused_before_the_run_starts(read_only):
    before = snapshot(read_only)
    with pytest.raises(RunRootError) as refusal:
        check_run_folder(read_only, "configs/demo.yaml", load_config("demo"))
    assert str(refusal.value) == (f"{read_only}: the run folder cannot be written ({read_only} is read-only for this "
                                  "user); a run keeps its checkpoints and scores there: give another --run-dir, or "
                                  "make this one writable")
    assert snapshot(read_only) == before


def test_a_run_folder_inside_its_image_folder_is_refused(tmp_path):
    source = tmp_path / "images"
    write_image(source / "p1" / "a.jpg")
    config = load_config("demo", {"data.source": str(source)})
    inside = f"{source / 'run'}: the run folder is inside the source folder {source}"
    with pytest.raises(SourceError, match=f"^{re.escape(inside)}"):
        check_run_folder(source / "run", "configs/demo.yaml", config)
    check_run_folder(tmp_path / "run", "configs/demo.yaml", config)  # beside it is fine


# --- `pvs search` on an unfinished run: the command that finishes it -------------------------

def test_search_on_an_unfinished_run_gives_the_command_with_its_set_options(capsys, tmp_path):
    overrides = parse_overrides(["phases.top.epochs=1", "data.source=my images", "data.ingest.seed=3"])
    root = tmp_path / "run"
    with claim_run_root(root, Path("configs/demo.yaml"), load_config("demo", overrides), overrides):
        pass
    message = refused(capsys, "search", "--run", root, write_image(tmp_path / "photo.jpg"))
    command = message.split("finish the run with `")[1].removesuffix("`")
    assert command == (f"pvs run --config configs/demo.yaml --run-dir {root} --set phases.top.epochs=1 "
                       "--set 'data.source=my images' --set data.ingest.seed=3")
    assert parse_overrides(shlex.split(command)[7::2]) == overrides  # the same run, not a variant


def test_search_on_an_unfinished_run_of_an_older_version_says_its_set_options_are_unknown(capsys, tmp_path, run_dir):
    message = refused(capsys, "search", "--run", run_dir, write_image(tmp_path / "photo.jpg"))
    assert message.endswith(f"finish the run with `pvs run --config configs/demo.yaml --run-dir {run_dir}` "
                            "(with the --set options the run was started with, if any)")


# --- Output paths -----------------------------------------------------------------------------

def test_report_on_a_read_only_run_folder_says_where_it_writes_and_how_to_write_elsewhere(capsys, tmp_path, read_only):
    before = snapshot(read_only)
    assert refused(capsys, "report", read_only) == (
        f"{read_only / 'report.png'}: cannot be written ({read_only} is read-only for this user); give --chart to "
        "write it elsewhere, e.g. --chart report.png"
    )
    assert "top" in accepted(capsys, "report", read_only, "--chart", tmp_path / "report.png")
    accepted(capsys, "compare", read_only, "--chart", tmp_path / "comparison.png")  # reads only
    assert snapshot(read_only) == before


def test_search_sheet_into_a_read_only_folder_is_refused_before_the_search(capsys, tmp_path, read_only):
    photo = write_image(tmp_path / "photo.jpg")
    assert refused(capsys, "search", "--run", read_only, photo, "--sheet", read_only / "sheet.png") == (
        f"--sheet {read_only / 'sheet.png'}: cannot be written ({read_only} is read-only for this user); give a path "
        "in a folder you can write"
    )


OUTPUTS_AT_A_FOLDER = [
    pytest.param(("report", "{run}", "--chart", "{folder}"), "--chart", "report.png", id="report --chart"),
    pytest.param(("compare", "{run}", "--chart", "{folder}"), "--chart", "comparison.png", id="compare --chart"),
    pytest.param(("compare", "{run}", "--chart", "{tmp}/c.png", "--table", "{folder}"), "--table", "comparison.md",
                 id="compare --table"),
    pytest.param(("search", "--run", "{run}", "{tmp}/photo.jpg", "--sheet", "{folder}"), "--sheet", "sheet.png",
                 id="search --sheet"),
    pytest.param(("preview", "{tmp}", "--out", "{folder}"), "--out", "preview.png", id="preview --out"),
]


@pytest.mark.parametrize(("argv", "option", "example"), OUTPUTS_AT_A_FOLDER)
def test_an_output_path_that_is_a_folder_is_refused_before_the_work(capsys, tmp_path, run_dir, argv, option, example):
    folder = tmp_path / "charts"
    folder.mkdir()
    write_image(tmp_path / "photo.jpg")
    before = snapshot(run_dir)
    names = {"run": run_dir, "folder": folder, "tmp": tmp_path}
    message = refused(capsys, *(arg.format(**names) for arg in argv))
    assert message == f"{option} {folder}: is a folder; give a file's path, e.g. {option} {folder / example}"
    assert list(folder.iterdir()) == [] and snapshot(run_dir) == before


def test_a_write_refused_although_the_folder_looked_writable_is_one_line(capsys, tmp_path, run_dir, monkeypatch):
    """os.access cannot see every refusal (NFS squashing root): the write's PermissionError
    becomes the same line."""
    import tempfile

    chart, mkstemp = tmp_path / "out" / "comparison.png", tempfile.mkstemp

    def refusing(*args, dir=None, **kwargs):
        if Path(dir) == chart.parent:
            raise PermissionError(13, "Permission denied", str(chart.parent / ".comparison.png.x.tmp"))
        return mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", refusing)
    assert refused(capsys, "compare", run_dir, "--chart", chart) == (
        f"--chart {chart}: cannot be written (Permission denied); give a path in a folder you can write"
    )


# --- Damaged files ------------------------------------------------------------------------------

DAMAGED_SCORES = [
    pytest.param(SCORES.encode()[:-5], "line 3 has 3 fields, the header 4", id="cut short mid-row"),
    pytest.param(SCORES.encode().replace(b"top", b"t\xf6p"), f"not UTF-8 text (byte {SCORES.index('top') + 1})",
                 id="not utf-8"),
    pytest.param(SCORES.encode().replace(b"0.2", b"x"), "line 3: mar_at_10 'x' is not a number", id="edited score"),
    pytest.param(b"", "it is empty", id="empty"),
]


@pytest.mark.parametrize("command", ["report", "compare"])
@pytest.mark.parametrize(("content", "problem"), DAMAGED_SCORES)
def test_a_damaged_scores_file_is_one_error_naming_the_line_and_the_command_that_rewrites_it(
    capsys, tmp_path, run_dir, command, content, problem
):
    (run_dir / "scores.csv").write_bytes(content)
    before = snapshot(run_dir)
    message = refused(capsys, command, run_dir, "--chart", tmp_path / "chart.png")
    assert message == (
        f"{run_dir / 'scores.csv'}: {problem}, so the file is damaged (cut short or edited); `pvs run --config "
        f"configs/demo.yaml --run-dir {run_dir}` (with the --set options the run was started with, if any) rewrites "
        "it from the run's records, keeping every finished step"
    )
    assert snapshot(run_dir) == before and not (tmp_path / "chart.png").exists()


WRONG_MANIFESTS = [
    pytest.param([], "not a manifest (a JSON list; a manifest is an object with schema_version, kind and shards); "
                 "ingest again into the folder to rewrite it", id="a list"),
    pytest.param({"shards": 3}, "not a manifest (without schema_version; a manifest is an object with schema_version, "
                 "kind and shards); ingest again into the folder to rewrite it", id="no schema version"),
    pytest.param({"schema_version": 1, "shards": 3}, "not a valid manifest of a data folder written by `pvs ingest` "
                 "(shards: Input should be a valid list; source: Field required; options: Field required; and 5 more); "
                 "ingest again into the folder to rewrite it", id="shards not a list"),
]


@pytest.mark.parametrize("command", ["verify", "preview", "run"])
@pytest.mark.parametrize(("manifest", "problem"), WRONG_MANIFESTS)
def test_a_manifest_of_the_wrong_shape_is_one_error_naming_it(capsys, tmp_path, command, manifest, problem):
    data = tmp_path / "data"
    data.mkdir()
    (data / "manifest.json").write_text(json.dumps(manifest))
    before = snapshot(data)
    if command == "run":
        config = config_file(tmp_path / "c.yaml", **{"data.source": str(data)})
        message = refused(capsys, "run", "--config", config, "--run-dir", tmp_path / "run")
        assert message == f"{config}: {data / 'manifest.json'}: {problem}"
    else:
        assert refused(capsys, command, data) == f"{data / 'manifest.json'}: {problem}"
    assert snapshot(data) == before


def test_verify_checks_an_embeddings_folder_too(capsys, tmp_path):
    folder = tmp_path / "embeddings"
    with EmbeddingWriter(folder, dim=4, records_per_shard=2) as writer:
        writer.add("test_query", np.ones((3, 4)), ["a", "b", "c"], [0, 1, 2])
    assert accepted(capsys, "verify", folder).strip() == f"ok: 2 shards, 3 records match {folder / 'manifest.json'}"
    (folder / "test_query-00001.tfrecord").write_bytes(b"damaged")
    assert "test_query-00001.tfrecord: 7 bytes, the manifest says" in refused(capsys, "verify", folder)


def test_preview_of_an_embeddings_folder_says_what_it_is(capsys, tmp_path):
    with EmbeddingWriter(tmp_path / "embeddings", dim=4) as writer:
        writer.add("test_query", np.ones((1, 4)), ["a"], [0])
    assert refused(capsys, "preview", tmp_path / "embeddings") == (
        f"{tmp_path / 'embeddings' / 'manifest.json'}: the manifest of an embeddings folder written by a run's "
        "extraction, where a data folder written by `pvs ingest` is wanted; give such a folder"
    )


def test_a_preview_image_size_beyond_memory_is_refused_giving_the_largest(capsys, tmp_path):
    message = refused(capsys, "preview", tmp_path, "--image-size", 100_000)
    assert message.startswith("--image-size 100000: the preview draws up to 36 images of 100000x100000 pixels, "
                              "about 8,640 GB of memory, and ")
    largest = int(message.rsplit("give at most ", 1)[1])
    assert 1000 < largest < 100_000
    assert list(tmp_path.iterdir()) == []
