"""SIGKILL at random points of the pipeline, then damaged files between runs: the run
completes, keeps every finished step and epoch, and ends with the scores of an
uninterrupted run.

The kill points are landmarks of the uninterrupted run (the files it renames into
place, in order: shards, manifests, checkpoints, models, features, the embeddings of
each image shard, the merged embeddings, records; see kill_hook/sitecustomize.py),
drawn at random with a seed that is printed and can be replayed with
PVS_RELIABILITY_SEED=<seed>. A kill with delay 0
lands mid-write (the file exists only under its temporary name); a delayed kill
lands wherever the process is a moment later (mid-epoch, mid-extraction).
"""

import fnmatch
import os
import random
import re
import signal
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from conftest import states

from reliability.conftest import (
    assert_same_scores,
    finished_files,
    read_scores,
    rewritten,
    run_to_end,
    start_run,
    tiny_config,
)
from tfrecords.files import sha256_file
from tfrecords.manifest import ImageManifest, read_manifest

KILLS = 10


@dataclass(frozen=True)
class KillPoint:
    landmark: str  # a path relative to the run root, keys as `*`
    delay: float  # seconds after that file is renamed into place; 0: just before

    def __str__(self) -> str:
        moment = "mid-write" if self.delay == 0 else f"{self.delay:.2f} s after"
        return f"{moment} {self.landmark}"


def stage(landmark: str) -> str:
    return landmark.split("/")[0] if "/" in landmark else "summary"


def inside_an_epoch(landmark: str) -> bool:
    """A checkpoint written inside an epoch (`runtime.checkpoint_every`)."""
    return "/checkpoints/" in landmark and "-step-" in landmark


