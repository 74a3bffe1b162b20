"""Test-only: SIGKILL this process at a chosen file write. Python imports this module at
start-up when its folder is on PYTHONPATH (tests/reliability/conftest.py puts it there).

Every file of a run is written under a temporary name and renamed into place with
`os.replace`, so the renames are the run's landmarks, the same in every run:
- PVS_TEST_ROOT: the run root; only files under it count.
- PVS_TEST_WRITE_LOG: a file to which the path of every renamed file is appended,
  relative to the root, with the 12-hex-digit cache keys in folder names as `*`.
- PVS_TEST_KILL_AT: such a path (a glob); PVS_TEST_KILL_DELAY: seconds (default 0).
  With delay 0 the process dies just before that rename: the file is written only
  under its temporary name (a kill mid-write). With a delay it dies that many seconds
  after the rename, wherever it is then (mid-epoch, mid-extraction, ...).
- PVS_TEST_SIGNAL: another signal than SIGKILL, by name (SIGINT, SIGTERM); with
  PVS_TEST_SIGNAL_GROUP=1 it goes to the whole process group, as a terminal's Ctrl-C
  does. PVS_TEST_SIGNAL_SENT: a file that gets the time (time.time()) it was sent.
"""

import os

if os.environ.get("PVS_TEST_ROOT"):
    import fnmatch
    import re
    import signal
    import threading

    _ROOT = os.path.realpath(os.environ["PVS_TEST_ROOT"])
    _LOG = os.environ.get("PVS_TEST_WRITE_LOG")
    _TARGET = os.environ.get("PVS_TEST_KILL_AT")
    _DELAY = float(os.environ.get("PVS_TEST_KILL_DELAY", "0"))
    _KEY = re.compile(r"-[0-9a-f]{12}(?=/|$)")
    _rename = os.replace
    _armed = [bool(_TARGET)]

    _SIGNAL = getattr(signal, os.environ.get("PVS_TEST_SIGNAL", "SIGKILL"))
    _SENT = os.environ.get("PVS_TEST_SIGNAL_SENT")

    def _kill() -> None:
        if _SENT:
            import time

            with open(_SENT, "w") as sent:
                sent.write(repr(time.time()))
        if os.environ.get("PVS_TEST_SIGNAL_GROUP") == "1":
            os.killpg(os.getpgrp(), _SIGNAL)
        else:
            os.kill(os.getpid(), _SIGNAL)

    def _replace(source, destination, *args, **kwargs):
        relative = os.path.relpath(os.path.realpath(destination), _ROOT)
        if not relative.startswith(".."):
            landmark = _KEY.sub("-*", relative)
            if _LOG:
                with open(_LOG, "a") as log:
                    log.write(landmark + "\n")
            if _armed[0] and fnmatch.fnmatchcase(landmark, _TARGET):
                _armed[0] = False
                if _DELAY <= 0:
                    _kill()
                else:
                    threading.Timer(_DELAY, _kill).start()
        return _rename(source, destination, *args, **kwargs)

    os.replace = _replace
