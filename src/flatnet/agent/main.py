"""``flatnet agent``: the agent's command line, without the CLI framework.

``python -m flatnet agent`` comes straight here (see :mod:`flatnet.__main__`):
typer and rich cost ~0.3 s to import and parse, a third of the time from an
agent's start until its peers have it programmed (bench/convergence.py).
``flatnet agent`` through the typer CLI passes its arguments here too, so the
options are defined once.
"""

from __future__ import annotations

import argparse
import logging
import sys
from typing import NoReturn


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        """A usage error as one line, as every flatnet command reports it."""
        self.exit(2, f"error: {self.prog}: {message} (see '{self.prog} --help')\n")


def parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="flatnet agent",
        description="Run the node agent (in this host's or lab node's own network namespace).",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--node", required=True, help="this node's name")
    p.add_argument("--store", required=True, help="sqlite://PATH or etcd://HOST:PORT")
    p.add_argument("--socket", default="/run/flatnet/agent.sock", help="CNI socket")
    p.add_argument("--underlay-ip", default="", help="default: from the default route")
    p.add_argument("--bridge", default="fl0", help="the pods' bridge")
    p.add_argument("--pod-cidr", default="10.244.0.0/16", help="proposed if the store has none")
    p.add_argument("--node-subnet-length", type=int, default=24, help="proposed, as pod-cidr")
    p.add_argument("--backend", default="vxlan", help="proposed, as pod-cidr")
    p.add_argument("--mtu", type=int, default=1500, help="proposed, as pod-cidr")
    p.add_argument("--resync", type=float, default=10.0, help="seconds between peer re-syncs")
    p.add_argument(
        "--proxy-resync",
        type=float,
        default=300.0,
        help="seconds between full rewrites of the service table",
    )
    p.add_argument(
        "--policy-log",
        default="/run/flatnet/policy.log",
        help="where denied connection attempts are written, a JSON line each",
    )
    p.add_argument(
        "--heartbeat",
        type=float,
        default=1.0,
        help="seconds between heartbeats; the node is NotReady 3 beats after its agent dies",
    )
    p.add_argument(
        "--state-dir",
        default="/run/flatnet",
        help="where a backend's daemon keeps its files (bgp: BIRD's config and socket in bird/)",
    )
    return p


def main(argv: list[str]) -> None:
    a = parser().parse_args(argv)
    from flatnet.agent.daemon import Agent, AgentOptions
    from flatnet.errors import FlatnetError
    from flatnet.model import NetworkConfig

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        net = NetworkConfig(
            pod_cidr=a.pod_cidr,
            node_subnet_length=a.node_subnet_length,
            backend=a.backend,
            mtu=a.mtu,
        )
        Agent(
            AgentOptions(
                node=a.node,
                store_url=a.store,
                socket_path=a.socket,
                underlay_ip=a.underlay_ip,
                bridge=a.bridge,
                network=net,
                resync_every=a.resync,
                proxy_resync=a.proxy_resync,
                policy_log=a.policy_log,
                state_dir=a.state_dir,
                heartbeat=a.heartbeat,
            )
        ).run_forever()
    except FlatnetError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)
