"""The Prefect server goes away in the middle of a run and comes back: the run finishes
or is resumed, with no finished step or epoch lost, and ends with the same scores."""

import time

import pytest

from conftest import free_port, start_prefect_server, stop
from reliability.conftest import (
    assert_same_scores,
    finished_files,
    read_scores,
    rewritten,
    run_to_end,
    start_run,
    tiny_config,
    wait_for,
)

OUTAGE = 10  # seconds without a server


@pytest.mark.slow
def test_run_survives_the_prefect_server_stopping_and_restarting(reference, demo_images, tmp_path):
    port = free_port()
    api = f"http://127.0.0.1:{port}/api"
    server = start_prefect_server(tmp_path / "server-home", port, tmp_path / "server.log")
    config = tiny_config(tmp_path / "tiny.yaml", demo_images)
    run_dir = tmp_path / "run"
    try:
        run = start_run(config, run_dir, api, tmp_path / "run.log")
        wait_for(lambda: list(run_dir.glob("phases/02-block7a-*/checkpoints/epoch-0000.json")), run,
                 what="phase 2's first epoch")
        stop(server)
        before = finished_files(run_dir)
        time.sleep(OUTAGE)
        server = start_prefect_server(tmp_path / "server-home", port, tmp_path / "server.log")
        code = run.wait()
        if code != 0:  # the run gave up while the server was away: the same command resumes it
            print(f"the run ended with {code} during the outage:\n{run.output()[-2000:]}")
            run_to_end(config, run_dir, api, tmp_path / "resumed.log")
        assert rewritten(before, run_dir) == [], "finished work was redone"
        assert_same_scores(read_scores(run_dir), reference.scores)
        assert (run_dir / "submission.csv").read_bytes() == reference.submission
    finally:
        stop(server)
