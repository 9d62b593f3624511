"""How it works — the policy table (pure: compiled pods in, nftables out).

One table per node, ``ip flatnet-policy``, beside ``flatnet-proxy``. Its
forward hook runs after the proxy's DNAT, so a connection to a ClusterIP or
NodePort is judged on the endpoint it was sent to, with the client pod's own
IP (masquerading happens later, at srcnat)::

    forward (filter, priority 0)   ct state established,related accept
                                   ip saddr vmap @egress-pods    isolated senders
                                   ip daddr vmap @ingress-pods   isolated receivers
    input   (filter, priority 0)   the same for egress to the node itself

    egress-<ns>/<pod>              ip daddr @any-<h1> return
                                   ip daddr . meta l4proto . th dport @ports-<h2> return
                                   log (rate-limited), counter drop   (the comment
                                                names the policies that isolate it)
    ingress-<ns>/<pod>             the same on ip saddr

The sets are named by their content (``any-<hash>``, ``ports-<hash>``) and
shared: the replicas of one deployment, selected by the same policies, point
at the same two sets, so the table grows with the distinct allow-lists, not
with the pods.

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

    ingress-x/a              ip saddr @any-<h> goto ingress-x/a-deny-a0   (a Deny)
                             ip saddr . ... @ports-<h> goto ingress-x/a-deny-a0
                             goto ingress-x/a-rest
    ingress-x/a-deny-a0      log (rate-limited), counter drop (the rule's name)
    ingress-x/a-rest         the NetworkPolicy sets, as above, or Baseline rules

A change is a diff in one transaction: the sets the new table needs that the
old one lacks are made first, a pod direction that changed is taken down and
made again (its map entry replaced), and the sets nothing uses any more go
last.
"""

from __future__ import annotations

import functools
import hashlib
import socket
from collections.abc import Iterable, Mapping
from typing import cast

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
Sets = dict[str, tuple[Net, ...] | tuple[PortRange, ...]]  # set name -> its content


def _comment(text: str) -> str:
    text = text.replace('"', "'")
    return f'comment "{text[:117] + "..." if len(text) > 120 else text}"'


def _addr(n: Net) -> str:
    """A span as nftables writes it: one address, or first-last."""
    lo = socket.inet_ntoa(n[0].to_bytes(4, "big"))
    return lo if n[0] == n[1] else f"{lo}-{socket.inet_ntoa(n[1].to_bytes(4, 'big'))}"


@functools.lru_cache(maxsize=8192)
def _named(kind: str, content: tuple[object, ...]) -> str:
    """A set's name from its content (the same content, the same set)."""
    return f"{kind}-{hashlib.sha1(repr(content).encode()).hexdigest()[:16]}"


def _sets_of(any_: tuple[Net, ...], ports: tuple[PortRange, ...], sets: Sets) -> tuple[str, str]:
    """The names of the two sets holding ``any_`` and ``ports`` (recorded in
    ``sets``)."""
    a, p = _named("any", any_), _named("ports", ports)
    sets[a], sets[p] = any_, ports
    return a, p


def _elements(name: str, content: tuple[object, ...]) -> list[str]:
    if name.startswith("any-"):
        return [_addr(cast(Net, n)) for n in content]
    out = []
    for item in content:
        n, pr, lo, hi = cast(PortRange, item)
        out.append(f"{_addr(n)} . {pr} . {lo}" if lo == hi else f"{_addr(n)} . {pr} . {lo}-{hi}")
    return out


def _match(addr: str, names: tuple[str, str], verdict: str) -> list[str]:
    return [
        f"ip {addr} @{names[0]} {verdict}",
        f"ip {addr} . meta l4proto . th dport @{names[1]} {verdict}",
    ]


def _denied(prefix: str, why: str) -> list[str]:
    """The end of a denied connection attempt: logged to NFLOG (at most 10 a
    second per rule, so a flood costs nothing), counted, dropped."""
    prefix = prefix.replace('"', "'")[:120]
    return [
        f'limit rate 10/second burst 20 packets log prefix "{prefix}" group {LOG_GROUP}',
        "counter drop " + _comment(why),
    ]


