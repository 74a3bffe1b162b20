"""Flow runs a person can tell apart in the Prefect UI, with honest states.

- `run_name`: each `finetune` flow run is named after its run folder and config file
  (`runs/demo · configs/demo.yaml`), not Prefect's random `merciful-whale`.
- `tag_flow_run`: tags `config:NAME`, `architecture:NAME`, `deployment:NAME` (a
  deployment's run) and `folder:DIGEST` (this host and local folder; see `folder_tag`).
- `mark_dead_runs`, once the run holds its run folder (`run_root.claim_run_root`): a flow
  run of the same folder that the API still shows Running is a dead one: the folder's
  lock is ours, and the kernel releases a lock only when its holder ends, so that run's
  process ended without reporting (killed, out of memory, the machine lost). It and its
  running task runs are marked Crashed, its state message naming the flow run that
  resumes it, and this run gets the tag `resumes:ID` (its first 8 digits).

A flow run's ID survives `prefect flow-run retry`, so a retried run never marks itself.
What fails here (an API that does not answer, a server that forgot the old run) costs a
warning, never the run.
"""

import hashlib
import logging
import socket
from pathlib import Path

from phases.config import PipelineConfig
from pipeline.storage.run_store import RunRoot

STALE_MESSAGE = "its process ended without reporting (killed or out of memory); flow run {name!r} ({id}) resumed its run folder"


def run_name() -> str:
    """The name of a `finetune` flow run, from its parameters: `RUN_DIR · CONFIG` (RUN_DIR as
    given, or its default runs/<config name>). Prefect calls it when the run starts."""
    from prefect.runtime import flow_run

    from pipeline.run_root import default_run_dir

    parameters = flow_run.parameters
    request = parameters.get("request")
    config = parameters.get("config_path") or "configs/demo.yaml"
    run_dir = getattr(request, "run_dir", None) or parameters.get("run_dir") or default_run_dir(config)
    return f"{run_dir} · {config}"


def attempt() -> str:
    """Which flow run and attempt is reporting, for artifacts' descriptions ("" outside one)."""
    from prefect.runtime import flow_run

    if flow_run.id is None:
        return ""
    return f"flow run {flow_run.name!r}, attempt {flow_run.run_count}"


def folder_tag(root: RunRoot) -> str:
    """`folder:DIGEST`: 12 hex digits of this host's name and the run's local folder. The
    workers of one multi-host run share a gs:// root but each has its own mirror, so one
    never takes another's live flow run for a dead one."""
    where = f"{socket.gethostname()}:{root.local.resolve()}"
    return "folder:" + hashlib.sha256(where.encode()).hexdigest()[:12]


def tag_flow_run(config: PipelineConfig, config_path: str | Path, root: RunRoot,
                 logger: logging.Logger | logging.LoggerAdapter) -> None:
    """Tag this flow run (see the module's docstring): before the run claims its folder, so
    that a run killed at any moment after can be found by the next."""
    from prefect.runtime import deployment, flow_run

    tags = {f"config:{Path(config_path).stem}", f"architecture:{config.model.architecture}", folder_tag(root)}
    if deployment.name:
        tags.add(f"deployment:{deployment.name}")
    _add_tags(tags, logger)


def mark_dead_runs(root: RunRoot, logger: logging.Logger | logging.LoggerAdapter) -> list[str]:
    """Once this run holds its folder: mark the folder's dead flow runs Crashed and tag this
    run `resumes:ID` (see the module's docstring); returns their IDs."""
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    if flow_run.id is None:  # not inside a flow run
        return []
    try:
        with get_client(sync_client=True) as client:
            crashed = _crash(client, flow_run.id, flow_run.name, folder_tag(root))
    except Exception as error:  # the API's states are a report: never fail the run for them
        logger.warning(f"could not mark the dead flow runs of this run folder Crashed: {error}")
        return []
    for crashed_id in crashed:
        logger.info(f"flow run {crashed_id} of this run folder was still marked Running though its process had "
                    "ended: marked Crashed; this run resumes it")
    _add_tags({f"resumes:{crashed_id[:8]}" for crashed_id in crashed}, logger)
    return crashed


def _add_tags(tags: set[str], logger: logging.Logger | logging.LoggerAdapter) -> None:
    from prefect.client.orchestration import get_client
    from prefect.runtime import flow_run

    if flow_run.id is None or not tags:
        return
    try:
        with get_client(sync_client=True) as client:
            current = client.read_flow_run(flow_run.id).tags
            client.update_flow_run(flow_run.id, tags=sorted(set(current) | tags))
    except Exception as error:
        logger.warning(f"could not tag this flow run {sorted(tags)}: {error}")


def _crash(client, own_id: str, own_name: str, tag: str) -> list[str]:
    """Mark Crashed the Running flow runs tagged `tag` other than `own_id`, and their Running
    task runs; their IDs."""
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterId,
        FlowRunFilterState,
        FlowRunFilterStateType,
        FlowRunFilterTags,
        TaskRunFilter,
        TaskRunFilterState,
        TaskRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.states import Crashed

    running = FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.RUNNING]))
    dead = [run for run in client.read_flow_runs(flow_run_filter=FlowRunFilter(tags=FlowRunFilterTags(all_=[tag]),
                                                                               state=running))
            if str(run.id) != str(own_id)]
    message = STALE_MESSAGE.format(name=own_name, id=own_id)
    for run in dead:
        tasks = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[run.id])),
            task_run_filter=TaskRunFilter(state=TaskRunFilterState(type=TaskRunFilterStateType(any_=[StateType.RUNNING]))))
        for task_run in tasks:
            client.set_task_run_state(task_run.id, Crashed(message=f"its flow run's {message}"), force=True)
        client.set_flow_run_state(run.id, Crashed(message=message), force=True)
    return [str(run.id) for run in dead]
