"""How it works — the policy table (pure: compiled pods in, nftables out).

One table per node, ``ip flatnet-policy``, beside ``flatnet-proxy``. Its
forward hook runs after the proxy's DNAT, so a connection to a ClusterIP or
NodePort is judged on the endpoint it was sent to, with the client pod's own
IP (masquerading happens later, at srcnat)::

    forward (filter, priority 0)   ct state established,related accept
                                   ip saddr vmap @egress-pods    isolated senders
                                   ip daddr vmap @ingress-pods   isolated receivers
    input   (filter, priority 0)   the same for egress to the node itself

    egress-<ns>/<pod>              ip daddr @egress-<ns>/<pod>-any return
                                   ip daddr . meta l4proto . th dport
                                       @egress-<ns>/<pod>-ports return
                                   counter drop        (the comment names the
                                                        policies that isolate it)
    ingress-<ns>/<pod>             the same on ip saddr

A connection whose conntrack entry is gone (cut by a policy change) must not
come back the other way round: conntrack picks up a mid-stream TCP packet as a
new connection, and the isolated pod's next ACK would open it, its peer's data
riding in as "replies". So a new TCP packet that is no SYN, to or from an
isolated pod (``@isolated``), is dropped (``mid-stream``).

A packet pays one map lookup per direction, and for an isolated pod two set
lookups: the cost does not grow with the number of pods or policies. Only the
first packet of a connection is judged; replies and the rest of an allowed
connection pass as established. The node's own traffic to its pods leaves by
the output hook, which the table does not hook: a pod's own node always
reaches it. Pods on the host's network are node traffic, never subjects.

A change is a diff of the pods' entries in one transaction: a new or changed
pod's sets are flushed and refilled, its map entries replaced.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

from flatnet.policy.compile import Allow, PodPolicy

__all__ = ["TABLE", "diff", "full"]

TABLE = "flatnet-policy"
DIRECTIONS = (("egress", "daddr"), ("ingress", "saddr"))
BASE = """\
  map egress-pods { type ipv4_addr : verdict; }
  map ingress-pods { type ipv4_addr : verdict; }
  set isolated { type ipv4_addr; }
  chain forward {
    type filter hook forward priority 0; policy accept;
    ct state established,related accept
    jump mid-stream
    ip saddr vmap @egress-pods
    ip daddr vmap @ingress-pods
  }
  chain input {
    type filter hook input priority 0; policy accept;
    ct state established,related accept
    jump mid-stream
    ip saddr vmap @egress-pods
  }
  chain mid-stream {
    tcp flags & (syn | ack) == syn return
    meta l4proto tcp ip saddr @isolated counter drop comment "TCP without a connection"
    meta l4proto tcp ip daddr @isolated counter drop comment "TCP without a connection"
  }
