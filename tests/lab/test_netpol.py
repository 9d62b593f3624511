"""NetworkPolicy on a 3-node lab of the upstream model (examples/netpol.yaml:
namespaces x, y, z × pods a, b, c serving 80 and 81 on TCP and UDP), once per
backend (vxlan, host-gw, udp) with the eBPF fast path on, and on vxlan with it
off.

Every translated upstream case (tests/policy_cases.py), and our
ClusterNetworkPolicy cases of the tiers' order, is applied, and the
kernel's truth table — 9×9 real connection attempts per port and protocol —
must equal what the API says (the oracle) in every cell; then it is deleted and
everything reaches everything again. Also: label changes of pods and
namespaces take effect at once; an established connection a change revokes
stops; a new pod is isolated from its first packet; the table keeps enforcing
while the agent is down, and is the same after it restarts.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import struct
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from lab.test_lab import flatnet, lab_namespaces
from policy_cases import CASES, render

from flatnet import keys
from flatnet.kernel import netns
from flatnet.lab.lab import Lab
from flatnet.lab.reach import tables
from flatnet.lab.state import LABS_DIR
from flatnet.lab.waits import revision_of, wait_policies
from flatnet.manifest import docs
from flatnet.policy import objects
from flatnet.policy.files import split

pytestmark = pytest.mark.lab
EXAMPLE = Path(__file__).parents[2] / "examples" / "netpol.yaml"
PROTOCOLS = ["TCP", "UDP"]


@pytest.fixture(scope="module", params=["vxlan", "host-gw", "udp", "vxlan/no-fast-path"])
def lab(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    name = "np" + uuid.uuid4().hex[:6]
    backend, _, slow = request.param.partition("/")
    text = EXAMPLE.read_text().replace("name: netpol", f"name: {name}")
    net = f"backend: {backend}" + (", fastPath: false" if slow else "")
    text = text.replace("backend: vxlan", net)
    f = tmp_path_factory.mktemp(name) / "lab.yaml"
    f.write_text(text)
    try:
        flatnet("lab", "up", str(f))
        yield name
    finally:
        flatnet("lab", "down", name, check=False)
        assert lab_namespaces(name) == []
        assert not (LABS_DIR / name).exists()


def fast_path(name: str) -> bool:
    return "fastPath: false" not in Path(Lab.load(name).st.file).read_text()


def main_lab(name: str) -> bool:
    """vxlan and host-gw with the fast path run every test; udp the cases and
    spoofing; vxlan without the fast path revocation, first packets and spoofing."""
    text = Path(Lab.load(name).st.file).read_text()
    return "fastPath: false" not in text and "backend: udp" not in text


def ips(the: Lab) -> dict[str, str]:
    return {f"{p.namespace}/{ref.rpartition('/')[2]}": p.ip for ref, p in the.st.pods.items()}


def apply(the: Lab, text: str) -> list[str]:
    pols = [p for _, p in split(docs(text, "case.yaml"), "case.yaml", None)[1]]
    s = the.store()
    try:
        objects.apply(s, pols)
        wait_policies(s, revision_of(s, [objects.key(p) for p in pols]))
    finally:
        s.close()
    return [p.ref for p in pols]


def delete_all(the: Lab) -> None:
    s = the.store()
    try:
        objects.delete(s, [*objects.load_all(s).values(), *objects.load_cluster(s).values()])
        deadline = time.monotonic() + 10
        while any(json.loads(kv.value)["isolated"] for kv in s.range(keys.POLICY)):
            assert time.monotonic() < deadline, "policy tables still isolate pods"
            time.sleep(0.02)
    finally:
        s.close()


def wrong_cells(the: Lab, ports: tuple[int, ...] = (80, 81), timeout: float = 0.5) -> list[str]:
    s = the.store()
    try:
        out = tables(the.st, s, list(ports), PROTOCOLS, timeout)
    finally:
        s.close()
    assert all(len(t.pods) == 9 for t in out)
    return [
        f"{a}->{b} {t.protocol}/{t.port}: {'reached' if t.observed[(a, b)] else 'blocked'}"
        for t in out
        for a, b in t.wrong
    ]


def test_every_translated_case_as_the_api_says(lab: str) -> None:
    if not fast_path(lab):
        pytest.skip("the cases run on the fast-path labs; this one is for revocation and spoofing")
    the = Lab.load(lab)
    assert wrong_cells(the) == []  # no policy: all reach all
    failures = {}
    for case, text in CASES.items():
        apply(the, render(text, ips(the)))
        wrong = wrong_cells(the)
        if wrong:
            failures[case] = wrong[:4]
        delete_all(the)
    assert failures == {}
    assert wrong_cells(the) == []


def test_the_cli_path_and_label_changes(lab: str, tmp_path: Path) -> None:
    if not main_lab(lab):
        pytest.skip("runs on the vxlan and host-gw labs")
    the = Lab.load(lab)
    f = tmp_path / "p.yaml"
    f.write_text(CASES["should allow ingress access from updated pod"])
    r = flatnet("apply", "-f", str(f), "--lab", lab, "--wait")
    assert "networkpolicy.networking.k8s.io/allow-client-a-via-pod-selector created" in r.stdout
    item = json.loads(flatnet("get", "netpol", "-n", "x", "--lab", lab, "-o", "json").stdout)
    assert item["items"][0]["pods"] == ["x/a"] and len(item["items"][0]["programmedOn"]) == 3
    # lab check --matrix: the table, and exit 0 because it is what the policy says
    r = flatnet("lab", "check", "--matrix", "--lab", lab, "--port", "80", "--protocol", "tcp")
    assert r.returncode == 0 and "72/72 cells as the policies say" in r.stdout
    row_b = next(ln.split() for ln in r.stdout.splitlines() if ln.startswith("x/b"))
    assert row_b[:3] == ["x/b", "X", "-"]  # x/b cannot reach x/a yet
    # the pod gets the label: x/b may reach x/a at once
    pod_b = EXAMPLE.read_text().split("---\n")[5]  # x/b
    assert "name: b, namespace: x" in pod_b
    (tmp_path / "b.yaml").write_text(pod_b.replace("{pod: b}", "{pod: b, pod2: updated}"))
    flatnet("apply", "-f", str(tmp_path / "b.yaml"), "--lab", lab)
    assert wrong_cells(the, (80,)) == []
    s = the.store()
    try:
        cells = tables(the.st, s, [80], ["TCP"], 0.5)[0].observed
    finally:
        s.close()
    assert cells[("x/b", "x/a")] and not cells[("x/c", "x/a")]
    # and loses it again
    (tmp_path / "b.yaml").write_text(pod_b)
    flatnet("apply", "-f", str(tmp_path / "b.yaml"), "--lab", lab)
    assert wrong_cells(the, (80,)) == []
    # a namespace's labels: y gets ns2=updated, and y's pods may reach x/a
    apply(the, CASES["should allow ingress access from updated namespace"])
    (tmp_path / "ns.yaml").write_text(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: y, labels: {ns: y, ns2: updated}}\n"
    )
    flatnet("apply", "-f", str(tmp_path / "ns.yaml"), "--lab", lab, "--wait")
    assert wrong_cells(the, (80,)) == []
    flatnet("delete", "-f", str(f), "--lab", lab)
    delete_all(the)
    (tmp_path / "ns.yaml").write_text(
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: y, labels: {ns: y}}\n"
    )
    flatnet("apply", "-f", str(tmp_path / "ns.yaml"), "--lab", lab, "--wait")
    assert wrong_cells(the, (80,)) == []


def test_a_revoked_connection_stops_within_a_second(lab: str) -> None:
    """z/a holds a TCP connection to x/a:82; a policy that no longer allows it
    cuts it, fast path on or off."""
    the = Lab.load(lab)
    ns = {ref: p.ns for ref, p in the.st.pods.items()}
    srv = netns.socket_in(netns.path_of(ns["x/a"]), socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", 82))
    srv.listen(1)

    def echo() -> None:
        c, _ = srv.accept()
        with c, contextlib.suppress(OSError):  # reset once the flow is cut
            while data := c.recv(100):
                c.sendall(data)

    threading.Thread(target=echo, daemon=True).start()
    cli = netns.socket_in(netns.path_of(ns["z/a"]), socket.AF_INET, socket.SOCK_STREAM)
    try:
        cli.settimeout(1)
        cli.connect((the.st.pods["x/a"].ip, 82))
        for i in range(20):  # established, and (fast path on) carried by it
            cli.sendall(b"%d" % i)
            assert cli.recv(100) == b"%d" % i
        apply(the, CASES["should support a 'default-deny-ingress' policy"])
        time.sleep(1.0)
        cli.settimeout(0.5)
        try:
            cli.sendall(b"after")
            echoed: bytes | None = cli.recv(100)
        except OSError:
            echoed = None  # dropped: no answer
        assert echoed in (None, b""), echoed  # b"": the server saw a reset and closed
    finally:
        cli.close()
        srv.close()
        delete_all(the)


POD_D = """\
apiVersion: v1
kind: Pod
metadata: {name: d, namespace: x, labels: {pod: d}}
spec:
  nodeName: node1
  restartPolicy: Never
  containers:
  - name: first-packet
    command: [python, -m, flatnet.agnhost, connect, "TARGET:80", --timeout, 1s]
