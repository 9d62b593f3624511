"""The agent's policy follower on fakes: what it writes to nftables for a
listing, a pod admitted at CNI ADD (before the store knows its IP), and which
established flows a change cuts (not the node's own)."""

from __future__ import annotations

import socket
from collections.abc import Callable
from pathlib import Path

import pytest

from flatnet import keys
from flatnet.kernel.conntrack import Flow
from flatnet.kernel.fake import FakeFirewall
from flatnet.model import Namespace, PodRecord, PolicyStatus
from flatnet.policy.model import LabelSelector, NetworkPolicy
from flatnet.policy.sync import PolicySync
from flatnet.store import KV, Event
from flatnet.store.sqlite import SqliteStore

A = PodRecord("a", "x", "n1", "10.244.0.5", labels={"app": "a"})
B = PodRecord("b", "y", "n2", "10.244.1.5")
DENY = NetworkPolicy("deny", "x", LabelSelector(), ("Ingress",))


class Flows:
    """Conntrack as a list of flows; records what was deleted."""

    def __init__(self, flows: list[Flow]) -> None:
        self.flows, self.deleted = flows, []  # type: ignore[var-annotated]

    def delete_udp(self, targets: object) -> int:
        return 0

    def delete_where(self, doomed: Callable[[Flow], bool]) -> int:
        gone = [f for f in self.flows if doomed(f)]
        self.deleted += gone
        self.flows = [f for f in self.flows if f not in gone]
        return len(gone)


@pytest.fixture
def store(tmp_path: Path) -> SqliteStore:
    s = SqliteStore(str(tmp_path / "store.db"))
    yield s  # type: ignore[misc]
    s.close()


def tcp(src: str, dst: str, dport: int) -> Flow:
    return Flow(socket.IPPROTO_TCP, src, dst, 40000, dport, dst, dport)


def kvs(*objs: object) -> list[KV]:
    out = []
    for i, o in enumerate(objs, 1):
        key = o.key if hasattr(o, "key") else keys.network_policy(o.namespace, o.name)  # type: ignore[attr-defined]
        out.append(KV(key, o.to_json(), i, i))  # type: ignore[attr-defined]
    return out


def test_listing_writes_the_table_and_a_change_cuts_the_flows_it_revokes(
    store: SqliteStore,
) -> None:
    nft = FakeFirewall()
    ct = Flows([tcp(B.ip, A.ip, 80), tcp("10.244.0.1", A.ip, 80), tcp(A.ip, B.ip, 80)])
    sync = PolicySync(store, nft, ct, "n1", {"10.244.0.1"})  # type: ignore[arg-type]
    sync.listed(kvs(A, B, Namespace.of("x"), Namespace.of("y")), 4)
    assert "ingress-pods" in nft.scripts[-1] and "jump ingress-x/a" not in nft.scripts[-1]
    assert ct.deleted == []
    sync.changed([Event("put", keys.network_policy("x", "deny"), DENY.to_json(), 5)])
    assert (
        f"add element ip flatnet-policy ingress-pods {{ {A.ip} : jump ingress-x/a }}"
        in (nft.scripts[-1])
    )
    # b's connection into a is cut; the node's own (10.244.0.1) and a's own way out stay
    assert ct.deleted == [tcp(B.ip, A.ip, 80)]
    got = store.get(keys.policy_status("n1"))
    assert got is not None
    status = PolicyStatus.from_json(got.value)
    assert (status.revision, status.policies, status.isolated) == (5, ["x/deny"], 1)


def test_a_pod_is_admitted_with_its_ip_before_the_store_has_it(store: SqliteStore) -> None:
    nft = FakeFirewall()
    sync = PolicySync(store, nft, Flows([]), "n1", set())  # type: ignore[arg-type]
    c = PodRecord("c", "x", "n1", "", labels={"app": "c"})  # as the API server has it
    store.put(c.key, c.to_json())
    sync.listed(kvs(A, c, DENY), 3)
    assert "ingress-x/c" not in nft.scripts[-1]  # no IP: nothing to enter yet
    sync.admit("x/c", "10.244.0.9")
    assert "10.244.0.9 : jump ingress-x/c" in nft.scripts[-1]
    # the kubelet writes the pod again, still without the IP: it stays in the table
    n = len(nft.scripts)
    sync.changed([Event("put", c.key, c.to_json(), 4)])
    assert len(nft.scripts) == n  # nothing to change
    assert sync.table["x/c"].ip == "10.244.0.9"
    sync.changed([Event("delete", c.key, "", 5)])
    assert "delete element ip flatnet-policy ingress-pods { 10.244.0.9 }" in nft.scripts[-1]


def test_what_compiles_keep_never_changes_what_they_produce(store: SqliteStore) -> None:
    """Through every translated case applied and deleted as events, a pod's
    status update and a relabel, the table kept from compile to compile is the
    one a fresh compile makes."""
    from dataclasses import replace

    from policy_cases import CASES, render
    from unit.test_policy_compile import NODES, load_all, model

    from flatnet.policy import objects
    from flatnet.policy.compile import compile_node

    pods, ns_labels = model()
    sync = PolicySync(store, FakeFirewall(), Flows([]), NODES[0], set())  # type: ignore[arg-type]
    spaces = [Namespace("x", ns_labels["x"]), Namespace("y", ns_labels["y"]),
              Namespace("z", ns_labels["z"])]  # fmt: skip
    sync.listed(kvs(*pods.values(), *spaces), 1)
    rev = 1

    def event(kind: str, key: str, value: str = "") -> None:
        nonlocal rev
        rev += 1
        sync.changed([Event(kind, key, value, rev)])  # type: ignore[arg-type]

    def fresh() -> dict[str, object]:
        return compile_node(sync.policies.values(), sync.pods.values(), ns_labels, NODES[0],
                            sync.cluster.values())  # fmt: skip

    ips = {k: p.ip for k, p in pods.items()}
    for text in CASES.values():
        pols, cnps = load_all(render(text, ips))
        for p in [*pols, *cnps]:
            event("put", objects.key(p), p.to_json())
        assert sync.table == fresh()
        ready = replace(pods["x/a"], ready=True, restarts=3)  # status only
        event("put", ready.key, ready.to_json())
        assert sync.table == fresh()
        for p in [*pols, *cnps]:
            event("delete", objects.key(p))
        assert sync.table == fresh() == {}
    # a relabel with a policy in place
    pols, _ = load_all(CASES["should enforce policy based on any PodSelectors"])
    for p in pols:
        event("put", objects.key(p), p.to_json())
    moved = replace(pods["x/b"], labels={"pod": "q"})
    event("put", moved.key, moved.to_json())
    assert sync.table == fresh() and not sync.table["x/a"].ingress.allows(moved.ip, "TCP", 80)  # type: ignore[union-attr]
    # the same policy changed in place (its name stays): its lists are made again
    from policy_cases import np

    from flatnet.manifest import docs
    from flatnet.policy.manifest import network_policy

    for peer in ("c", "a"):
        spec = "podSelector: {}\ningress: [{from: [{podSelector: {matchLabels: {pod: PEER}}}]}]"
        spec = spec.replace("PEER", peer)
        ((node, data),) = docs(np("same-name", "x", spec), "p.yaml")
        p = network_policy(data, node, "p.yaml")
        event("put", objects.key(p), p.to_json())
        assert sync.table == fresh()
    assert sync.table["x/a"].ingress.allows(pods["x/a"].ip, "TCP", 80)  # type: ignore[union-attr]
