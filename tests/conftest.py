"""Shared fixtures: tiny generated datasets, the tiny pipeline config (`tiny_pipeline`) and
helpers to make images and CSVs."""

import atexit
import contextlib
import copy
import csv
import io
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Prefect keeps task results and its database under PREFECT_HOME: each test session gets
# its own, so no cache leaks between sessions (or into the user's ~/.prefect).
PREFECT_HOME = Path(tempfile.mkdtemp(prefix="pvs-test-prefect-"))
atexit.register(shutil.rmtree, PREFECT_HOME, True)
os.environ["PREFECT_HOME"] = str(PREFECT_HOME)
os.environ.pop("PREFECT_API_URL", None)  # never a server outside the tests
os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
REPO = Path(__file__).resolve().parents[1]

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import yaml  # noqa: E402
from PIL import Image  # noqa: E402

from pipeline.config_yaml import merge_configs  # noqa: E402
from tfrecords.demo_data import DemoOptions, write_demo_data  # noqa: E402
from tfrecords.ingest import ingest  # noqa: E402
from tfrecords.options import IngestOptions  # noqa: E402

# Small enough for 2 cores: 24 products x 4 shots of 48 px.
TINY_DEMO = DemoOptions(products=24, shots=4, categories=3, image_size=48, seed=7)
TINY_SHARD = 14_000  # bytes: several shards per split even for tiny data (11 train, 3 test index)

# The pipeline at test size, that every test running phases or `pvs run` starts from: the
# recipe's four phases (one epoch each, two margin steps) at 32 px from random weights,
# deterministic and eager (no tf.function tracing: ~2x faster at this size). A test says
# only what it varies, through `tiny_pipeline`; tests/test_demo.py, tests/test_phases.py
# and tests/test_distribute.py set `eager: false` to train in graph mode, as real runs do.
TINY_PIPELINE = {
    "data": {"source": "SOURCE", "image_size": 32, "batch_size": 16, "shuffle_buffer": 64},
    "model": {"weights": "none", "batch_norm_calibration_batches": 2},
    "phases": [
        {"name": "top", "kind": "classification", "unfreeze": "none", "learning_rate": 1e-2, "epochs": 1},
        {"name": "block7a", "kind": "classification", "unfreeze": "from", "unfreeze_from": "block7a",
         "learning_rate": 1e-3, "epochs": 1},
        {"name": "full", "kind": "classification", "unfreeze": "all", "learning_rate": 1e-3, "epochs": 1},
        {"name": "siamese", "kind": "siamese", "projection_dim": 16, "labels_per_batch": 6, "views_per_label": 3,
         "margin_schedule": [{"margin": 0.5, "learning_rate": 1e-3, "epochs": 1},
                             {"margin": 0.75, "learning_rate": 1e-2, "epochs": 1}]},
    ],
    "evaluation": {"batch_size": 64},
    "runtime": {"seed": 1, "deterministic": True, "eager": True},
}


def tiny_pipeline(source: str | Path, *changes: dict, phases: tuple[str, ...] | None = None) -> dict:
    """TINY_PIPELINE reading `source`, as a new dict (change it freely): each of `changes`
    merged onto it in turn as a config that `extends` it would be (sections key by key;
    phases by name: a phase's fields changed, a phase of another kind replaced, a new name
    appended), then only the phases named in `phases` kept, in their order (all when None).

    `tiny_pipeline(data, {"phases": [{"name": "top", "epochs": 2}]}, phases=("top",))` is the
    top phase alone, for two epochs.
    """
    raw = merge_configs(TINY_PIPELINE, {"data": {"source": str(source)}}, "tiny_pipeline")
    for change in changes:
        raw = merge_configs(raw, change, "tiny_pipeline")
    if phases is not None:
        raw["phases"] = [phase for phase in raw["phases"] if phase["name"] in phases]
    return copy.deepcopy(raw)


def write_yaml(path: Path, raw: dict) -> Path:
    """`raw` written to `path` as a YAML config; `path`."""
    path.write_text(yaml.safe_dump(raw))
    return path


