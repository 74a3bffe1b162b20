"""Ctrl-C and SIGTERM stop a `pvs` command within seconds, cleanly.

Both signals become `Interrupted` (a KeyboardInterrupt) in the main thread, where the
pipeline runs its steps: it leaves the epoch or shard in progress at its next Python
instruction (a training step or a batch: well under a second at test sizes), every
atomic write in progress removes its temporary file on the way out (a finished file is
never touched), Prefect records the flow run as Crashed, and `with` blocks stop what the
command started (the temporary Prefect server, thread pools). The CLI then prints how to
resume and exits 130 (SIGINT) or 143 (SIGTERM), the shell's codes for those signals.

During a flow run Prefect installs its own SIGTERM handler, which raises its
TerminationSignal and then sends the signal again to the handler it replaced: this one.

Python swallows an exception raised inside a finalizer (`__del__`; TensorFlow's objects
have many): a signal whose handler ran there would be lost, and the run would go on to
the end (what a user saw as "Ctrl-C is ignored"). Python reports such an exception to
`sys.unraisablehook`; ours sends the same signal again a moment later, so that it
lands outside.

A second signal while the first is being handled is not an exception again (it would cut
the clean-up short): it stops the command at once, as SIGKILL would; everything the run
wrote stays trustworthy, since every file is renamed into place only once complete.
"""

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)
RESEND_SECONDS = 0.1  # after Python swallowed a signal's exception: long past the finalizer


class Interrupted(KeyboardInterrupt):
    """The command was asked to stop by `signal_number`."""

    def __init__(self, signal_number: int):
        super().__init__(signal.Signals(signal_number).name)
        self.signal_number = signal_number


def exit_status(error: BaseException) -> int | None:
    """The status a command stopped by `error` exits with, 128 + the signal's number as a
    shell reports it (a plain KeyboardInterrupt: SIGINT); None when `error` is no signal's."""
    number = _signal_of(error)
    if number is None and isinstance(error, KeyboardInterrupt):
        number = signal.SIGINT
    return None if number is None else 128 + number


@contextlib.contextmanager
def stop_on_signals(at_once: Callable[[], None] = lambda: None) -> Iterator[None]:
    """Within the block, SIGINT and SIGTERM raise Interrupted in the main thread; a second
    one calls `at_once` (to stop what must not outlive the command) and exits immediately.
    Outside the main thread (where Python allows no handlers) the block runs unchanged."""
    received: list[int] = []

    def handler(number, frame):
        received.append(number)
        if len(received) == 1:
            raise Interrupted(number)
        at_once()
        print(f"\n{signal.Signals(number).name} again: stopped at once; run the same command again to resume",
              file=sys.stderr, flush=True)
        os._exit(128 + number)

    def unraisable(report) -> None:
        number = _signal_of(report.exc_value)
        if number is None:
            previous_hook(report)
            return
        received.clear()  # this one did not count: it was swallowed
        # From another thread, a moment later: sent from here, its handler would run (and
        # its exception be swallowed again) before this hook returns.
        threading.Timer(RESEND_SECONDS, os.kill, (os.getpid(), number)).start()

    try:
        previous = {number: signal.signal(number, handler) for number in SIGNALS}
    except ValueError:  # not the main thread
        yield
        return
    previous_hook, sys.unraisablehook = sys.unraisablehook, unraisable
    try:
        yield
    finally:
        sys.unraisablehook = previous_hook
        for number, old in previous.items():
            signal.signal(number, old)


def _signal_of(error: BaseException | None) -> int | None:
    """The signal `error` stands for: ours, or Prefect's TerminationSignal (a SIGTERM
    during a flow run, raised by Prefect's handler); None for any other error."""
    if isinstance(error, Interrupted):
        return error.signal_number
    if type(error).__name__ == "TerminationSignal":
        return int(error.signal)
    return None
