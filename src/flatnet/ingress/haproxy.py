"""How it works — Ingress routes as HAProxy's configuration and maps.

The configuration holds what changes rarely (a change means a reload): the
frontend (``http``, on port 80; TLS is not there yet), one backend per Service port that some route
names, each with ``slots`` server lines, and a ``be_404`` for requests that
match nothing. Everything that changes often lives elsewhere:

- which request goes where: three map files (:mod:`flatnet.ingress.routes`'s
  keys) — ``hosts.map`` (the hosts and ``*.`` wildcards that have rules),
  ``exact.map`` (``host@path`` → backend) and ``prefix.map`` (``host@path/``
  → backend, looked up with ``map_beg``: the longest key wins). They are
  swapped at runtime (``prepare map`` / ``add map @ver`` / ``commit map``);
- which endpoints a backend has: its slots, filled at runtime with ``set
  server <be>/<slot> addr <ip> port <port>`` and ``state ready``, emptied with
  ``state maint``. Only more endpoints than slots means a reload (with twice
  the slots).

Per request: the host (lower case, no port) picks the key's host part —
itself if it has rules, else its ``*.`` parent's if that has, else "" — then
``exact.map``, then ``prefix.map``, then the default backend. Requests carry
``X-Forwarded-For`` (the client's address) to the backends.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from flatnet.ingress.routes import Table, Target

__all__ = ["MIN_SLOTS", "Backend", "Frontends", "backend_name", "maps", "render", "slots_for"]

MIN_SLOTS = 8
NOT_FOUND = "be_404"


def backend_name(t: Target) -> str:
    """``be_<namespace>_<service>_<port>``: one backend per Service port."""
    return re.sub(r"[^A-Za-z0-9_.-]", "_", f"be_{t.namespace}_{t.service}_{t.port}")


def slots_for(endpoints: int) -> int:
    """Server lines for ``endpoints``: at least 8, doubled until they fit."""
    n = MIN_SLOTS
    while n < endpoints:
        n *= 2
    return n


@dataclass(frozen=True)
class Backend:
    name: str
    slots: int
    servers: tuple[tuple[str, int], ...] = ()  # (IP, port) filled in at start


@dataclass(frozen=True)
class Frontends:
    http_port: int = 80


def maps(t: Table) -> dict[str, list[tuple[str, str]]]:
    """The three maps' entries: ``{"hosts": [...], "exact": [...], "prefix": [...]}``."""
    return {
        "hosts": [(h, "1") for h in sorted(t.hosts)],
        "exact": [(k, backend_name(v)) for k, v in sorted(t.exact.items())],
        "prefix": [(k, backend_name(v)) for k, v in sorted(t.prefix.items())],
    }


def render(
    state: Path, backends: list[Backend], default: str = NOT_FOUND, fe: Frontends = Frontends()
) -> str:
    """The configuration; ``state`` holds the socket, the PID file and the maps."""
    m = {k: state / f"{k}.map" for k in ("hosts", "exact", "prefix")}
    lines = [
        "# Rendered by flatnet's ingress controller; rewritten on structural changes.",
        "global",
        "  master-worker",
        f"  stats socket {state / 'admin.sock'} mode 600 level admin expose-fd listeners",
        "  maxconn 4096",  # ~2 file descriptors each; the lab's limit is 20,000
        "defaults",
        "  mode http",
        "  option forwardfor",
        "  option http-keep-alive",
        "  timeout connect 2s",
        "  timeout client 60s",
        "  timeout server 60s",
        "  timeout http-request 10s",
        "  timeout http-keep-alive 60s",
        "",
        "frontend http",
        f"  bind :{fe.http_port}",
    ]
    lines += [
        "  http-request set-var(txn.host) req.hdr(host),field(1,:),lower",
        "  http-request set-var(txn.path) path",
        "  http-request set-var(txn.parent) var(txn.host),field(2,.,0)",
        "  http-request set-var(txn.wild) str(*.),concat(,txn.parent)",
        "  http-request set-var(txn.hk) str(@)",
        f"  http-request set-var(txn.hk) var(txn.wild),concat(@) "
        f"if {{ var(txn.wild),map_str({m['hosts']}) -m found }}",
        f"  http-request set-var(txn.hk) var(txn.host),concat(@) "
        f"if {{ var(txn.host),map_str({m['hosts']}) -m found }}",
        f"  http-request set-var(txn.be) var(txn.hk),concat(,txn.path),map_str({m['exact']})",
        f"  http-request set-var(txn.be) var(txn.hk),concat(,txn.path,/),map_beg({m['prefix']}) "
        "unless { var(txn.be) -m found }",
        "  use_backend %[var(txn.be)] if { var(txn.be) -m found }",
        f"  default_backend {default}",
        "",
        f"backend {NOT_FOUND}",
        '  http-request return status 404 content-type text/plain string "not found\\n"',
    ]
    for b in backends:
        lines += ["", f"backend {b.name}", "  balance roundrobin"]
        for i in range(b.slots):
            if i < len(b.servers):
                ip, port = b.servers[i]
                lines.append(f"  server s{i + 1} {ip}:{port}")
            else:
                lines.append(f"  server s{i + 1} 127.0.0.1:1 disabled")
    return "\n".join(lines) + "\n"
