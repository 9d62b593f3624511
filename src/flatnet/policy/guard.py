"""How it works — pods cannot forge who they are (the node's ``bridge flatnet-guard``).

Policy judges a packet by its source IP, so a pod that could send from another
pod's IP (or ARP for it) could walk through any policy. Each pod may send only
from its own IP and its own MAC (``0a:58:<ip>``), and may answer ARP only for
its own IP. Checked where its frames enter the node — the bridge port of its
host veth, at the bridge's prerouting hook, before routing, the proxy and
policy::

    prerouting (bridge, priority -300)  iifname vmap @ports     a pod's host veth
    guard-<veth>                        ether saddr <mac> ip saddr <ip> return
                                        ether saddr <mac> arp saddr ether <mac>
                                            arp saddr ip <ip> return
                                        ether type ip6 drop     (flatnet is IPv4)
                                        counter drop comment "<ns>/<pod>: forged"

Frames of other ports (the node's own, the tunnel) are not looked at. The
counter of each pod's chain is what it forged: ``nft list table bridge
flatnet-guard`` in the node's namespace. The eBPF fast path, which sees a
pod's frames before the bridge, carries a frame only when its source IP is
the pod of the veth it came in on; anything else takes the stack and meets
this table. A pod is in the table before its interface exists (CNI ADD).
"""

from __future__ import annotations

import threading
from collections.abc import Iterable
from dataclasses import dataclass

from flatnet.kernel.api import Firewall

__all__ = ["TABLE", "Guard", "PodIdentity"]

TABLE = "flatnet-guard"
BASE = """\
  map ports { type ifname : verdict; }
  chain prerouting {
    type filter hook prerouting priority -300; policy accept;
    iifname vmap @ports
  }
"""


@dataclass(frozen=True)
class PodIdentity:
    veth: str  # the pod's host veth (its bridge port)
    mac: str
    ip: str
    pod: str = ""  # namespace/name, for the counter's comment


def _chain(t: str, p: PodIdentity) -> list[str]:
    name = f"guard-{p.veth}"
    who = (p.pod or p.ip).replace('"', "")
    rules = (
        f"ether saddr {p.mac} ip saddr {p.ip} return",
        f"ether saddr {p.mac} arp saddr ether {p.mac} arp saddr ip {p.ip} return",
        "ether type ip6 drop",
        f'counter drop comment "{who}: forged source"',
    )
    return [f"add chain {t} {name}"] + [f"add rule {t} {name} {r}" for r in rules]


def full(pods: Iterable[PodIdentity]) -> str:
    t = f"bridge {TABLE}"
    out = [f"table {t}", f"delete table {t}", f"table {t} {{", BASE, "}"]
    for p in pods:
        out += _chain(t, p)
        out.append(f"add element {t} ports {{ {p.veth} : jump guard-{p.veth} }}")
    return "\n".join(out) + "\n"


class Guard:
    """The node's guard table. Thread-safe (one pod's change is one transaction)."""

    def __init__(self, nft: Firewall) -> None:
        self.nft = nft
        self.pods: dict[str, PodIdentity] = {}
        self._lock = threading.Lock()

    def sync(self, pods: Iterable[PodIdentity]) -> None:
        """The whole table: exactly these pods (agent start)."""
        with self._lock:
            self.pods = {p.veth: p for p in pods}
            self.nft.apply(full(self.pods.values()), what=f"table bridge {TABLE}")

    def add(self, p: PodIdentity) -> None:
        t = f"bridge {TABLE}"
        with self._lock:
            cmds = []
            if p.veth in self.pods:  # a veth name again (same container and ifname)
                cmds += self._remove(p.veth)
            cmds += _chain(t, p)
            cmds.append(f"add element {t} ports {{ {p.veth} : jump guard-{p.veth} }}")
            self.nft.apply("\n".join(cmds) + "\n", what=f"guard of pod {p.pod or p.ip}")
            self.pods[p.veth] = p

    def remove(self, veth: str) -> None:
        with self._lock:
            if veth not in self.pods:
                return
            self.nft.apply("\n".join(self._remove(veth)) + "\n", what=f"guard of {veth}")
            del self.pods[veth]

    def _remove(self, veth: str) -> list[str]:
        t = f"bridge {TABLE}"
        name = f"guard-{veth}"
        return [
            f"delete element {t} ports {{ {veth} }}",
            f"flush chain {t} {name}",
            f"delete chain {t} {name}",
        ]
