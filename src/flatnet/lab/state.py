"""The lab's state file: everything a lab made, written as it is made.

``/run/flatnet/labs/<name>/state.json`` lists the namespaces (by exact name)
and processes (PID + kernel start time, so a recycled PID is never killed)
that belong to the lab, so ``flatnet lab down`` undoes exactly them — also
after a crash halfway through ``lab up``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from flatnet.errors import ConfigError
from flatnet.kernel import netns
from flatnet.kernel.bird import Bird
from flatnet.kernel.haproxy import HAProxy
from flatnet.model import Camel

__all__ = ["LABS_DIR", "LabState", "NodeState", "PodState", "Process", "alive", "list_labs"]

LABS_DIR = Path(os.environ.get("FLATNET_LABS_DIR", "/run/flatnet/labs"))


def _start_time(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


@dataclass
class NodeState(Camel):
    """A lab node: its namespace, underlay IP, CNI dirs and the agent's command."""

    _wire = {
        "underlay_ip": "underlayIP",
        "conf_dir": "confDir",
        "bin_dir": "binDir",
        "agent_argv": "agentArgv",
    }
    ns: str
    underlay_ip: str
    socket: str = ""
    conf_dir: str = ""
    bin_dir: str = ""
    agent_argv: list[str] = field(default_factory=list)


@dataclass
class PodState(Camel):
    """A lab pod: where it runs, its namespace (its own, its node's, or the one
    it shares), its IP ("" without one) and the container ID CNI knows it by."""

    _wire = {"container_id": "containerID", "restart_policy": "restartPolicy"}
    node: str
    namespace: str
    mode: str
    container_id: str
    ns: str
    ip: str = ""
    labels: dict[str, str] = field(default_factory=dict)
    commands: list[list[str]] = field(default_factory=list)  # per container, as applied
    ports: dict[str, list[Any]] = field(default_factory=dict)  # named container ports
    probe: int = 0  # readiness: the TCP port that must answer (0: running is ready)
    restart_policy: str = "Always"
    created: float = field(default_factory=time.time)


@dataclass(frozen=True)
class Process(Camel):
    """A process the lab started: PID, kernel start time (so a recycled PID is
    never taken for it) and what it is (``agent:node1``, ``pod:web``...)."""

    pid: int
    start: str
    what: str


@dataclass
class LabState:
    name: str
    file: str = ""
    store_url: str = ""
    datastore: str = "sqlite"
    namespaces: list[str] = field(default_factory=list)
    processes: list[Process] = field(default_factory=list)
    nodes: dict[str, NodeState] = field(default_factory=dict)
    pods: dict[str, PodState] = field(default_factory=dict)
    external: str = ""
    router: str = ""
    router_as: int = 0  # routed: the router's AS, for the BIRD it runs under bgp
    etcd_argv: list[str] = field(default_factory=list)
    segments: list[str] = field(default_factory=list)
    etc_dirs: list[str] = field(default_factory=list)  # /etc/netns/<pod ns> (resolv.conf)
    created: float = field(default_factory=time.time)

    @property
    def dir(self) -> Path:
        return LABS_DIR / self.name

    def save(self) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        tmp = self.dir / "state.json.tmp"
        d = asdict(self)
        d["processes"] = [p.to_dict() for p in self.processes]
        d["nodes"] = {k: v.to_dict() for k, v in self.nodes.items()}
        d["pods"] = {k: v.to_dict() for k, v in self.pods.items()}
        tmp.write_text(json.dumps(d, indent=1))
        os.replace(tmp, self.dir / "state.json")

    @classmethod
    def load(cls, name: str) -> LabState:
        p = LABS_DIR / name / "state.json"
        try:
            d = json.loads(p.read_text())
        except FileNotFoundError:
            raise ConfigError(f"no lab named '{name}' (no {p})") from None
        d["processes"] = [Process.from_dict(x) for x in d.get("processes", [])]
        d["nodes"] = {k: NodeState.from_dict(v) for k, v in d.get("nodes", {}).items()}
        d["pods"] = {k: PodState.from_dict(v) for k, v in d.get("pods", {}).items()}
        return cls(**d)

    def add_ns(self, name: str) -> str:
        self.namespaces.append(name)
        self.save()
        return netns.create(name)

    def add_process(self, pid: int, what: str) -> None:
        self.processes.append(Process(pid, _start_time(pid), what))
        self.save()

    def kill(self, what_prefix: str = "", exact: bool = False) -> None:
        """Stop this lab's processes (those whose 'what' starts with the prefix,
        or equals it with ``exact``)."""
        mine = [
            p
            for p in self.processes
            if (p.what == what_prefix if exact else p.what.startswith(what_prefix))
        ]
        live = [p for p in mine if p.start and _start_time(p.pid) == p.start]
        for p in live:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + 5
        for p in live:
            while _start_time(p.pid) == p.start and time.monotonic() < deadline:
                _reap(p.pid)
                time.sleep(0.02)
            if _start_time(p.pid) == p.start:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p.pid, signal.SIGKILL)
                _reap(p.pid)
        self.processes = [p for p in self.processes if p not in mine]
        self.save()

    def destroy(self, keep_logs: Path | None = None) -> list[str]:
        """Kill the lab's processes, delete its namespaces, remove its directory
        (first copying every ``*.log`` under it to ``keep_logs``, when given).
        The nodes' BIRDs (started by their agents, outliving them) are stopped
        by the PID in their PID files, checked against their config's path."""
        self.kill()
        for node in self.nodes:
            Bird(None, self.dir / "nodes" / node / "bird").stop()
        HAProxy(None, self.dir / "ingress").stop()  # the ingress controller's (it outlives it)
        removed = [ns for ns in reversed(self.namespaces) if netns.delete(ns)]
        for d in self.etc_dirs:
            shutil.rmtree(d, ignore_errors=True)
        if keep_logs is not None:
            shutil.rmtree(keep_logs, ignore_errors=True)
            for log in self.dir.rglob("*.log"):
                dst = keep_logs / log.relative_to(self.dir)
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(log, dst)
        shutil.rmtree(self.dir, ignore_errors=True)
        return removed


def alive(st: LabState, what: str) -> bool | None:
    """Whether a process of the lab that is ``what`` still runs; None when the
    state holds none (not started yet, as far as this copy of the state knows)."""
    mine = [p for p in st.processes if p.what == what]
    if not mine:
        return None
    return any(p.start and _start_time(p.pid) == p.start for p in mine)


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def list_labs() -> list[LabState]:
    if not LABS_DIR.exists():
        return []
    out = []
    for d in sorted(LABS_DIR.iterdir()):
        if (d / "state.json").exists():
            out.append(LabState.load(d.name))
    return out
