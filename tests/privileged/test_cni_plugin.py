"""The CNI plugin against the real kernel, driven exactly as libcni drives it."""

from __future__ import annotations

import json
import os
import subprocess
import threading
from pathlib import Path

import pytest
from privileged.conftest import Node, start_agent

from flatnet.agent.pods import DOOMED
from flatnet.cni.install import conflist, install
from flatnet.cni.runtime import Chain
from flatnet.errors import CNIError
from flatnet.kernel import netns

pytestmark = pytest.mark.privileged


def pod_ip(n: Node, ns: str) -> str:
    out = json.loads(n.sh(ns, "ip", "-j", "-4", "addr", "show", "eth0").stdout)
    return str(out[0]["addr_info"][0]["local"])


@pytest.mark.parametrize("version", ["0.4.0", "1.0.0", "1.1.0"])
def test_add_check_del_in_every_version(node: Node, version: str) -> None:
    chain = node.chain(version)
    ns = node.pod_ns("a")
    res = chain.add("c1", ns, "eth0", pod=("default", "a"))
    assert res["cniVersion"] == version
    ip = res["ips"][0]["address"].split("/")[0]
    assert res["interfaces"][res["ips"][0]["interface"]]["sandbox"] == ns
    assert ("version" in res["ips"][0]) == (version == "0.4.0")
    assert pod_ip(node, ns) == ip and node.allocations() == [ip]
    assert node.sh(ns, "ping", "-c1", "-W1", res["ips"][0]["gateway"]).returncode == 0
    chain.check("c1", ns)
    chain.delete("c1", ns)
    assert node.veths() == set() and node.allocations() == []
    chain.delete("c1", ns)  # DEL twice: still success


def test_del_succeeds_when_netns_is_gone(node: Node) -> None:
    chain = node.chain()
    ns = node.pod_ns("gone")
    chain.add("c1", ns)
    netns.delete(ns.rsplit("/", 1)[1])
    r = chain.exec_plugin(
        chain.conf["plugins"][0],
        "DEL",
        {"CNI_CONTAINERID": "c1", "CNI_NETNS": "", "CNI_IFNAME": "eth0"},
    )
    assert r.code == 0, r.stdout
    assert node.allocations() == [] and node.veths() == set()


def test_check_detects_a_removed_address(node: Node) -> None:
    chain = node.chain()
    ns = node.pod_ns("chk")
    res = chain.add("c1", ns)
    node.sh(ns, "ip", "addr", "flush", "dev", "eth0")
    with pytest.raises(CNIError, match="lacks " + res["ips"][0]["address"].split("/")[0]):
        chain.check("c1", ns)


def test_chain_with_loopback_and_portmap(node: Node) -> None:
    """flatnet + portmap from Debian; loopback first, as runtimes call it."""
    client = node.pod_ns("client")
    subprocess.run(
        [
            "ip",
            "-n",
            node.ns,
            "link",
            "add",
            "up0",
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            client.rsplit("/", 1)[1],
        ],
        check=True,
    )
    node.sh(node.ns, "ip", "link", "set", "up0", "master", "ul0", "up")  # onto the underlay
    node.sh(client, "ip", "addr", "add", "192.168.9.2/24", "dev", "eth0")
    node.sh(client, "ip", "link", "set", "eth0", "up")
    ns = node.pod_ns("web")
    lo = Chain(
        {"cniVersion": "1.0.0", "name": "lo", "plugins": [{"type": "loopback"}]},
        ["/usr/lib/cni"],
        ns=node.ns,
    )
    lo.add("w1", ns, "lo")
    chain = node.chain("1.0.0", portmap=True)
    rc = {"portMappings": [{"hostPort": 18080, "containerPort": 8080, "protocol": "tcp"}]}
    res = chain.add("w1", ns, "eth0", pod=("default", "web"), runtime_config=rc)
    assert res["ips"][0]["address"].startswith("10.244.")
    assert node.sh(ns, "ping", "-c1", "-W1", "127.0.0.1").returncode == 0  # loopback is up
    srv = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            ns.rsplit("/", 1)[1],
            "python3",
            "-m",
            "flatnet.agnhost",
            "netexec",
            "--http-port",
            "8080",
        ],
        env=dict(os.environ, PYTHONPATH=str(Path(__file__).parents[2] / "src")),
    )
    try:
        out = ""
        for _ in range(50):
            r = node.sh(client, "curl", "-s", "-m", "1", "http://192.168.9.1:18080/clientip")
            if r.returncode == 0:
                out = r.stdout
                break
            threading.Event().wait(0.1)
        assert out.startswith("192.168.9.2:"), out  # the client's own IP, through portmap
    finally:
        srv.terminate()
        srv.wait()
    chain.delete("w1", ns, runtime_config=rc)
    rules = node.sh(node.ns, "iptables-save").stdout
    assert "18080" not in rules and node.veths() == set()


