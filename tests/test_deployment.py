"""The flow as users deploy it: a real Prefect server on 127.0.0.1, the work pools,
`prefect deploy --all` from prefect.yaml, a process worker, `prefect deployment run
--watch`, a phase made to fail, and both ways of resuming (running the deployment
again, `prefect flow-run retry`). Then the score chart, as a person sees it in the UI.
"""

import csv
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from browser import CHROMIUM
from conftest import PREFECT_HOME, REPO, stop
from test_run import write_config

from pipeline.reports import run_key
from pipeline.storage import RunRoot

PREFECT = str(Path(sys.executable).with_name("prefect"))
STEPS = ["ingest", "baseline", "top", "block7a", "full", "siamese", "embed", "extraction"]  # embed: one task per shard
TWO_EPOCHS_OF_FULL = json.dumps({"phases.full.epochs": 2})  # so that phase 3 has an epoch to resume from

pytestmark = pytest.mark.slow


def prefect(server, *arguments, timeout=900, check=True, environment=None):
    result = subprocess.run(
        [PREFECT, "--no-prompt", *arguments], cwd=REPO, capture_output=True, text=True, timeout=timeout,
        env={**os.environ, "PREFECT_API_URL": server, "PVS_PROJECT_DIR": str(REPO), **(environment or {})},
    )
    if check:
        assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope="module")
