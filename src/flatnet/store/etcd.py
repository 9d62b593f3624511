"""The multi-host datastore: etcd v3 over gRPC (aetcd's generated stubs).

gRPC's asyncio client runs on an event loop in one background thread; the
synchronous methods hand coroutines to it. Compare-and-swap and
create-if-absent are single etcd transactions comparing ``mod_revision``.
Watches resume after a disconnect from the last revision seen + 1, so an etcd
restart neither loses nor repeats an event.
"""

from __future__ import annotations

import asyncio
import os
import queue
import threading
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, Literal, TypeVar

# The lab CLI and the agents fork children (subprocess: ip, CNI plugins, pods)
# while a gRPC channel is live; each child execs at once, so gRPC's fork
# handlers are of no use, and with them on every fork logged "Other threads
# are currently calling into gRPC, skipping fork() handlers" into user output.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "false")

import grpc  # noqa: E402
from aetcd import rpc  # noqa: E402

from flatnet.errors import CompactedError, StoreError, StoreUnavailable  # noqa: E402
from flatnet.store.base import KV, Event  # noqa: E402

__all__ = ["EtcdStore"]

T = TypeVar("T")
_UNAVAILABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}


def _prefix_end(prefix: bytes) -> bytes:
    b = bytearray(prefix)
    while b:
        if b[-1] < 0xFF:
            b[-1] += 1
            return bytes(b)
        b.pop()
    return b"\0"


def _kv(kv: Any) -> KV:
    return KV(kv.key.decode(), kv.value.decode(), kv.create_revision, kv.mod_revision, kv.lease)


class EtcdStore:
    def __init__(self, endpoint: str, timeout: float = 5.0) -> None:
        self.endpoint = endpoint
        self.timeout = timeout
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, daemon=True, name="etcd-loop"
        )
        self._thread.start()
        self._channel = self._call(self._open)

    async def _open(self) -> grpc.aio.Channel:
        ch = grpc.aio.insecure_channel(self.endpoint)
        self._kvs = rpc.KVStub(ch)
        self._leases = rpc.LeaseStub(ch)
        self._watches = rpc.WatchStub(ch)
        return ch

    def _call(self, make: Callable[[], Awaitable[T]]) -> T:
        """Run ``make()`` on the loop thread (gRPC calls must be created there)."""

        async def run() -> T:
            return await make()

        fut = asyncio.run_coroutine_threadsafe(run(), self._loop)
        try:
            return fut.result(self.timeout + 1)
        except grpc.aio.AioRpcError as e:
            if e.code() in _UNAVAILABLE:
                raise StoreUnavailable(f"etcd at {self.endpoint} unavailable: {e.details()}") from e
            raise StoreError(f"etcd at {self.endpoint}: {e.code().name}: {e.details()}") from e
        except TimeoutError as e:
            fut.cancel()
            raise StoreUnavailable(f"etcd at {self.endpoint} did not answer") from e

    # -- reads --------------------------------------------------------------
    def get(self, key: str) -> KV | None:
        r = self._call(
            lambda: self._kvs.Range(rpc.RangeRequest(key=key.encode()), timeout=self.timeout)
        )
        return _kv(r.kvs[0]) if r.kvs else None

    def range(self, prefix: str) -> list[KV]:
        p = prefix.encode()
        req = rpc.RangeRequest(
            key=p,
            range_end=_prefix_end(p),
            sort_order=rpc.RangeRequest.ASCEND,
            sort_target=rpc.RangeRequest.KEY,
        )
        return [_kv(k) for k in self._call(lambda: self._kvs.Range(req, timeout=self.timeout)).kvs]

    def revision(self) -> int:
        r = self._call(
            lambda: self._kvs.Range(rpc.RangeRequest(key=b"\0", limit=1), timeout=self.timeout)
        )
        return int(r.header.revision)

    # -- writes -------------------------------------------------------------
    def put(self, key: str, value: str, lease: int = 0) -> int:
        r = self._call(
            lambda: self._kvs.Put(
                rpc.PutRequest(key=key.encode(), value=value.encode(), lease=lease),
                timeout=self.timeout,
            )
        )
        return int(r.header.revision)

    def create(self, key: str, value: str, lease: int = 0) -> bool:
        return self.cas(key, value, 0, lease)

    def cas(self, key: str, value: str, revision: int, lease: int = 0) -> bool:
        k = key.encode()
        cmp = rpc.Compare(
            key=k, result=rpc.Compare.EQUAL, target=rpc.Compare.MOD, mod_revision=revision
        )
        put = rpc.RequestOp(request_put=rpc.PutRequest(key=k, value=value.encode(), lease=lease))
        r = self._call(
            lambda: self._kvs.Txn(
                rpc.TxnRequest(compare=[cmp], success=[put]), timeout=self.timeout
            )
        )
        return bool(r.succeeded)

    def delete(self, key: str, revision: int | None = None) -> bool:
        k = key.encode()
        if revision is None:
            r = self._call(
                lambda: self._kvs.DeleteRange(rpc.DeleteRangeRequest(key=k), timeout=self.timeout)
            )
            return bool(r.deleted)
        cmp = rpc.Compare(
            key=k, result=rpc.Compare.EQUAL, target=rpc.Compare.MOD, mod_revision=revision
        )
        op = rpc.RequestOp(request_delete_range=rpc.DeleteRangeRequest(key=k))
        t = self._call(
            lambda: self._kvs.Txn(rpc.TxnRequest(compare=[cmp], success=[op]), timeout=self.timeout)
        )
        return bool(t.succeeded and t.responses[0].response_delete_range.deleted)

    # -- leases -------------------------------------------------------------
    def grant(self, ttl: float) -> int:
        r = self._call(
            lambda: self._leases.LeaseGrant(
                rpc.LeaseGrantRequest(TTL=max(1, round(ttl))), timeout=self.timeout
            )
        )
        return int(r.ID)

    def keepalive(self, lease: int) -> bool:
        async def once() -> int:
            call = self._leases.LeaseKeepAlive(
                iter([rpc.LeaseKeepAliveRequest(ID=lease)]), timeout=self.timeout
            )
            async for reply in call:
                return int(reply.TTL)
            return 0

        return self._call(once) > 0

    def revoke(self, lease: int) -> None:
        try:
            self._call(
                lambda: self._leases.LeaseRevoke(
                    rpc.LeaseRevokeRequest(ID=lease), timeout=self.timeout
                )
            )
        except StoreError as e:
            if "not found" not in str(e):
                raise

    # -- watch --------------------------------------------------------------
    def watch(self, prefix: str, from_revision: int) -> EtcdWatch:
        return EtcdWatch(self, prefix, from_revision)

    def close(self) -> None:
        if self._loop.is_running():
            asyncio.run_coroutine_threadsafe(self._channel.close(), self._loop).result(5)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=5)


