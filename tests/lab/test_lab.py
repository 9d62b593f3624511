"""A whole lab, as users run it: `flatnet lab up/exec/get/cni/check/down`."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from flatnet.kernel import netns
from flatnet.lab.state import LABS_DIR

pytestmark = pytest.mark.lab
SRC = str(Path(__file__).parents[2] / "src")

LAB = """\
kind: Lab
name: {name}
datastore: {datastore}
nodes: [node1]
external: true
---
apiVersion: v1
kind: Pod
metadata: {{name: a, labels: {{app: web}}}}
spec: {{nodeName: node1, containers: [{{name: main}}]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: b}}
spec: {{nodeName: node1, containers: [{{name: main}}]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: hostpod}}
spec: {{nodeName: node1, hostNetwork: true, containers: [{{name: s, command: [sleep, infinity]}}]}}
---
apiVersion: v1
kind: Pod
metadata:
  name: isolated
  annotations: {{flatnet.io/network-mode: none}}
spec: {{nodeName: node1, containers: [{{name: s, command: [sleep, infinity]}}]}}
---
apiVersion: v1
kind: Pod
metadata:
  name: side
  annotations: {{flatnet.io/network-mode: "container:a"}}
spec:
  nodeName: node1
  containers:
  - {{name: s, command: [sleep, infinity]}}
  - {{name: t, command: [sleep, infinity]}}
