"""How it works — none: no cross-node forwarding (a single node, or a network
someone else routes). No objects; every peer is reported as not programmed."""

from __future__ import annotations

from flatnet.backends import Context, Desired, register
from flatnet.model import Lease

__all__ = ["NoBackend"]


@register("none")
class NoBackend:
    name = "none"

    def setup(self, ctx: Context) -> dict[str, object]:
        return {}

    def pod_mtu(self, ctx: Context) -> int:
        return ctx.underlay_mtu

    def desired(self, ctx: Context, peers: list[Lease]) -> Desired:
        return Desired(
            refused={p.node: "backend 'none' forwards nothing across nodes" for p in peers}
        )

    def devices(self, ctx: Context) -> tuple[str, ...]:
        return ()

    def stop(self) -> None:
        return None

    def teardown(self, ctx: Context) -> None:
        return None