class EtcdWatch:
    """One watch stream, re-opened from the last revision + 1 after any failure."""

    def __init__(self, store: EtcdStore, prefix: str, from_revision: int) -> None:
        self._store = store
        self._prefix = prefix.encode()
        self._last = max(from_revision, 1) - 1
        self._q: queue.Queue[Event | BaseException] = queue.Queue()
        self._task = asyncio.run_coroutine_threadsafe(self._run(), store._loop)

    async def _run(self) -> None:
        delay = 0.1
        while True:
            try:
                await self._stream()
            except asyncio.CancelledError:
                raise
            except CompactedError as e:
                self._q.put(e)
                return
            except grpc.aio.AioRpcError:
                await asyncio.sleep(delay)  # etcd down or restarting: resume after it
                delay = min(delay * 2, 1.0)
                continue
            delay = 0.1

    async def _stream(self) -> None:
        req = rpc.WatchRequest(
            create_request=rpc.WatchCreateRequest(
                key=self._prefix, range_end=_prefix_end(self._prefix), start_revision=self._last + 1
            )
        )
        call = self._store._watches.Watch(iter([req]))
        async for resp in call:
            if resp.compact_revision:
                raise CompactedError(
                    f"revision {self._last + 1} was compacted (oldest kept {resp.compact_revision})"
                )
            for ev in resp.events:
                kind: Literal["put", "delete"] = "delete" if ev.type == rpc.Event.DELETE else "put"
                value = "" if kind == "delete" else ev.kv.value.decode()
                rev = int(ev.kv.mod_revision)
                self._q.put(Event(kind, ev.kv.key.decode(), value, rev))
                self._last = rev

    def next_event(self, timeout: float | None = None) -> Event | None:
        try:
            item = self._q.get(timeout=timeout)
        except queue.Empty:
            return None
        if isinstance(item, BaseException):
            raise item
        return item

    def close(self) -> None:
        self._task.cancel()

    def __iter__(self) -> Iterator[Event]:
        while True:
            ev = self.next_event()
            if ev is not None:
                yield ev
