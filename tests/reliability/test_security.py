"""Security: saved models never run code, a run writes only where it should, credentials
never reach logs, artifacts or files, and the documented Prefect server listens on 127.0.0.1.

Configs are read with a safe YAML loader: `test_bad_input.py` (python tags through `pvs run`)
and `tests/test_config.py::test_yaml_is_read_safely`.

The end-to-end cases share one tiny `pvs run` (`tiny_run`, ~60 s on 2 cores) with HOME,
TMPDIR, XDG_CACHE_HOME, PREFECT_HOME and the working folder pointing to fresh folders,
and a service-account path in GOOGLE_APPLICATION_CREDENTIALS. No address but 127.0.0.1
is ever contacted: example.invalid appears only in refused configs.
"""

import fnmatch
import io
import json
import logging
import os
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from conftest import REPO

from phases.errors import ConfigError, UnsafeModelError
from pipeline.redaction import CREDENTIALS_VARIABLE, RedactingFilter, install_log_redaction, redact
from reliability.conftest import tiny_config
from tfrecords.demo_data import DemoOptions, write_demo_data
from tfrecords.files import sha256_file

SERVICE_ACCOUNT = "/some/path/sa-SECRET.json"
URL_WITH_PASSWORD = "https://user:SECRETTOKEN@example.invalid/products.csv"
URL_WITH_TOKEN = "https://example.invalid/products.csv?token=SECRETTOKEN"
# What a run writes outside its run root, by design (README, "What a run writes outside its
# folder"). A new entry here is a decision: document it there too.
DOCUMENTED_WRITES = {
    "PREFECT_HOME/storage/*": "Prefect's cached task results (small JSON)",
    "HOME/.keras/keras.json": "Keras' settings, written on import when missing (KERAS_HOME moves it)",
    "XDG_CACHE_HOME/matplotlib/fontlist-v*.json": "Matplotlib's font cache (MPLCONFIGDIR moves it)",
    "TMPDIR/__pycache__/__autograph_generated_file*.pyc": "TensorFlow autograph's compiled code (its sources are deleted)",
}
FRESH_FOLDERS = ("HOME", "TMPDIR", "XDG_CACHE_HOME", "PREFECT_HOME", "CWD")
# Variables that would move a tool's files away from HOME, or stop them, and so hide them
# from the listing (PYTHONDONTWRITEBYTECODE stops autograph's .pyc files).
HIDING = ("XDG_CONFIG_HOME", "XDG_DATA_HOME", "XDG_STATE_HOME", "MPLCONFIGDIR", "KERAS_HOME", "TFHUB_CACHE_DIR",
          "PYTHONDONTWRITEBYTECODE", "PYTHONPYCACHEPREFIX")
TWO_PHASES = {"phases": [  # one epoch each: the flow's every kind of step, as quickly as possible
    {"name": "top", "epochs": 1},
    {"name": "siamese", "projection_dim": 8, "labels_per_batch": 4, "views_per_label": 2,
     "margin_schedule": [{"margin": 0.5, "learning_rate": 1e-3, "epochs": 1}]},
]}


# --- helpers ---------------------------------------------------------------------------

def pvs(*arguments: str, env: dict | None = None, cwd: Path | None = None) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "pipeline.cli", *arguments]
    return subprocess.run(command, check=False, capture_output=True, text=True, env=env, cwd=cwd, timeout=600)


def files_under(folders: dict[str, Path]) -> dict[str, tuple[int, int]]:
    """'NAME/relative/path' -> (size, mtime) of every file under each named folder."""
    found = {}
    for name, folder in folders.items():
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                found[f"{name}/{path.relative_to(folder).as_posix()}"] = (path.stat().st_size, path.stat().st_mtime_ns)
    return found


def model_with_code(path: Path, marker: Path) -> Path:
    """A `.keras` model with a Lambda layer whose Python function creates `marker` when run."""
    import keras

    inputs = keras.Input((4,))
    touch = lambda x, marker=str(marker): (open(marker, "w").close(), x)[1]  # a lambda: Keras saves its bytecode
    keras.Model(inputs, keras.layers.Lambda(touch, name="code")(inputs)).save(path)
    marker.unlink()  # building the model ran the function once, here; loading it must not
    return path


