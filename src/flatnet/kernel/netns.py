"""Network namespaces without forking: setns in a short-lived thread.

``setns(2)`` is per thread. The long-lived agent never switches its own
threads; instead :func:`run_in` runs a function in a fresh thread that enters
the namespace, and :func:`iproute` adopts a netlink socket created there
(pyroute2's own ``netns=`` forks a helper per open, and forking next to a live
gRPC client crashes). Named namespaces live in ``/run/netns`` as ``ip netns``
makes them.
"""

from __future__ import annotations

import ctypes
import os
import socket
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

from pyroute2 import IPRoute
from pyroute2.netlink.exceptions import NetlinkError

from flatnet.errors import KernelError, NamespaceNotFound

__all__ = [
    "NS_DIR",
    "create",
    "delete",
    "exists",
    "iproute",
    "netlink",
    "path_of",
    "preexec",
    "run_in",
    "socket_in",
    "sysctl",
]

NS_DIR = Path("/run/netns")
CLONE_NEWNET = 0x40000000
_libc = ctypes.CDLL(None, use_errno=True)
T = TypeVar("T")


def path_of(name_or_path: str) -> str:
    return name_or_path if "/" in name_or_path else str(NS_DIR / name_or_path)


def exists(name_or_path: str) -> bool:
    return os.path.exists(path_of(name_or_path))


def create(name: str) -> str:
    """Create the named namespace (``ip netns add``); error if it exists."""
    r = subprocess.run(["ip", "netns", "add", name], capture_output=True, text=True)
    if r.returncode != 0:
        raise KernelError(f"failed to create network namespace '{name}': {r.stderr.strip()}")
    return path_of(name)


def delete(name: str) -> bool:
    """Delete the named namespace; False when it was already gone."""
    if not exists(name):
        return False
    r = subprocess.run(["ip", "netns", "del", name], capture_output=True, text=True)
    if r.returncode != 0 and exists(name):
        raise KernelError(f"failed to delete network namespace '{name}': {r.stderr.strip()}")
    return True


def _setns(fd: int) -> None:
    if _libc.setns(fd, CLONE_NEWNET) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))


@contextmanager
def _entered(path: str) -> Iterator[None]:
    """Switch the calling thread into ``path`` and always back."""
    try:
        target = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError as e:
        raise NamespaceNotFound(f"network namespace '{path}' does not exist") from e
    own = os.open("/proc/thread-self/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            _setns(target)
        except OSError as e:
            raise KernelError(f"failed to enter network namespace '{path}': {e}") from e
        try:
            yield
        finally:
            _setns(own)
    finally:
        os.close(target)
        os.close(own)


def preexec(ns: str | None) -> Callable[[], None] | None:
    """A ``preexec_fn`` that moves a child process into ``ns`` before it execs."""
    if ns is None:
        return None
    path = path_of(ns)

    def enter() -> None:
        fd = os.open(path, os.O_RDONLY)
        try:
            _setns(fd)
        finally:
            os.close(fd)

    return enter


def run_in(path: str | None, fn: Callable[[], T]) -> T:
    """Call ``fn`` inside namespace ``path`` (None: here) on a fresh thread."""
    if path is None:
        return fn()
    box: dict[str, object] = {}

    def body() -> None:
        try:
            with _entered(path_of(path)):
                box["ok"] = fn()
        except BaseException as e:  # re-raised in the caller
            box["err"] = e

    t = threading.Thread(target=body, name="netns")
    t.start()
    t.join()
    if "err" in box:
        raise box["err"]  # type: ignore[misc]
    return box["ok"]  # type: ignore[return-value]


def socket_in(path: str | None, family: int, kind: int, proto: int = 0) -> socket.socket:
    """A socket created in namespace ``path`` (sockets stay in the namespace they
    were made in, whichever thread uses them later)."""
    return run_in(path, lambda: socket.socket(family, kind, proto))


def iproute(path: str | None = None) -> IPRoute:
    """An IPRoute whose netlink socket lives in namespace ``path`` (None: ours)."""
    if path is None:
        return IPRoute()
    sock = socket_in(path, socket.AF_NETLINK, socket.SOCK_DGRAM, 0)
    return IPRoute(fileno=sock.detach())


@contextmanager
def netlink(path: str | None, action: str) -> Iterator[IPRoute]:
    """:func:`iproute` for one call, with netlink's refusals (and a device that
    is not there) translated into ``KernelError: failed to <action> in '<ns>'``."""
    try:
        with iproute(path) as ipr:
            yield ipr
    except (NetlinkError, IndexError) as e:
        what = e.args[1] if isinstance(e, NetlinkError) and len(e.args) > 1 else e
        raise KernelError(f"failed to {action} in '{path or 'this host'}': {what}") from e


def sysctl(path: str | None, key: str, value: str) -> None:
    """Write ``net.ipv4.ip_forward``-style ``key`` inside namespace ``path``."""
    file = "/proc/sys/" + key.replace(".", "/")

    def write() -> None:
        with open(file, "w") as f:
            f.write(value)

    try:
        run_in(path, write)
    except FileNotFoundError:
        return  # e.g. bridge-nf-call-* without br_netfilter loaded: nothing to turn off
    except OSError as e:
        raise KernelError(f"failed to set sysctl {key}={value} in '{path}': {e}") from e
