"""The whole pipeline with its source images, run folder and artifacts in a bucket (for
gs://, a real Cloud Storage emulator on 127.0.0.1; for s3://, moto's S3 server there):
killed on one machine, resumed on another (a new local cache), it ends with the scores and
submission of the uninterrupted local run. Each test runs for both schemes (`bucket`)."""

import shutil
import signal

import fsspec
import pytest
from conftest import states

from pipeline.storage.run_store import mirror_path
from reliability.conftest import assert_same_scores, bucket_names, read_scores, run_to_end, start_run, tiny_config


@pytest.mark.slow
def test_a_run_in_a_bucket_killed_on_one_machine_resumes_on_another_with_the_uninterrupted_scores(
    reference, demo_images, bucket, prefect_server, tmp_path, capsys
):
    source, run_url = bucket.url("remote-run", "images"), bucket.url("remote-run", "run")
    fs, path = fsspec.core.url_to_fs(source)
    fs.put(str(demo_images), path, recursive=True)
    config = tiny_config(tmp_path / "tiny.yaml", source)  # the reference's config, its source in the bucket
    machine_a, machine_b = tmp_path / "machine-a", tmp_path / "machine-b"

    # Machine A dies while phase 2 writes its second epoch's checkpoint (its first is pushed).
    killed = start_run(config, run_url, prefect_server, tmp_path / "a.log", "--set", f"storage.cache_dir={machine_a}",
                       PVS_TEST_ROOT=str(mirror_path(run_url, machine_a)),
                       PVS_TEST_KILL_AT="phases/02-block7a-*/checkpoints/epoch-0001.json")
    assert killed.wait() == -signal.SIGKILL, killed.output()[-3000:]
    stored = bucket_names(run_url)
    assert any(name.startswith("phases/01-top-") and name.endswith("/result.json") for name in stored)
    assert any(name.startswith("phases/02-block7a-") and name.endswith("checkpoints/epoch-0000.json") for name in stored)
    assert not any(name.startswith("phases/02-block7a-") and name.endswith("/result.json") for name in stored)
    shutil.rmtree(machine_a)  # nothing of machine A's disk is used below

    output = run_to_end(config, run_url, prefect_server, tmp_path / "b.log", "--set", f"storage.cache_dir={machine_b}")
    assert "block7a: resuming at epoch 2 of " in output
    assert states(output)["top"] == "Cached"  # not trained again
    mirror = mirror_path(run_url, machine_b)
    assert_same_scores(read_scores(mirror), reference.scores)
    fs.invalidate_cache()
    assert fs.cat_file(f"{run_url[5:]}/submission.csv") == reference.submission
    assert fs.cat_file(f"{run_url[5:]}/scores.csv") == (mirror / "scores.csv").read_bytes()
    stored = bucket_names(run_url)
    assert {"run.json", "run-config.yaml", "scores.png", "search-sheet.png"} <= set(stored)
    assert "run.lock" not in stored

    # The reading commands take the bucket's URL, on a machine holding nothing of the run (a third
    # cache folder), and print what they print for the local reference run (both folders are named "run").
    machine_c = tmp_path / "machine-c"
    query = str(next(demo_images.rglob("*.jpg")))
    for command in (["report", "{run}"], ["search", query, "--run", "{run}", "--top", "5"]):
        remote = cli_output(capsys, [part.format(run=run_url) for part in command] + ["--cache-dir", str(machine_c)])
        local = cli_output(capsys, [part.format(run=reference.run_dir) for part in command] + ["--chart", str(tmp_path / "r.png")] * (command[0] == "report"))
        assert without_paths(remote, run_url, machine_c) == without_paths(local, reference.run_dir), command
    assert (mirror_path(run_url, machine_c) / "report.png").is_file()  # `pvs report`'s default chart: in the mirror
    # `pvs compare`: the same row but for the config file's path and the training time (this run was killed).
    tables = {}
    for name, run in (("remote", run_url), ("local", str(reference.run_dir))):
        cli_output(capsys, ["compare", run, "--chart", str(tmp_path / f"{name}.png"), "--table", str(tmp_path / f"{name}.md"),
                            "--cache-dir", str(machine_c)])
        header, _, row = [[cell.strip() for cell in line.strip("|").split("|")]
                          for line in (tmp_path / f"{name}.md").read_text().splitlines()[:3]]
        tables[name] = {column: value for column, value in zip(header, row) if column not in ("config_file", "train_seconds")}
    assert tables["remote"] == tables["local"] and tables["remote"]["parameters"] and tables["remote"]["embedding_dim"]


def cli_output(capsys, argv: list[str]) -> str:
    from pipeline.cli import main

    capsys.readouterr()
    assert main(argv) == 0, capsys.readouterr()
    return capsys.readouterr().out


def without_paths(output: str, *places) -> str:
    """The output without the lines naming a file or folder (charts, the run searched)."""
    return "\n".join(line for line in output.splitlines()
                     if not line.startswith(("chart:", "table:")) and not any(str(place) in line for place in places))


def test_a_run_folder_in_a_missing_bucket_is_refused_with_one_line(bucket, demo_images, prefect_server, tmp_path):
    config = tiny_config(tmp_path / "tiny.yaml", demo_images)
    run = start_run(config, f"{bucket.scheme}://no-such-bucket/runs/tiny", prefect_server, tmp_path / "run.log")
    assert run.wait() == 2
    lines = run.output().strip().splitlines()
    assert lines[-1].startswith(f"error: {bucket.scheme}://no-such-bucket: no such bucket"), lines[-5:]
    assert "Traceback" not in run.output()


def test_a_missing_source_object_is_refused_with_one_line(bucket, prefect_server, tmp_path):
    config = tiny_config(tmp_path / "tiny.yaml", bucket.url("nowhere", "products.csv"))
    run = start_run(config, tmp_path / "run", prefect_server, tmp_path / "run.log")
    assert run.wait() == 2
    assert run.output().strip().splitlines()[-1] == (
        f"error: {bucket.scheme}://pvs-test/nowhere/products.csv: no such object (while reading the source)"
    )