"""
ANY = "type ipv4_addr; flags interval;"
PORTS = "type ipv4_addr . inet_proto . inet_service; flags interval;"


def _rules(direction: str, addr: str, ref: str, allow: Allow) -> tuple[str, ...]:
    name = f"{direction}-{ref}"
    why = f"{ref} {direction}: isolated by {', '.join(allow.isolating)}"
    if len(why) > 120:
        why = why[:117] + "..."
    return (
        f"ip {addr} @{name}-any return",
        f"ip {addr} . meta l4proto . th dport @{name}-ports return",
        f'counter drop comment "{why}"',
    )


def _elements(allow: Allow) -> tuple[list[str], list[str]]:
    any_ = [str(n) for n in allow.any]
    ports = [
        f"{n} . {p} . {lo}" if lo == hi else f"{n} . {p} . {lo}-{hi}"
        for n, p, lo, hi in allow.ports
    ]
    return any_, ports


def _add(t: str, ref: str, ip: str, direction: str, addr: str, allow: Allow) -> list[str]:
    name = f"{direction}-{ref}"
    cmds = [
        f"add set {t} {name}-any {{ {ANY} }}",
        f"add set {t} {name}-ports {{ {PORTS} }}",
        f"add chain {t} {name}",
    ]
    cmds += [f"add rule {t} {name} {r}" for r in _rules(direction, addr, ref, allow)]
    cmds += _fill(t, name, allow)
    cmds.append(f"add element {t} {direction}-pods {{ {ip} : jump {name} }}")
    return cmds


def _isolated(t: str, verb: str, ips: list[str]) -> list[str]:
    return [f"{verb} element {t} isolated {{ {', '.join(sorted(ips))} }}"] if ips else []


def _fill(t: str, name: str, allow: Allow) -> list[str]:
    any_, ports = _elements(allow)
    cmds = []
    if any_:
        cmds.append(f"add element {t} {name}-any {{ {', '.join(any_)} }}")
    if ports:
        cmds.append(f"add element {t} {name}-ports {{ {', '.join(ports)} }}")
    return cmds


def _remove(t: str, ref: str, ip: str, direction: str) -> tuple[list[str], list[str]]:
    """(first: the map entry, then: the chain and sets)."""
    name = f"{direction}-{ref}"
    return (
        [f"delete element {t} {direction}-pods {{ {ip} }}"],
        [f"delete chain {t} {name}", f"delete set {t} {name}-any", f"delete set {t} {name}-ports"],
    )


def full(pods: Iterable[PodPolicy]) -> str:
    """The whole table, replacing whatever is there (one transaction)."""
    t = f"ip {TABLE}"
    pods = list(pods)
    out = [f"table {t}", f"delete table {t}", f"table {t} {{", BASE, "}"]
    out += _isolated(t, "add", [p.ip for p in pods])
    for p in pods:
        for direction, addr in DIRECTIONS:
            allow = p.egress if direction == "egress" else p.ingress
            if allow is not None:
                out += _add(t, p.ref, p.ip, direction, addr, allow)
    return "\n".join(out) + "\n"


def diff(old: Mapping[str, PodPolicy], new: Mapping[str, PodPolicy]) -> str:
    """Commands turning the table of ``old`` into that of ``new`` ("" when equal)."""
    t = f"ip {TABLE}"
    unmap: list[str] = []
    drop: list[str] = []
    make: list[str] = []
    for ref in sorted(set(old) | set(new)):
        o, n = old.get(ref), new.get(ref)
        for direction, addr in DIRECTIONS:
            was = None if o is None else (o.egress if direction == "egress" else o.ingress)
            now = None if n is None else (n.egress if direction == "egress" else n.ingress)
            if was == now and (was is None or (o and n and o.ip == n.ip)):
                continue
            name = f"{direction}-{ref}"
            if was is not None and now is None:
                assert o is not None
                first, then = _remove(t, ref, o.ip, direction)
                unmap += first
                drop += then
            elif was is None and now is not None:
                assert n is not None
                make += _add(t, ref, n.ip, direction, addr, now)
            elif was is not None and now is not None:
                assert o is not None and n is not None
                if was.isolating != now.isolating:
                    make.append(f"flush chain {t} {name}")
                    make += [f"add rule {t} {name} {r}" for r in _rules(direction, addr, ref, now)]
                if (was.any, was.ports) != (now.any, now.ports):
                    make += [f"flush set {t} {name}-any", f"flush set {t} {name}-ports"]
                    make += _fill(t, name, now)
                if o.ip != n.ip:
                    unmap.append(f"delete element {t} {direction}-pods {{ {o.ip} }}")
                    make.append(f"add element {t} {direction}-pods {{ {n.ip} : jump {name} }}")
    gone = {o.ip for r, o in old.items() if r not in new or new[r].ip != o.ip}
    came = {n.ip for r, n in new.items() if r not in old or old[r].ip != n.ip}
    unmap += _isolated(t, "delete", list(gone - came))
    make += _isolated(t, "add", list(came - gone))
    cmds = unmap + drop + make
    return "\n".join(cmds) + "\n" if cmds else ""
