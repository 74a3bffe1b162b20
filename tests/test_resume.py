"""An ingestion killed mid-way resumes: finished shards are kept, the result is the same."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tfrecords.demo_data import DemoOptions, write_demo_data
from tfrecords.files import sha256_file
from tfrecords.ingest import ingest
from tfrecords.options import IngestOptions
from tfrecords.shard_writer import sidecar_path

SHARD_SIZE = 40_000


def finished_shards(out: Path) -> dict[str, int]:
    """Shards whose sidecar vouches for them, with their inode (to see rewrites)."""
    finished = {}
    for path in out.glob("*.tfrecord"):
        sidecar = sidecar_path(out, path.name)
        assert sidecar.is_file(), f"{path.name} exists without its sidecar: a half-written shard"
        assert json.loads(sidecar.read_text())["sha256"] == sha256_file(path), f"{path.name} is not whole"
        finished[path.name] = os.stat(path).st_ino
    return finished


@pytest.mark.slow
def test_killed_ingestion_resumes_and_matches_an_uninterrupted_run(tmp_path):
    source = tmp_path / "images"
    write_demo_data(source, DemoOptions(products=120, shots=6, categories=4, image_size=160, seed=3))
    out = tmp_path / "interrupted"
    command = [sys.executable, "-m", "pipeline.cli", "ingest", str(source), str(out)]
    command += ["--shard-size", str(SHARD_SIZE), "--workers", "2", "--no-progress"]
    process = subprocess.Popen(command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 120
    while len(list(out.glob("*.tfrecord"))) < 3:  # a few shards done, most still to write
        assert process.poll() is None, f"ingestion ended before it could be interrupted: {process.stderr.read()}"
        assert time.monotonic() < deadline
        time.sleep(0.002)
    os.killpg(process.pid, signal.SIGKILL)  # the whole process group, workers too: a preempted machine
    process.wait()
    assert not (out / "manifest.json").exists()

    kept = finished_shards(out)
    options = IngestOptions(shard_size=SHARD_SIZE, workers=2)
    resumed = ingest(source, out, options, progress=False)
    assert len(kept) < len(resumed.shards)
    assert {name: os.stat(out / name).st_ino for name in kept} == kept, "a finished shard was rewritten"
    assert not list(out.rglob("*.tmp"))

    straight = ingest(source, tmp_path / "straight", options, progress=False)
    assert resumed.model_dump(exclude={"source"}) == straight.model_dump(exclude={"source"})


def test_a_changed_image_rewrites_only_its_own_shard(demo_images, tmp_path):
    import shutil

    source = tmp_path / "images"
    shutil.copytree(demo_images, source)
    options = IngestOptions(shard_size=20_000, workers=1)
    before = ingest(source, tmp_path / "out", options, progress=False)
    inodes = {s.file: os.stat(tmp_path / "out" / s.file).st_ino for s in before.shards}
    changed = sorted(source.rglob("*.jpg"))[5]
    changed.write_bytes((sorted(source.rglob("*.jpg"))[6]).read_bytes())
    after = ingest(source, tmp_path / "out", options, progress=False)
    rewritten = {s.file for s in after.shards if os.stat(tmp_path / "out" / s.file).st_ino != inodes[s.file]}
    assert len(rewritten) == 1
    (shard,) = [s for s in after.shards if s.file in rewritten]
    assert shard.sha256 != next(s.sha256 for s in before.shards if s.file == shard.file)
