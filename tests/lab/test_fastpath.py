"""The eBPF fast path (flatnet/fastpath/) on real labs, per backend.

What a user checks: the program sits on exactly the devices it should (the
underlay, the tunnel device, every pod's host veth — not the bridge), its map
holds exactly this node's pods; an established pod->pod transfer arrives whole,
from the client's own IP, while the nodes' IP stacks forward almost none of it
and (vxlan) the receiving VXLAN device sees almost none of it, decapsulated on
the underlay device instead (and all of it with the fast path off, so the
counts can tell); the
closed flow does not stay ESTABLISHED in conntrack; an agent killed mid-transfer
and restarted swaps in a new program without breaking the transfer; turning the
fast path off leaves no program anywhere.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from lab.test_lab import flatnet, pods
from lab.test_multinode import up

from flatnet import fastpath
from flatnet.lab.lab import Lab
from flatnet.lab.state import LabState

pytestmark = pytest.mark.lab

LAB = "kind: Lab\nname: {name}\nnetwork: {{backend: {backend}}}\nnodes: [node1, node2]\n"
POD = "---\n{apiVersion: v1, kind: Pod, metadata: {name: %s}, spec: {nodeName: %s, containers: [{name: s, command: [sleep, infinity]}]}}\n"  # noqa: E501
PODS = "".join(POD % pn for pn in (("a", "node1"), ("c", "node1"), ("b", "node2")))
# a and c share node1 (bridged to each other), b is across on node2

SINK = textwrap.dedent("""
    import socket, sys
    s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((sys.argv[1], 5301)); s.listen(1); print("ready", flush=True)
    c, peer = s.accept(); n = 0
    while (b := c.recv(1 << 16)):
        n += len(b)
    print(peer[0], peer[1], n, flush=True)
""")
SOURCE = textwrap.dedent("""
    import socket, sys, time
    c = socket.create_connection((sys.argv[1], 5301)); buf = bytes(1 << 16)
    end = time.monotonic() + float(sys.argv[3]); sent = 0
    while sent < int(sys.argv[2]):
        c.sendall(buf); sent += len(buf)
        if time.monotonic() < end:
            time.sleep(0.002)  # spread over the seconds asked for
    c.close()
""")


@pytest.fixture(params=["host-gw", "vxlan"])
def lab2(request: pytest.FixtureRequest, uniq: str, tmp_path: Path) -> Iterator[str]:
    f = tmp_path / "lab.yaml"
    f.write_text(LAB.format(name=uniq, backend=request.param) + PODS)
    yield from up(f, uniq)  # removed afterwards, nothing left behind


def pod_ns(p: dict) -> str:  # type: ignore[type-arg]
    return str(p["netns"]).rsplit("/", 1)[1]


def host_ifindex(p: dict) -> int:  # type: ignore[type-arg]
    """The ifindex (in the node) of the host end of the pod's veth."""
    out = subprocess.run(
        ["ip", "-n", pod_ns(p), "-j", "link", "show", "eth0"], capture_output=True, text=True
    )
    return int(json.loads(out.stdout)[0]["link_index"])


def forwarded(ns: str) -> int:
    """Packets the node's IP stack has forwarded so far."""
    out = subprocess.run(
        ["ip", "netns", "exec", ns, "cat", "/proc/net/snmp"], capture_output=True, text=True
    ).stdout.splitlines()
    head, vals = (line.split() for line in out if line.startswith("Ip:"))
    return int(vals[head.index("ForwDatagrams")])


def tunnel(ns: str, backend: str, way: str) -> int:
    """Packets the VXLAN device received ("rx") or sent ("tx"); 0 for other backends."""
    if backend != "vxlan":
        return 0
    out = subprocess.run(
        ["ip", "-n", ns, "-s", "-j", "link", "show", "flatnet.1"], capture_output=True, text=True
    )
    return int(json.loads(out.stdout)[0]["stats64"][way]["packets"])


