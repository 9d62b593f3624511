"""The one ethtool knob flatnet needs: TX checksum offload on a device.

Legacy ``ETHTOOL_STXCSUM`` through ``SIOCETHTOOL`` on a socket made in the
device's namespace (what ``ethtool -K DEV tx off`` does).
"""

from __future__ import annotations

import ctypes
import fcntl
import socket
import struct

from flatnet.errors import KernelError
from flatnet.kernel import netns

__all__ = ["set_tx_checksum"]

SIOCETHTOOL = 0x8946
ETHTOOL_STXCSUM = 0x17


def set_tx_checksum(ns: str | None, dev: str, on: bool) -> None:
    data = ctypes.create_string_buffer(struct.pack("=II", ETHTOOL_STXCSUM, int(on)))
    ifreq = struct.pack("16sP", dev.encode(), ctypes.addressof(data))
    sock = netns.socket_in(ns, socket.AF_INET, socket.SOCK_DGRAM)
    try:
        fcntl.ioctl(sock.fileno(), SIOCETHTOOL, ifreq)
    except OSError as e:
        raise KernelError(f"ethtool on '{dev}' failed: {e.strerror}") from e
    finally:
        sock.close()