def next_kill_point(pending: list[str], kills_left: int, rng: random.Random, inside_yet: bool = True) -> KillPoint:
    """A landmark not yet reached, drawn from the next 1/kills_left of what is left (so
    the kills spread over the pipeline); the last one falls in the extraction. Halfway,
    unless one did already, a kill falls at one of the next checkpoints inside an epoch."""
    extraction = [name for name in pending if stage(name).startswith("extraction")]
    inside = [name for name in pending if inside_an_epoch(name)]
    if kills_left == 1 and extraction:
        landmark = rng.choice(extraction)
    elif not inside_yet and kills_left <= KILLS // 2 and inside:
        landmark = rng.choice(inside[:3])
    else:
        landmark = rng.choice(pending[: max(1, len(pending) // kills_left)])
    # A delayed kill near the end might come after the process has ended.
    late = stage(landmark).startswith("extraction") or stage(landmark) in ("embeddings", "summary")
    delay = 0.0 if late or rng.random() < 0.5 else round(rng.uniform(0.2, 2.0), 2)
    return KillPoint(landmark, delay)


def written(run_dir: Path, landmark: str) -> bool:
    return any(fnmatch.fnmatchcase(path.relative_to(run_dir).as_posix(), landmark)
               for path in run_dir.rglob("*") if path.is_file())


def temporaries(run_dir: Path) -> list[str]:
    return [p.relative_to(run_dir).as_posix() for p in run_dir.rglob(".*") if ".tmp" in p.name]


@pytest.fixture(scope="module")
def killed_run(reference, demo_images, prefect_server, tmp_path_factory):
    """The pipeline killed at KILLS random points, started again after each, then run to
    the end. Only landmarks written once count (scores.csv is rewritten after every
    phase), and a phase keeps its last two checkpoints: with more than two epochs a
    pruned one would never count as reached. Returns (run dir, config, the kills,
    seed, finished files that a later run rewrote, the final run's output)."""
    seed = int(os.environ.get("PVS_RELIABILITY_SEED", random.SystemRandom().randrange(2**32)))
    print(f"kill points drawn with PVS_RELIABILITY_SEED={seed}")
    folder = tmp_path_factory.mktemp("killed")
    config = tiny_config(folder / "tiny.yaml", demo_images)
    run_dir = folder / "run"
    rng = random.Random(seed)
    once = [name for name in reference.landmarks if reference.landmarks.count(name) == 1 and name != "run.json"]
    kills, damage, reached = [], [], set()
    for number in range(1, KILLS + 1):
        # Reached: renamed into place by a run before (pruned checkpoints are gone, but reached).
        pending = [name for name in once if name not in reached and not (run_dir.exists() and written(run_dir, name))]
        if not pending:
            break
        point = next_kill_point(pending, KILLS - len(kills), rng, any(inside_an_epoch(p.landmark) for p, _ in kills))
        before = finished_files(run_dir) if run_dir.exists() else {}
        writes = folder / f"run-{number}.writes"
        run = start_run(config, run_dir, prefect_server, folder / f"run-{number}.log", PVS_TEST_WRITE_LOG=str(writes),
                        PVS_TEST_KILL_AT=point.landmark, PVS_TEST_KILL_DELAY=str(point.delay))
        code = run.wait()
        # The landmark of a kill mid-write is logged, but only renamed by the next run.
        reached |= set(writes.read_text().split() if writes.exists() else ()) - ({point.landmark} if point.delay == 0 else set())
        if code == 0:
            kills.append((point, "not killed: the run ended first"))
            break
        assert code == -signal.SIGKILL, f"seed {seed}, {point}: exit {code}\n{run.output()[-3000:]}"
        kills.append((point, "killed"))
        damage += [f"after kill {number} ({point}): {path}" for path in rewritten(before, run_dir)]
    before = finished_files(run_dir)
    final = run_to_end(config, run_dir, prefect_server, folder / "final.log")
    damage += [f"final run: {path}" for path in rewritten(before, run_dir)]
    print("\n".join(f"{point}: {outcome}" for point, outcome in kills))
    return run_dir, config, kills, seed, damage, final


@pytest.mark.slow
def test_killed_runs_resume_keep_finished_work_and_match_the_uninterrupted_run(killed_run, reference):
    run_dir, _, kills, seed, damage, _ = killed_run
    done = [point for point, outcome in kills if outcome == "killed"]
    assert len(done) == KILLS, f"seed {seed}: only {len(done)} kills landed: {kills}"
    assert {stage(point.landmark) for point in done} >= {"data", "extraction-*"}, f"seed {seed}: {kills}"
    assert any(inside_an_epoch(point.landmark) for point in done), f"seed {seed}: no kill inside an epoch: {kills}"
    assert damage == [], f"seed {seed}: finished work was redone: {damage}"
    assert_same_scores(read_scores(run_dir), reference.scores)
    assert (run_dir / "submission.csv").read_bytes() == reference.submission, f"seed {seed}"
    assert temporaries(run_dir) == [], f"seed {seed}: temporary files of killed writers were left"


def flip_a_byte(path: Path) -> None:
    content = bytearray(path.read_bytes())
    content[len(content) // 2] ^= 0x01
    path.write_bytes(bytes(content))


@pytest.mark.slow
def test_damaged_or_deleted_files_are_found_by_digest_and_recomputed(killed_run, reference, prefect_server):
    """After the killed run completed, two rounds of damage, each followed by a run:
    1. a shard with a flipped byte and an embeddings file deleted: ingestion rewrites
       that shard, the extraction runs again, the phases stay Cached;
    2. the final model truncated and the last checkpoint of phase 4 altered: phase 4
       resumes from the checkpoint before (retraining its last epoch), the extraction
       follows. Each run ends with the scores of the uninterrupted run."""
    run_dir, config, _, _, _, _ = killed_run
    data = run_dir / "data"
    shard = data / read_manifest(data, ImageManifest).shards_of("train")[2].file
    flip_a_byte(shard)
    next(run_dir.glob("extraction-*/embeddings/test_index-*.tfrecord")).unlink()
    phases = {name: value for name, value in finished_files(run_dir).items() if name.startswith("phases/")}

    output = run_to_end(config, run_dir, prefect_server, run_dir.parent / "repaired-1.log")
    assert states(output) == {"ingest": "Completed", "baseline": "Cached", "top": "Cached", "block7a": "Cached",
                              "full": "Cached", "siamese": "Cached", "extraction": "Completed"}
    assert "ingest: no trustworthy result" in output and "extraction: no trustworthy result" in output
    assert sha256_file(shard) == next(s.sha256 for s in read_manifest(data, ImageManifest).shards if s.file == shard.name)
    assert rewritten(phases, run_dir) == []
    assert_same_scores(read_scores(run_dir), reference.scores)
    assert (run_dir / "submission.csv").read_bytes() == reference.submission

    siamese = next(run_dir.glob("phases/04-siamese-*"))
    (siamese / "embedder.keras").write_bytes((siamese / "embedder.keras").read_bytes()[:1000])
    flip_a_byte(siamese / "checkpoints" / "epoch-0001.keras")
    untouched = {name: value for name, value in finished_files(run_dir).items()
                 if name.startswith(("phases/00", "phases/01", "phases/02", "phases/03"))}

    output = run_to_end(config, run_dir, prefect_server, run_dir.parent / "repaired-2.log")
    assert states(output) == {"ingest": "Cached", "baseline": "Cached", "top": "Cached", "block7a": "Cached",
                              "full": "Cached", "siamese": "Completed", "extraction": "Completed"}
    assert "siamese: no trustworthy result" in output
    # The altered epoch-2 checkpoint was not used: the one before it was, inside epoch 2.
    resuming = re.search(r"siamese: resuming at epoch 2 of \d+, after batch \d+, from its checkpoint", output)
    assert resuming and resuming.start() < output.index("siamese epoch 2 trained")  # said before it trains
    assert rewritten(untouched, run_dir) == []
    assert_same_scores(read_scores(run_dir), reference.scores)
    assert (run_dir / "submission.csv").read_bytes() == reference.submission


@pytest.mark.slow
def test_each_killed_runs_flow_run_is_marked_crashed_by_the_run_that_resumes_it(killed_run, prefect_server):
    """A run killed by the machine stays Running in the API (nothing is left to say otherwise)
    until the next run of its folder marks it, and its running task runs, Crashed, naming itself."""
    run_dir, _, kills, seed, _, _ = killed_run
    logs = [run_dir.parent / f"run-{number}.log" for number in range(1, len(kills) + 1)] + [run_dir.parent / "final.log"]
    ids = [re.search(r"/runs/flow-run/([0-9a-f-]{36})", log.read_text()).group(1) for log in logs]
    for (point, outcome), killed, resumer in zip(kills, ids, ids[1:]):
        if outcome != "killed":
            continue
        run = httpx.get(f"{prefect_server}/flow_runs/{killed}").json()
        assert run["state"]["type"] == "CRASHED" and resumer in run["state"]["message"], (seed, str(point), run["state"])
        tasks = httpx.post(f"{prefect_server}/task_runs/filter", json={"flow_runs": {"id": {"any_": [killed]}}}).json()
        assert not [task["name"] for task in tasks if task["state"]["type"] == "RUNNING"], (seed, str(point))
        assert f"resumes:{killed[:8]}" in httpx.get(f"{prefect_server}/flow_runs/{resumer}").json()["tags"]
    assert httpx.get(f"{prefect_server}/flow_runs/{ids[-1]}").json()["state"]["type"] == "COMPLETED"