def test_bad_netns_path_leaves_nothing(node: Node) -> None:
    with pytest.raises(CNIError) as e:
        node.chain().add("c1", "/run/netns/does-not-exist-fl")
    assert e.value.cni_code == 4 and "does-not-exist-fl" in str(e.value)
    assert node.veths() == set() and node.allocations() == []


def test_failed_add_rolls_back_veth_and_ip(node: Node) -> None:
    ns = node.pod_ns("busy")
    name = ns.rsplit("/", 1)[1]
    subprocess.run(
        ["ip", "-n", name, "link", "add", "eth0", "type", "veth", "peer", "x0"], check=True
    )
    with pytest.raises(CNIError) as e:
        node.chain().add("c1", ns)
    assert e.value.cni_code == 5 and "exists already" in str(e.value)
    assert node.veths() == set() and node.allocations() == []


def test_agent_not_running_is_try_again_later(node: Node, tmp_path: Path) -> None:
    chain = node.chain("1.1.0", agentSocket=str(tmp_path / "nobody.sock"))
    with pytest.raises(CNIError) as e:
        chain.add("c1", node.pod_ns("x"))
    assert e.value.cni_code == 11 and "nobody.sock" in str(e.value)
    r = chain.exec_plugin(chain.conf["plugins"][0], "STATUS", {})
    assert r.code == 1 and r.json()["code"] == 50


def test_invalid_config_cidr(node: Node) -> None:
    with pytest.raises(CNIError) as e:
        node.chain(podCIDR="10.244.0.0/99").add("c1", node.pod_ns("x"))
    assert e.value.cni_code == 7 and "10.244.0.0/99" in str(e.value)
    assert node.veths() == set() and node.allocations() == []


def test_status_and_version(node: Node) -> None:
    chain = node.chain("1.1.0")
    assert chain.exec_plugin(chain.conf["plugins"][0], "STATUS", {}).code == 0
    v = chain.exec_plugin(chain.conf["plugins"][0], "VERSION", {}).json()
    assert v["supportedVersions"] == ["0.4.0", "1.0.0", "1.1.0"]


@pytest.mark.parametrize("kind", ["c", "python"])
def test_both_thin_entries_speak_the_same_protocol(node: Node, kind: str) -> None:
    """install-cni builds the compiled entry by default; the Python one is the
    fallback. Both must answer every verb alike."""
    bin_dir = node.dir / f"bin-{kind}"
    exe, _ = install(str(bin_dir), str(node.dir / f"net-{kind}"), node.socket, kind=kind)
    head = exe.read_bytes()[:4]
    assert (head == b"\x7fELF") == (kind == "c")
    conf = conflist(node.socket, portmap=False)
    conf["cniVersion"] = "1.1.0"
    chain = Chain(conf, [str(bin_dir), "/usr/lib/cni"], ns=node.ns, cache_dir=str(node.dir / kind))
    plugin = chain.conf["plugins"][0]
    for asked, answered in (("0.4.0", "0.4.0"), ("1.1.0", "1.1.0"), ("9.9.9", "1.1.0")):
        r = chain.exec_plugin(dict(plugin), "VERSION", {})
        chain.conf["cniVersion"] = asked
        v = chain.exec_plugin(dict(plugin), "VERSION", {}).json()
        assert r.code == 0 and v == {
            "cniVersion": answered,
            "supportedVersions": ["0.4.0", "1.0.0", "1.1.0"],
        }
    chain.conf["cniVersion"] = "1.1.0"
    ns = node.pod_ns(kind)
    res = chain.add("c1", ns)
    assert pod_ip(node, ns) == res["ips"][0]["address"].split("/")[0]
    chain.check("c1", ns)
    chain.delete("c1", ns)
    assert node.veths() == set() and node.allocations() == []
    # the agent's errors come back unchanged; an unreachable agent is 11 / 50
    env = chain._env("c2", ns, "eth0", None)
    bad = chain.exec_plugin(dict(plugin, podCIDR="10.0.0.0/99"), "ADD", env)
    assert bad.code == 1 and bad.json()["code"] == 7 and bad.json()["cniVersion"] == "1.1.0"
    gone = str(node.dir / "no such agent.sock")
    r = chain.exec_plugin(dict(plugin, agentSocket=gone), "ADD", env)
    assert r.code == 1 and r.json()["code"] == 11 and gone in r.json()["msg"]
    r = chain.exec_plugin(dict(plugin, agentSocket=str(node.dir / "nobody.sock")), "STATUS", {})
    err = r.json()
    assert r.code == 1 and err["code"] == 50 and "nobody.sock" in err["msg"]
    assert node.allocations() == []


