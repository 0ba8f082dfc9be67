"""SIGTERM and SIGHUP handled as Ctrl-C is: raised where the program stands, so every cleanup runs for them too.

Python runs a signal handler between bytecodes, sometimes inside a garbage-collector or weakref callback, where an
exception is printed and dropped, or in the middle of an import. So the signal is also recorded: a command that
then finishes, or fails in a way the interruption caused, is still reported as interrupted.
"""

from __future__ import annotations

import signal
import sys
import warnings

received: int | None = None  # the termination signal this process got, if any


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP (or SIGINT), as an exception every `except KeyboardInterrupt` cleanup also sees."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _terminate(signum, frame) -> None:
    global received
    received = signum
    # From here on the command only stops: warnings from half-done work (a module whose import was cut short
    # being imported again) are noise beside the one line that says it was interrupted.
    warnings.simplefilter("ignore")
    raise Terminated(signum)


def _unraisable(unraisable) -> None:
    """Python prints an exception raised where it cannot propagate (a GC callback) as "Exception ignored in"; for
    our own Terminated that is recorded in `received` and reported once, so it is not printed."""
    if isinstance(unraisable.exc_value, Terminated):
        return
    _previous_unraisable(unraisable)


_previous_unraisable = sys.unraisablehook


def install() -> None:
    """Handle SIGINT, SIGTERM and SIGHUP (where not ignored by whoever started us, e.g. nohup). SIGINT's
    default handler is Python's own (not SIG_DFL): it is replaced as well."""
    sys.unraisablehook = _unraisable
    for name in ("SIGINT", "SIGTERM", "SIGHUP"):  # SIGINT too: recorded, so a swallowed Ctrl-C is still seen
        current = signal.getsignal(getattr(signal, name)) if hasattr(signal, name) else signal.SIG_IGN
        if current is signal.SIG_DFL or current is signal.default_int_handler:
            signal.signal(getattr(signal, name), _terminate)


def raise_if_received() -> None:
    """Turn a termination signal that was swallowed somewhere (see the module's docstring) into Terminated."""
    if received is not None:
        raise Terminated(received)
