"""Clean stops on SIGINT / SIGTERM / SIGHUP: a flag checked between env steps, never an exception
raised inside the simulator (robosuite's numba code turned one into an env error before).

    with stop_on_signals():
        for step in loop:
            raise_if_stopping()     # -> Stopped(KeyboardInterrupt) at a safe point

The first signal asks for a stop; a second one interrupts at once. Env workers ignore the
stop signals (a terminal's Ctrl-C, ``docker stop``, systemd and a cluster's pre-emption reach the
whole process group): their parent stops them. A worker that a stop signal killed before it could
ignore it (still starting) is a stop too, never an episode result (``stop_signal_of``).
"""
from __future__ import annotations

import contextlib
import signal
import threading


class Stopped(KeyboardInterrupt):
    """A requested stop, raised where the runner can leave cleanly. ``signum`` says which."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
_requested: list[int] = []


def raise_if_stopping() -> None:
    if _requested:
        raise Stopped(_requested[0])


def _handler(signum, frame) -> None:
    if _requested:  # a second signal: do not wait for the step to end
        raise Stopped(signum)
    _requested.append(signum)


@contextlib.contextmanager
def stop_on_signals():
    """Install the flag handlers for the stop signals (main thread only; elsewhere a no-op)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.signal(s, _handler) for s in STOP_SIGNALS}
    _requested.clear()
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        _requested.clear()


def ignore_interrupts_in_worker() -> None:
    for s in STOP_SIGNALS:
        signal.signal(s, signal.SIG_IGN)


def stop_signal_of(exitcode: int | None) -> int | None:
    """The stop signal that ended a child process (``Process.exitcode`` is -signum), else None."""
    if exitcode is not None and exitcode < 0 and -exitcode in STOP_SIGNALS:
        return -exitcode
    return None


PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent() -> None:
    """In a worker process: the kernel sends it SIGKILL when its parent dies (Linux), so a
    SIGKILLed sweep leaves no env worker behind, not even one still importing its simulator.
    Elsewhere a no-op (the workers still leave once their pipe to the parent closes)."""
    import ctypes
    import multiprocessing
    import os
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):
        return
    parent = multiprocessing.parent_process()
    if parent is not None and os.getppid() != parent.pid:  # the parent died before the call
        os._exit(0)
