"""Denied connection attempts, as the kernel reports them: one JSON line each
in the node's policy log (``flatnet policy log`` prints and follows them).

The policy table logs the first packet of every denied attempt to NFLOG
(rate-limited per pod and rule: 10 a second, bursts of 20), with a prefix
naming the direction, the pod and, for a ClusterNetworkPolicy Deny, the rule.
This thread reads them (:class:`flatnet.kernel.nflog.NflogReader`), names the
pods behind the two addresses and the policies that isolated the pod, and
appends the line: time, node, source and destination (pod and IP),
protocol, port, direction, the pod it was judged for, and why. The file is
kept under ``max_bytes``: past it, it becomes ``<file>.1`` and a new one starts.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import threading
import time
from pathlib import Path
from typing import Any

from flatnet.errors import KernelError
from flatnet.kernel.nflog import Logged, NflogReader
from flatnet.policy.sync import PolicySync

__all__ = ["DenialLog", "Follower", "describe", "text"]

log = logging.getLogger("flatnet.agent.policy")
PROTOCOLS = {socket.IPPROTO_TCP: "TCP", socket.IPPROTO_UDP: "UDP", socket.IPPROTO_SCTP: "SCTP",
             socket.IPPROTO_ICMP: "ICMP"}  # fmt: skip


def describe(g: Logged, node: str, sync: PolicySync) -> dict[str, Any]:
    """One logged packet as a line of the policy log."""
    direction, _, rest = g.prefix.partition(" ")
    pod, _, rule = rest.partition(" ")
    by_ip = {p.ip: f"{p.namespace}/{p.name}" for p in list(sync.pods.values()) if p.ip}
    if rule:
        reason = f"denied by {rule}"
    else:
        entry = sync.table.get(pod)
        allow = None if entry is None else entry.ingress if direction == "ingress" else entry.egress
        reason = f"isolated by {', '.join(allow.isolating)}" if allow else "isolated"
    return {
        "time": round(g.time, 3),
        "node": node,
        "src": g.src,
        "srcPod": by_ip.get(g.src, ""),
        "dst": g.dst,
        "dstPod": by_ip.get(g.dst, ""),
        "protocol": PROTOCOLS.get(g.proto, str(g.proto)),
        "port": g.dport,
        "direction": direction,
        "pod": pod,
        "reason": reason,
    }


class DenialLog:
    def __init__(self, ns: str | None, node: str, sync: PolicySync, path: str,
                 max_bytes: int = 8 << 20) -> None:  # fmt: skip
        self.ns, self.node, self.sync = ns, node, sync
        self.path, self.max_bytes = Path(path), max_bytes
        self.reader: NflogReader | None = None
        try:
            self.reader = NflogReader(ns)
        except KernelError as e:
            log.warning("denied attempts will not be logged: %s", e)

    def run(self, stop: threading.Event) -> None:
        if self.reader is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            while not stop.is_set():
                got = self.reader.read(timeout=0.5)
                if got:
                    self._write([describe(g, self.node, self.sync) for g in got])
        finally:
            self.reader.close()

    def _write(self, lines: list[dict[str, Any]]) -> None:
        try:
            if self.path.exists() and self.path.stat().st_size > self.max_bytes:
                os.replace(self.path, self.path.with_name(self.path.name + ".1"))
            with open(self.path, "a") as f:
                f.write("".join(json.dumps(x, sort_keys=True) + "\n" for x in lines))
        except OSError as e:
            log.warning("cannot write the policy log %s: %s", self.path, e)


def text(line: dict[str, Any]) -> str:
    """One line of the log as ``flatnet policy log`` prints it."""
    stamp = time.strftime("%H:%M:%S", time.localtime(line["time"]))
    stamp += f".{int(line['time'] * 1000) % 1000:03d}"

    def who(pod: str, ip: str) -> str:
        return f"{pod} ({ip})" if pod else ip

    return (
        f"{stamp} {line['node']} DENIED {who(line['srcPod'], line['src'])} -> "
        f"{who(line['dstPod'], line['dst'])} {line['protocol']}/{line['port']} "
        f"{line['direction']} of {line['pod']}: {line['reason']}"
    )


class Follower:
    """The lines of several policy logs (one per node), in time order; each
    :meth:`new` returns what was appended since the last call."""

    def __init__(self, paths: list[Path]) -> None:
        self.offsets = {p: 0 for p in paths}

    def new(self) -> list[dict[str, Any]]:
        out = []
        for path, off in self.offsets.items():
            try:
                size = path.stat().st_size
            except OSError:
                continue
            if size < off:  # rotated: start again
                off = 0
            with open(path) as f:
                f.seek(off)
                chunk = f.read()
            complete = chunk[: chunk.rfind("\n") + 1]
            self.offsets[path] = off + len(complete.encode())
            for raw in complete.splitlines():
                try:
                    out.append(json.loads(raw))
                except ValueError:
                    continue
        return sorted(out, key=lambda x: x.get("time", 0))
