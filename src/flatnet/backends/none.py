"""How it works — none: no cross-node forwarding (a single node, or a network
someone else routes). No objects; every peer is reported as not programmed."""

from __future__ import annotations

from flatnet.backends import Context, Desired, NoDevices, register
from flatnet.model import Lease

__all__ = ["NoBackend"]


@register("none")
class NoBackend(NoDevices):
    name = "none"

    def desired(self, ctx: Context, peers: list[Lease]) -> Desired:
        return Desired(
            refused={p.node: "backend 'none' forwards nothing across nodes" for p in peers}
        )
