"""A persistent TUN device with virtio-net headers and offloads (the udp backend's).

``IFF_TUN | IFF_NO_PI | IFF_VNET_HDR`` and ``TUNSETOFFLOAD`` (checksum, TSO4/6):
the kernel hands over whole 64 KB TCP super-packets, each behind a 10-byte
virtio-net header. ``TUNSETPERSIST`` keeps the device (and its routes) when
the fd closes, so an agent restart does not take the data path down.
"""

from __future__ import annotations

import fcntl
import os
import struct

from flatnet.errors import KernelError
from flatnet.kernel import netns

__all__ = ["VNET_HDR", "open_tun"]

TUNSETIFF, TUNSETPERSIST, TUNSETOFFLOAD = 0x400454CA, 0x400454CB, 0x400454D0
IFF_TUN, IFF_NO_PI, IFF_VNET_HDR = 0x0001, 0x1000, 0x4000
TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6 = 0x01, 0x02, 0x04
VNET_HDR = 10  # struct virtio_net_hdr


def _open(name: str) -> int:
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    try:
        flags = IFF_TUN | IFF_NO_PI | IFF_VNET_HDR
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), flags))
        fcntl.ioctl(fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)
        fcntl.ioctl(fd, TUNSETPERSIST, 1)
    except OSError:
        os.close(fd)
        raise
    return fd


def open_tun(ns: str | None, name: str) -> int:
    """Open (or re-attach to) the persistent TUN device ``name`` in ``ns``; a
    non-blocking fd the caller owns."""
    try:
        fd = netns.run_in(ns, lambda: _open(name))
    except OSError as e:
        raise KernelError(f"failed to open TUN device '{name}': {e.strerror}") from e
    os.set_blocking(fd, False)
    return fd
