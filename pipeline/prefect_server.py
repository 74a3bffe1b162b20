"""The Prefect API a `pvs run` reports to: the server PREFECT_API_URL names, or one of its own.

Prefect would start a temporary server by itself when PREFECT_API_URL is unset, but as a
child in the run's process group: Ctrl-C in a terminal reaches the server too, which dies
at once, and the run can no longer report how it ended (it hung for minutes, then printed
four tracebacks). A SIGTERM, which skips Prefect's exit hook, left it running for good.
`prefect_api` starts the same server (Prefect's app under uvicorn, UI off, on 127.0.0.1) in
a session of its own and stops it when the run ends, however it ends (`pipeline/stopping.py`
turns both signals into an exception, so this block's `finally` runs).

The server is Prefect's and local to the run: its telemetry is off (it runs on 127.0.0.1,
often on a closed network, and its heartbeat raced the run for the SQLite database,
printing a 70-line "database is locked" traceback), and what it prints goes to
SERVER_LOG in PREFECT_HOME, which the one line `pvs run` prints names. A server that
does not start says why: its last lines come with the error.
"""

import contextlib
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TextIO

from tfrecords.errors import UserError

# The server takes 3-10 s to start on 2 busy cores (its database migrations); Prefect's own
# default for its temporary server is 20 s, too tight when tests run beside it.
STARTUP_SECONDS = 90
STOP_SECONDS = 5  # then SIGKILL
SERVER_LOG = "temporary-server.log"  # in PREFECT_HOME, appended to by every temporary server
LAST_LINES = 20  # of its log, in the error when a server does not start


_started: set[subprocess.Popen] = set()  # temporary servers of this process still running


class PrefectServerError(UserError):
    """PREFECT_API_URL names a server that does not answer, or the temporary one did not start."""


def _nothing() -> None:
    return None


@contextlib.contextmanager
def prefect_api(meanwhile: Callable[[], None] = _nothing) -> Iterator[str]:
    """Yield the Prefect API URL of this run, with Prefect's settings pointing at it.

    With PREFECT_API_URL set, its server must answer (PrefectServerError otherwise, before
    anything runs). Without, a temporary server is started for the block and stopped at its
    end, whatever ends it. `meanwhile()` runs while the temporary server starts (the run's
    own imports: TensorFlow, the flow; seconds that would otherwise follow its start)."""
    from prefect.settings import PREFECT_API_URL

    configured = PREFECT_API_URL.value()
    if configured:
        check_answers(configured)
        meanwhile()
        yield configured
        return
    with temporary_server(meanwhile) as url:
        yield url


def check_answers(url: str, timeout: float = 10) -> None:
    """Raise PrefectServerError when nothing answers at `url` (refused, unknown host, timeout).
    Any HTTP answer counts, even an error status: Prefect Cloud's URLs have no /health."""
    import httpx

    try:
        httpx.get(f"{url.rstrip('/')}/health", timeout=timeout)
    except httpx.HTTPError as error:
        raise PrefectServerError(
            f"PREFECT_API_URL is {url}, but no Prefect server answers there ({_reason(error)}); start that "
            "server (e.g. `prefect server start --host 127.0.0.1`), or unset PREFECT_API_URL and `pvs run` "
            "starts a temporary server of its own"
        ) from None


def _reason(error: Exception) -> str:
    text = str(error) or type(error).__name__
    return text.removeprefix("[Errno 111] ")


@contextlib.contextmanager
def temporary_server(meanwhile: Callable[[], None] = _nothing) -> Iterator[str]:
    """A Prefect server on a free port of 127.0.0.1, in its own session, for the block;
    `meanwhile()` runs once it is started, before it is waited for."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    port = _free_port()
    url = f"http://127.0.0.1:{port}/api"
    log = _server_log()
    with log.open("a") as handle:
        handle.write(f"--- temporary Prefect server on port {port}, {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        start = handle.tell()
        process = _start(port, handle)
    _started.add(process)
    try:
        print(f"temporary Prefect server on http://127.0.0.1:{port} (pid {process.pid}, log {log}), stopped at the "
              "end of the run", file=sys.stderr, flush=True)
        meanwhile()
        _wait_until_up(process, url, log, start)
        with temporary_settings(updates={PREFECT_API_URL: url}):
            try:
                yield url
            finally:
                _send_logs()
    finally:
        stop(process)
        _started.discard(process)


def _server_log() -> Path:
    from prefect.settings import get_current_settings

    home = get_current_settings().home
    home.mkdir(parents=True, exist_ok=True)
    return home / SERVER_LOG


def _start(port: int, log: TextIO) -> subprocess.Popen:
    """Prefect's app under uvicorn, as Prefect starts its own temporary server, but with
    start_new_session: a terminal's Ctrl-C goes to the foreground process group only.
    Its stdout and stderr go to `log`."""
    import prefect
    from prefect.settings import get_current_settings

    environment = {
        **os.environ,
        "PREFECT_UI_ENABLED": "0",
        "PREFECT__SERVER_EPHEMERAL": "1",
        "PREFECT__SERVER_FINAL": "1",
        **get_current_settings().to_environment_variables(exclude_unset=True),
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
    }
    environment.pop("PREFECT_API_URL", None)
    command = [
        sys.executable, "-m", "uvicorn", "--app-dir", str(prefect.__module_path__.parent),
        "--factory", "prefect.server.api.server:create_app",
        "--host", "127.0.0.1", "--port", str(port), "--log-level", "error", "--lifespan", "on",
    ]
    return subprocess.Popen(command, env=environment, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                            start_new_session=True)


def _wait_until_up(process: subprocess.Popen, url: str, log: Path, start: int) -> None:
    """Return once the server at `url` answers; PrefectServerError with the last lines it
    wrote to `log` (from offset `start`) when it exits or does not answer in time."""
    import httpx

    deadline = time.monotonic() + STARTUP_SECONDS
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise PrefectServerError(f"the temporary Prefect server exited with status {process.returncode} while "
                                     f"starting{_last_lines(log, start)}\nset PREFECT_API_URL to a running server")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise PrefectServerError(f"the temporary Prefect server at {url} did not answer within {STARTUP_SECONDS} s"
                             f"{_last_lines(log, start)}\nthe machine may be overloaded: run again, or set "
                             "PREFECT_API_URL to a running server")


def _last_lines(log: Path, start: int) -> str:
    """The last LAST_LINES lines the server wrote to `log` after offset `start`, introduced."""
    with log.open(errors="replace") as handle:
        handle.seek(start)
        lines = handle.read().splitlines()[-LAST_LINES:]
    return f"; the end of its log ({log}):\n" + "\n".join(lines) if lines else f" (its log {log} is empty)"


def _send_logs() -> None:
    """Send the run's last log lines (how it ended) while the server is still up: Prefect
    would send them at exit, and retry for over a minute against a stopped server."""
    from prefect.logging.handlers import APILogHandler

    APILogHandler().flush()


def stop(process: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL after STOP_SECONDS; reaped either way."""
    if process.poll() is not None:
        return
    process.terminate()
    try:
        process.wait(timeout=STOP_SECONDS)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()


def kill_servers() -> None:
    """SIGKILL every temporary server still running, without waiting: for a command that
    must exit at once (a second Ctrl-C)."""
    for process in list(_started):
        if process.poll() is None:
            process.kill()


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]
