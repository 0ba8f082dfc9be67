"""SIGTERM and SIGHUP handled as Ctrl-C is: raised where the program stands, so every cleanup runs for them too.

Python runs a signal handler between bytecodes, sometimes inside a garbage-collector or weakref callback, where an
exception is printed and dropped, or in the middle of an import. So the signal is also recorded: a command that
then finishes, or fails in a way the interruption caused, is still reported as interrupted.
"""

from __future__ import annotations

import signal

received: int | None = None  # the termination signal this process got, if any


class Terminated(KeyboardInterrupt):
    """SIGTERM or SIGHUP (or SIGINT), as an exception every `except KeyboardInterrupt` cleanup also sees."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


def _terminate(signum, frame) -> None:
    global received
    received = signum
    raise Terminated(signum)


def install() -> None:
    """Handle SIGTERM and SIGHUP (where not ignored by whoever started us, e.g. nohup)."""
    for name in ("SIGTERM", "SIGHUP"):
        if hasattr(signal, name) and signal.getsignal(getattr(signal, name)) is signal.SIG_DFL:
            signal.signal(getattr(signal, name), _terminate)


def raise_if_received() -> None:
    """Turn a termination signal that was swallowed somewhere (see the module's docstring) into Terminated."""
    if received is not None:
        raise Terminated(received)
