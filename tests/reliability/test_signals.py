"""Ctrl-C and SIGTERM stop `pvs run` within seconds, cleanly, at any moment: during
ingestion, mid-epoch, during the extraction. Each time the run exits 130 (SIGINT) or 143
(SIGTERM) with one line saying how to resume, leaves no temporary file, stops the temporary
Prefect server it started, and frees its run folder; the same command then resumes, and
after the last stop it ends with the scores and submission of the uninterrupted run.

The signals are sent by the test-only hook (kill_hook/sitecustomize.py) at a landmark of
the run: a Ctrl-C goes to the whole process group, as a terminal sends it; a SIGTERM to the
process alone, as `kill` and container runtimes send it. These runs use no PREFECT_API_URL,
so that each starts, and must stop, a temporary Prefect server of its own."""

import fnmatch
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import REPO, free_port

from pipeline.stopping import Interrupted, stop_on_signals

from reliability.conftest import (
    assert_same_scores,
    finished_files,
    read_scores,
    rewritten,
    run_to_end,
    start_run,
    tiny_config,
)

# From the signal to the process' end. About 2 s here; slack for a loaded CI machine.
STOP_SECONDS = 30
RESUME_LINE = re.compile(r"^interrupted \((SIGINT|SIGTERM)\); run the same command again to resume", re.M)
SERVER_LINE = re.compile(r"temporary Prefect server on http://127\.0\.0\.1:(\d+) \(pid (\d+)[,)]")


@dataclass(frozen=True)
class Stop:
    landmark: str  # a glob over the reference run's landmarks; its first match is used
    delay: float  # seconds after that file is renamed into place; 0: just before
    signal: str
    group: bool  # to the process group (a terminal's Ctrl-C) or to the process alone
    moment: str

    @property
    def status(self) -> int:
        return 130 if self.signal == "SIGINT" else 143


STOPS = [
    Stop("data/train-00003-of-*.tfrecord", 0.0, "SIGINT", True, "during ingestion, mid-write"),
    Stop("phases/02-block7a-*/checkpoints/epoch-0000.keras", 0.3, "SIGTERM", False, "mid-epoch"),
    Stop("phases/04-siamese-*/features/*", 0.0, "SIGINT", False, "while phase 4 caches features"),
    Stop("embeddings/test_query-*/*.tfrecord", 0.05, "SIGTERM", True, "during the extraction"),
]


def temporaries(run_dir: Path) -> list[str]:
    return [p.relative_to(run_dir).as_posix() for p in run_dir.rglob(".*") if ".tmp" in p.name]


