"""nftables scripts for the proxy table (pure): the whole table, or the diff
between two versions of some services' fragments — each one transaction."""

from __future__ import annotations

from collections.abc import Iterable

from flatnet.proxy.desired import MASQ_MARK, Fragment

__all__ = ["TABLE", "diff", "full"]

TABLE = "flatnet-proxy"
MAPS = {
    "service-ips": "ipv4_addr . inet_proto . inet_service : verdict",
    "service-nodeports": "inet_proto . inet_service : verdict",
    "no-endpoint-services": "ipv4_addr . inet_proto . inet_service : verdict",
    "no-endpoint-nodeports": "inet_proto . inet_service : verdict",
}
SETS = {"hairpin": "ipv4_addr . ipv4_addr"}
# nft 1.0.6 takes no named priorities on every hook: dstnat = -100, srcnat = 100.
BASE = f"""\
  chain nat-prerouting {{
    type nat hook prerouting priority -100; policy accept;
    jump services
  }}
  chain nat-output {{
    type nat hook output priority -100; policy accept;
    jump services
  }}
  chain nat-postrouting {{
    type nat hook postrouting priority 100; policy accept;
    ct status dnat ip saddr . ip daddr @hairpin masquerade fully-random
    jump masquerading
  }}
  chain filter-input {{
    type filter hook input priority -110; policy accept;
    ct state new jump nodeport-endpoints-check
    ct state new jump service-endpoints-check
  }}
  chain filter-forward {{
    type filter hook forward priority -110; policy accept;
    ct state new jump service-endpoints-check
  }}
  chain filter-output {{
    type filter hook output priority -110; policy accept;
    ct state new jump service-endpoints-check
  }}
  chain services {{
    ip daddr . meta l4proto . th dport vmap @service-ips
    fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @service-nodeports
  }}
  chain service-endpoints-check {{
    ip daddr . meta l4proto . th dport vmap @no-endpoint-services
  }}
  chain nodeport-endpoints-check {{
    fib daddr type local ip daddr != 127.0.0.0/8 meta l4proto . th dport vmap @no-endpoint-nodeports
  }}
  chain reject-chain {{
    reject comment "service has no ready endpoints"
  }}
  chain mark-for-masquerade {{
    meta mark set meta mark | {MASQ_MARK}
  }}
  chain masquerading {{
    meta mark & {MASQ_MARK} == 0 return
    meta mark set meta mark ^ {MASQ_MARK}
    masquerade fully-random
  }}
"""


def _affinity(timeout: int) -> str:
    """The body of a ClientIP affinity set."""
    return f"{{ type ipv4_addr; flags dynamic,timeout; timeout {timeout}s; }}"


def _elem(key: str, verdict: str) -> str:
    return f"{key} : {verdict}" if verdict else key


def full(frags: Iterable[Fragment]) -> str:
    """The whole table, replacing whatever is there (one transaction)."""
    frags = list(frags)
    out = [f"table ip {TABLE}", f"delete table ip {TABLE}", f"table ip {TABLE} {{"]
    out += [f"  set {n} {_affinity(t)}" for f in frags for n, t in f.sets.items()]
    out += [f"  map {m} {{ type {t}; }}" for m, t in MAPS.items()]
    out += [f"  set {m} {{ type {t}; }}" for m, t in SETS.items()]
    out.append(BASE)
    for f in frags:
        for name, rules in f.chains.items():
            out.append(f"  chain {name} {{")
            out += [f"    {r}" for r in rules]
            out.append("  }")
    out.append("}")
    by_map: dict[str, list[str]] = {}
    for f in frags:
        for (m, k), v in f.elements.items():
            by_map.setdefault(m, []).append(_elem(k, v))
    for m, elems in by_map.items():
        out.append(f"add element ip {TABLE} {m} {{ {', '.join(elems)} }}")
    return "\n".join(out) + "\n"


def diff(pairs: Iterable[tuple[Fragment, Fragment]]) -> str:
    """Commands turning each old fragment into its new one ("" when equal)."""
    new_sets, new_chains, rules, dels, adds, gone_chains, gone_sets = [], [], [], [], [], [], []
    t = f"ip {TABLE}"
    for old, new in pairs:
        # (a changed affinity timeout takes effect at the next full sync)
        new_sets += [
            f"add set {t} {n} {_affinity(s)}" for n, s in new.sets.items() if n not in old.sets
        ]
        for name, body in new.chains.items():
            prev = old.chains.get(name)
            if prev == body:
                continue
            if prev is None:
                new_chains.append(f"add chain {t} {name}")
            else:
                rules.append(f"flush chain {t} {name}")
            rules += [f"add rule {t} {name} {r}" for r in body]
        for (m, k), v in old.elements.items():
            if new.elements.get((m, k)) != v:
                dels.append(f"delete element {t} {m} {{ {k} }}")
        for (m, k), v in new.elements.items():
            if old.elements.get((m, k)) != v:
                adds.append(f"add element {t} {m} {{ {_elem(k, v)} }}")
        gone_chains += [name for name in old.chains if name not in new.chains]
        gone_sets += [f"delete set {t} {n}" for n in old.sets if n not in new.sets]
    cmds = new_sets + new_chains + rules + dels + adds
    cmds += [f"flush chain {t} {c}" for c in gone_chains]
    cmds += [f"delete chain {t} {c}" for c in gone_chains]
    cmds += gone_sets
    return "\n".join(cmds) + "\n" if cmds else ""
