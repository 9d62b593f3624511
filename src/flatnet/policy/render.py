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

With ClusterNetworkPolicies, an isolated pod's chain starts with the Admin
tier's rules, each two set lookups with its action (Accept: ``return``, on to
the other direction; Deny: counted ``drop``; Pass: ``goto`` the rest), and
ends, in ``<direction>-<ns>/<pod>-rest``, with the NetworkPolicy union or,
for a pod no NetworkPolicy isolates, the Baseline tier's rules::

    ingress-x/a        ip saddr @ingress-x/a-a0-any counter drop (cnp/... Deny)
                       ip saddr . ... @ingress-x/a-a0-ports counter drop
                       goto ingress-x/a-rest
    ingress-x/a-rest   the NetworkPolicy sets, as above, or Baseline rules

A change is a diff of the pods' entries in one transaction: a pod direction
that changed is taken down and made again (its sets refilled, its map entry
replaced).
"""

from __future__ import annotations

import socket
from collections.abc import Iterable, Mapping

from flatnet.policy.compile import Allow, Net, PodPolicy, PortRange, TierRule

__all__ = ["TABLE", "diff", "full"]

TABLE = "flatnet-policy"
LOG_GROUP = 66  # the NFLOG group denied attempts are logged to (flatnet.kernel.nflog.GROUP)
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


def _comment(text: str) -> str:
    text = text.replace('"', "'")
    return f'comment "{text[:117] + "..." if len(text) > 120 else text}"'


def _match(addr: str, sets: str, verdict: str) -> list[str]:
    return [
        f"ip {addr} @{sets}-any {verdict}",
        f"ip {addr} . meta l4proto . th dport @{sets}-ports {verdict}",
    ]


def _layout(
    direction: str, addr: str, ref: str, allow: Allow
) -> tuple[dict[str, list[str]], dict[str, tuple[tuple[Net, ...], tuple[PortRange, ...]]]]:
    """The chains (name -> rules) and sets (prefix -> (any, ports)) of one pod
    in one direction: the Admin tier's rules, then (in ``-rest`` when the Admin
    tier can Pass to it) the NetworkPolicy union or the Baseline tier's rules."""
    base = f"{direction}-{ref}"
    chains: dict[str, list[str]] = {}
    sets: dict[str, tuple[tuple[Net, ...], tuple[PortRange, ...]]] = {}
    rest = f"{base}-rest" if allow.admin else base

    def verdict(r: TierRule, tier: str, i: int) -> str:
        if r.action == "Accept":
            return "return"
        if r.action == "Deny":  # its own chain: logged, counted, dropped
            deny = f"{base}-deny-{tier}{i}"
            chains[deny] = _denied(
                f"{direction} {ref} {r.name}", f"{ref} {direction}: denied by {r.name}"
            )
            return f"goto {deny}"
        return f"goto {rest}" if tier == "a" else "return"  # Pass

    if allow.admin:
        chains[base] = []
        for i, r in enumerate(allow.admin):
            sets[f"{base}-a{i}"] = (r.any, r.ports)
            chains[base] += _match(addr, f"{base}-a{i}", verdict(r, "a", i))
        chains[base].append(f"goto {rest}")
    chains.setdefault(rest, [])
    if allow.isolating:
        sets[base] = (allow.any, allow.ports)
        chains[rest] += _match(addr, base, "return")
        why = f"{ref} {direction}: isolated by {', '.join(allow.isolating)}"
        chains[rest] += _denied(f"{direction} {ref}", why)
    else:
        for i, r in enumerate(allow.baseline):
            sets[f"{base}-b{i}"] = (r.any, r.ports)
            chains[rest] += _match(addr, f"{base}-b{i}", verdict(r, "b", i))
    return chains, sets


