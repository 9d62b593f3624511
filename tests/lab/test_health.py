"""Health that is true: a pod's phase follows its processes, READY follows a
check of its port (named or not), only ready pods are endpoints, and a node
whose agent died turns NotReady within seconds."""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from lab.test_lab import flatnet, lab_namespaces

from flatnet.lab.state import LabState

pytestmark = pytest.mark.lab

LAB = """\
kind: Lab
name: {name}
nodes: [n1, n2]
---
apiVersion: v1
kind: Pod
metadata: {{name: web, labels: {{app: web}}}}
spec: {{nodeName: n1, containers: [{{name: main}}]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: crash, labels: {{app: web}}}}
spec: {{nodeName: n2, containers: [{{name: main, command: [sh, -c, "echo boom; exit 3"]}}]}}
---
apiVersion: v1
kind: Pod
metadata: {{name: once, labels: {{app: web}}}}
spec:
  nodeName: n2
  restartPolicy: Never
  containers: [{{name: main, command: [sh, -c, "exit 2"]}}]
---
apiVersion: v1
kind: Service
metadata: {{name: web}}
spec: {{selector: {{app: web}}, ports: [{{port: 80, targetPort: 8080}}]}}
"""

DEAF = """\
apiVersion: v1
kind: Pod
metadata: {name: deaf, labels: {app: web}}
spec:
  nodeName: n1
  containers: [{name: main, command: [sleep, infinity], ports: [{containerPort: 8080}]}]
"""


@pytest.fixture
def lab(uniq: str, tmp_path: Path) -> Iterator[tuple[str, str]]:
    f = tmp_path / "lab.yaml"
    f.write_text(LAB.format(name=uniq))
    try:
        r = flatnet("lab", "up", str(f))
        yield uniq, r.stdout + r.stderr
    finally:
        flatnet("lab", "down", uniq, check=False)
        assert lab_namespaces(uniq) == []


def pods(name: str) -> dict[str, dict]:  # type: ignore[type-arg]
    items = json.loads(flatnet("get", "pods", "--lab", name, "-o", "json").stdout)["items"]
    return {p["name"]: p for p in items}


def endpoint_pods(name: str) -> list[str]:
    got = json.loads(flatnet("get", "endpoints", "--lab", name, "-o", "json").stdout)
    return next(s["endpointPods"] for s in got["items"] if s["name"] == "web")


def until(what: str, check: object, timeout: float = 10) -> None:
    deadline = time.monotonic() + timeout
    while not check():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"not within {timeout}s: {what}"
        time.sleep(0.2)


def test_phase_and_readiness_follow_the_processes(lab: tuple[str, str], tmp_path: Path) -> None:
    name, said = lab
    # lab up comes up, and names what did not get ready and why
    assert "2/4 pod(s) ready" in said, said
    assert "pod/crash is not ready (CrashLoopBackOff: container 0 exited with code 3)" in said
    assert "pod/once is not ready (Error: container 0 exited with code 2)" in said
    ps = pods(name)
    assert (ps["web"]["status"], ps["web"]["ready"]) == ("Running", "1/1")
    assert (ps["once"]["phase"], ps["once"]["status"]) == ("Failed", "Error")
    assert ps["crash"]["ready"] == "0/1"
    until("crash restarted", lambda: pods(name)["crash"]["restarts"] >= 1)
    assert "boom" in flatnet("logs", "--lab", name, "crash").stdout
    assert endpoint_pods(name) == ["default/web"]  # only ready pods are endpoints
    # a port without a name is probed: a pod that does not listen is no endpoint
    f = tmp_path / "deaf.yaml"
    f.write_text(DEAF)
    r = flatnet("apply", "-f", str(f), "--lab", name, "--timeout", "2")
    assert "pod/deaf created" in r.stdout and "pod/deaf is not ready (Running)" in r.stderr
    assert pods(name)["deaf"]["ready"] == "0/1" and endpoint_pods(name) == ["default/web"]
    # a container that dies is restarted; while it is down the pod is not ready
    st = LabState.load(name)
    loop = next(p.pid for p in st.processes if p.what == "pod:web")
    (server,) = Path(f"/proc/{loop}/task/{loop}/children").read_text().split()
    os.kill(int(server), signal.SIGKILL)
    until("web restarted and ready", lambda: pods(name)["web"]["restarts"] == 1
          and pods(name)["web"]["ready"] == "1/1")  # fmt: skip
    assert endpoint_pods(name) == ["default/web"]


def test_a_killed_agent_turns_its_node_not_ready(lab: tuple[str, str]) -> None:
    name, _ = lab

    def status() -> dict[str, str]:
        got = json.loads(flatnet("get", "nodes", "--lab", name, "-o", "json").stdout)
        return {n["name"]: n["status"] for n in got["items"]}

    def programmed() -> str:
        got = json.loads(flatnet("get", "services", "--lab", name, "-o", "json").stdout)
        return ",".join(next(s for s in got["items"] if s["name"] == "web")["programmedOn"])

    assert status() == {"n1": "Ready", "n2": "Ready"} and programmed() == "n1,n2"
    st = LabState.load(name)
    agent = next(p.pid for p in st.processes if p.what == "agent:n2")
    os.kill(agent, signal.SIGKILL)  # no goodbye: only the heartbeat can tell
    t0 = time.monotonic()
    until("n2 NotReady", lambda: status()["n2"] == "NotReady", timeout=8)
    assert time.monotonic() - t0 < 8  # the subnet lease lives a day; this is seconds
    assert programmed() == "n1"
    table = flatnet("get", "services", "--lab", name).stdout
    assert "1/2" in table
    flatnet("lab", "restart-agent", "--lab", name, "n2")
    assert status() == {"n1": "Ready", "n2": "Ready"}
