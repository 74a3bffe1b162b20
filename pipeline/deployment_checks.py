"""prefect.yaml's steps that check PVS_PROJECT_DIR, the checkout where workers run the flow.

A worker starts each run of a deployment in a temporary folder, and the deployment's pull
step moves it into the checkout. With PVS_PROJECT_DIR unset, `prefect deploy` used to
succeed and every run then crashed on a missing flows.py; so the same check runs twice: as
a build step of `prefect deploy` (no deployment is made with a folder no run can start in)
and as the pull step at each run's start (the folder may have moved since).
"""

from pathlib import Path
from uuid import UUID

from prefect.deployments.steps import set_working_directory
from prefect.logging.loggers import flow_run_logger
from prefect.runtime import flow_run

from tfrecords.errors import UserError

VARIABLE = "PVS_PROJECT_DIR"
PROJECT_FILES = ("flows.py", "prefect.yaml")
FIX = f"in the repository root run `export {VARIABLE}=$PWD`, then `prefect deploy --all`"


class ProjectDirError(UserError):
    """PVS_PROJECT_DIR does not name a checkout that a worker can run the flow in."""


def project_dir(directory: str, why: str) -> Path:
    """The checkout `directory` names (PVS_PROJECT_DIR as prefect.yaml rendered it: "" when
    unset), if it is an absolute path to a folder holding flows.py and prefect.yaml; else
    raises ProjectDirError, one line: what is wrong, `why` it matters, what to set."""
    path = Path(directory)
    if not directory:
        problem = f"{VARIABLE} is not set"
    elif not path.is_absolute():
        problem = f"{VARIABLE}={directory} is a relative path"
    elif not path.is_dir():
        problem = f"{VARIABLE}={directory} is not a folder"
    elif missing := [name for name in PROJECT_FILES if not (path / name).is_file()]:
        problem = f"{VARIABLE}={directory} has no {' or '.join(missing)}, so it is not the repository root"
    else:
        return path
    raise ProjectDirError(f"{problem}: {why}; {FIX}")


def check_project_dir(directory: str) -> None:
    """prefect.yaml's build step: stop `prefect deploy` before it makes deployments whose runs
    cannot start.

    Prefect prints an exception of a build step inside two tracebacks; SystemExit is the one
    it lets through, so `prefect deploy` ends with our line alone (status 1)."""
    try:
        project_dir(directory, "workers run the flow in the folder it names")
    except ProjectDirError as error:
        raise SystemExit(f"error: {error}") from None


def set_project_dir(directory: str) -> dict[str, str]:
    """prefect.yaml's pull step, at each run's start: the same check, then Prefect's
    `set_working_directory` into the checkout. Returns {"directory": the working directory}.

    Prefect shows a pull step's exception only in the worker's output, inside tracebacks;
    the line also goes to the flow run's log (the UI, `prefect flow-run logs`)."""
    try:
        path = project_dir(directory, "this deployment's runs start in that folder, as `prefect deploy` saw it")
    except ProjectDirError as error:
        if flow_run.id:
            flow_run_logger(flow_run_id=UUID(flow_run.id)).error(str(error))
        raise
    return set_working_directory(str(path))
