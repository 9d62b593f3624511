"""Datastores: ``open_store(url)`` picks SQLite (a path or ``sqlite://PATH``) or etcd."""

from __future__ import annotations

import os

from flatnet.errors import ConfigError
from flatnet.store.base import KV, Event, Store, Watch

__all__ = ["KV", "Event", "Store", "Watch", "open_store"]


def open_store(url: str, create: bool = True) -> Store:
    """``sqlite:///var/lib/flatnet/store.db`` or a plain path; ``etcd://HOST:PORT``.
    With ``create=False`` a SQLite file that does not exist is an error, not
    made empty (what a reader such as ``flatnet get --store`` wants)."""
    if url.startswith("etcd://"):
        from flatnet.store.etcd import EtcdStore

        endpoint = url[len("etcd://") :].rstrip("/")
        if not endpoint:
            raise ConfigError(f"datastore url '{url}' names no etcd endpoint")
        return EtcdStore(endpoint)
    path = url[len("sqlite://") :] if url.startswith("sqlite://") else url
    if not path or "://" in path:
        raise ConfigError(f"datastore url '{url}' is neither sqlite://PATH nor etcd://HOST:PORT")
    if not create and not os.path.exists(path):
        raise ConfigError(f"datastore '{url}' does not exist (a path or sqlite://PATH)")
    from flatnet.store.sqlite import SqliteStore

    return SqliteStore(path)
