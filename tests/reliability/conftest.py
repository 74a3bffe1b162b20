"""Shared by the fault tests: a tiny pipeline config, `pvs run` as a real process that
can be killed, and the uninterrupted reference run every faulted run must equal."""

import csv
import hashlib
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import REPO, TINY_SHARD, tiny_pipeline, write_yaml

KILL_HOOK = Path(__file__).parent / "kill_hook"
TOLERANCE = 1e-5  # scores of a resumed run against the uninterrupted one (deterministic mode)
SUMMARIES = {"scores.csv", "scores.png", "run.json", "submission.csv"}  # rewritten by every run, by design


# The whole pipeline (ingestion included) on tiny_pipeline, two epochs per classification
# phase so that a kill can land between epochs, and checkpoints inside epochs (every 5
# batches: three an epoch in phase 4; phases 1-3, of 4 batches an epoch, have none, which
# spares every faulted run a dozen EfficientNetB0 saves) so that one can land inside them.
RELIABILITY = {
    "description": "reliability suite",
    "data": {"ingest": {"shard_size": TINY_SHARD, "val_fraction": 0.2, "test_fraction": 0.2, "workers": 1}},
    "phases": [{"name": name, "epochs": 2} for name in ("top", "block7a", "full")],
    "runtime": {"checkpoint_every": "5 steps"},
}


def tiny_config(path: Path, source: Path, *changes: dict, phases: tuple[str, ...] | None = None) -> Path:
    """The reliability suite's config on the demo images `source`, written to `path`;
    `changes` and `phases` as tiny_pipeline takes them."""
    return write_yaml(path, tiny_pipeline(source, RELIABILITY, *changes, phases=phases))


@dataclass
class Run:
    """A `pvs run` process; its output goes to `log`."""

    process: subprocess.Popen
    log: Path

    def wait(self, timeout: float = 600) -> int:
        try:
            return self.process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.process.pid, 9)
            self.process.wait()
            raise AssertionError(f"pvs run still going after {timeout:.0f} s:\n{self.output()[-3000:]}") from None

    def output(self) -> str:
        return self.log.read_text(errors="replace")


def start_run(config: Path, run_dir: Path, server: str, log: Path, *extra: str, **environment: str) -> Run:
    """Start `pvs run` in its own session (so the test can kill it and all it started)."""
    command = [sys.executable, "-m", "pipeline.cli", "run", "--config", str(config), "--run-dir", str(run_dir), *extra]
    env = {**os.environ, "PREFECT_API_URL": server, "PYTHONPATH": f"{KILL_HOOK}{os.pathsep}{REPO}",
           "PVS_TEST_ROOT": str(run_dir), **environment}
    with open(log, "w") as handle:
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                                   start_new_session=True)
    return Run(process, log)


def run_to_end(config: Path, run_dir: Path, server: str, log: Path, *extra: str, **environment: str) -> str:
    run = start_run(config, run_dir, server, log, *extra, **environment)
    assert run.wait() == 0, run.output()[-4000:]
    return run.output()


def wait_for(predicate, run: Run | None = None, timeout: float = 300, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert run is None or run.process.poll() is None, f"the run ended before {what}:\n{run.output()[-3000:]}"
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def bucket_names(url: str) -> list[str]:
    """Every object under the gs:// folder `url`, named relative to it."""
    import fsspec

    fs, path = fsspec.core.url_to_fs(url)
    fs.invalidate_cache()
    return sorted(name[len(path) + 1:] for name in fs.find(path))


def read_scores(run_dir: Path) -> list[dict]:
    with open(run_dir / "scores.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def assert_same_scores(rows: list[dict], reference: list[dict]) -> None:
    """Same phases and epochs, every number within TOLERANCE of the uninterrupted run."""
    assert [(r["phase"], r["epoch"]) for r in rows] == [(r["phase"], r["epoch"]) for r in reference]
    for row, expected in zip(rows, reference):
        for name, value in expected.items():
            if value and name not in ("phase", "epoch", "train_seconds"):  # wall time differs run to run
                assert abs(float(row[name]) - float(value)) <= TOLERANCE, (row["phase"], row["epoch"], name, row[name], value)


def finished_files(run_dir: Path) -> dict[str, tuple[int, str]]:
    """Every file a finished step or epoch stands for, with its inode and sha256: the
    folders of steps with a result.json, every epoch checkpoint, and the data shards.
    A later run may add files and prune old checkpoints, but must not rewrite these."""
    found = {}
    for path in sorted(run_dir.rglob("*")):
        relative = path.relative_to(run_dir).as_posix()
        if not path.is_file() or path.name.startswith(".") or relative in SUMMARIES or "/tensorboard/" in relative:
            continue
        folders = path.relative_to(run_dir).parents
        step = any((run_dir / folder / "result.json").is_file() for folder in folders if folder != Path("."))
        checkpoint = path.parent.name == "checkpoints" and path.with_suffix(".json").is_file()
        shard = path.suffix == ".tfrecord" and (path.parent / ".parts" / f"{path.name}.json").is_file()
        if step or checkpoint or shard:
            found[relative] = (path.stat().st_ino, hashlib.sha256(path.read_bytes()).hexdigest())
    return found


def rewritten(before: dict[str, tuple[int, str]], run_dir: Path) -> list[str]:
    """Files of `before` that were replaced or changed since (pruned checkpoints are fine)."""
    changed = []
    for relative, (inode, digest) in before.items():
        path = run_dir / relative
        if not path.exists():
            if path.parent.name != "checkpoints":
                changed.append(f"{relative} (deleted)")
            continue
        if path.stat().st_ino != inode or hashlib.sha256(path.read_bytes()).hexdigest() != digest:
            changed.append(relative)
    return changed


@dataclass
class Reference:
    """The uninterrupted run: its scores, submission and the ordered landmarks (renamed
    files); and the rival run started on the same root while it trained."""

    run_dir: Path
    config: Path
    scores: list[dict]
    submission: bytes
    landmarks: list[str]
    output: str
    rival_exit: int
    rival_output: str


@pytest.fixture(scope="session")
def reference(demo_images, prefect_server, tmp_path_factory) -> Reference:
    folder = tmp_path_factory.mktemp("reference")
    config = tiny_config(folder / "tiny.yaml", demo_images)
    run_dir = folder / "run"
    run = start_run(config, run_dir, prefect_server, folder / "run.log", PVS_TEST_WRITE_LOG=str(folder / "landmarks.txt"))
    wait_for(lambda: list(run_dir.glob("phases/01-top-*/checkpoints/epoch-0000.json")), run, what="phase 1's first epoch")
    # A second run of the same config on the same root while the first one trains.
    rival = start_run(config, run_dir, prefect_server, folder / "rival.log")
    rival_exit = rival.wait()
    assert run.wait() == 0, run.output()[-4000:]
    landmarks = (folder / "landmarks.txt").read_text().split()
    return Reference(run_dir, config, read_scores(run_dir), (run_dir / "submission.csv").read_bytes(), landmarks,
                     run.output(), rival_exit, rival.output())