"""


def flatnet(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, PYTHONPATH=SRC, COLUMNS="200")
    r = subprocess.run(
        [sys.executable, "-m", "flatnet", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    if check:
        assert r.returncode == 0, r.stdout + r.stderr
    return r


def lab_namespaces(name: str) -> list[str]:
    return (
        [n for n in os.listdir(netns.NS_DIR) if n.startswith(f"fl-{name}-")]
        if netns.NS_DIR.exists()
        else []
    )


@pytest.fixture(params=["sqlite", pytest.param("etcd", marks=pytest.mark.etcd)])
def lab(request: pytest.FixtureRequest, uniq: str, tmp_path: Path) -> Iterator[str]:
    f = tmp_path / "lab.yaml"
    f.write_text(LAB.format(name=uniq, datastore=request.param))
    try:
        flatnet("lab", "up", str(f))
        yield uniq
    finally:
        flatnet("lab", "down", uniq, check=False)
        assert lab_namespaces(uniq) == []
        assert not (LABS_DIR / uniq).exists()


def pods(name: str) -> dict[str, dict]:  # type: ignore[type-arg]
    items = json.loads(flatnet("get", "pods", "--lab", name, "-o", "json").stdout)["items"]
    return {p["name"]: p for p in items if p["namespace"] != "kube-system"}


def run(name: str, target: str, *cmd: str) -> subprocess.CompletedProcess[str]:
    return flatnet("lab", "exec", "--lab", name, target, "--", *cmd, check=False)


def test_single_node_lab(lab: str) -> None:
    ps = pods(lab)
    node = json.loads(flatnet("get", "nodes", "--lab", lab, "-o", "json").stdout)["items"][0]
    assert set(ps) == {"a", "b", "hostpod", "isolated", "side"}
    assert {"name", "node", "ip", "netns", "labels"} <= set(ps["a"])
    assert ps["a"]["labels"] == {"app": "web"}
    a, b = ps["a"]["ip"], ps["b"]["ip"]
    # bridge: own IPs in the node subnet, the same seen from inside the pod
    assert run(lab, "a", "ip", "-4", "-o", "addr", "show", "eth0").stdout.split()[3] == a + "/24"
    # pod -> pod: ping and TCP, and the server sees the client's own IP
    assert run(lab, "a", "ping", "-c1", "-W1", b).returncode == 0
    seen = run(
        lab, "a", sys.executable, "-m", "flatnet.agnhost", "get", f"http://{b}:8080/clientip"
    )
    assert seen.stdout.startswith(a + ":"), seen
    # pod -> external: reached, masqueraded to the node's IP (leaves the cluster)
    ext = run(
        lab,
        "b",
        sys.executable,
        "-m",
        "flatnet.agnhost",
        "get",
        "http://192.168.50.254:8080/clientip",
    )
    assert ext.stdout.startswith(node["underlayIP"] + ":"), ext
    assert run(lab, "b", "ping", "-c1", "-W1", "192.168.50.254").returncode == 0
    # node -> pod, no NAT (source is the bridge gateway, a node address)
    assert run(lab, "node1", "ping", "-c1", "-W1", a).returncode == 0
    # host mode: the node's network; none: only loopback; container: shares a's network
    assert ps["hostpod"]["ip"] == node["underlayIP"]
    assert "eth0" in run(lab, "hostpod", "ip", "-o", "link").stdout
    iso = run(lab, "isolated", "ip", "-o", "link").stdout.strip().splitlines()
    assert len(iso) == 1 and ": lo:" in iso[0] and "UP" in iso[0]
    assert ps["isolated"]["ip"] == ""
    assert ps["side"]["ip"] == a and ps["side"]["netns"] == ps["a"]["netns"]
    assert (
        run(
            lab, "side", sys.executable, "-m", "flatnet.agnhost", "connect", "127.0.0.1:8080"
        ).returncode
        == 0
    )  # a's server, on the shared loopback
    # each pod has its own hostname (a UTS namespace), as kubelet gives it
    name = "/proc/sys/kernel/hostname"
    assert [run(lab, t, "cat", name).stdout for t in ("a", "side", "hostpod")] == [
        "a\n", "a\n", socket.gethostname() + "\n",
    ]  # fmt: skip
    assert run(lab, "a", "getent", "hosts", "a").stdout.split() == [ps["a"]["ip"], "a"]
    from flatnet.lab.state import LabState

    pid = next(p.pid for p in LabState.load(lab).processes if p.what == "pod:a")
    assert (
        subprocess.run(
            ["nsenter", "--uts", "--target", str(pid), "cat", name], capture_output=True, text=True
        ).stdout
        == "a\n"
    )  # the pod's own process too
    # the check command agrees, and says what it skipped and why
    check = flatnet("lab", "check", "--lab", lab)
    assert "probes passed" in check.stdout and "FAIL" not in check.stdout
    assert "skipped hostpod: hostNetwork" in check.stdout
    report = json.loads(flatnet("lab", "check", "--lab", lab, "-o", "json").stdout)
    assert report["passed"] == report["total"] == len(report["probes"]) > 0
    assert set(report["skipped"]) == {"hostpod", "isolated", "side", "kube-system/kube-dns"}
    assert "shares a's network" in report["skipped"]["side"]
    # an outside harness can drive the node's CNI
    cni = json.loads(flatnet("lab", "cni", "--lab", lab, "node1").stdout)
    assert os.path.exists(cni["netns"]) and os.access(cni["binDir"] + "/flatnet", os.X_OK)
    assert os.path.exists(cni["binDir"] + "/portmap")
    assert any(f.endswith(".conflist") for f in os.listdir(cni["confDir"]))


def test_lab_file_mistake_makes_nothing(uniq: str, tmp_path: Path) -> None:
    f = tmp_path / "bad.yaml"
    f.write_text(
        LAB.format(name=uniq, datastore="sqlite").replace(
            "nodeName: node1, hostNet", "nodeName: node7, hostNet"
        )
    )
    r = flatnet("lab", "up", str(f), check=False)
    assert r.returncode == 1 and f"{f}:20: spec.nodeName: 'node7'" in r.stderr, r.stderr
    assert lab_namespaces(uniq) == [] and not (LABS_DIR / uniq).exists()
    # a command that does not exist: refused before anything is made
    text = LAB.format(name=uniq, datastore="sqlite")
    f.write_text(
        text.replace("command: [sleep, infinity]}]}\n---", "command: [/nonexistent]}]}\n---", 1)
    )
    r = flatnet("lab", "up", str(f), check=False)
    assert r.returncode == 1 and r.stderr.count("\n") == 1, r.stderr
    assert f"{f}: pod 'hostpod': container 0: command '/nonexistent' is not found" in r.stderr
    assert lab_namespaces(uniq) == [] and not (LABS_DIR / uniq).exists()


def test_failure_during_build_removes_everything(uniq: str, tmp_path: Path) -> None:
    f = tmp_path / "lab.yaml"
    text = LAB.format(name=uniq, datastore="sqlite")
    # a /30 per node holds one pod IP: kube-dns gets it, pod a finds none (CNI ADD fails)
    bad = text.replace("nodes: [node1]", "network: {nodeSubnetLength: 30}\nnodes: [node1]")
    assert bad != text
    f.write_text(bad)
    kept = LABS_DIR / f"{uniq}.failed"
    try:
        r = flatnet("lab", "up", str(f), check=False)
        assert r.returncode == 1 and "10.244.0.0/30" in r.stderr, r.stderr
        assert lab_namespaces(uniq) == [] and not (LABS_DIR / uniq).exists()
        # ... but not the logs: the user is told where they are
        assert f"the lab was removed; its logs are in {kept}" in r.stderr
        assert "node node1 ready" in (kept / "nodes" / "node1" / "agent.log").read_text()
        # or the lab is kept as it failed, to look inside
        r = flatnet("lab", "up", str(f), "--keep-on-failure", check=False)
        assert r.returncode == 1 and "is kept as it failed" in r.stderr
        assert lab_namespaces(uniq) != []
        agent = flatnet("lab", "logs", "--lab", uniq, "node1", "--tail", "3").stdout
        assert 0 < len(agent.splitlines()) <= 3
        assert ": br0:" in run(uniq, "switch", "ip", "-o", "link").stdout  # the switch itself
        gone = run(uniq, "nosuch", "true")
        assert gone.returncode == 1 and "hosts: external, switch" in gone.stderr
        typo = run(uniq, "switch", "brigde", "link")
        assert typo.returncode == 1 and typo.stderr.count("\n") == 1
        assert "command 'brigde' is not found" in typo.stderr
    finally:
        flatnet("lab", "down", uniq, check=False)  # the lab, and the logs kept before
        shutil.rmtree(kept, ignore_errors=True)
    assert lab_namespaces(uniq) == [] and not kept.exists()
    # the logs alone: lab down removes them too, and says so
    r = flatnet("lab", "up", str(f), check=False)
    assert r.returncode == 1 and kept.exists()
    assert "the logs of the failed lab" in flatnet("lab", "down", uniq).stdout
    assert not kept.exists()


APPLY = """\
apiVersion: v1
kind: Pod
metadata: {{name: b, labels: {labels}}}
spec: {{nodeName: node1, containers: [{{name: main{command}}}]}}
---
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec: {{selector: {{app: web}}, ports: [{{port: 80, targetPort: 8080}}]}}
"""


def test_apply_and_delete_say_what_they_did_like_kubectl(lab: str, tmp_path: Path) -> None:
    f = tmp_path / "m.yaml"

    def apply(labels: str, command: str = "") -> subprocess.CompletedProcess[str]:
        f.write_text(APPLY.format(labels=labels, command=command))
        return flatnet("apply", "-f", str(f), "--lab", lab, check=False)

    def endpoint_pods() -> list[str]:
        got = json.loads(flatnet("get", "endpoints", "--lab", lab, "-o", "json").stdout)
        return next(s["endpointPods"] for s in got["items"] if s["name"] == "web")

    ip = pods(lab)["b"]["ip"]
    r = apply("{}")
    assert r.returncode == 0 and "service/web created" in r.stdout and "pod/b unchanged" in r.stdout
    assert "service/web unchanged" in apply("{}").stdout
    # relabel in place: the pod keeps running and keeps its IP; the service follows
    r = apply("{app: web}")
    assert "pod/b configured" in r.stdout and "service/web unchanged" in r.stdout, r.stdout
    assert pods(lab)["b"]["labels"] == {"app": "web"} and pods(lab)["b"]["ip"] == ip
    assert endpoint_pods() == ["default/a", "default/b"]
    # lab check reaches the service by its DNS name from every test pod
    report = json.loads(flatnet("lab", "check", "--lab", lab, "-o", "json").stdout)
    svc = [r for r in report["probes"] if r["kind"] == "pod→service"]
    assert {r["client"] for r in svc} == {"a", "b"} and all(r["passed"] for r in svc), svc
    assert {r["target"] for r in svc} == {"web.default.svc.cluster.local:80"}
    assert "pod/b configured" in apply("{}").stdout and endpoint_pods() == ["default/a"]
    # what cannot change in place is refused, naming it, and nothing is changed
    r = apply("{app: web}", ", command: [sleep, '60']")
    assert r.returncode == 1 and "spec.containers[].command cannot change in place" in r.stderr
    assert pods(lab)["b"]["labels"] == {} and endpoint_pods() == ["default/a"]
    # delete says deleted, then not found (an error unless --ignore-not-found)
    r = flatnet("delete", "-f", str(f), "--lab", lab, check=False)
    assert r.returncode == 0 and "service/web deleted" in r.stdout and "pod/b deleted" in r.stdout
    r = flatnet("delete", "-f", str(f), "--lab", lab, check=False)
    assert r.returncode == 1 and "service/web not found" in r.stderr
    assert "pod/b not found" in r.stderr
    r = flatnet("delete", "-f", str(f), "--lab", lab, "--ignore-not-found", check=False)
    assert r.returncode == 0 and "not found (ignored)" in r.stdout


def test_check_with_nothing_to_probe_fails(uniq: str, tmp_path: Path) -> None:
    f = tmp_path / "empty.yaml"
    f.write_text(f"kind: Lab\nname: {uniq}\nnodes: [node1]\ndns: false\n")
    try:
        flatnet("lab", "up", str(f))
        r = flatnet("lab", "check", "--lab", uniq, check=False)
        assert r.returncode == 1 and "0/0 probes passed" in r.stdout
        assert "no probes ran" in r.stderr
        r = flatnet("lab", "check", "--lab", uniq, "-o", "yaml", check=False)
        assert r.returncode == 1 and "not supported (wide or json)" in r.stderr
    finally:
        flatnet("lab", "down", uniq, check=False)
    assert lab_namespaces(uniq) == []