"""


def test_a_new_pod_is_isolated_from_its_first_packet(lab: str, tmp_path: Path) -> None:
    """x denies all egress; a new pod of x whose very first act is a connect to
    y/a must fail it (its entries are in the table before its CNI ADD returns)."""
    the = Lab.load(lab)
    apply(the, CASES["should deny egress from all pods in a namespace"])
    f = tmp_path / "d.yaml"
    f.write_text(POD_D.replace("TARGET", the.st.pods["y/a"].ip))
    try:
        flatnet("apply", "-f", str(f), "--lab", lab, "--timeout", "5", check=False)
        deadline = time.monotonic() + 10
        while True:  # the container runs one connect (1 s at most), then exits
            got = flatnet("get", "pods", "d", "-n", "x", "--lab", lab, "-o", "json").stdout
            pod = json.loads(got)["items"][0]
            if pod["status"] in ("Error", "Completed") or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert pod["status"] == "Error", pod  # the connect failed: exit code 1
        log = flatnet("logs", "--lab", lab, "-n", "x", "d").stdout
        assert "connect" in log and "timed out" in log
    finally:
        flatnet("delete", "-f", str(f), "--lab", lab, check=False)
        delete_all(the)


def test_the_kernel_enforces_while_the_agent_is_down(lab: str) -> None:
    if not main_lab(lab):
        pytest.skip("runs on the vxlan and host-gw labs")
    the = Lab.load(lab)
    apply(the, CASES["should enforce policy based on PodSelector or NamespaceSelector"])
    node = the.st.pods["x/a"].node
    table = ["ip", "netns", "exec", the.st.nodes[node].ns, "nft", "list", "table", "ip",
             "flatnet-policy"]  # fmt: skip

    def listing() -> str:  # counters aside
        out = subprocess.run(table, capture_output=True, text=True, check=True).stdout
        return re.sub(r"counter packets \d+ bytes \d+", "counter", out)

    before = listing()
    agent = next(p.pid for p in the.st.processes if p.what == f"agent:{node}")
    os.kill(agent, signal.SIGKILL)
    try:
        assert wrong_cells(the, (80,)) == []  # no agent on x/a's node: still enforced
    finally:
        Lab.load(lab).restart_agent(node)
    deadline = time.monotonic() + 10
    while listing() != before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert listing() == before  # the restarted agent wrote the same table
    assert wrong_cells(the, (80,)) == []
    delete_all(the)


def _udp_packet(src: str, dst: str, sport: int, dport: int, payload: bytes) -> bytes:
    """An IPv4 + UDP packet as a raw-socket sender writes it (the kernel fills
    in the IP checksum; UDP checksum 0: none)."""
    udp = struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload
    ip = struct.pack(
        "!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, socket.IPPROTO_UDP, 0,
        socket.inet_aton(src), socket.inet_aton(dst),
    )  # fmt: skip
    return ip + udp


def _arp_reply(sender_mac: str, sender_ip: str, target_mac: str, target_ip: str) -> bytes:
    smac, tmac = (bytes.fromhex(m.replace(":", "")) for m in (sender_mac, target_mac))
    arp = struct.pack("!HHBBH", 1, 0x0800, 6, 4, 2) + smac + socket.inet_aton(sender_ip)
    return tmac + smac + b"\x08\x06" + arp + tmac + socket.inet_aton(target_ip)


def test_pods_cannot_forge_who_they_are(lab: str) -> None:
    """Raw datagrams from y/c (x/a's node) and z/a (another node) with y/a's
    source IP and with a foreign one never reach x/a, an honest one does; a
    forged ARP reply (y/c claims the gateway) does not change x/a's neighbour;
    the forged frames are counted in the sender's guard chain."""
    from flatnet.kernel import links

    the = Lab.load(lab)
    pods = the.st.pods
    xa, ya = pods["x/a"].ip, pods["y/a"].ip
    assert pods["y/c"].node == pods["x/a"].node != pods["z/a"].node
    rx = netns.socket_in(netns.path_of(pods["x/a"].ns), socket.AF_INET, socket.SOCK_DGRAM)
    rx.bind(("0.0.0.0", 9999))
    rx.settimeout(1.0)
    try:
        for attacker in ("y/c", "z/a"):

            def send(attacker: str = attacker) -> None:
                with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as honest:
                    honest.sendto(b"honest", (xa, 9999))
                with socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW) as raw:
                    for forged in (ya, "10.99.0.7", "192.168.50.254"):
                        raw.sendto(_udp_packet(forged, xa, 4000, 9999, b"forged"), (xa, 0))

            netns.run_in(netns.path_of(pods[attacker].ns), send)
            data, peer = rx.recvfrom(100)
            assert (data, peer[0]) == (b"honest", pods[attacker].ip)
            with pytest.raises(TimeoutError):
                data, peer = rx.recvfrom(100)
                pytest.fail(f"forged datagram arrived: {data!r} from {peer}")
        # ARP: x/a knows its gateway; y/c tells x/a "the gateway is at my MAC"
        gw = xa.rsplit(".", 1)[0] + ".1"  # node subnets are /24 in the example
        x_ns = pods["x/a"].ns
        subprocess.run(["ip", "netns", "exec", x_ns, "ping", "-c", "1", "-W", "1", gw],
                       capture_output=True)  # fmt: skip
        time.sleep(1.1)  # past the neighbour's locktime: an honest reply would now be taken
        frame = _arp_reply(links.ip_mac(pods["y/c"].ip), gw, links.ip_mac(xa), xa)

        def forge() -> None:
            with socket.socket(socket.AF_PACKET, socket.SOCK_RAW) as s:
                s.bind(("eth0", 0))
                for _ in range(3):
                    s.send(frame)

        netns.run_in(netns.path_of(pods["y/c"].ns), forge)
        time.sleep(0.3)
        neigh = subprocess.run(["ip", "-n", x_ns, "neigh", "show", gw], capture_output=True,
                               text=True).stdout  # fmt: skip
        assert links.ip_mac(gw) in neigh and links.ip_mac(pods["y/c"].ip) not in neigh, neigh
        veth = links.host_veth_name(pods["y/c"].container_id, "eth0")
        node_ns = the.st.nodes[pods["y/c"].node].ns
        chain = subprocess.run(
            ["ip", "netns", "exec", node_ns, "nft", "list", "chain", "bridge", "flatnet-guard",
             f"guard-{veth}"], capture_output=True, text=True, check=True,
        ).stdout  # fmt: skip
        counted = int(re.search(r"counter packets (\d+)", chain).group(1))  # type: ignore[union-attr]
        assert counted >= 6 and '"y/c: forged source"' in chain  # 3 datagrams + 3 ARP replies
        counts = json.loads(flatnet("policy", "log", "--count", "--lab", lab, "-o", "json").stdout)
        sent = {
            (c["pod"], c["reason"]): c["packets"]
            for c in counts["items"]
            if c["direction"] == "sent"
        }
        assert sent[("y/c", "forged source")] == counted
    finally:
        rx.close()