def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (`make test` runs two workers), the tests of the reliability suite's
    reference run share one worker, so that the run is made once: every other session-scoped
    fixture (a Prefect server, the emulator, the tiny datasets) is cheap to make per worker."""
    if not config.pluginmanager.hasplugin("xdist"):
        return
    for item in items:
        if "reference" in getattr(item, "fixturenames", ()):
            item.add_marker(pytest.mark.xdist_group("reference"))


@pytest.fixture(scope="session")
def demo_images(tmp_path_factory) -> Path:
    """A generated image folder, SRC/<category>/<product>/<shot>.{jpg,png}."""
    folder = tmp_path_factory.mktemp("demo") / "images"
    write_demo_data(folder, TINY_DEMO)
    return folder


@pytest.fixture(scope="session")
def ingested(demo_images, tmp_path_factory) -> Path:
    """The demo images ingested into shards (read-only for tests: copy before changing)."""
    out = tmp_path_factory.mktemp("ingested") / "data"
    ingest(demo_images, out, IngestOptions(shard_size=TINY_SHARD, val_fraction=0.2, test_fraction=0.2, workers=1), progress=False)
    return out


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_http(url: str, process: subprocess.Popen, timeout: float = 120.0) -> None:
    import httpx

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args[:3]} exited with {process.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s")


def stop(process: subprocess.Popen) -> None:
    """Stop a process started in its own session, and everything it started."""
    import signal

    if process.poll() is None:
        os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def start_prefect_server(home: Path, port: int, log: Path) -> subprocess.Popen:
    """`prefect server start` on 127.0.0.1:`port` with its database under `home`, in its
    own session (for `stop`); returns once its API answers. Its log goes to `log`."""
    api = f"http://127.0.0.1:{port}/api"
    # The UI's pages call the API at PREFECT_UI_API_URL (default port 4200, not ours).
    environment = {**os.environ, "PREFECT_HOME": str(home), "PREFECT_SERVER_API_HOST": "127.0.0.1",
                   "PREFECT_UI_API_URL": api}
    with open(log, "a") as handle:
        process = subprocess.Popen(
            [str(Path(sys.executable).with_name("prefect")), "server", "start", "--host", "127.0.0.1", "--port", str(port)],
            env=environment, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True,
        )
    try:
        wait_for_http(f"{api}/health", process)
    except BaseException:
        stop(process)
        raise
    return process


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """A real Prefect server on 127.0.0.1 for this session, with the session's
    PREFECT_HOME; yields its API URL. Its log is in the fixture's folder."""
    port = free_port()
    process = start_prefect_server(PREFECT_HOME, port, tmp_path_factory.mktemp("prefect-server") / "server.log")
    try:
        yield f"http://127.0.0.1:{port}/api"
    finally:
        stop(process)


def states(output: str) -> dict[str, str]:
    """{task run name: final state name} from Prefect's log lines."""
    return dict(re.findall(r"Task run '([a-z0-9_]+)' - Finished in state (\w+)", output))


def image_bytes(kind: str = "JPEG", mode: str = "RGB", size=(24, 16), colour=(200, 30, 60)) -> bytes:
    """Encoded bytes of a small test image with a gradient, so flips and rotations differ."""
    height, width = size[1], size[0]
    ramp = np.linspace(0, 255, width * height, dtype=np.float32).reshape(height, width)
    pixels = np.stack([ramp, np.full_like(ramp, colour[1]), 255 - ramp], axis=-1).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB").convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=kind)
    return buffer.getvalue()


def write_image(path: Path, data: bytes | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(image_bytes() if data is None else data)
    return path


def write_csv(path: Path, rows: list[dict], columns: list[str] | None = None) -> Path:
    columns = columns or list(rows[0])
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)
    return path