def _denied(prefix: str, why: str) -> list[str]:
    """The end of a denied connection attempt: logged to NFLOG (at most 10 a
    second per rule, so a flood costs nothing), counted, dropped."""
    prefix = prefix.replace('"', "'")[:120]
    return [
        f'limit rate 10/second burst 20 packets log prefix "{prefix}" group {LOG_GROUP}',
        "counter drop " + _comment(why),
    ]


def _addr(n: Net) -> str:
    """A span as nftables writes it: one address, or first-last."""
    lo = socket.inet_ntoa(n[0].to_bytes(4, "big"))
    return lo if n[0] == n[1] else f"{lo}-{socket.inet_ntoa(n[1].to_bytes(4, 'big'))}"


def _elements(any_: tuple[Net, ...], ports: tuple[PortRange, ...]) -> tuple[list[str], list[str]]:
    a = [_addr(n) for n in any_]
    p = [
        f"{_addr(n)} . {pr} . {lo}" if lo == hi else f"{_addr(n)} . {pr} . {lo}-{hi}"
        for n, pr, lo, hi in ports
    ]
    return a, p


def _add(t: str, ref: str, ip: str, direction: str, addr: str, allow: Allow) -> list[str]:
    chains, sets = _layout(direction, addr, ref, allow)
    cmds: list[str] = []
    for name, (any_, ports) in sets.items():
        cmds += [f"add set {t} {name}-any {{ {ANY} }}", f"add set {t} {name}-ports {{ {PORTS} }}"]
        a, p = _elements(any_, ports)
        if a:
            cmds.append(f"add element {t} {name}-any {{ {', '.join(a)} }}")
        if p:
            cmds.append(f"add element {t} {name}-ports {{ {', '.join(p)} }}")
    cmds += [f"add chain {t} {name}" for name in chains]  # every chain before a goto to it
    cmds += [f"add rule {t} {name} {r}" for name, rules in chains.items() for r in rules]
    cmds.append(f"add element {t} {direction}-pods {{ {ip} : jump {direction}-{ref} }}")
    return cmds


def _isolated(t: str, verb: str, ips: list[str]) -> list[str]:
    return [f"{verb} element {t} isolated {{ {', '.join(sorted(ips))} }}"] if ips else []


def _remove(t: str, ref: str, ip: str, direction: str, allow: Allow) -> tuple[list[str], list[str]]:
    """(first: the map entry, then: the chains and sets)."""
    chains, sets = _layout(direction, "saddr", ref, allow)
    then = [f"flush chain {t} {name}" for name in chains]
    then += [f"delete chain {t} {name}" for name in chains]
    then += [f"delete set {t} {name}-{kind}" for name in sets for kind in ("any", "ports")]
    return [f"delete element {t} {direction}-pods {{ {ip} }}"], then


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
    """Commands turning the table of ``old`` into that of ``new`` ("" when equal):
    a pod direction that changed is taken down and built again, in the same
    transaction (the table never holds a half of it)."""
    t = f"ip {TABLE}"
    unmap: list[str] = []
    drop: list[str] = []
    make: list[str] = []
    for ref in sorted(set(old) | set(new)):
        o, n = old.get(ref), new.get(ref)
        for direction, addr in DIRECTIONS:
            was = None if o is None else (o.egress if direction == "egress" else o.ingress)
            now = None if n is None else (n.egress if direction == "egress" else n.ingress)
            if was == now and (was is None or (o is not None and n is not None and o.ip == n.ip)):
                continue
            if was is not None and o is not None:
                first, then = _remove(t, ref, o.ip, direction, was)
                unmap += first
                drop += then
            if now is not None and n is not None:
                make += _add(t, ref, n.ip, direction, addr, now)
    gone = {o.ip for r, o in old.items() if r not in new or new[r].ip != o.ip}
    came = {n.ip for r, n in new.items() if r not in old or old[r].ip != n.ip}
    unmap += _isolated(t, "delete", list(gone - came))
    make += _isolated(t, "add", list(came - gone))
    cmds = unmap + drop + make
    return "\n".join(cmds) + "\n" if cmds else ""