def test_denied_attempts_are_logged_counted_and_explained(lab: str) -> None:
    """The cluster admin's tiers through the CLI: an Admin Deny and a Baseline
    Deny around x/a's own policy; every denied cell of the matrix appears in
    `flatnet policy log` with the rule or policy that denied it, the kernel's
    counters count them, and `policy explain` names the same."""
    if not main_lab(lab):
        pytest.skip("runs on the vxlan and host-gw labs")
    the = Lab.load(lab)
    examples = EXAMPLE.parent / "manifests"
    for f in ("netpol-x-from-y.yaml", "cnp-tiers.yaml"):
        flatnet("apply", "-f", str(examples / f), "--lab", lab, "--wait")
    try:
        cnps = json.loads(flatnet("get", "cnp", "--lab", lab, "-o", "json").stdout)["items"]
        assert [(c["name"], c["tier"], c["pods"]) for c in cnps] == [
            ("z-never-reaches-x", "Admin", ["x/a", "x/b", "x/c"]),
            ("x-default-closed-to-y", "Baseline", ["x/a", "x/b", "x/c"]),
        ]
        since = time.time()  # the lab's log holds the earlier tests' attempts too
        s = the.store()
        try:
            (table,) = tables(the.st, s, [80], ["TCP"], 0.5)
        finally:
            s.close()
        assert table.wrong == []
        denied = {c for c, ok in table.observed.items() if not ok}
        assert (
            ("z/a", "x/a") in denied and ("y/a", "x/b") in denied and ("y/a", "x/a") not in denied
        )
        deadline = time.monotonic() + 5
        while True:
            r = flatnet("policy", "log", "--lab", lab, "-o", "json")
            lines = [json.loads(x) for x in r.stdout.splitlines()]
            lines = [x for x in lines if x["time"] >= since - 0.5]
            logged = {(x["srcPod"], x["dstPod"]) for x in lines if x["port"] == 80}
            if denied <= logged or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert denied <= logged, denied - logged
        why = {(x["srcPod"], x["dstPod"]): x["reason"] for x in lines}
        assert why[("z/a", "x/a")] == "denied by cnp/z-never-reaches-x ingress[0] (deny-from-z)"
        assert why[("y/a", "x/b")] == "denied by cnp/x-default-closed-to-y ingress[0]"
        assert why[("x/b", "x/a")] == "isolated by x/x-a-from-y"
        text = flatnet("policy", "log", "--lab", lab, "--pod", "x/b").stdout
        assert "DENIED x/b (" in text and "TCP/80 ingress of x/a: isolated by x/x-a-from-y" in text
        counts = json.loads(flatnet("policy", "log", "--count", "--lab", lab, "-o", "json").stdout)
        by = {(c["pod"], c["reason"]): c["packets"] for c in counts["items"]}
        assert by[("x/a", "isolated by x/x-a-from-y")] >= 2  # x/b and x/c
        r = flatnet("policy", "explain", "z/a", "x/a", "--port", "80", "--lab", lab, check=False)
        assert r.returncode == 1
        assert "Admin tier: Deny by cnp/z-never-reaches-x ingress[0] (deny-from-z)" in r.stdout
    finally:
        for f in ("netpol-x-from-y.yaml", "cnp-tiers.yaml"):
            flatnet("delete", "-f", str(examples / f), "--lab", lab)
        delete_all(the)


