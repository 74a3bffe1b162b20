"""The fault drill: environment variables that make a run fail on purpose, to rehearse a resume.

The pipeline's only own environment variables; `inject_fault` reads them after each
scored epoch of a phase, once that epoch's checkpoint is saved:

  PVS_FAIL_AFTER=PHASE:EPOCH  fail (InjectedFault) after epoch EPOCH (from 1) of the phase
                              named PHASE, as a preempted machine would; a run started again
                              resumes from that epoch's checkpoint.
  PVS_FAIL_ONCE=FILE          with PVS_FAIL_AFTER: fail only while FILE does not exist, and
                              create it when failing, so a retry goes on (a transient fault).

(`PVS_PROJECT_DIR` is prefect.yaml's, read by `prefect deploy`; the `PVS_TEST_*` variables
are the test suite's kill hook, tests/reliability/kill_hook.)
"""

import os
from pathlib import Path

FAULT_AFTER = "PVS_FAIL_AFTER"
FAULT_ONCE = "PVS_FAIL_ONCE"


class InjectedFault(RuntimeError):
    """The failure asked for by PVS_FAIL_AFTER: a stand-in for a preempted machine."""


def inject_fault(phase: str, epoch: int) -> None:
    """Raise InjectedFault when PVS_FAIL_AFTER names this phase and epoch (and, with
    PVS_FAIL_ONCE, only the first time). Runs after the epoch's checkpoint is saved,
    so a resumed run continues from it."""
    wanted = os.environ.get(FAULT_AFTER, "")
    if wanted != f"{phase}:{epoch}":
        return
    marker = os.environ.get(FAULT_ONCE)
    if marker:
        if Path(marker).exists():
            return
        Path(marker).touch()
    raise InjectedFault(f"{FAULT_AFTER}={wanted}: failing after epoch {epoch} of phase {phase!r}, as asked")