def write_checkpoint(folder: Path, epoch: int, model: Path) -> None:
    """Make `model` the newest checkpoint of a phase, with the json that vouches for it."""
    name = f"epoch-{epoch:04d}.keras"
    (folder / name).write_bytes(model.read_bytes())
    state = {"epoch": epoch, "model": name, "sha256": sha256_file(folder / name), "random": {}, "rows": []}
    (folder / f"epoch-{epoch:04d}.json").write_text(json.dumps(state))


def server_records(api: str, flow_run_id: str) -> dict[str, list]:
    """Everything the Prefect server keeps of one flow run: the run, its task runs, logs, artifacts."""
    with httpx.Client(base_url=api, timeout=30) as client:
        runs = client.post("/flow_runs/filter", json={"flow_runs": {"id": {"any_": [flow_run_id]}}}).json()
        assert len(runs) == 1, runs
        run_id = runs[0]["id"]
        logs: list = []
        while page := client.post("/logs/filter", json={"logs": {"flow_run_id": {"any_": [run_id]}},
                                                         "limit": 200, "offset": len(logs)}).json():
            logs += page
        artifacts = client.post("/artifacts/filter", json={"artifacts": {"flow_run_id": {"any_": [run_id]}}}).json()
        task_runs = client.post("/task_runs/filter", json={"flow_runs": {"id": {"any_": [run_id]}}}).json()
    return {"flow run": runs, "task runs": task_runs, "logs": logs, "artifacts": artifacts}


# --- 1. YAML: covered by test_bad_input.py (a python tag is refused through `pvs run`) ------


# --- 2. saved models load in Keras safe mode ----------------------------------------------

def test_a_final_model_holding_code_is_refused_without_running_it(tmp_path):
    from phases.checkpoints import load_model

    marker = tmp_path / "ran"
    model = model_with_code(tmp_path / "model.keras", marker)
    with pytest.raises(UnsafeModelError, match=rf"{re.escape(str(model))}: holds code .* safe mode refuses to run"):
        load_model(model, sha256_file(model), compile=False)
    assert not marker.exists()


def test_a_checkpoint_holding_code_is_refused_without_running_it(tmp_path):
    from phases.checkpoints import latest_checkpoint

    marker = tmp_path / "ran"
    write_checkpoint(tmp_path, 3, model_with_code(tmp_path / "model.keras", marker))
    with pytest.raises(UnsafeModelError, match=r"epoch-0003\.keras: holds code"):
        latest_checkpoint(tmp_path)
    assert not marker.exists()


def test_weights_from_a_model_holding_code_are_refused_without_running_it(tmp_path):
    """`model.weights` is read with `load_weights`, which takes only the weights of a
    `.keras` file and never builds its layers: the code is not even looked at."""
    from phases.config import ModelConfig
    from phases.model import build_backbone

    marker = tmp_path / "ran"
    model = model_with_code(tmp_path / "model.keras", marker)
    with pytest.raises(ConfigError, match=rf"model.weights: {re.escape(str(model))} does not fit EfficientNetB0"):
        build_backbone(ModelConfig(weights=str(model)), image_size=32)
    assert not marker.exists()


# --- 4. credentials are masked ------------------------------------------------------------

