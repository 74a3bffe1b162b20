"""Known, harmless lines of TensorFlow's C++ logging, dropped from a process's stderr.

TensorFlow's C++ writes straight to file descriptor 2, past Python's logging: at import
(absl's notice, oneDNN's, no CUDA driver) and from tf.data's graph rewrites. Most come
before absl is initialised, so TF_CPP_MIN_LOG_LEVEL does not hide them (`I0000 ...`
lines print at level 3 too), and the rest are at ERROR level: raising the level would
hide real errors as well. So `filter_stderr()` sends fd 2 through a relay that drops the
lines of KNOWN_BENIGN, each matched on its message text, and passes every other byte on
unchanged, in order, line by line. Installed by `pvs` (`pipeline/cli.py`) and in a flow
run a Prefect worker starts (`pipeline/logs.py`), never in pytest's own process.

The relay is a small process of its own (stdlib only), not a thread: a C++ fatal error
(a failed CHECK, LOG(FATAL)) writes its reason and aborts at once, and a thread would
die with it, the reason still unread in the pipe. The relay drains until every writer
has closed it, whatever ended them, and runs in a session of its own (a terminal's
Ctrl-C does not reach it). faulthandler writes into the same pipe, so a crash's Python
traceback comes after what preceded it. When stderr is a terminal the relay reads a
pseudo-terminal, so Prefect's colours and progress bars stay as they were (resizing
the window later is not passed on). At a normal exit fd 2 is restored and the relay is
waited for (DRAIN_SECONDS at most), so the last lines are out before the shell's prompt.
Cost: one ~10 MB process, and each stderr line passes one more pipe.

Run as a script, this file is the relay: stdin -> stdout, filtered.
"""

import os
import re
import select
import sys

DRAIN_SECONDS = 5  # at exit; longer only when a process that inherited stderr still runs
# A line that no newline has ended for this long is passed on as it is (a progress bar, a
# prompt): TensorFlow writes each of its lines whole, in one write.
PARTIAL_LINE_SECONDS = 0.1
NO_GPU_NOTE = b"TensorFlow: no GPU driver found on this machine; it computes on the CPU\n"


def _absl(level: str, source: str, message: str) -> re.Pattern:
    """A line of absl's format (level, date, time, thread, file:line]) from `source` at
    `level` whose message starts with `message` (a regex)."""
    return re.compile(rf"^{level}\d{{4}} [\d:.]+ +\d+ {re.escape(source)}:\d+\] {message}")


# Each: what it is, and why it is harmless. Matched on the whole message, never on a level alone.
KNOWN_BENIGN = (
    # absl's note that nothing initialised its logging (TensorFlow never does): once per copy of absl loaded.
    re.compile(r"^WARNING: All log messages before absl::InitializeLog\(\) is called are written to STDERR$"),
    # oneDNN is on, the default on x86 (TF_ENABLE_ONEDNN_OPTS=1 prints it as well); a notice, at INFO.
    _absl("I", "port.cc", r"oneDNN custom operations are on\. "),
    # oneDNN has no uint8 kernels without AVX-512 (the image decoding's uint8 ops): those run on Eigen's
    # kernels, as without oneDNN. Logged once a process, at ERROR.
    _absl("E", "util.cc", r"oneDNN supports DT_UINT8 only on platforms with AVX-512\. Falling back to the default "
                          r"Eigen-based implementation if present\.$"),
    # A TensorFlow bug, not a version mismatch: with op determinism on (`runtime.deterministic`),
    # tf.data's make_deterministic rewrite turns a parallel map whose function holds a stateful op
    # (the reader's per-image view choice, a Case; Keras' own batching of NumPy arrays in
    # `predict`) into a sequential MapDataset, but keeps ParallelMapDatasetV2's
    # use_unbounded_threadpool attribute, which MapDataset then ignores, as the line says.
    _absl("E", "node_def_util.cc", r"NodeDef mentions attribute use_unbounded_threadpool which is not in the op "
                                   r"definition: Op<name=MapDataset;"),
)
# No CUDA driver: the CPU-only case, said once as NO_GPU_NOTE instead.
NO_GPU = (
    _absl("I", "cudart_stub.cc", r"Could not find cuda drivers on your machine, GPU will not be used\.$"),
    # 303 (CUDA_ERROR_SHARED_OBJECT_INIT_FAILED) is what TensorFlow's CUDA stub returns when libcuda.so
    # is not there. A driver that is there and fails gives another code, which is kept.
    _absl("E", "cuda_platform.cc", r"failed call to cuInit: INTERNAL: CUDA error: Failed call to cuInit: "
                                   r"UNKNOWN ERROR \(303\)$"),
)


