"""One contract, two datastores: SQLite (embedded) and a real etcd server."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from flatnet.errors import StoreUnavailable
from flatnet.store import Event, Store, open_store
from flatnet.store.etcd_server import EtcdServer


@pytest.fixture(params=["sqlite", pytest.param("etcd", marks=pytest.mark.etcd)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[tuple[Store, str]]:
    if request.param == "sqlite":
        st = open_store(f"sqlite://{tmp_path / 'store.db'}")
    else:
        st = open_store(request.getfixturevalue("etcd_server").url)
    try:
        yield st, f"/t/{uuid.uuid4().hex[:8]}/"
    finally:
        st.close()


def drain(w, n: int, timeout: float = 5.0) -> list[Event]:  # type: ignore[no-untyped-def]
    out: list[Event] = []
    deadline = time.monotonic() + timeout
    while len(out) < n and time.monotonic() < deadline:
        ev = w.next_event(timeout=0.2)
        if ev is not None:
            out.append(ev)
    return out


def test_put_get_range_order(store: tuple[Store, str]) -> None:
    st, p = store
    assert st.get(p + "a") is None
    for k in ["b", "a", "c"]:
        st.put(p + k, k.upper())
    st.put(p[:-1] + "x", "outside")  # shares the prefix minus its slash
    kv = st.get(p + "a")
    assert kv is not None and kv.value == "A" and kv.create_revision == kv.mod_revision
    assert [(k.key[len(p) :], k.value) for k in st.range(p)] == [("a", "A"), ("b", "B"), ("c", "C")]


def test_create_if_absent_and_cas(store: tuple[Store, str]) -> None:
    st, p = store
    assert st.create(p + "k", "one")
    assert not st.create(p + "k", "two")
    kv = st.get(p + "k")
    assert kv is not None and kv.value == "one"
    assert not st.cas(p + "k", "stale", kv.mod_revision - 1)
    assert st.cas(p + "k", "three", kv.mod_revision)
    kv2 = st.get(p + "k")
    assert kv2 is not None and kv2.value == "three" and kv2.mod_revision > kv.mod_revision
    assert kv2.create_revision == kv.create_revision


def test_delete_idempotent_and_guarded(store: tuple[Store, str]) -> None:
    st, p = store
    st.put(p + "k", "v")
    kv = st.get(p + "k")
    assert kv is not None
    assert not st.delete(p + "k", revision=kv.mod_revision + 100)
    assert st.delete(p + "k", revision=kv.mod_revision)
    assert not st.delete(p + "k")
    assert st.get(p + "k") is None


def test_concurrent_create_one_winner(store: tuple[Store, str]) -> None:
    st, p = store
    wins: list[int] = []

    def race(i: int) -> None:
        if st.create(p + "lock", str(i)):
            wins.append(i)

    ts = [threading.Thread(target=race, args=(i,)) for i in range(16)]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    assert len(wins) == 1


def test_lease_expiry_deletes_keys_with_event(store: tuple[Store, str]) -> None:
    st, p = store
    start = st.revision() + 1
    lease = st.grant(1)
    st.put(p + "leased", "x", lease=lease)
    st.put(p + "kept", "y")
    assert st.keepalive(lease)
    w = st.watch(p, start)
    try:
        evs = drain(w, 3, timeout=8)
    finally:
        w.close()
    assert [(e.type, e.key[len(p) :]) for e in evs] == [
        ("put", "leased"),
        ("put", "kept"),
        ("delete", "leased"),
    ]
    assert st.get(p + "leased") is None and st.get(p + "kept") is not None
    assert not st.keepalive(lease)


def test_revoke_removes_keys(store: tuple[Store, str]) -> None:
    st, p = store
    lease = st.grant(60)
    st.put(p + "a", "1", lease=lease)
    st.revoke(lease)
    assert st.get(p + "a") is None


def test_watch_from_revision_no_skip_no_repeat(store: tuple[Store, str]) -> None:
    st, p = store
    first = st.put(p + "0", "v0")
    for i in range(1, 50):
        st.put(p + str(i % 7), f"v{i}")
    st.delete(p + "3")
    w = st.watch(p, first + 10)
    try:
        st.put(p + "late", "z")
        evs = drain(w, 42)
        assert drain(w, 1, timeout=0.5) == []
    finally:
        w.close()
    revs = [e.revision for e in evs]
    assert revs == sorted(set(revs)) and revs[0] == first + 10
    assert evs[-2].type == "delete" and evs[-1].key == p + "late"


@pytest.mark.etcd
def test_etcd_watch_resumes_after_restart(tmp_path: Path) -> None:
    srv = EtcdServer(data_dir=tmp_path)
    srv.start()
    st = open_store(srv.url)
    try:
        rev = st.put("/r/a", "1")
        w = st.watch("/r/", rev)
        assert [e.value for e in drain(w, 1)] == ["1"]
        st.put("/r/b", "2")
        srv.stop()
        with pytest.raises(StoreUnavailable):
            st.put("/r/c", "lost")
        srv.start()
        st.put("/r/c", "3")
        evs = drain(w, 2, timeout=10)
        assert [e.value for e in evs] == ["2", "3"]
        assert drain(w, 1, timeout=0.5) == []
        w.close()
    finally:
        st.close()
        srv.destroy()


def test_sqlite_shared_by_processes(tmp_path: Path) -> None:
    import subprocess
    import sys

    db = tmp_path / "s.db"
    code = (
        "import sys; from flatnet.store import open_store; s=open_store(sys.argv[1]); "
        "n=sum(s.create(f'/ip/{i}', sys.argv[2]) for i in range(200)); print(n)"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(db), str(i)], stdout=subprocess.PIPE, text=True
        )
        for i in range(3)
    ]
    counts = [int(p.communicate()[0]) for p in procs]
    assert sum(counts) == 200
    assert len(open_store(str(db)).range("/ip/")) == 200
