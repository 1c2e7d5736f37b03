"""One writer per run folder: an exclusive lock, and the holder's name when it is refused.

The lock is an OS file lock (``filelock``) on ``<run>/.lock``: the kernel releases it when its
process dies, so a lock left by a killed sweep is taken over by the next command without any
clean-up. ``.lock.holder`` says who holds it (pid, host, command, since), for the message.

    with run_lock(run_dir):          # sweep, drill, resume, merge output, report writing
        ...
"""
from __future__ import annotations

import contextlib
import json
import os
import socket
import sys
import time
from pathlib import Path

from vla_eval.errors import UsageError

LOCK, HOLDER = ".lock", ".lock.holder"


def _holder(run_dir: Path) -> str:
    try:
        h = json.loads((run_dir / HOLDER).read_text())
        return f"pid {h['pid']} on {h['host']} ({h['command']!r}, since {h['since']})"
    except (OSError, ValueError, KeyError, TypeError):
        return "another process"


@contextlib.contextmanager
def run_lock(run_dir: Path, what: str = "write"):
    """Hold ``run_dir``'s lock for the block; refuse at once if another process holds it."""
    from filelock import FileLock, Timeout

    run_dir = Path(run_dir)
    if run_dir.exists() and not run_dir.is_dir():
        raise UsageError(f"--out {run_dir} is a file, not a run folder")
    run_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(run_dir / LOCK), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise UsageError(f"{run_dir} is in use by {_holder(run_dir)}; wait for it to finish (or stop it) "
                         f"before you {what} there") from None
    try:
        (run_dir / HOLDER).write_text(json.dumps({
            "pid": os.getpid(), "host": socket.gethostname(), "command": " ".join([Path(sys.argv[0]).name,
                                                                                   *sys.argv[1:]]),
            "since": time.strftime("%Y-%m-%dT%H:%M:%S")}))
        yield run_dir
    finally:
        with contextlib.suppress(OSError):
            (run_dir / HOLDER).unlink()
        lock.release()