SERVICE = """\
apiVersion: v1
kind: Service
metadata: {name: web, namespace: x}
spec:
  selector: {pod: a}
  ports: [{port: 8000, targetPort: 80}]
"""


def _connects(ns: str, ip: str, port: int) -> bool:
    from flatnet.lab.reach import probe

    return probe(ns, ip, port, "TCP", 0.5)


def test_services_are_judged_on_the_endpoint_and_the_own_node_always_reaches(
    lab: str, tmp_path: Path
) -> None:
    """x/a takes only y: through its ClusterIP, y/a gets in and z/a does not
    (policy sees the endpoint after DNAT, and the client pod's own IP);
    x/a's own node reaches it, another node does not (only an ipBlock could
    let it in)."""
    if not main_lab(lab):
        pytest.skip("runs on the vxlan and host-gw labs")
    the = Lab.load(lab)
    f = tmp_path / "svc.yaml"
    f.write_text(SERVICE)
    flatnet("apply", "-f", str(f), "--lab", lab, "--wait")
    try:
        svc = json.loads(flatnet("get", "svc", "web", "-n", "x", "--lab", lab, "-o", "json").stdout)
        vip = svc["items"][0]["clusterIP"]
        pods = the.st.pods
        assert _connects(pods["y/a"].ns, vip, 8000) and _connects(pods["z/a"].ns, vip, 8000)
        only_y = "only from a different namespace, based on NamespaceSelector"
        apply(the, next(text for case, text in CASES.items() if only_y in case))
        assert _connects(pods["y/a"].ns, vip, 8000)
        assert not _connects(pods["z/a"].ns, vip, 8000)
        xa = pods["x/a"]
        own = the.st.nodes[xa.node].ns
        other = next(n.ns for name, n in the.st.nodes.items() if name != xa.node)
        assert _connects(own, xa.ip, 80)  # the kubelet's probes come from here
        assert not _connects(other, xa.ip, 80)
    finally:
        flatnet("delete", "-f", str(f), "--lab", lab)
        delete_all(the)