def _layout(direction: str, addr: str, ref: str, allow: Allow, sets: Sets) -> dict[str, list[str]]:
    """The chains (name -> rules) of one pod in one direction: the Admin tier's
    rules, then (in ``-rest`` when the Admin tier can Pass to it) the
    NetworkPolicy union or the Baseline tier's rules. The sets they use are
    recorded in ``sets``."""
    base = f"{direction}-{ref}"
    chains: dict[str, list[str]] = {}
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
            chains[base] += _match(addr, _sets_of(r.any, r.ports, sets), verdict(r, "a", i))
        chains[base].append(f"goto {rest}")
    chains.setdefault(rest, [])
    if allow.isolating:
        chains[rest] += _match(addr, _sets_of(allow.any, allow.ports, sets), "return")
        why = f"{ref} {direction}: isolated by {', '.join(allow.isolating)}"
        chains[rest] += _denied(f"{direction} {ref}", why)
    else:
        for i, r in enumerate(allow.baseline):
            chains[rest] += _match(addr, _sets_of(r.any, r.ports, sets), verdict(r, "b", i))
    return chains


def _isolated(t: str, verb: str, ips: list[str]) -> list[str]:
    return [f"{verb} element {t} isolated {{ {', '.join(sorted(ips))} }}"] if ips else []


def _make_sets(t: str, sets: Sets) -> list[str]:
    cmds = []
    for name, content in sets.items():
        cmds.append(f"add set {t} {name} {{ {ANY if name.startswith('any-') else PORTS} }}")
        if content:
            cmds.append(f"add element {t} {name} {{ {', '.join(_elements(name, content))} }}")
    return cmds


def _add(
    t: str, ref: str, ip: str, direction: str, addr: str, allow: Allow, sets: Sets
) -> list[str]:
    chains = _layout(direction, addr, ref, allow, sets)
    cmds = [f"add chain {t} {name}" for name in chains]  # every chain before a goto to it
    cmds += [f"add rule {t} {name} {r}" for name, rules in chains.items() for r in rules]
    cmds.append(f"add element {t} {direction}-pods {{ {ip} : jump {direction}-{ref} }}")
    return cmds


def _remove(t: str, ref: str, ip: str, direction: str, allow: Allow) -> tuple[list[str], list[str]]:
    """(first: the map entry, then: the chains)."""
    chains = _layout(direction, "saddr", ref, allow, {})
    then = [f"flush chain {t} {name}" for name in chains]
    then += [f"delete chain {t} {name}" for name in chains]
    return [f"delete element {t} {direction}-pods {{ {ip} }}"], then


def _allows(p: PodPolicy) -> list[tuple[str, str, Allow]]:
    return [(d, a, x) for d, a in DIRECTIONS if (x := p.egress if d == "egress" else p.ingress)]


def _all_sets(pods: Iterable[PodPolicy]) -> Sets:
    sets: Sets = {}
    for p in pods:
        for direction, addr, allow in _allows(p):
            _layout(direction, addr, p.ref, allow, sets)
    return sets


def full(pods: Iterable[PodPolicy]) -> str:
    """The whole table, replacing whatever is there (one transaction)."""
    t = f"ip {TABLE}"
    pods = list(pods)
    out = [f"table {t}", f"delete table {t}", f"table {t} {{", BASE, "}"]
    out += _isolated(t, "add", [p.ip for p in pods])
    sets: Sets = {}
    chains = [
        c for p in pods for d, a, x in _allows(p) for c in _add(t, p.ref, p.ip, d, a, x, sets)
    ]
    out += _make_sets(t, sets) + chains
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
            if was == now and (was is None or (o is not None and n is not None and o.ip == n.ip)):
                continue
            if was is not None and o is not None:
                first, then = _remove(t, ref, o.ip, direction, was)
                unmap += first
                drop += then
            if now is not None and n is not None:
                make += _add(t, ref, n.ip, direction, addr, now, {})
    if not unmap and not make:
        return ""
    gone = {o.ip for r, o in old.items() if r not in new or new[r].ip != o.ip}
    came = {n.ip for r, n in new.items() if r not in old or old[r].ip != n.ip}
    unmap += _isolated(t, "delete", list(gone - came))
    make += _isolated(t, "add", list(came - gone))
    had, needs = _all_sets(old.values()), _all_sets(new.values())
    first = _make_sets(t, {k: v for k, v in needs.items() if k not in had})
    last = [f"delete set {t} {k}" for k in had if k not in needs]
    cmds = first + unmap + drop + make + last
    return "\n".join(cmds) + "\n"