def filtered(lines):
    """`lines` (bytes, each with its line end) without the known ones: NO_GPU's replaced by
    NO_GPU_NOTE, once."""
    noted = False
    for line in lines:
        text = line.rstrip(b"\r\n").decode("utf-8", "replace")
        if any(pattern.search(text) for pattern in NO_GPU):
            if not noted:
                noted = True
                yield NO_GPU_NOTE
        elif not any(pattern.search(text) for pattern in KNOWN_BENIGN):
            yield line


def _lines(source: int):
    """The bytes read from fd `source` as lines ending in \\n or \\r (a progress bar's), until
    every writer has closed it; a partial line after PARTIAL_LINE_SECONDS without more data."""
    pending = b""
    while True:
        if pending and not select.select([source], [], [], PARTIAL_LINE_SECONDS)[0]:
            yield pending
            pending = b""
            continue
        try:
            chunk = os.read(source, 65536)
        except OSError:  # EIO: a pseudo-terminal's last writer closed it
            chunk = b""
        if not chunk:
            break
        lines = (pending + chunk).splitlines(keepends=True)
        pending = b"" if lines[-1].endswith((b"\n", b"\r")) else lines.pop()
        yield from lines
    if pending:
        yield pending


def relay(source: int, sink: int) -> None:
    """Copy fd `source` to fd `sink`, filtered, until its end. A sink that fails (a closed
    pipe) is given up, but the source is still read to its end: its writers must never block."""
    for line in filtered(_lines(source)):
        while line and sink is not None:
            try:
                line = line[os.write(sink, line):]
            except OSError:
                sink = None


_relay = None  # this process's relay, once started


def filter_stderr() -> None:
    """Route this process's fd 2 (and its children's, which inherit it) through the relay;
    once, however often called. Where the relay cannot start, stderr stays as it was."""
    global _relay
    if _relay is not None:
        return
    import atexit
    import faulthandler
    import subprocess

    sys.stderr.flush()
    reader, writer = _pseudo_terminal() if os.isatty(2) else os.pipe()
    original = os.dup(2)  # not inherited
    try:
        _relay = subprocess.Popen([sys.executable, "-I", "-S", __file__], stdin=reader, stdout=original,
                                  stderr=original, start_new_session=True)
    except OSError:
        os.close(writer)
        os.close(original)
        return
    finally:
        os.close(reader)
    os.dup2(writer, 2)
    os.close(writer)
    faulthandler.enable(file=sys.stderr)
    atexit.register(_drain, original)


def _pseudo_terminal() -> tuple[int, int]:
    """A (reader, writer) pair whose writer is a terminal of the original's size, raw (bytes
    pass unchanged), so that what writes to stderr still sees a terminal."""
    import fcntl
    import termios
    import tty

    reader, writer = os.openpty()
    tty.setraw(writer)
    fcntl.ioctl(writer, termios.TIOCSWINSZ, fcntl.ioctl(2, termios.TIOCGWINSZ, b"\0" * 8))
    return reader, writer


def _drain(original: int) -> None:
    """At exit: stderr back to the original (closing the relay's last writer here), then the
    relay's last lines out."""
    import subprocess

    sys.stderr.flush()
    os.dup2(original, 2)
    try:
        _relay.wait(timeout=DRAIN_SECONDS)
    except subprocess.TimeoutExpired:  # a child still holds the old stderr: the relay goes on for it
        pass


if __name__ == "__main__":
    relay(sys.stdin.fileno(), sys.stdout.fileno())