def transfer(src: dict, dst: dict, nbytes: int, seconds: float = 0.0, during=None):  # type: ignore[no-untyped-def, type-arg]
    """Send ``nbytes`` from pod ``src`` to pod ``dst`` over one TCP connection;
    returns (peer IP seen by the receiver, bytes received)."""
    sink = subprocess.Popen(
        ["ip", "netns", "exec", pod_ns(dst), sys.executable, "-c", SINK, dst["ip"]],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert sink.stdout is not None and sink.stdout.readline().strip() == "ready"
        cmd = [sys.executable, "-c", SOURCE, dst["ip"], str(nbytes), str(seconds)]
        source = subprocess.Popen(["ip", "netns", "exec", pod_ns(src), *cmd])
        if during is not None:
            during()
        assert source.wait(timeout=60) == 0
        peer, _, got = sink.stdout.readline().split()
        return peer, int(got)
    finally:
        sink.kill()
        sink.wait()


def test_fast_path(lab2: str) -> None:
    st = LabState.load(lab2)
    ps = pods(lab2)
    backend = json.loads(flatnet("get", "nodes", "--lab", lab2, "-o", "json").stdout)["items"][0][
        "backend"
    ]
    # 1. where the program is, and what its map holds
    progs = set()
    for node, info in st.nodes.items():
        now = fastpath.status(info.ns)
        devices, entries = now.devices, now.pods
        mine = [
            p
            for p in json.loads(flatnet("get", "pods", "-A", "--lab", lab2, "-o", "json").stdout)[
                "items"
            ]
            if p["node"] == node and p.get("ip") and p.get("netns")
        ]
        veths = {host_ifindex(p): p["ip"] for p in mine}
        links = json.loads(
            subprocess.run(
                ["ip", "-n", info.ns, "-j", "link"], capture_output=True, text=True
            ).stdout
        )
        name_of = {link["ifindex"]: link["ifname"] for link in links}
        want = {"eth0", *(name_of[i] for i in veths)}
        if backend == "vxlan":
            want.add("flatnet.1")
        assert set(devices) == want, (node, devices)
        assert all(len(ids) == 1 for ids in devices.values())
        progs |= {ids[0] for ids in devices.values()}
        assert entries == {ip: idx for idx, ip in veths.items()}, node
        # VXLAN is decapsulated here only from the peers the agent programmed
        others = sorted(i.underlay_ip for n, i in st.nodes.items() if n != node)
        assert now.peers == (others if backend == "vxlan" else []), now.peers
    assert len(progs) == 2  # one program per node
    shown = flatnet("lab", "fast-path", "--lab", lab2).stdout
    assert f"a={ps['a']['ip']}" in shown and f"b={ps['b']['ip']}" in shown, shown
    assert all(str(i) in shown for i in progs) and "eth0" in shown

    # 2. an established flow goes around both nodes' stacks, whole, un-NATed
    n1, n2 = st.nodes["node1"].ns, st.nodes["node2"].ns
    before = forwarded(n1), forwarded(n2), tunnel(n1, backend, "tx"), tunnel(n2, backend, "rx")
    peer, got = transfer(ps["a"], ps["b"], 64 << 20)
    fast = forwarded(n1) - before[0], forwarded(n2) - before[1]
    assert (peer, got) == (ps["a"]["ip"], 64 << 20)
    assert max(fast) < 50, fast  # the handshake, the close, a few early segments
    # vxlan: encapsulated on node1 and decapsulated on node2 by the program, not
    # by flatnet.1
    vx = tunnel(n1, backend, "tx") - before[2], tunnel(n2, backend, "rx") - before[3]
    assert max(vx) < 50, vx
    # the closed flow was seen closing: not left ESTABLISHED on either node
    time.sleep(0.5)
    for ns in (n1, n2):
        ct = subprocess.run(
            ["ip", "netns", "exec", ns, "conntrack", "-L", "-p", "tcp", "--dport", "5301"],
            capture_output=True,
            text=True,
        ).stdout
        assert ct.strip() and "ESTABLISHED" not in ct, ct
    # same node, bridged (not routed): untouched by the program, still fine
    assert transfer(ps["a"], ps["c"], 4 << 20) == (ps["a"]["ip"], 4 << 20)

    # 3. agent killed mid-transfer and restarted: the transfer completes, the
    # new program replaces the old one on every device
    old = fastpath.status(n1).devices

    def restart() -> None:
        time.sleep(0.5)
        pid = next(p.pid for p in st.processes if p.what == "agent:node1")
        os.kill(pid, signal.SIGKILL)
        Lab(st).restart_agent("node1")

    assert transfer(ps["a"], ps["b"], 32 << 20, seconds=3, during=restart) == (
        ps["a"]["ip"],
        32 << 20,
    )
    after = fastpath.status(n1)
    new, entries = after.devices, after.pods
    assert set(new) == set(old) and all(len(ids) == 1 for ids in new.values())
    assert {ids[0] for ids in new.values()} != {ids[0] for ids in old.values()}
    assert len({ids[0] for ids in new.values()}) == 1
    assert ps["a"]["ip"] in entries and ps["c"]["ip"] in entries

    # 4. off: no program anywhere, and the stack forwards the same transfer
    flatnet("lab", "set-backend", "--lab", lab2, "--no-fast-path", backend)
    for info in st.nodes.values():
        assert fastpath.status(info.ns) == fastpath.Status()
    assert flatnet("lab", "fast-path", "--lab", lab2).stdout.count(" off ") == 2
    before = forwarded(n1), forwarded(n2), tunnel(n1, backend, "tx"), tunnel(n2, backend, "rx")
    assert transfer(ps["a"], ps["b"], 64 << 20) == (ps["a"]["ip"], 64 << 20)
    slow = forwarded(n1) - before[0], forwarded(n2) - before[1]
    assert min(slow) > 500, slow
    if backend == "vxlan":
        vx = tunnel(n1, backend, "tx") - before[2], tunnel(n2, backend, "rx") - before[3]
        assert min(vx) > 500, vx
