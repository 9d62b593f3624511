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

__all__ = ["LABS_DIR", "LabState", "list_labs"]

LABS_DIR = Path(os.environ.get("FLATNET_LABS_DIR", "/run/flatnet/labs"))


def _start_time(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


@dataclass
class LabState:
    name: str
    file: str = ""
    store_url: str = ""
    datastore: str = "sqlite"
    namespaces: list[str] = field(default_factory=list)
    processes: list[dict[str, Any]] = field(default_factory=list)
    nodes: dict[str, dict[str, Any]] = field(default_factory=dict)
    pods: dict[str, dict[str, Any]] = field(default_factory=dict)
    external: str = ""
    router: str = ""
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
        tmp.write_text(json.dumps(asdict(self), indent=1))
        os.replace(tmp, self.dir / "state.json")

    @classmethod
    def load(cls, name: str) -> LabState:
        p = LABS_DIR / name / "state.json"
        try:
            return cls(**json.loads(p.read_text()))
        except FileNotFoundError:
            raise ConfigError(f"no lab named '{name}' (no {p})") from None

    def add_ns(self, name: str) -> str:
        self.namespaces.append(name)
        self.save()
        return netns.create(name)

    def add_process(self, pid: int, what: str) -> None:
        self.processes.append({"pid": pid, "start": _start_time(pid), "what": what})
        self.save()

    def kill(self, what_prefix: str = "", exact: bool = False) -> None:
        """Stop this lab's processes (those whose 'what' starts with the prefix,
        or equals it with ``exact``)."""
        mine = [
            p
            for p in self.processes
            if (p["what"] == what_prefix if exact else p["what"].startswith(what_prefix))
        ]
        live = [p for p in mine if p["start"] and _start_time(p["pid"]) == p["start"]]
        for p in live:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p["pid"], signal.SIGTERM)
        deadline = time.monotonic() + 5
        for p in live:
            while _start_time(p["pid"]) == p["start"] and time.monotonic() < deadline:
                _reap(p["pid"])
                time.sleep(0.02)
            if _start_time(p["pid"]) == p["start"]:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(p["pid"], signal.SIGKILL)
                _reap(p["pid"])
        self.processes = [p for p in self.processes if p not in mine]
        self.save()

    def destroy(self) -> list[str]:
        """Kill the lab's processes, delete its namespaces, remove its directory."""
        self.kill()
        removed = [ns for ns in reversed(self.namespaces) if netns.delete(ns)]
        for d in self.etc_dirs:
            shutil.rmtree(d, ignore_errors=True)
        shutil.rmtree(self.dir, ignore_errors=True)
        return removed


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