def gone(pid: int, timeout: float = 10) -> bool:
    """Whether process `pid` has ended (or is a zombie waiting to be reaped) within `timeout`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if Path(f"/proc/{pid}/stat").read_text().split(") ")[1].startswith("Z"):
                return True
        except (FileNotFoundError, ProcessLookupError):
            return True
        time.sleep(0.1)
    return False


def answers(port: int) -> bool:
    with socket.socket() as probe:
        probe.settimeout(1)
        return probe.connect_ex(("127.0.0.1", port)) == 0


@pytest.fixture(scope="module")
def stopped_run(reference, demo_images, tmp_path_factory):
    """The tiny pipeline stopped by each of STOPS in turn, the same command started again
    after each, then run to the end; with its own PREFECT_HOME and no PREFECT_API_URL."""
    folder = tmp_path_factory.mktemp("signalled")
    config = tiny_config(folder / "tiny.yaml", demo_images)
    run_dir = folder / "run"
    home = {"PREFECT_HOME": str(folder / "prefect-home"), "PREFECT_API_URL": ""}
    outcomes, redone = [], []
    for number, stop in enumerate(STOPS, 1):
        landmark = next(name for name in reference.landmarks if fnmatch.fnmatchcase(name, stop.landmark))
        sent = folder / f"sent-{number}"
        before = finished_files(run_dir) if run_dir.exists() else {}
        run = start_run(config, run_dir, "", folder / f"run-{number}.log", PVS_TEST_KILL_AT=landmark,
                        PVS_TEST_KILL_DELAY=str(stop.delay), PVS_TEST_SIGNAL=stop.signal,
                        PVS_TEST_SIGNAL_GROUP="1" if stop.group else "0", PVS_TEST_SIGNAL_SENT=str(sent), **home)
        status = run.wait()
        ended = time.time()
        seconds = ended - float(sent.read_text()) if sent.exists() else None
        outcomes.append((stop, status, seconds, run.output(), temporaries(run_dir)))
        redone += [f"after {stop.moment}: {path}" for path in rewritten(before, run_dir)]
    before = finished_files(run_dir)
    final = run_to_end(config, run_dir, "", folder / "final.log", **home)
    redone += [f"final run: {path}" for path in rewritten(before, run_dir)]
    return run_dir, outcomes, redone, final


@pytest.mark.slow
def test_ctrl_c_or_sigterm_stops_the_run_within_seconds_with_one_line_saying_how_to_resume(stopped_run):
    _, outcomes, _, _ = stopped_run
    for stop, status, seconds, output, left in outcomes:
        assert seconds is not None, f"{stop.moment}: the signal was never sent (the run ended first?)\n{output[-3000:]}"
        assert status == stop.status, f"{stop.moment}: exit {status}\n{output[-3000:]}"
        assert seconds < STOP_SECONDS, f"{stop.moment}: took {seconds:.1f} s to stop"
        assert len(RESUME_LINE.findall(output)) == 1 and RESUME_LINE.search(output)[1] == stop.signal, output[-3000:]
        assert "Traceback" not in output, f"{stop.moment}:\n{output[-3000:]}"
        assert left == [], f"{stop.moment}: temporary files left: {left}"


@pytest.mark.slow
def test_a_stopped_run_leaves_no_process_behind_and_frees_its_run_folder(stopped_run):
    """The temporary Prefect server each run started (in its own session, so that the
    terminal's Ctrl-C does not kill it before the run has recorded how it ended) is
    stopped; the lock is free, since the next run of the same folder starts and finishes."""
    _, outcomes, _, final = stopped_run
    for stop, _, _, output, _ in outcomes:
        port, pid = map(int, SERVER_LINE.search(output).groups())
        assert gone(pid), f"{stop.moment}: the temporary Prefect server (pid {pid}) is still running"
        assert not answers(port), f"{stop.moment}: something still answers on port {port}"
        assert "Finished in state Crashed" in output, f"{stop.moment}: the flow run's end was not recorded"
    assert "another run is using this run folder" not in final


@pytest.mark.slow
def test_a_run_resumed_after_each_stop_ends_as_the_uninterrupted_run(stopped_run, reference):
    run_dir, _, redone, _ = stopped_run
    assert redone == [], f"finished work was redone: {redone}"
    assert_same_scores(read_scores(run_dir), reference.scores)
    assert (run_dir / "submission.csv").read_bytes() == reference.submission
    assert temporaries(run_dir) == []


def test_a_prefect_api_url_that_does_not_answer_is_one_error_and_nothing_runs(demo_images, tmp_path):
    """Said before the run starts, with the URL and how to do without it; no run folder."""
    config = tiny_config(tmp_path / "tiny.yaml", demo_images)
    url = f"http://127.0.0.1:{free_port()}/api"
    result = subprocess.run(
        [sys.executable, "-m", "pipeline.cli", "run", "--config", str(config), "--run-dir", str(tmp_path / "run")],
        env={**os.environ, "PREFECT_API_URL": url}, cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 2, result.stdout + result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1, result.stderr
    expected = (f"error: PREFECT_API_URL is {url}, but no Prefect server answers there (REASON); start that server "
                "(e.g. `prefect server start --host 127.0.0.1`), or unset PREFECT_API_URL and `pvs run` starts a "
                "temporary server of its own")
    reasons = "(Connection refused|All connection attempts failed)"  # httpx's words vary with the resolver
    assert re.fullmatch(re.escape(expected).replace("REASON", reasons), errors[0]), errors[0]
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "run").exists()


def test_a_signal_that_python_swallows_in_a_finalizer_still_stops_the_command():
    """Python drops an exception raised inside `__del__` (TensorFlow's objects have many):
    a Ctrl-C handled there was lost and the run went on. The signal is sent again, and
    stops the block right after the finalizer."""

    class Finalized:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGINT)  # its handler runs here, inside __del__

    with pytest.raises(Interrupted) as stopped, stop_on_signals():
        Finalized()  # collected at once: __del__ runs and swallows the first Interrupted
        deadline = time.monotonic() + 10  # the block's work; the signal must cut it short
        while time.monotonic() < deadline:
            time.sleep(0.01)
    assert stopped.value.signal_number == signal.SIGINT
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # restored after the block
