"""The upstream NetworkPolicy truth table on a running lab (``flatnet lab check
--matrix``): every pod tries every other pod on one port and protocol, and the
result is compared with what the cluster's policies say
(:func:`flatnet.policy.verdict.decide`), cell by cell.

A probe runs inside the client pod's namespace (a thread that enters it): a
TCP connect, or for UDP a datagram that must be answered (agnhost
``serve-hostname``). A blocked probe costs its timeout, so all of a table's
probes run at once. Printed as the Kubernetes e2e suite prints it: ``.``
reached, ``X`` blocked, ``-`` the pod itself (not probed: the API leaves
loopback undefined).
"""

from __future__ import annotations

import socket
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from flatnet import keys, namespaces
from flatnet.agnhost import udp_answers
from flatnet.kernel import netns
from flatnet.lab.state import LabState
from flatnet.manifest import pod_ref
from flatnet.model import PodRecord
from flatnet.policy import objects as policy_objects
from flatnet.policy.verdict import Endpoint, decide
from flatnet.store import Store

__all__ = ["Table", "probe", "subjects", "tables"]


def probe(ns: str, ip: str, port: int, protocol: str, timeout: float = 1.0) -> bool:
    """Can a new connection from inside ``ns`` reach ``ip:port``?"""

    def attempt() -> bool:
        if protocol == "UDP":
            return udp_answers(ip, port, timeout)
        try:
            with socket.create_connection((ip, port), timeout=timeout):
                return True
        except OSError:
            return False

    return netns.run_in(netns.path_of(ns), attempt)


@dataclass(frozen=True)
class Table:
    port: int
    protocol: str
    pods: list[str]  # namespace/name, rows and columns alike
    observed: dict[tuple[str, str], bool]
    expected: dict[tuple[str, str], bool]

    @property
    def wrong(self) -> list[tuple[str, str]]:
        return [c for c, ok in self.observed.items() if self.expected.get(c) != ok]

    def text(self, which: str = "observed") -> str:
        cells = self.observed if which == "observed" else self.expected
        lines = ["\t".join(["-", *self.pods])]
        for src in self.pods:
            row = [src]
            for dst in self.pods:
                ok = cells.get((src, dst))
                row.append("-" if ok is None else "." if ok else "X")
            lines.append("\t".join(row))
        return "\n".join(lines)


def subjects(pods: list[PodRecord], port: int, protocol: str) -> list[PodRecord]:
    """The pods of the model: on a pod network, with an IP, declaring
    ``port``/``protocol`` among their container ports."""
    return sorted(
        (
            p
            for p in pods
            if p.mode == "bridge"
            and p.ip
            and any(int(n) == port and str(pr).upper() == protocol for n, pr in p.ports.values())
        ),
        key=lambda p: (p.namespace, p.name),
    )


def tables(
    st: LabState, store: Store, ports: list[int], protocols: list[str], timeout: float = 1.0
) -> list[Table]:
    """One table per (port, protocol), every probe of every table at once."""
    policies = list(policy_objects.load_all(store).values())
    cluster = list(policy_objects.load_cluster(store).values())
    everyone = [PodRecord.from_json(kv.value) for kv in store.range(keys.PODS)]
    ns_labels = {n: ns.labels for n, ns in namespaces.load_all(store).items()}
    jobs = []
    with ThreadPoolExecutor(max_workers=128) as pool:
        for port in ports:
            for proto in protocols:
                pods = subjects(everyone, port, proto)
                refs = [f"{p.namespace}/{p.name}" for p in pods]
                cells = {
                    (f"{a.namespace}/{a.name}", f"{b.namespace}/{b.name}"): (
                        pool.submit(probe, _netns(st, a), b.ip, port, proto, timeout),
                        decide(
                            policies,
                            ns_labels,
                            Endpoint(a.ip, a),
                            Endpoint(b.ip, b),
                            port,
                            proto,
                            cluster,
                        ).allowed,
                    )
                    for a in pods
                    for b in pods
                    if a is not b
                }
                jobs.append((port, proto, refs, cells))
        return [
            Table(
                port,
                proto,
                refs,
                {c: f.result() for c, (f, _) in cells.items()},
                {c: want for c, (_, want) in cells.items()},
            )
            for port, proto, refs, cells in jobs
        ]


def _netns(st: LabState, pod: PodRecord) -> str:
    return st.pods[pod_ref(pod.namespace, pod.name)].ns