def read_records(data_dir: Path, split: str) -> list[dict]:
    """Every record of a split as written, parsed by TensorFlow (no decoding)."""
    import tensorflow as tf

    from tfrecords.reader import parse_record, shard_paths

    dataset = tf.data.TFRecordDataset(shard_paths(data_dir, split)).map(parse_record)
    return list(dataset.as_numpy_iterator())


@dataclass(frozen=True)
class StorageServer:
    """An object store on 127.0.0.1 for the tests: its scheme (gs, s3), its endpoint and a
    bucket made for the tests."""

    scheme: str
    endpoint: str
    bucket: str

    def url(self, *parts: str) -> str:
        return "/".join([f"{self.scheme}://{self.bucket}", *parts])


@contextlib.contextmanager
def serving(command: list[str], ready: str, log: Path, **environment: str | None) -> Iterator[subprocess.Popen]:
    """Run the server `command` in its own session while the block runs, once `ready` (a URL)
    answers, with `environment` set here (None: unset), and so in the processes the tests start."""
    with open(log, "w") as handle:
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, start_new_session=True)
    saved = {name: os.environ.get(name) for name in environment}
    try:
        wait_for_http(ready, process, timeout=60)
        _set_environment(environment)
        yield process
    finally:
        stop(process)
        _set_environment(saved)


def _set_environment(values: dict[str, str | None]) -> None:
    for name, value in values.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture(scope="session")
def storage_emulator(tmp_path_factory) -> Iterator[StorageServer]:
    """`gcp-storage-emulator` (from PyPI) on 127.0.0.1 for this session, in memory, with the
    bucket `pvs-test`. STORAGE_EMULATOR_HOST points gcsfs at it, here and in the processes
    the tests start; recent gcsfs needs GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT=false to talk to it."""
    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    command = [str(Path(sys.executable).with_name("gcp-storage-emulator")), "start", "--host", "127.0.0.1",
               "--port", str(port), "--in-memory", "--default-bucket", "pvs-test"]
    log = tmp_path_factory.mktemp("storage-emulator") / "emulator.log"
    with serving(command, f"{endpoint}/storage/v1/b/pvs-test", log,
                 STORAGE_EMULATOR_HOST=endpoint, GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT="false"):
        yield StorageServer("gs", endpoint, "pvs-test")


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory) -> Iterator[StorageServer]:
    """moto's S3 server (`moto_server`, from PyPI) on 127.0.0.1 for this session, in memory,
    with the bucket `pvs-test`. The standard AWS settings point s3fs at it, here and in the
    processes the tests start: AWS_ENDPOINT_URL_S3, test credentials (moto takes any) and
    a region; no profile, config file or instance metadata, so nothing else is asked."""
    import fsspec

    port = free_port()
    endpoint = f"http://127.0.0.1:{port}"
    folder = tmp_path_factory.mktemp("s3-server")
    command = [str(Path(sys.executable).with_name("moto_server")), "-H", "127.0.0.1", "-p", str(port)]
    nowhere = str(folder / "no-aws-config")
    with serving(command, f"{endpoint}/moto-api/data.json", folder / "server.log",
                 AWS_ENDPOINT_URL_S3=endpoint, AWS_ENDPOINT_URL=None, AWS_ACCESS_KEY_ID="pvs-test",
                 AWS_SECRET_ACCESS_KEY="pvs-test", AWS_SESSION_TOKEN=None, AWS_DEFAULT_REGION="us-east-1",
                 AWS_PROFILE=None, AWS_CONFIG_FILE=nowhere, AWS_SHARED_CREDENTIALS_FILE=nowhere,
                 AWS_EC2_METADATA_DISABLED="true"):
        fs = fsspec.filesystem("s3")
        fs.mkdir("pvs-test")
        yield StorageServer("s3", endpoint, "pvs-test")
        fs.clear_instance_cache()  # its client knows this endpoint only


@pytest.fixture(params=["gs", "s3"])
def bucket(request) -> StorageServer:
    """A bucket on each storage server in turn: a test taking it runs for gs:// and for s3://."""
    return request.getfixturevalue({"gs": "storage_emulator", "s3": "s3_server"}[request.param])
