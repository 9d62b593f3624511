"""A daemon known by its PID file (BIRD, HAProxy): the PID counts only while
its command line is the program's and names the config this owner wrote, so
a recycled PID or another owner's daemon is never taken for ours."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

__all__ = ["running", "stop"]


def running(pidfile: Path, conf: Path, program: str) -> int | None:
    """The PID in ``pidfile`` if it runs ``program`` with ``conf``, else None."""
    try:
        pid = int(pidfile.read_text().split()[0])
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except (OSError, ValueError, IndexError):
        return None
    ours = cmd[0].endswith(program.encode()) and os.fsencode(str(conf)) in cmd
    return pid if ours else None


def stop(pidfile: Path, pid: int | None, timeout: float = 5.0) -> bool:
    """SIGTERM ``pid`` (what :func:`running` found), SIGKILL after ``timeout``;
    the PID file goes either way. False if nothing ran."""
    if pid is None:
        pidfile.unlink(missing_ok=True)
        return False
    os.kill(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while Path(f"/proc/{pid}").exists() and time.monotonic() < deadline:
        time.sleep(0.01)
    if Path(f"/proc/{pid}").exists():
        os.kill(pid, signal.SIGKILL)
    pidfile.unlink(missing_ok=True)
    return True