def test_subnet_exhausted_names_subnet(small_node: Node) -> None:
    chain = small_node.chain()
    for i in range(5):  # a /29: .2 .. .6
        chain.add(f"c{i}", small_node.pod_ns(str(i)))
    with pytest.raises(CNIError) as e:
        chain.add("c9", small_node.pod_ns("9"))
    assert e.value.cni_code >= 100 and "10.250.0.0/29" in str(e.value)
    assert len(small_node.veths()) == 5 and len(small_node.allocations()) == 5


def test_hundred_concurrent_adds(node: Node) -> None:
    chain = node.chain()
    nss = [node.pod_ns(f"c{i}") for i in range(100)]
    ips: list[str] = []
    errors: list[Exception] = []
    lock = threading.Lock()

    def add(i: int) -> None:
        try:
            ip = chain.add(f"c{i}", nss[i])["ips"][0]["address"]
            with lock:
                ips.append(ip)
        except Exception as e:
            errors.append(e)

    threads = [threading.Thread(target=add, args=(i,)) for i in range(100)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(set(ips)) == 100
    assert len(node.veths()) == 100 and len(node.allocations()) == 100
    for i in range(100):
        chain.delete(f"c{i}", nss[i])
    assert node.veths() == set() and node.allocations() == []


def test_gc_keeps_only_valid_attachments(node: Node) -> None:
    chain = node.chain("1.1.0")
    nss = [node.pod_ns(str(i)) for i in range(3)]
    for i, ns in enumerate(nss):
        chain.add(f"c{i}", ns)
    chain.gc([("c1", "eth0")])
    assert len(node.allocations()) == 1 and len(node.veths()) == 1
    assert pod_ip(node, nss[1]) == node.allocations()[0]


def test_vanished_pod_ip_is_reclaimed(node: Node) -> None:
    chain = node.chain()
    ns = node.pod_ns("v")
    chain.add("c1", ns)
    netns.delete(ns.rsplit("/", 1)[1])  # runtime crashed: no DEL ever comes
    for _ in range(100):  # the kernel tears a namespace down asynchronously
        if not node.veths():
            break
        threading.Event().wait(0.05)
    assert node.agent.pods is not None
    assert len(node.agent.pods.orphans(grace=0)) == 1 and node.allocations() == []


def test_agent_restart_keeps_subnet_and_pods(node: Node) -> None:
    chain = node.chain()
    ns = node.pod_ns("r")
    res = chain.add("c1", ns)
    subnet = node.agent.lease.subnet  # type: ignore[union-attr]
    node.agent.stop()
    node.agent = start_agent(node.name, node.ns, node.dir)
    assert node.agent.lease.subnet == subnet  # type: ignore[union-attr]
    assert node.sh(ns, "ping", "-c1", "-W1", res["ips"][0]["gateway"]).returncode == 0
    chain.check("c1", ns)
    assert sorted(node.links()) == sorted(["lo", "ul0", "fl0", "flatnet.1", *node.veths()])
    assert len(node.veths()) == 1  # nothing duplicated


def test_del_cuts_the_pod_off_at_once_and_reaps_in_one_batch(node: Node) -> None:
    # a reaper window far longer than the test: only DEL itself acts before stop
    node.agent.stop()
    node.agent = start_agent(node.name, node.ns, node.dir, reap_delay=60)
    chain = node.chain()
    nss = [node.pod_ns(f"d{i}") for i in range(3)]
    gws = [chain.add(f"c{i}", ns)["ips"][0]["gateway"] for i, ns in enumerate(nss)]
    assert node.sh(nss[0], "ping", "-c1", "-W1", gws[0]).returncode == 0
    for i, ns in enumerate(nss):
        chain.delete(f"c{i}", ns)
    assert node.allocations() == []
    doomed = node.doomed()
    assert len(doomed) == 3
    info = {x["ifname"]: x for x in node.link_info()}
    assert all("UP" not in info[d]["flags"] for d in doomed)
    assert node.sh(nss[0], "ping", "-c1", "-W1", gws[0]).returncode != 0  # no carrier
    # the same container and ifname again, in the same namespace: ADD reaps first
    chain.add("c0", nss[0])
    assert node.doomed() == set() and len(node.veths(settle=0)) == 1
    assert node.sh(nss[0], "ping", "-c1", "-W1", gws[0]).returncode == 0
    chain.delete("c0", nss[0])
    node.agent.stop()  # stopping reaps what is pending
    assert node.doomed() == set() and node.veths(settle=0) == set()
    node.agent = start_agent(node.name, node.ns, node.dir)


def test_after_del_the_pod_shows_no_address_and_no_route(small_node: Node) -> None:
    """DEL returns only once the pod's side is off the network, though the
    veth's destruction waits for the reaper: a runtime (or a user) checking
    right after DEL sees no address and no route, and the freed IP is never
    held by two namespaces at once — also when DEL comes without CNI_NETNS."""
    node = small_node  # a /29: five pod IPs, so freed ones come round again soon
    node.agent.stop()
    node.agent = start_agent(node.name, node.ns, node.dir, reap_delay=60)
    chain = node.chain()
    ns0, ns1 = node.pod_ns("a0"), node.pod_ns("a1")

    def held(ns: str) -> str:
        return node.sh(ns, "ip", "-4", "-o", "addr", "show", "scope", "global").stdout

    ip0 = chain.add("c0", ns0)["ips"][0]["address"].split("/")[0]
    assert ip0 in held(ns0) and "default via" in node.sh(ns0, "ip", "route").stdout
    chain.delete("c0", ns0)
    assert held(ns0) == "" and node.sh(ns0, "ip", "route").stdout == ""
    assert len(node.doomed()) == 1  # the veth itself waits for the reaper
    # without CNI_NETNS the namespace cannot be entered: the veth goes at once
    ip1 = chain.add("c1", ns1)["ips"][0]["address"].split("/")[0]
    assert ip1 in held(ns1)
    chain.delete("c1", "")
    assert held(ns1) == "" and "eth0" not in node.sh(ns1, "ip", "link").stdout
    assert node.allocations() == []
    # every address of the subnet, in new pods: the two freed ones too, each
    # held by its new pod alone
    new = {node.pod_ns(f"b{i}"): "" for i in range(5)}
    for i, ns in enumerate(new):
        new[ns] = chain.add(f"n{i}", ns)["ips"][0]["address"].split("/")[0]
    assert sorted(new.values()) == [f"10.250.0.{i}" for i in range(2, 7)]
    for ns, ip in new.items():
        assert held(ns).count("inet ") == 1 and ip in held(ns)
    assert held(ns0) == held(ns1) == ""


def test_agent_start_reaps_veths_doomed_before_a_crash(node: Node) -> None:
    chain = node.chain()
    ns = node.pod_ns("k")
    chain.add("c1", ns)
    node.agent.stop()
    # what a DEL leaves if the agent dies before its reaper runs
    (veth,) = node.veths()
    node.sh(node.ns, "ip", "link", "set", veth, "down", "group", str(DOOMED))
    assert node.doomed() == {veth}
    node.agent = start_agent(node.name, node.ns, node.dir)
    assert node.doomed() == set() and node.veths(settle=0) == set()


def test_node_has_masquerade_only_for_leaving_traffic(node: Node) -> None:
    rules = node.sh(node.ns, "nft", "list", "table", "ip", "flatnet-nat").stdout
    assert "ip saddr 10.244.0.0/16 ip daddr 10.244.0.0/16 return" in rules
    assert "masquerade fully-random" in rules
    assert node.sh(node.ns, "sysctl", "-n", "net.ipv4.ip_forward").stdout.strip() == "1"


def test_vxlan_device_and_tx_checksum_switch(uniq: str, tmp_path: Path) -> None:
    """The node's VXLAN device follows flannel's recipe; txChecksumOffload: false
    turns TX checksum offload off on it (flannel's ethtool workaround, built in)."""
    from privileged.conftest import running_node

    from flatnet.model import NetworkConfig

    net = NetworkConfig(backend_options={"txChecksumOffload": False, "vni": 4, "port": 4789})
    for node in running_node(uniq, tmp_path, net):
        info = json.loads(node.sh(node.ns, "ip", "-j", "-d", "link", "show", "flatnet.4").stdout)[0]
        data = info["linkinfo"]["info_data"]
        assert data["id"] == 4 and data["port"] == 4789 and data["learning"] is False
        assert data["local"] == "192.168.9.1" and info["mtu"] == 1450
        assert info["address"] == "0a:58:0a:f4:00:00"  # pinned: <subnet .0>
        feats = node.sh(node.ns, "ethtool", "-k", "flatnet.4").stdout
        assert "tx-checksumming: off" in feats