@pytest.mark.parametrize(("text", "masked"), [
    (URL_WITH_PASSWORD, "https://user:***@example.invalid/products.csv"),
    ("https:/user:SECRETTOKEN@example.invalid/x.csv: no such file", "https:/user:***@example.invalid/x.csv: no such file"),
    ("postgresql://admin:p%40ss:w0rd@db:5432/runs", "postgresql://admin:***@db:5432/runs"),
    ("SourceError('https://example.invalid/x.csv?token=SECRETTOKEN')", "SourceError('https://example.invalid/x.csv?token=***')"),
    ("https://h/x?access_token=SECRETTOKEN#part", "https://h/x?access_token=***#part"),
    ("gs://b/x?X-Goog-Algorithm=GOOG4-RSA-SHA256&X-Goog-Credential=sa%40p.iam&X-Goog-Signature=5ECRE7&page=2",
     "gs://b/x?X-Goog-Algorithm=GOOG4-RSA-SHA256&X-Goog-Credential=***&X-Goog-Signature=***&page=2"),
    ("https://a.blob.core.windows.net/c/x?sv=2022&sig=SECRETTOKEN&se=2030", "https://a.blob.core.windows.net/c/x?sv=2022&sig=***&se=2030"),
    ("https://h/x?api_key=K1&secret=S2&password=P3&key=K4", "https://h/x?api_key=***&secret=***&password=***&key=***"),
])
def test_credentials_in_text_are_masked(text, masked):
    assert redact(text) == masked
    assert redact(masked) == masked


@pytest.mark.parametrize("text", [
    "top epoch 1 scored: loss 1.1050, accuracy 0.4000, mar_at_10 1.0000",
    "error: /data/images: no such file or folder; give a CSV file or an image folder",
    "see https://example.invalid/a/b.csv?page=2&sort=asc&design=blue at 12:30, mail user@example.invalid",
    "ssh://git@example.invalid/repo.git and gs://bucket/products.csv and C:/Users/x:y",
    "key: value; token count 3; password: see the docs",
])
def test_ordinary_text_is_left_as_it_is(text, monkeypatch):
    monkeypatch.setenv(CREDENTIALS_VARIABLE, SERVICE_ACCOUNT)
    assert redact(text) == text


def test_the_service_account_path_is_masked_wherever_it_appears(monkeypatch):
    monkeypatch.setenv(CREDENTIALS_VARIABLE, SERVICE_ACCOUNT)
    assert redact(f"cannot open {SERVICE_ACCOUNT}: denied") == f"cannot open ${CREDENTIALS_VARIABLE}: denied"


def test_a_log_record_is_masked_in_its_message_arguments_and_traceback(monkeypatch):
    monkeypatch.setenv(CREDENTIALS_VARIABLE, SERVICE_ACCOUNT)
    logger, stream = logging.getLogger("pvs.test.redaction"), io.StringIO()
    handler, masking = logging.StreamHandler(stream), RedactingFilter()
    logger.addHandler(handler)
    logger.addFilter(masking)
    try:
        try:
            raise OSError(f"{URL_WITH_TOKEN} and {SERVICE_ACCOUNT}")
        except OSError:
            logger.exception("cannot read %s", URL_WITH_PASSWORD)
    finally:
        logger.removeHandler(handler)
        logger.removeFilter(masking)
    logged = stream.getvalue()
    assert "cannot read https://user:***@example.invalid/products.csv" in logged
    assert "Traceback" in logged and "?token=***" in logged and f"${CREDENTIALS_VARIABLE}" in logged
    assert "SECRET" not in logged


@pytest.mark.slow
def test_a_prefect_run_logs_to_the_server_masked(prefect_server):
    from prefect import flow, get_run_logger
    from prefect.logging.handlers import APILogHandler
    from prefect.settings import PREFECT_API_URL, temporary_settings

    @flow(name="redaction-check")
    def leaky():
        get_run_logger().info("reading %s", URL_WITH_PASSWORD)
        raise ValueError(URL_WITH_TOKEN)

    install_log_redaction()
    with temporary_settings({PREFECT_API_URL: prefect_server}):
        state = leaky(return_state=True)
        APILogHandler().flush()
    with httpx.Client(base_url=prefect_server, timeout=30) as client:
        logs = client.post("/logs/filter", json={"logs": {"flow_run_id": {"any_": [str(state.state_details.flow_run_id)]}}}).json()
    messages = "\n".join(log["message"] for log in logs)
    assert "reading https://user:***@example.invalid/products.csv" in messages and "?token=***" in messages
    assert "SECRETTOKEN" not in messages


