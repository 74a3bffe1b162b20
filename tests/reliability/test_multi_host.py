"""Several hosts, one run: `pvs run` on each host of a MultiWorkerMirroredStrategy cluster
(TF_CONFIG), all on one gs:// run folder (a real Cloud Storage emulator on 127.0.0.1). Here
the two hosts are two processes with caches of their own, as two machines would have.

The chief runs the pipeline as on one host; the other worker trains every phase beside it
(the collectives pair their steps) and takes everything else from the chief's records in
the bucket, writing nothing there."""

import json
import re
import signal

import fsspec
import pytest
import yaml
from conftest import free_port, states

from pipeline.storage import mirror_path
from reliability.conftest import bucket_names, start_run, tiny_config


def cluster(size: int = 2) -> dict:
    ports = set()
    while len(ports) < size:
        ports.add(free_port())
    return {"worker": [f"127.0.0.1:{port}" for port in sorted(ports)]}


def two_hosts_config(path, source):
    """tiny_config with the two phase kinds on MobileNetV3Small (the fastest to trace), two
    epochs of phase 1 (so that a kill lands between them), under multi_worker."""
    tiny_config(path, source)
    config = yaml.safe_load(path.read_text())
    config["model"].update(architecture="MobileNetV3Small", dropout=0.0)
    config["phases"] = [
        {"name": "top", "kind": "classification", "unfreeze": "none", "learning_rate": 1e-2, "epochs": 2},
        {"name": "siamese", "kind": "siamese", "projection_dim": 16, "labels_per_batch": 4, "views_per_label": 3,
         "margin_schedule": [{"margin": 0.5, "learning_rate": 1e-3, "epochs": 1}]},
    ]
    config["runtime"] = {"seed": 1, "deterministic": True, "strategy": "multi_worker"}
    path.write_text(yaml.safe_dump(config))
    return path


def start_hosts(config, run_url, server, tmp_path, name, workers, **environment):
    """`pvs run` for worker 0 (the chief) and worker 1, each with its own cache folder."""
    runs = []
    for index in (0, 1):
        cache = tmp_path / f"host-{index}"
        tf_config = json.dumps({"cluster": workers, "task": {"type": "worker", "index": index}})
        extra = environment if index == 0 else {}
        runs.append(start_run(config, run_url, server, tmp_path / f"{name}-{index}.log", "--set", f"storage.cache_dir={cache}",
                              TF_CONFIG=tf_config, PVS_TEST_ROOT=str(mirror_path(run_url, cache)), **extra))
    return runs


def epoch_losses(output: str) -> list[str]:
    """'<phase> epoch N trained: <metrics>' lines (EpochLogger), as logged."""
    return re.findall(r"(\w+ epoch \d+ trained: [^\n]*)", output)


@pytest.mark.slow
def test_two_hosts_train_every_phase_together_and_only_the_chief_writes_the_bucket(
    demo_images, storage_emulator, prefect_server, tmp_path
):
    run_url = storage_emulator.url("two-hosts", "run")
    config = two_hosts_config(tmp_path / "tiny.yaml", demo_images)
    workers = cluster()

    # The chief dies while it writes phase 1's second checkpoint (the first is pushed), the
    # other host with it; both start again and resume phase 1 after its first epoch, from
    # the checkpoint in the bucket.
    killed = start_hosts(config, run_url, prefect_server, tmp_path, "killed", workers,
                         PVS_TEST_KILL_AT="phases/01-top-*/checkpoints/epoch-0001.json")
    assert killed[0].wait() == -signal.SIGKILL, killed[0].output()[-3000:]
    killed[1].process.kill()  # its peer is gone: the other host's collectives would wait for it
    killed[1].wait()
    assert any(name.startswith("phases/01-top-") and name.endswith("checkpoints/epoch-0000.json")
               for name in bucket_names(run_url))

    chief, other = start_hosts(config, run_url, prefect_server, tmp_path, "resumed", workers)
    for run in (chief, other):
        assert run.wait(timeout=900) == 0, run.output()[-4000:]
    mine, theirs = chief.output(), other.output()

    # The chief ran every step; the other worker trained both phases (resuming phase 1 after
    # the chief's checkpoint, as the chief did) and ran no other task.
    steps = ["ingest", "baseline", "top", "siamese", "extraction"]
    assert {step: states(mine).get(step) for step in steps} == {
        "ingest": "Cached", "baseline": "Cached", "top": "Completed", "siamese": "Completed", "extraction": "Completed"}
    assert states(theirs) == {"top": "Completed", "siamese": "Completed"}
    for output in (mine, theirs):
        assert "top: resuming at epoch 2 of " in output  # said before it trains
    assert "top: training beside the chief (2 checkpoint file(s) pulled)" in theirs
    # One model trained by both: each epoch's loss, reduced across the workers, is the same on both.
    assert epoch_losses(mine) == epoch_losses(theirs) and len(epoch_losses(mine)) == 2  # top epoch 2, siamese epoch 1

    # The other worker ends with the chief's summary; it wrote nothing to the bucket (its
    # TensorBoard files, named after its process, are not there).
    fs, path = fsspec.core.url_to_fs(run_url)
    fs.invalidate_cache()
    summary = json.loads(fs.cat_file(f"{path}/run.json"))
    assert json.loads((mirror_path(run_url, tmp_path / "host-1") / "run.json").read_text()) == summary
    assert f"submission: {summary['submission']} (the chief's;" in theirs
    stored = bucket_names(run_url)
    assert not [name for name in stored if f".{other.process.pid}." in name]
    assert [name for name in stored if f".{chief.process.pid}." in name]  # the chief's are
    # One set of checkpoints per phase, and the phase records of the chief.
    assert sum(name.endswith("/result.json") and name.startswith("phases/") for name in stored) == 3  # baseline, top, siamese


def test_a_worker_that_is_not_the_chief_refuses_a_local_run_folder_and_force(
    demo_images, storage_emulator, prefect_server, tmp_path
):
    """Each host's local folder is its own and only the chief writes: a worker that is not the
    chief stops at once, with one line, rather than wait for what no chief will write there."""
    config = two_hosts_config(tmp_path / "tiny.yaml", demo_images)
    tf_config = json.dumps({"cluster": cluster(), "task": {"type": "worker", "index": 1}})
    local = start_run(config, tmp_path / "run", prefect_server, tmp_path / "local.log", TF_CONFIG=tf_config)
    assert local.wait() == 2, local.output()[-3000:]
    assert local.output().strip().splitlines()[-1].startswith(
        f"error: run folder {tmp_path / 'run'}: this process is a worker that is not the chief of its TF_CONFIG cluster")
    forced = start_run(config, storage_emulator.url("two-hosts", "forced"), prefect_server, tmp_path / "forced.log",
                       "--force", "top", "--set", f"storage.cache_dir={tmp_path / 'cache'}", TF_CONFIG=tf_config)
    assert forced.wait() == 2, forced.output()[-3000:]
    assert forced.output().strip().splitlines()[-1] == (
        "error: force top: only the chief recomputes steps; give force to the chief alone")
    assert "Traceback" not in local.output() + forced.output()
