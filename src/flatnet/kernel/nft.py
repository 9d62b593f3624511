"""nftables through libnftables (ctypes): one context per namespace, one lock.

A libnftables context stays bound to the network namespace it was created
in, so :class:`Nft` creates its context inside the target namespace and then
serves every call from any thread. Each :meth:`Nft.apply` is one atomic
transaction (a whole script: ``flush table``, ``add chain`` ...).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import threading
from typing import Any

from flatnet.errors import KernelError
from flatnet.kernel import netns

__all__ = ["Nft"]

_lib: ctypes.CDLL | None = None


def _load() -> ctypes.CDLL:
    global _lib
    if _lib is None:
        try:
            lib = ctypes.CDLL("libnftables.so.1")
        except OSError as e:
            raise KernelError("libnftables.so.1 not found: install Debian's 'nftables'") from e
        lib.nft_ctx_new.restype = ctypes.c_void_p
        lib.nft_ctx_new.argtypes = [ctypes.c_uint]
        lib.nft_ctx_free.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_output_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_output_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_get_error_buffer.restype = ctypes.c_char_p
        lib.nft_ctx_get_error_buffer.argtypes = [ctypes.c_void_p]
        lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
        lib.nft_ctx_output_get_flags.restype = ctypes.c_uint
        lib.nft_ctx_output_get_flags.argtypes = [ctypes.c_void_p]
        lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
        lib.nft_run_cmd_from_buffer.restype = ctypes.c_int
        _lib = lib
    return _lib


_JSON = 1 << 4  # NFT_CTX_OUTPUT_JSON


def _trim() -> None:
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6").malloc_trim(0)


class Nft:
    def __init__(self, ns: str | None = None) -> None:
        self._lib = _load()
        self.ns = ns
        self._ctx = netns.run_in(ns, lambda: self._lib.nft_ctx_new(0))
        if not self._ctx:
            raise KernelError(f"nft_ctx_new failed in namespace '{ns}'")
        self._lib.nft_ctx_buffer_output(self._ctx)
        self._lib.nft_ctx_buffer_error(self._ctx)
        self._lock = threading.Lock()

    def apply(self, script: str, what: str = "nftables change") -> str:
        with self._lock:
            rc = self._lib.nft_run_cmd_from_buffer(self._ctx, script.encode())
            out = (self._lib.nft_ctx_get_output_buffer(self._ctx) or b"").decode()
            err = (self._lib.nft_ctx_get_error_buffer(self._ctx) or b"").decode()
            if len(script) > 1 << 20:  # libnftables' parse of a big script leaves ~100 MB
                _trim()  # of freed heap that glibc keeps unless asked to give it back
        if rc != 0:
            where = f" in namespace '{self.ns}'" if self.ns else ""
            raise KernelError(f"failed to apply {what}{where}: {err.strip()}")
        return out

    def list_json(self, what: str) -> list[dict[str, Any]]:
        """``list <what>`` as nft's JSON objects (``[]`` when the object is absent)."""
        with self._lock:
            flags = self._lib.nft_ctx_output_get_flags(self._ctx)
            self._lib.nft_ctx_output_set_flags(self._ctx, flags | _JSON)
            try:
                rc = self._lib.nft_run_cmd_from_buffer(self._ctx, f"list {what}".encode())
                out = (self._lib.nft_ctx_get_output_buffer(self._ctx) or b"").decode()
                self._lib.nft_ctx_get_error_buffer(self._ctx)
            finally:
                self._lib.nft_ctx_output_set_flags(self._ctx, flags)
        if rc != 0 or not out:
            return []
        return list(json.loads(out).get("nftables", []))

    def close(self) -> None:
        with self._lock:
            if self._ctx:
                self._lib.nft_ctx_free(self._ctx)
                self._ctx = None

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()