@pytest.mark.slow
def test_importing_the_flow_installs_log_redaction_on_prefect_run_loggers():
    """For `pvs run` and deployments alike (a worker imports flows.py). In a fresh process:
    this one has installed the filter already."""
    check = ("import logging, flows; from pipeline.redaction import RedactingFilter; "
             "print([name for name in ('prefect.flow_runs', 'prefect.task_runs') "
             "if any(isinstance(f, RedactingFilter) for f in logging.getLogger(name).filters)])")
    result = subprocess.run([sys.executable, "-c", check], check=False, capture_output=True, text=True, cwd=REPO, timeout=300)
    assert result.stdout.strip().splitlines()[-1:] == ["['prefect.flow_runs', 'prefect.task_runs']"], result.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("source", [URL_WITH_PASSWORD, URL_WITH_TOKEN])
def test_a_source_holding_a_credential_is_refused_masked_before_prefect_starts(source, tmp_path, prefect_server):
    config = tiny_config(tmp_path / "tiny.yaml", tmp_path / "images")
    result = pvs("run", "--config", str(config), "--run-dir", str(tmp_path / "run"), "--set", f"data.source={source}",
                 env={**os.environ, "PREFECT_API_URL": prefect_server})
    printed = result.stdout + result.stderr
    assert result.returncode == 2, printed[-3000:]
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {config}: data.source: {redact(source)} holds a credential; runs record their config, so "
        "credentials never go in a config or --set: give the address without it and let the storage client "
        "find them (e.g. GOOGLE_APPLICATION_CREDENTIALS for gs://)"
    )
    assert "SECRETTOKEN" not in printed
    assert "Beginning flow run" not in printed and not (tmp_path / "run").exists()  # refused before Prefect and the run root


# --- 3 and 4 end to end: one tiny run in fresh folders ---------------------------------

@dataclass
class TinyRun:
    root: Path
    environment: dict
    folders: dict[str, Path]
    config: Path
    source: Path
    run_dir: Path
    printed: str
    written: list[str]  # files created outside the run root, as FOLDER/relative/path
    source_before: dict
    config_folder_before: dict


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, prefect_server) -> TinyRun:
    root = tmp_path_factory.mktemp("security-run")
    source = root / "images"
    write_demo_data(source, DemoOptions(products=12, shots=4, categories=2, image_size=32, seed=0))
    (root / "config").mkdir()
    config = tiny_config(root / "config" / "tiny.yaml", source, TWO_PHASES, phases=("top", "siamese"))
    folders = {name: root / name.lower() for name in FRESH_FOLDERS}
    for folder in folders.values():
        folder.mkdir()
    environment = {name: value for name, value in os.environ.items() if name not in HIDING}
    environment.update({name: str(folders[name]) for name in FRESH_FOLDERS if name != "CWD"})
    environment.update(PREFECT_API_URL=prefect_server, PYTHONPATH=str(REPO), **{CREDENTIALS_VARIABLE: SERVICE_ACCOUNT})
    source_before, config_folder_before = files_under({"SOURCE": source}), files_under({"CONFIG": config.parent})
    run_dir = root / "run"
    result = pvs("run", "--config", str(config), "--run-dir", str(run_dir), env=environment, cwd=folders["CWD"])
    printed = result.stdout + result.stderr
    assert result.returncode == 0, printed[-4000:]
    written = sorted(files_under(folders))
    print("files a run wrote outside its run root:", *written, sep="\n  ")
    return TinyRun(root, environment, folders, config, source, run_dir, printed, written, source_before, config_folder_before)


@pytest.mark.slow
def test_a_run_writes_only_under_its_run_root_prefect_home_and_documented_tool_caches(tiny_run):
    assert files_under({"SOURCE": tiny_run.source}) == tiny_run.source_before, "the run wrote into its source"
    assert files_under({"CONFIG": tiny_run.config.parent}) == tiny_run.config_folder_before
    assert not any(path.startswith("CWD/") for path in tiny_run.written), tiny_run.written
    undocumented = [path for path in tiny_run.written if not any(fnmatch.fnmatch(path, d) for d in DOCUMENTED_WRITES)]
    assert not undocumented, f"written outside the run root and not documented: {undocumented}"
    assert any(path.startswith("PREFECT_HOME/storage/") for path in tiny_run.written)  # the listing sees the run


