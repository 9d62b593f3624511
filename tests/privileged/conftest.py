from __future__ import annotations

import json
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from flatnet.agent.daemon import Agent, AgentOptions
from flatnet.agent.pods import DOOMED
from flatnet.cni.install import conflist, install
from flatnet.cni.runtime import Chain
from flatnet.kernel import netns
from flatnet.model import NetworkConfig

pytestmark = pytest.mark.privileged


@dataclass
class Node:
    name: str
    ns: str
    dir: Path
    agent: Agent
    made: list[str] = field(default_factory=list)

    @property
    def socket(self) -> str:
        return str(self.dir / "agent.sock")

    def pod_ns(self, tag: str) -> str:
        name = f"{self.name}-p{tag}"
        netns.create(name)
        self.made.append(name)
        return netns.path_of(name)

    def chain(self, version: str = "1.0.0", portmap: bool = False, **extra: object) -> Chain:
        conf = conflist(self.socket, portmap=portmap)
        conf["cniVersion"] = version
        conf["plugins"][0].update(extra)
        return Chain(
            conf,
            [str(self.dir / "bin"), "/usr/lib/cni"],
            ns=self.ns,
            cache_dir=str(self.dir / "cache"),
        )

    def sh(self, ns: str, *cmd: str) -> subprocess.CompletedProcess[str]:
        name = ns.rsplit("/", 1)[-1]
        return subprocess.run(["ip", "netns", "exec", name, *cmd], capture_output=True, text=True)

    def link_info(self) -> list[dict]:
        out = subprocess.run(
            ["ip", "-n", self.ns, "-j", "-d", "link"], capture_output=True, text=True
        )
        return list(json.loads(out.stdout))

    def links(self) -> list[str]:
        return [link["ifname"] for link in self.link_info()]

    def doomed(self) -> set[str]:
        """Host veths a DEL took down, waiting for the agent's reaper."""
        return {x["ifname"] for x in self.link_info() if x.get("group") == str(DOOMED)}

    def veths(self, settle: float = 5.0) -> set[str]:
        """flatnet host veths once the reaper has destroyed the deleted ones
        (it batches them for ``reap_delay``); fails if it never does."""
        deadline = time.monotonic() + settle
        while self.doomed():
            assert time.monotonic() < deadline, f"veths never reaped: {self.doomed()}"
            time.sleep(0.05)
        return {
            x["ifname"]
            for x in self.link_info()
            if x["ifname"].startswith("fl") and x.get("linkinfo", {}).get("info_kind") == "veth"
        }

    def allocations(self) -> list[str]:
        assert self.agent.pods is not None
        return [a.ip for a in self.agent.pods.ipam.allocations()]


def start_agent(
    name: str, ns: str, d: Path, net: NetworkConfig | None = None, reap_delay: float = 0.5
) -> Agent:
    a = Agent(
        AgentOptions(
            node="node1",
            store_url=f"sqlite://{d / 'store.db'}",
            socket_path=str(d / "agent.sock"),
            underlay_ip="192.168.9.1",
            ns=netns.path_of(ns),
            network=net,
            reclaim_every=3600,
            reap_delay=reap_delay,
        )
    )
    a.start()
    return a


def make_node(uniq: str, tmp_path: Path, net: NetworkConfig | None = None) -> Node:
    name = f"fl-{uniq}"
    ns = name + "-n"
    netns.create(ns)
    # the node's underlay: a port-less bridge holding the node IP
    subprocess.run(["ip", "-n", ns, "link", "add", "ul0", "type", "bridge"], check=True)
    subprocess.run(["ip", "-n", ns, "addr", "add", "192.168.9.1/24", "dev", "ul0"], check=True)
    subprocess.run(["ip", "-n", ns, "link", "set", "ul0", "up"], check=True)
    install(str(tmp_path / "bin"), str(tmp_path / "net.d"), str(tmp_path / "agent.sock"))
    try:
        agent = start_agent(name, ns, tmp_path, net)
    except BaseException:
        netns.delete(ns)
        raise
    return Node(name, ns, tmp_path, agent, [ns])


def running_node(uniq: str, tmp_path: Path, net: NetworkConfig | None = None) -> Iterator[Node]:
    """A node with its agent; stops the agent and deletes every namespace it made."""
    n = make_node(uniq, tmp_path, net)
    try:
        yield n
    finally:
        n.agent.stop()
        for ns in reversed(n.made):
            netns.delete(ns)


@pytest.fixture
def node(uniq: str, tmp_path: Path) -> Iterator[Node]:
    yield from running_node(uniq, tmp_path)


@pytest.fixture
def small_node(uniq: str, tmp_path: Path) -> Iterator[Node]:
    yield from running_node(uniq, tmp_path, NetworkConfig("10.250.0.0/24", 29))
