"""The policy table's scripts against the real nftables: a diff from any state
to any other leaves exactly the table a full write of the new state makes, for
every pair of translated upstream cases in a row (and pods changing IPs)."""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from dataclasses import replace

import pytest
from policy_cases import CASES, render
from unit.test_policy_compile import NODES, load, load_all, model

from flatnet.kernel import netns
from flatnet.kernel.nft import Nft
from flatnet.policy import render as table
from flatnet.policy.compile import compile_node

pytestmark = pytest.mark.privileged


@pytest.fixture
def ns(uniq: str) -> Iterator[str]:
    name = f"fl-{uniq}-pt"
    netns.create(name)
    try:
        yield name
    finally:
        netns.delete(name)


def listing(ns: str) -> str:
    out = subprocess.run(
        ["ip", "netns", "exec", ns, "nft", "list", "table", "ip", table.TABLE],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    out = re.sub(r"counter packets \d+ bytes \d+", "counter", out)
    body = out.split("{", 1)[1].rsplit("}", 1)[0]
    return "\n\n".join(sorted(b.strip() for b in body.split("\n\n")))  # in any order


def test_every_diff_lands_on_the_full_table(ns: str) -> None:
    pods, ns_labels = model()
    ips = {k: p.ip for k, p in pods.items()}
    states = []
    for text in CASES.values():  # NetworkPolicies and ClusterNetworkPolicies
        pols, cnps = load_all(render(text, ips))
        states.append(compile_node(pols, pods.values(), ns_labels, NODES[0], cnps))
    moved = dict(pods, **{"x/a": replace(pods["x/a"], ip="10.244.0.99")})  # a pod's new IP
    deny = load(CASES["should support a 'default-deny-all' policy"])
    states.append(compile_node(deny, moved.values(), ns_labels, NODES[0]))
    states.append({})
    nft = Nft(ns)
    want = {}
    for i, s in enumerate(states):
        nft.apply(table.full(s.values()))
        want[i] = listing(ns)
    nft.apply(table.full(states[0].values()))
    for i in range(1, len(states)):
        script = table.diff(states[i - 1], states[i])
        if script:
            nft.apply(script)
        assert listing(ns) == want[i], f"after the diff into state {i}"
