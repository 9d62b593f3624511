"""The node's policy table: NetworkPolicies, pods and namespaces in the store →
this node's ``ip flatnet-policy`` table.

One thread follows ``networkpolicies/``, ``clusternetworkpolicies/``,
``pods/`` and ``namespaces/`` (list, then watch). The first listing, and
every ``resync`` seconds after, writes the whole table in one transaction
(this repairs drift). Each batch of events —
a policy added, changed or deleted, a pod's labels or IP, a namespace's labels
— recompiles this node's pods (:func:`~flatnet.policy.compile.compile_node`)
and applies the difference in one transaction, so a label change takes effect
at once. What one compile found is kept for the next while it holds: a policy
change recomputes only the lists of the pods it selects; a pod's status
(ready, restarts) reuses them all; a pod's labels, IP or ports, or a
namespace, recompute everything. Then the established flows the change no
longer allows are deleted from conntrack: their next packet is judged again,
and dropped (the eBPF fast path only carries flows conntrack holds, so it
lets go of them too).

A new pod is admitted by the CNI ADD (:meth:`PolicySync.admit`) before its
interface has an address: its entries are in the table from its first packet.

It publishes ``/flatnet/policy/<node>``: the store revision programmed, the
policies that select pods here, so ``flatnet get networkpolicies`` can tell
which nodes have programmed each policy. The table stays when the agent stops:
the kernel keeps enforcing while no agent runs.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from dataclasses import replace

from flatnet import keys
from flatnet.errors import KernelError
from flatnet.kernel.api import ConntrackTable, Firewall
from flatnet.kernel.conntrack import Flow
from flatnet.model import NAME_LABEL, Namespace, PodRecord, PolicyStatus
from flatnet.policy import render
from flatnet.policy.compile import Memo, PodPolicy, compile_node
from flatnet.policy.model import ClusterNetworkPolicy, NetworkPolicy
from flatnet.store import KV, Event, Store
from flatnet.store.follow import follow

__all__ = ["PolicySync"]

log = logging.getLogger("flatnet.agent.policy")
PROTOCOLS = {socket.IPPROTO_TCP: "tcp", socket.IPPROTO_UDP: "udp", socket.IPPROTO_SCTP: "sctp"}


def _identity(p: PodRecord) -> tuple[object, ...]:
    """What policies read of a pod (its status, phase and restarts they do not)."""
    return (p.ip, p.node, p.mode, p.labels, p.ports)


class PolicySync:
    def __init__(
        self,
        store: Store,
        nft: Firewall,
        conntrack: ConntrackTable,
        node: str,
        own_ips: set[str],
        status_lease: int = 0,
        resync: float = 300.0,
    ) -> None:
        """``own_ips``: this node's addresses (its traffic to its pods is
        always allowed: those flows are never cut)."""
        self.store, self.nft, self.conntrack = store, nft, conntrack
        self.node, self.own_ips = node, own_ips
        self.status_lease = status_lease
        self.resync = resync
        self.policies: dict[str, NetworkPolicy] = {}
        self.cluster: dict[str, ClusterNetworkPolicy] = {}
        self.pods: dict[str, PodRecord] = {}
        self.namespaces: dict[str, dict[str, str]] = {}
        self.table: dict[str, PodPolicy] = {}
        self.admitted: dict[str, str] = {}  # pod key -> IP given by CNI ADD, not yet in the store
        self.memo = Memo()  # what one compile hands the next
        self.revision = 0
        self.last_sync: dict[str, float] = {}
        self.lock = threading.Lock()
        self.listed_once = threading.Event()

    def rebind(self, status_lease: int) -> None:
        self.status_lease = status_lease

    # -- the cluster as this node sees it ------------------------------------
    def _take(self, key: str, value: str | None) -> None:
        """One key's new value (None: deleted) into the view; what compiles
        kept is dropped where it no longer holds (:class:`Memo`)."""
        if key.startswith(keys.CLUSTER_POLICIES):
            if value is None:
                gone = self.cluster.pop(key, None)
            else:
                gone = self.cluster.get(key)
                self.cluster[key] = ClusterNetworkPolicy.from_json(value)
            if gone is not None:
                self.memo.forget({gone.name})
        elif key.startswith(keys.NETWORK_POLICIES):
            if value is None:
                self.policies.pop(key, None)
            else:
                self.policies[key] = NetworkPolicy.from_json(value)
            self.memo.forget({key.removeprefix(keys.NETWORK_POLICIES)})
        elif key.startswith(keys.PODS):
            old = self.pods.get(key)
            if value is None:
                self.pods.pop(key, None)
                self.admitted.pop(key, None)
                self.memo.clear()
                return
            pod = PodRecord.from_json(value)
            if pod.ip:
                self.admitted.pop(key, None)
            elif key in self.admitted:  # the store has not heard of the IP yet
                pod = replace(pod, ip=self.admitted[key], node=self.node)
            self.pods[key] = pod
            if old is None or _identity(old) != _identity(pod):  # not just its status
                self.memo.clear()
        elif key.startswith(keys.NAMESPACES):
            name = keys.last(key)
            if value is None:
                self.namespaces.pop(name, None)
            else:
                self.namespaces[name] = Namespace.from_json(value).labels
            self.memo.clear()

    def _compile(self, only: set[str] | None = None) -> dict[str, PodPolicy]:
        ns_labels = {p.namespace: {NAME_LABEL: p.namespace} for p in self.pods.values()}
        ns_labels.update(self.namespaces)
        return compile_node(
            self.policies.values(), self.pods.values(), ns_labels, self.node,
            self.cluster.values(), only, self.memo,
        )  # fmt: skip

    # -- kernel ----------------------------------------------------------------
    def full_sync(self) -> None:
        with self.lock:
            t0 = time.monotonic()
            self.memo.clear()  # (the resync repairs drift: nothing kept is trusted)
            new = self._compile()
            self.nft.apply(render.full(new.values()), what=f"table ip {render.TABLE}")
            old, self.table = self.table, new
            self._revoke(old, new)
            self.last_sync = {"full": time.monotonic() - t0}
            log.info(
                "policy: full sync, %d isolated pod(s), %.3fs", len(new), self.last_sync["full"]
            )
            self._publish()

    def listed(self, kvs: list[KV], rev: int) -> None:
        with self.lock:
            self.policies, self.pods, self.namespaces, self.cluster = {}, {}, {}, {}
            for kv in kvs:
                self._take(kv.key, kv.value)
            self.revision = rev
        self.full_sync()
        self.listed_once.set()

    def changed(self, events: list[Event]) -> None:
        with self.lock:
            for ev in events:
                self._take(ev.key, None if ev.type == "delete" else ev.value)
                self.revision = max(self.revision, ev.revision)
            self._update("partial")

    def _update(self, kind: str, new: dict[str, PodPolicy] | None = None) -> None:
        t0 = time.monotonic()
        if new is None:
            new = self._compile()
        script = render.diff(self.table, new)
        if script:
            self.nft.apply(script, what=f"policy changes in table ip {render.TABLE}")
            old, self.table = self.table, new
            self._revoke(old, new)
        self.last_sync = {kind: time.monotonic() - t0}
        self._publish()

    def admit(self, pod: str, ip: str, timeout: float = 5.0) -> None:
        """CNI ADD of ``pod`` (``namespace/name``) with ``ip``, before the pod's
        interface has its address: its entries go in now, so it is isolated
        from its first packet. A pod the store does not know is not isolated
        (no policy can select it)."""
        if not pod or "/" not in pod:
            return
        self.listed_once.wait(timeout)
        ns, name = pod.split("/", 1)
        key = keys.pod(ns, name)
        kv = self.store.get(key)
        if kv is None:
            return
        with self.lock:
            self.admitted[key] = ip
            self.pods[key] = replace(PodRecord.from_json(kv.value), ip=ip, node=self.node)
            self.memo.clear()
            # only this pod: the others learn its IP from the store (until then
            # it is no peer of theirs: denied, never wrongly allowed)
            new = dict(self.table)
            new.pop(pod, None)
            new.update(self._compile(only={pod}))
            self._update("admit", new)

    def _revoke(self, old: dict[str, PodPolicy], new: dict[str, PodPolicy]) -> None:
        """Cut the established flows of changed pods that the table no longer
        allows (a node's own flows to its pods are always allowed)."""
        egress = {p.ip: p.egress for r, p in new.items() if p.egress and old.get(r) != p}
        ingress = {p.ip: p.ingress for r, p in new.items() if p.ingress and old.get(r) != p}
        if not egress and not ingress:
            return
        own = self.own_ips

        def doomed(f: Flow) -> bool:
            proto = PROTOCOLS.get(f.proto, str(f.proto))
            dst, port = f.reply_src, f.reply_sport  # the endpoint, after DNAT
            out = egress.get(f.src)
            if out is not None and not out.allows(dst, proto, port):
                return True
            into = ingress.get(dst)
            return into is not None and f.src not in own and not into.allows(f.src, proto, port)

        try:
            n = self.conntrack.delete_where(doomed)
        except KernelError as e:
            log.warning("cutting revoked flows failed: %s", e)
            return
        if n:
            log.info("policy: cut %d established flow(s) no longer allowed", n)

    def _publish(self) -> None:
        selecting = sorted(
            {
                ref
                for p in self.table.values()
                for a in (p.ingress, p.egress)
                if a is not None
                for ref in (*a.isolating, *(r.name.split()[0] for r in a.admin + a.baseline))
            }
        )
        status = PolicyStatus(self.node, self.revision, selecting, len(self.table), self.last_sync)
        try:
            self.store.put(keys.policy_status(self.node), status.to_json(), lease=self.status_lease)
        except Exception as e:  # the table is programmed; the status can wait
            log.warning("cannot publish policy status: %s", e)

    def run(self, stop: threading.Event) -> None:
        follow(
            self.store,
            (keys.NETWORK_POLICIES, keys.CLUSTER_POLICIES, keys.PODS, keys.NAMESPACES),
            stop,
            self.listed,
            self.changed,
            self.full_sync,
            self.resync,
            log,
        )
