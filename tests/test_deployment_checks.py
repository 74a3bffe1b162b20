"""PVS_PROJECT_DIR, the checkout where workers run the flow (pipeline/deployment_checks.py):
`prefect deploy` refuses a missing or wrong one with one line, and so does a run's start.
Deploying with it set is tests/test_deployment.py's fixture."""

import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from conftest import REPO
from pipeline.deployment_checks import ProjectDirError, set_project_dir

PREFECT = str(Path(sys.executable).with_name("prefect"))
FIX = "in the repository root run `export PVS_PROJECT_DIR=$PWD`, then `prefect deploy --all`"


@pytest.fixture
def work_pools(prefect_server):
    """prefect.yaml's work pools (deploy checks them before its build steps), made for the
    test where missing and removed after, so that tests/test_deployment.py can create them."""
    made = []
    for pool in ("local-pool", "gpu-pool"):
        if httpx.get(f"{prefect_server}/work_pools/{pool}").status_code == 404:
            httpx.post(f"{prefect_server}/work_pools/", json={"name": pool, "type": "process"}).raise_for_status()
            made.append(pool)
    yield
    for pool in made:
        httpx.delete(f"{prefect_server}/work_pools/{pool}").raise_for_status()


def deploy(server: str, project_dir: str | None) -> subprocess.CompletedProcess:
    """`prefect --no-prompt deploy --all` from the repository root; PVS_PROJECT_DIR unset when None."""
    environment = {**os.environ, "PREFECT_API_URL": server}
    environment.pop("PVS_PROJECT_DIR", None)
    if project_dir is not None:
        environment["PVS_PROJECT_DIR"] = project_dir
    return subprocess.run([PREFECT, "--no-prompt", "deploy", "--all"], cwd=REPO, env=environment,
                          capture_output=True, text=True, timeout=300, check=False)


def deployments(server: str) -> int:
    return httpx.post(f"{server}/deployments/count", json={}).json()


def last_line(result: subprocess.CompletedProcess) -> str:
    return result.stderr.strip().splitlines()[-1]


@pytest.mark.slow
def test_deploy_without_project_dir_stops_with_one_line_naming_the_variable(prefect_server, work_pools):
    before = deployments(prefect_server)
    result = deploy(prefect_server, None)
    assert result.returncode != 0
    assert last_line(result) == f"error: PVS_PROJECT_DIR is not set: workers run the flow in the folder it names; {FIX}"
    assert "Traceback" not in result.stdout + result.stderr
    assert deployments(prefect_server) == before


@pytest.mark.slow
def test_deploy_with_a_folder_lacking_flows_py_stops_naming_the_folder(prefect_server, work_pools, tmp_path):
    (tmp_path / "prefect.yaml").write_text("name: elsewhere\n")
    before = deployments(prefect_server)
    result = deploy(prefect_server, str(tmp_path))
    assert result.returncode != 0
    assert last_line(result).startswith(f"error: PVS_PROJECT_DIR={tmp_path} has no flows.py, so it is not the "
                                        "repository root")
    assert deployments(prefect_server) == before


@pytest.mark.parametrize("recorded, problem", [
    ("", "PVS_PROJECT_DIR is not set"),
    ("checkout", "PVS_PROJECT_DIR=checkout is a relative path"),
    ("/moved/checkout", "PVS_PROJECT_DIR=/moved/checkout is not a folder"),
])
def test_run_start_in_an_unusable_checkout_fails_with_one_line_naming_it(recorded, problem, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ProjectDirError) as raised:
        set_project_dir(recorded)
    message = str(raised.value)
    assert message.startswith(f"{problem}: this deployment's runs start in that folder") and message.endswith(FIX)
    assert "\n" not in message
    assert Path.cwd() == tmp_path


def test_run_start_moves_into_the_checkout(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert set_project_dir(str(REPO)) == {"directory": str(REPO)}
    assert Path.cwd() == REPO