def worker(prefect_server, tmp_path_factory):
    """The pools and deployments of prefect.yaml, and a process worker on gpu-pool."""
    for pool in ("gpu-pool", "local-pool"):
        prefect(prefect_server, "work-pool", "create", pool, "--type", "process")
    prefect(prefect_server, "deploy", "--all")
    log = tmp_path_factory.mktemp("worker") / "worker.log"
    environment = {**os.environ, "PREFECT_API_URL": prefect_server, "PREFECT_HOME": str(PREFECT_HOME),
                   "PREFECT_WORKER_QUERY_SECONDS": "2"}
    with open(log, "w") as handle:
        process = subprocess.Popen([PREFECT, "worker", "start", "--pool", "gpu-pool", "--type", "process"], cwd=REPO,
                                   env=environment, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
    yield log
    stop(process)


def run_deployment(server, config, run_dir, fault=None):
    """`prefect deployment run 'finetune/gpu' --watch`; (flow run id, final state type)."""
    arguments = ["deployment", "run", "finetune/gpu", "--param", f"config_path={config}", "--param", f"run_dir={run_dir}",
                 "--param", f"overrides={TWO_EPOCHS_OF_FULL}", "--watch", "--watch-timeout", "800"]
    if fault:
        arguments += ["--job-variable", "env=" + json.dumps(fault)]
    result = prefect(server, *arguments, check=False)
    flow_run = re.search(r"UUID: ([0-9a-f-]{36})", result.stdout).group(1)
    return flow_run, flow_run_state(server, flow_run)


def flow_run_state(server, flow_run):
    return httpx.get(f"{server}/flow_runs/{flow_run}").json()["state"]["type"]


def task_states(server, flow_run):
    """{task run name: state name} of a flow run, the latest attempt of each name; the tasks
    embedding one image shard each ("embed test_index-00000", ...) as one "embed" entry: their
    state when they all share one, else every state seen."""
    runs = httpx.post(f"{server}/task_runs/filter", json={"flow_runs": {"id": {"any_": [flow_run]}}, "limit": 200}).json()
    runs.sort(key=lambda run: run["created"])
    states = {run["name"]: run["state"]["name"] for run in runs}
    shards = {name: state for name, state in states.items() if name.startswith("embed ")}
    folded = {name: state for name, state in states.items() if name not in shards}
    if shards:
        seen = sorted(set(shards.values()))
        folded["embed"] = seen[0] if len(seen) == 1 else "mixed: " + ", ".join(seen)
    return folded


def artifacts(server, flow_run):
    return httpx.post(f"{server}/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [flow_run]}}}).json()


def scores(run_dir):
    with open(Path(run_dir) / "scores.csv", newline="") as handle:
        return list(csv.DictReader(handle))


def assert_same_scores(resumed, uninterrupted):
    assert [(row["phase"], row["epoch"]) for row in resumed] == [(row["phase"], row["epoch"]) for row in uninterrupted]
    for got, expected in zip(resumed, uninterrupted):
        for column in ("loss", "mar_at_10", "map_at_10", "map_at_r", "test_mar_at_10"):
            if expected[column]:
                assert float(got[column]) == pytest.approx(float(expected[column]), abs=1e-5), (got["phase"], column)


@pytest.fixture(scope="module")
def uninterrupted(prefect_server, worker, ingested, tmp_path_factory):
    folder = tmp_path_factory.mktemp("deployed")
    config = write_config(folder / "tiny.yaml", ingested)
    flow_run, state = run_deployment(prefect_server, config, folder / "run")
    assert state == "COMPLETED", worker.read_text()[-4000:]
    return config, folder / "run", flow_run


def test_deployment_run_completes_with_every_artifact(prefect_server, uninterrupted):
    config, run_dir, flow_run = uninterrupted
    assert task_states(prefect_server, flow_run) == dict.fromkeys(STEPS, "Completed")
    rows = scores(run_dir)
    assert [(row["phase"], row["epoch"]) for row in rows] == [
        ("baseline", "0"), ("top", "1"), ("block7a", "1"), ("full", "1"), ("full", "2"), ("siamese", "1"), ("siamese", "2")]
    assert all(row["mar_at_10"] for row in rows)
    for number, phase in enumerate(["top", "block7a", "full", "siamese"], start=1):
        folder = next((run_dir / "phases").glob(f"{number:02d}-{phase}-*"))
        record = json.loads((folder / "result.json").read_text())
        assert (folder / record["files"]["model"]["path"]).is_file() and record["output"]["rows"]
    assert (run_dir / "submission.csv").is_file() and (run_dir / "scores.png").is_file()
    # Keys of this run folder; the report (chart, progress, verdict) is the flow run's only artifact of its
    # own, so the UI shows it first; each phase's table belongs to the phase's task run.
    key, found = run_key(RunRoot(run_dir)), artifacts(prefect_server, flow_run)
    assert {(f"{key}-scores-top", "table"), (f"{key}-scores-siamese", "table"), (f"{key}-score-chart", "markdown")} <= {
        (artifact["key"], artifact["type"]) for artifact in found}
    assert [artifact["key"] for artifact in found if artifact["task_run_id"] is None] == [f"{key}-score-chart"]
    report = next(artifact for artifact in found if artifact["key"] == f"{key}-score-chart")
    assert report["data"].startswith("# ") and "**100%** of 7 steps" in report["data"] and "best epoch: " in report["data"]
    assert "attempt 1" in report["description"] and str(run_dir.resolve()) in report["description"]
    run = httpx.get(f"{prefect_server}/flow_runs/{flow_run}").json()  # named and tagged, not `merciful-whale`
    assert run["name"] == f"{run_dir} · {config}" and {"deployment:gpu", "config:tiny"} <= set(run["tags"])


def test_failed_phase_resumes_from_its_checkpoint_by_running_the_deployment_again(prefect_server, uninterrupted, tmp_path):
    config, expected_dir, _ = uninterrupted
    run_dir = tmp_path / "run"
    failed, state = run_deployment(prefect_server, config, run_dir, fault={"PVS_FAIL_AFTER": "full:1"})
    assert state == "FAILED" and task_states(prefect_server, failed)["full"] == "Failed"
    # The failed run's report was updated after the epoch it scored before failing.
    report = next(a for a in artifacts(prefect_server, failed) if a["key"] == f"{run_key(RunRoot(run_dir))}-score-chart")
    assert "full: epoch 1 of 2 scored" in report["data"] and "score chart" in report["data"]

    resumed, state = run_deployment(prefect_server, config, run_dir)
    assert state == "COMPLETED"
    assert task_states(prefect_server, resumed) == {"ingest": "Cached", "baseline": "Cached", "top": "Cached",
                                                    "block7a": "Cached", "full": "Completed", "siamese": "Completed",
                                                    "embed": "Completed", "extraction": "Completed"}
    full = json.loads(next((run_dir / "phases").glob("03-full-*/result.json")).read_text())["output"]
    assert full["resumed_after_epoch"] == 1  # epoch 1 came from the checkpoint, not trained again
    assert_same_scores(scores(run_dir), scores(expected_dir))


def test_failed_phase_resumes_by_prefect_flow_run_retry(prefect_server, uninterrupted, tmp_path):
    config, expected_dir, _ = uninterrupted
    run_dir = tmp_path / "run"
    fault = {"PVS_FAIL_AFTER": "siamese:1", "PVS_FAIL_ONCE": str(tmp_path / "failed-once")}  # a transient failure
    flow_run, state = run_deployment(prefect_server, config, run_dir, fault=fault)
    assert state == "FAILED" and task_states(prefect_server, flow_run)["siamese"] == "Failed"

    prefect(prefect_server, "flow-run", "retry", flow_run)
    deadline = time.monotonic() + 800
    while (state := flow_run_state(prefect_server, flow_run)) not in ("COMPLETED", "FAILED", "CRASHED"):
        assert time.monotonic() < deadline, f"the retried flow run is still {state}"
        time.sleep(2)
    assert state == "COMPLETED"
    assert task_states(prefect_server, flow_run) == {**dict.fromkeys(STEPS[:5], "Cached"),
                                                     "siamese": "Completed", "embed": "Completed", "extraction": "Completed"}
    assert_same_scores(scores(run_dir), scores(expected_dir))


@pytest.mark.skipif(not CHROMIUM, reason="no Chromium here (.ci/run installs Debian's)")
def test_score_chart_renders_in_the_prefect_ui(prefect_server, uninterrupted, tmp_path):
    from browser import Browser

    _, run_dir, flow_run = uninterrupted
    chart = next(a for a in artifacts(prefect_server, flow_run) if a["key"] == f"{run_key(RunRoot(run_dir))}-score-chart")
    ui = prefect_server.removesuffix("/api")
    browser = Browser()
    try:
        browser.open(f"{ui}/artifacts/artifact/{chart['id']}")
        image = browser.wait_for(
            "(() => { const image = [...document.images].find(i => i.alt === 'score chart');"
            " if (!image || !image.complete) return null;"
            " const box = image.getBoundingClientRect();"
            " return {natural: image.naturalWidth, width: box.width, height: box.height}; })()"
        )
        browser.screenshot(tmp_path / "artifact.png")
        table = browser.evaluate("document.body.innerText")
    finally:
        browser.close()
    assert image is not None, f"the score chart image never finished loading; the page said: {table[:1500]}"
    assert image["natural"] > 100 and image["width"] > 100 and image["height"] > 50
    assert "best_mar_at_10" in table and "siamese" in table  # the leaderboard under the chart
    assert re.search(r"test mar_at_10: baseline [0-9.]+ -> final", table)  # the verdict, test scores included


@pytest.mark.skipif(not CHROMIUM, reason="no Chromium here (.ci/run installs Debian's)")
def test_run_form_describes_each_parameter_and_offers_the_library_configs_and_steps(prefect_server, worker, tmp_path):
    from browser import Browser

    deployment = httpx.get(f"{prefect_server}/deployments/name/finetune/gpu").json()
    fields = deployment["parameter_openapi_schema"]["properties"]
    assert list(fields) == ["config_path", "overrides", "run_dir", "force"]  # not `request`, pvs run's hand-off

    def plain(text: str) -> str:  # markdown as the page shows it: no backticks, spaces collapsed
        return " ".join(text.replace("`", "").split())

    # The page's text once every description shows (as plain() writes it), else None.
    described = ("(() => { const text = document.body.innerText.replace(/`/g, '').replace(/\\s+/g, ' ');"
                 f" return {json.dumps([plain(field['description']) for field in fields.values()])}"
                 ".every(description => text.includes(description)) && document.body.innerText; })()")
    ui = prefect_server.removesuffix("/api")
    browser = Browser()
    try:
        # The UI a deployment's link opens (v1): each field's tabs and choices (a native <select>).
        browser.open(f"{ui}/deployments/deployment/{deployment['id']}/run")
        v1 = browser.wait_for(
            "(() => { const fields = {}; for (const field of document.querySelectorAll('.schema-form-property')) {"
            " const label = field.querySelector('.schema-form-property__label'); if (!label) continue;"
            " fields[label.innerText.split(' ')[0]] = {"
            "  tabs: [...field.querySelectorAll('.p-button-group__button')].map(tab => tab.innerText.trim()),"
            "  choices: [...field.querySelectorAll('option')].map(option => option.textContent.trim())}; }"
            " return 'force' in fields && {fields, text: document.body.innerText}; })()"
        )
        v1_text = browser.wait_for(described)  # the descriptions are rendered (markdown) after the fields
        browser.screenshot(tmp_path / "run-form.png")
        # The UI Prefect's home page opens (v2): the choices are in a drop-down, listed once it is open.
        browser.open(f"{ui}/v2/deployments/deployment/{deployment['id']}/run")
        v2_text = browser.wait_for("document.querySelector('[aria-label=\"Select steps\"]') && document.body.innerText")
        v2_text = browser.wait_for(described) or v2_text
        v2_choices = {}
        for tab in ("library config", "steps"):
            browser.evaluate(f"document.querySelector('[aria-label=\"Select {tab}\"]').click()")
            v2_choices[tab] = browser.wait_for(
                "[...document.querySelectorAll('[role=option]')].map(option => option.innerText.trim())", timeout=10)
            browser.evaluate("document.activeElement.dispatchEvent("
                             "new KeyboardEvent('keydown', {key: 'Escape', bubbles: true}))")
    finally:
        browser.close()
    assert v1 and v2_text and all(v2_choices.values()), "the Run form never showed its fields and choices"
    for text in (v1_text or v1["text"], v2_text):
        assert 'Property is type "None"' not in text
        for name, field in fields.items():
            shown = plain(text)
            assert plain(field["description"]) in shown, (name, shown[shown.find(plain(field["description"])[:20]):][:300])
    configs = {"configs/demo.yaml", "configs/seed.yaml", "configs/recipe/no-block7a.yaml"}
    steps = {"ingest", "baseline", "top", "block7a", "full", "siamese", "extraction"}
    assert v1["fields"]["config_path"]["tabs"] == ["library config", "path"]
    assert configs <= set(v1["fields"]["config_path"]["choices"]) and configs <= set(v2_choices["library config"])
    assert v1["fields"]["force"]["tabs"] == ["steps", "other names"]
    assert steps <= set(v1["fields"]["force"]["choices"]) and steps <= set(v2_choices["steps"])