@pytest.mark.slow
def test_a_service_account_path_reaches_no_output_file_log_or_artifact(tiny_run, prefect_server):
    secret = "sa-SECRET"
    assert secret not in tiny_run.printed
    for folder in (tiny_run.run_dir, tiny_run.folders["PREFECT_HOME"]):
        leaking = [path for path in folder.rglob("*") if path.is_file() and secret.encode() in path.read_bytes()]
        assert not leaking, leaking
    flow_run_id = re.search(r"/runs/flow-run/([0-9a-f-]{36})", tiny_run.printed).group(1)  # "View at ..."
    records = server_records(prefect_server, flow_run_id)
    assert any("siamese epoch 1 scored" in log["message"] for log in records["logs"]) and records["artifacts"]
    for kind, items in records.items():
        assert secret not in json.dumps(items), kind


@pytest.mark.slow
def test_pvs_run_refuses_a_checkpoint_holding_code_naming_it_without_running_it(tiny_run):
    """Runs last: it plants a checkpoint in the shared run, and voids phase top's record so
    that the phase resumes from it."""
    top = next((tiny_run.run_dir / "phases").glob("01-top-*"))
    marker = tiny_run.root / "lambda-ran"
    write_checkpoint(top / "checkpoints", 1, model_with_code(tiny_run.root / "code.keras", marker))
    (top / "result.json").unlink()
    result = pvs("run", "--config", str(tiny_run.config), "--run-dir", str(tiny_run.run_dir),
                 env=tiny_run.environment, cwd=tiny_run.folders["CWD"])
    assert result.returncode == 2, (result.stdout + result.stderr)[-4000:]
    assert result.stderr.strip().splitlines()[-1] == (
        f"error: {top / 'checkpoints' / 'epoch-0001.keras'}: holds code (a Lambda layer or a function Keras does "
        "not know) that Keras safe mode refuses to run; it was not loaded and none of it ran. This pipeline's "
        "models hold no code: if you did not make this file, delete it, and the step that wrote it runs again"
    )
    assert "Requested the deserialization" not in result.stdout + result.stderr  # Keras' own error stays inside
    assert not marker.exists()


# --- 5. the documented Prefect server binds to 127.0.0.1 -------------------------------

SKIPPED_FOLDERS = {".git", ".venv", "runs", "__pycache__", ".pytest_cache", ".ruff_cache", "product_visual_search.egg-info"}
SERVER_START = re.compile(r"prefect\b.*?\bserver\W{1,4}start\b(?P<options>.*)")


def project_text_files():
    """Docs, code, configs and scripts of the repository (not this file, which names the pattern)."""
    for folder, subfolders, names in os.walk(REPO):
        subfolders[:] = [name for name in subfolders if name not in SKIPPED_FOLDERS]
        for name in names:
            path = Path(folder) / name
            wanted = path.suffix in {".md", ".py", ".yaml", ".yml", ".toml", ".sh"} or name == "Makefile"
            if (wanted or path.parent.name == ".ci") and path != Path(__file__):
                yield path


def test_every_prefect_server_in_the_docs_and_tests_binds_to_localhost():
    """Each command has `--host 127.0.0.1`; a mention in prose (`prefect server start` in
    backticks) says 127.0.0.1 on its line."""
    found, wrong = [], []
    for path in project_text_files():
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), start=1):
            if match := SERVER_START.search(line):
                options = " ".join(re.sub(r"[\"'`,\[\]]", " ", match.group("options")).split())
                prose = match.group("options").startswith("`") and "127.0.0.1" in line
                found.append(f"{path.relative_to(REPO)}:{number}: {line.strip()}")
                if not (prose or "--host 127.0.0.1" in options):
                    wrong.append(found[-1])
    print("prefect server start:", *found, sep="\n  ")
    assert any(where.startswith("README.md:") for where in found)
    assert not wrong, wrong
