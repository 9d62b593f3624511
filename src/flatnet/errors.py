"""One exception hierarchy for flatnet.

Foreign errors (netlink, sqlite, gRPC, OS) are translated at the seam with
``raise ... from`` and name the action and the object::

    FlatnetError                      base; .cni_code maps it to a CNI error code
    ├── ConfigError                   bad configuration or manifest        (CNI 7)
    │   └── LabFileError              a lab file mistake: file, line, what is wrong
    ├── CNIError                      a CNI protocol error with an explicit code
    ├── StoreError                    the datastore failed                 (CNI 5)
    │   ├── StoreUnavailable          it cannot be reached now             (CNI 11)
    │   └── CompactedError            a watch asked for history that is gone
    ├── IPAMError                     address management                   (CNI 100)
    │   └── SubnetExhausted           no address or subnet left            (CNI 101)
    ├── KernelError                   a netlink/nftables/namespace operation failed (CNI 5)
    │   └── NamespaceNotFound         a network namespace does not exist   (CNI 5)
    └── AgentUnavailable              the node agent cannot be reached     (CNI 11)
"""

from __future__ import annotations

__all__ = [
    "AgentUnavailable",
    "CNIError",
    "CompactedError",
    "ConfigError",
    "FlatnetError",
    "IPAMError",
    "KernelError",
    "LabFileError",
    "NamespaceNotFound",
    "StoreError",
    "StoreUnavailable",
    "SubnetExhausted",
]


class FlatnetError(Exception):
    """Base of every error flatnet raises on purpose."""

    cni_code = 999


class ConfigError(FlatnetError):
    cni_code = 7


class LabFileError(ConfigError):
    def __init__(self, path: str, line: int | None, what: str) -> None:
        where = f"{path}:{line}" if line else path
        super().__init__(f"{where}: {what}")
        self.path, self.line, self.what = path, line, what


class CNIError(FlatnetError):
    def __init__(self, code: int, msg: str, details: str = "") -> None:
        super().__init__(msg)
        self.cni_code = code
        self.details = details


class StoreError(FlatnetError):
    cni_code = 5


class StoreUnavailable(StoreError):
    cni_code = 11


class CompactedError(StoreError):
    pass


class IPAMError(FlatnetError):
    cni_code = 100


class SubnetExhausted(IPAMError):
    cni_code = 101


class KernelError(FlatnetError):
    cni_code = 5


class NamespaceNotFound(KernelError):
    pass


class AgentUnavailable(FlatnetError):
    cni_code = 11
