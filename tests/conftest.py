from __future__ import annotations

import os
import uuid
from collections.abc import Iterator

import pytest

from flatnet.store.etcd_server import EtcdServer


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.geteuid() != 0:
        skip = pytest.mark.skip(reason="needs root (network namespaces)")
        for item in items:
            if "privileged" in item.keywords or "lab" in item.keywords:
                item.add_marker(skip)


@pytest.fixture(scope="session")
def etcd_server() -> Iterator[EtcdServer]:
    srv = EtcdServer()
    srv.start()
    try:
        yield srv
    finally:
        srv.destroy()


@pytest.fixture
def uniq() -> str:
    """A short unique name for namespaces and labs of one test."""
    return "t" + uuid.uuid4().hex[:6]
