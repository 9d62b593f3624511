"""One exception hierarchy for flatnet.

Foreign errors (netlink, sqlite, gRPC, OS) are translated at the seam with
``raise ... from`` and name the action and the object::

    FlatnetError                      base; .cni_code maps it to a CNI error code
    ├── ConfigError                   bad configuration or manifest        (CNI 7)
    │   └── LabFileError              a lab file mistake: file, line, what is wrong
    ├── CNIError                      a CNI protocol error with an explicit Code
    ├── StoreError                    the datastore failed                 (CNI 5)
    │   ├── StoreUnavailable          it cannot be reached now             (CNI 11)
    │   └── CompactedError            a watch asked for history that is gone
    ├── IPAMError                     address management                   (CNI 100)
    │   └── SubnetExhausted           no address or subnet left            (CNI 101)
    ├── KernelError                   a netlink/nftables/namespace operation failed (CNI 5)
    │   ├── NamespaceNotFound         a network namespace does not exist   (CNI 5)
    │   └── SyscallError              the kernel refused a request; also an OSError (errno)
    ├── AgentUnavailable              the node agent cannot be reached     (CNI 11)
    └── LabTimeout                    a lab waited longer than it allows for a state

CNI error codes (spec 1.1.0 and flatnet's own, 100+) are named in :class:`Code`.
"""

from __future__ import annotations

from enum import IntEnum

__all__ = [
    "AgentUnavailable",
    "CNIError",
    "Code",
    "CompactedError",
    "ConfigError",
    "FlatnetError",
    "IPAMError",
    "KernelError",
    "LabFileError",
    "LabTimeout",
    "ManifestErrors",
    "NamespaceNotFound",
    "StoreError",
    "StoreUnavailable",
    "SubnetExhausted",
    "SyscallError",
]


class Code(IntEnum):
    """CNI error codes: the spec's (1-99) and flatnet's own (100+)."""

    INCOMPATIBLE_VERSION = 1
    UNSUPPORTED_FIELD = 2
    UNKNOWN_CONTAINER = 3
    INVALID_ENVIRONMENT = 4
    IO_FAILURE = 5
    DECODE_FAILURE = 6
    INVALID_CONFIG = 7
    TRY_AGAIN_LATER = 11
    NOT_READY = 50  # STATUS: the plugin cannot serve ADDs now
    ATTACHMENT_BROKEN = 100  # CHECK: a pod's attachment differs from what ADD made
    ADDRESSES_EXHAUSTED = 101
    UNKNOWN = 999


class FlatnetError(Exception):
    """Base of every error flatnet raises on purpose."""

    cni_code: int = Code.UNKNOWN


class ConfigError(FlatnetError):
    cni_code = Code.INVALID_CONFIG


class LabFileError(ConfigError):
    def __init__(self, path: str, line: int | None, what: str) -> None:
        where = f"{path}:{line}" if line else path
        super().__init__(f"{where}: {what}")
        self.path, self.line, self.what = path, line, what


class ManifestErrors(LabFileError):
    """Every mistake of a file, one ``FILE:LINE: field: problem`` line each
    (``path``, ``line``, ``what``: the first)."""

    def __init__(self, errors: list[LabFileError]) -> None:
        first = errors[0]
        super().__init__(first.path, first.line, first.what)
        self.errors = errors
        self.args = ("\n".join(str(e) for e in errors),)


class CNIError(FlatnetError):
    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.cni_code = code
        self.details = details


class StoreError(FlatnetError):
    cni_code = Code.IO_FAILURE


class StoreUnavailable(StoreError):
    cni_code = Code.TRY_AGAIN_LATER


class CompactedError(StoreError):
    pass


class IPAMError(FlatnetError):
    cni_code = Code.ATTACHMENT_BROKEN


class SubnetExhausted(IPAMError):
    cni_code = Code.ADDRESSES_EXHAUSTED


class KernelError(FlatnetError):
    cni_code = Code.IO_FAILURE


class NamespaceNotFound(KernelError):
    pass


class SyscallError(KernelError, OSError):
    """A netlink or bpf(2) request the kernel refused: ``errno`` is the
    kernel's, so callers can tell EEXIST from ENODEV (it is an OSError too)."""


class AgentUnavailable(FlatnetError):
    cni_code = Code.TRY_AGAIN_LATER


class LabTimeout(FlatnetError):
    """A lab waited for a state (an agent ready, peers programmed, proxies
    caught up, a port open) longer than it allows."""
