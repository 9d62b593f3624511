"""Processes inside lab namespaces: start them detached, run tools, wait for ports.

A pod with its own ``/etc/netns/<ns>`` (a resolv.conf) is entered through
``ip netns exec`` so its files are bind-mounted as a runtime would; anything
else by ``setns`` in the child before exec. Every process started here gets
its own session, so the lab stops it (and its children) by process group.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

from flatnet.errors import KernelError, LabTimeout
from flatnet.kernel import netns

__all__ = ["ETC_NETNS", "in_ns", "pod_hostname", "py", "spawn", "tool", "wait_port", "which"]

_SBIN = ("/usr/local/sbin", "/usr/sbin", "/sbin")
# sh -c SCRIPT NAME ARGV...: $0 is the name; no hostname(1) needed
_SET_HOSTNAME = 'printf %s "$0" > /proc/sys/kernel/hostname && exec "$@"'


def pod_hostname(name: str, mode: str) -> str:
    """What ``hostname`` says in a pod: its name for a bridge pod (whose
    /etc/hosts resolves it); with ``container:<pod>``, that pod's (as Docker);
    "" (the machine's, unchanged) for host and none pods, which have no /etc of
    their own where the name would resolve."""
    if mode.startswith("container:"):
        return mode.split(":", 1)[1]
    return name if mode == "bridge" else ""


ETC_NETNS = Path("/etc/netns")


def in_ns(
    ns: str, argv: list[str], hostname: str = ""
) -> tuple[list[str], Callable[[], None] | None]:
    """``argv`` and a ``preexec_fn`` that run it inside ``ns``: through ``ip netns
    exec`` when the pod has its own /etc files (resolv.conf), else by setns. With
    ``hostname``, in a UTS namespace of its own that has that name (what a pod's
    ``hostname`` says); the process keeps its PID (unshare and sh exec in place)."""
    argv = [which(argv[0]), *argv[1:]]
    if hostname:
        argv = [which("unshare"), "--uts", "--", "sh", "-c", _SET_HOSTNAME, hostname, *argv]
    if (ETC_NETNS / ns).is_dir():
        return [which("ip"), "netns", "exec", ns, *argv], None
    return argv, netns.preexec(ns)


def which(cmd: str) -> str:
    """``cmd``'s path: on PATH, or in the sbin directories a root shell has (a
    PATH without them, as sudo or a service may give, must not lose dnsmasq,
    tc or iptables). Not found: a KernelError naming it."""
    path = os.pathsep.join([os.environ.get("PATH", ""), *_SBIN])
    found = shutil.which(cmd, path=path)
    if found is None:
        raise KernelError(f"command '{cmd}' is not found (PATH, {', '.join(_SBIN)})")
    return found


def spawn(
    ns: str | None,
    argv: list[str],
    log: Path,
    env: dict[str, str] | None = None,
    hostname: str = "",
) -> int:
    """Start ``argv`` detached (own session) inside namespace ``ns`` (None: this
    one; and, with ``hostname``, its own UTS namespace of that name); returns
    its PID."""
    argv, enter = in_ns(ns, argv, hostname) if ns is not None else (argv, None)
    with open(log, "ab") as out:
        p = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,
            preexec_fn=enter,
            env=dict(os.environ, **(env or {})),
        )
    return p.pid


def tool(ns: str, *argv: str) -> None:
    """Run a configuration tool (tc, iptables) in ``ns``; its complaint becomes a KernelError."""
    cmd = [which("ip"), "netns", "exec", ns, which(argv[0]), *argv[1:]]
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        raise KernelError(f"{' '.join(argv)} in '{ns}' failed: {r.stderr.strip()}")


def wait_port(ns: str, port: int, timeout: float = 20.0, host: str = "127.0.0.1") -> None:
    def probe() -> bool:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            return False

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if netns.run_in(netns.path_of(ns), probe):
            return
        time.sleep(0.05)
    raise LabTimeout(f"nothing listens on {host}:{port} in '{ns}' after {timeout}s")


def py(*args: str) -> list[str]:
    """``python -m <args>`` with this interpreter."""
    return [sys.executable, "-m", *args]
