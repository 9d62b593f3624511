"""The datastore contract, shared by the SQLite and etcd implementations.

The model is etcd's: a flat, revisioned key-value space. Every change (put or
delete) takes the next cluster revision; each key remembers the revision that
created it and the one that last modified it.

Contract (one test suite, ``tests/unit/test_store_contract.py``, runs it
against both implementations):

* ``get``/``range`` read; ``range(prefix)`` returns keys in lexical order.
* ``put`` always writes; ``create`` writes only if the key is absent;
  ``cas`` writes only if the key's ``mod_revision`` equals ``revision``
  (``revision=0`` means "absent"). Both return False instead of raising on a
  lost race, so callers loop.
* ``delete`` is idempotent (False when the key was already gone); with
  ``revision`` it deletes only that version.
* Leases: ``grant(ttl)`` returns an id; keys written with it vanish (with a
  delete event) when it expires or is revoked; ``keepalive`` renews it and
  returns False when it has already expired.
* ``watch(prefix, from_revision)`` yields every change to keys under prefix
  with revision >= from_revision, in revision order, never skipping or
  repeating one, across reconnects; history that was compacted away raises
  :class:`~flatnet.errors.CompactedError`.

Methods are synchronous and thread-safe: the agent calls them from worker
threads; the etcd client keeps its own event loop in a background thread.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal, Protocol

__all__ = ["KV", "Event", "Store", "Watch"]


@dataclass(frozen=True)
class KV:
    key: str
    value: str
    create_revision: int
    mod_revision: int
    lease: int = 0


@dataclass(frozen=True)
class Event:
    type: Literal["put", "delete"]
    key: str
    value: str
    revision: int


class Watch(Protocol):
    """An iterator of events; ``next_event(timeout)`` returns None on timeout."""

    def next_event(self, timeout: float | None = None) -> Event | None: ...

    def close(self) -> None: ...

    def __iter__(self) -> Iterator[Event]: ...


class Store(Protocol):
    def get(self, key: str) -> KV | None: ...

    def range(self, prefix: str) -> list[KV]: ...

    def revision(self) -> int: ...

    def put(self, key: str, value: str, lease: int = 0) -> int: ...

    def create(self, key: str, value: str, lease: int = 0) -> bool: ...

    def cas(self, key: str, value: str, revision: int, lease: int = 0) -> bool: ...

    def delete(self, key: str, revision: int | None = None) -> bool: ...

    def grant(self, ttl: float) -> int: ...

    def keepalive(self, lease: int) -> bool: ...

    def revoke(self, lease: int) -> None: ...

    def watch(self, prefix: str, from_revision: int) -> Watch: ...

    def close(self) -> None: ...
