"""The agent's CNI side: the handler behind the plugin, and the socket it listens on.

The plugin binary (``shim.c`` or ``plugin.py``) forwards its environment and
stdin over a unix socket, one connection per call: ``KEY=VALUE`` lines, a
blank line, the network config. :class:`CNIServer` reads that and hands it to
:func:`flatnet.cni.protocol.handle`, which parses, calls :class:`CNIHandler`
and renders the result or the error as the spec wants. The handler answers
"try again later" (code 11) until the agent is ready.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socketserver
import threading
from collections.abc import Callable
from typing import Any

from flatnet.agent.pods import PodNetwork
from flatnet.cni import protocol
from flatnet.cni.protocol import Request
from flatnet.errors import CNIError, Code
from flatnet.model import NetworkConfig

__all__ = ["CNIHandler", "CNIServer", "validate_netconf"]


class CNIHandler:
    """ADD, DEL, CHECK, GC and STATUS for one node's pod network."""

    def __init__(self, config: NetworkConfig, pods: PodNetwork, ready: threading.Event) -> None:
        self.config, self.pods, self.ready = config, pods, ready

    def _net(self, req: Request) -> PodNetwork:
        if not self.ready.is_set():
            raise CNIError(Code.TRY_AGAIN_LATER, "flatnet agent is starting; try again later")
        validate_netconf(req.config, self.config)
        return self.pods

    def add(self, req: Request) -> dict[str, Any]:
        att = self._net(req).add(req.container_id, req.netns, req.ifname, req.pod)
        prev = req.config.get("prevResult") or {}
        interfaces = list(prev.get("interfaces", []))
        base = len(interfaces)
        interfaces += [
            {"name": att.host_veth, "mac": att.host_mac},
            {"name": att.ifname, "mac": att.pod_mac, "sandbox": att.netns, "mtu": att.mtu},
        ]
        ips = list(prev.get("ips", [])) + [
            {"address": att.address, "gateway": att.gateway, "interface": base + 1}
        ]
        return {
            "interfaces": interfaces,
            "ips": ips,
            "routes": [{"dst": "0.0.0.0/0", "gw": att.gateway}],
            "dns": prev.get("dns", {}),
        }

    def delete(self, req: Request) -> None:
        self._net(req).delete(req.container_id, req.ifname, req.netns)

    def check(self, req: Request) -> None:
        if not req.config.get("prevResult"):
            raise CNIError(
                Code.INVALID_CONFIG, "CHECK needs prevResult in the network configuration"
            )
        self._net(req).check(req.container_id, req.netns, req.ifname)

    def gc(self, req: Request, valid: set[tuple[str, str]]) -> None:
        self._net(req).gc(valid)

    def status(self, req: Request) -> None:
        if not self.ready.is_set():
            raise CNIError(Code.NOT_READY, "flatnet agent has not leased a subnet yet")


def validate_netconf(conf: dict[str, Any], cluster: NetworkConfig) -> None:
    """Check the fields flatnet reads from its network config (CNI code 7)."""
    name = conf.get("name", "?")
    if not isinstance(conf.get("agentSocket", ""), str):
        raise CNIError(Code.INVALID_CONFIG, f"network '{name}': agentSocket must be a string path")
    if "podCIDR" in conf:
        try:
            cidr = ipaddress.IPv4Network(str(conf["podCIDR"]))
        except ValueError as e:
            raise CNIError(
                Code.INVALID_CONFIG,
                f"network '{name}': podCIDR '{conf['podCIDR']}' is not a valid CIDR ({e})",
            ) from e
        if str(cidr) != cluster.pod_cidr:
            raise CNIError(
                Code.INVALID_CONFIG,
                f"network '{name}': podCIDR {cidr} differs from the cluster's {cluster.pod_cidr}",
            )


class _Server(socketserver.ThreadingUnixStreamServer):
    request_queue_size = 1024  # runtimes start many pods at once
    daemon_threads = True


class CNIServer:
    """The agent's unix socket for the plugin (mode 0600: only root calls it)."""

    def __init__(self, path: str, handler: protocol.Handler) -> None:
        self.path = path
        self._handler = handler
        self._server: _Server | None = None

    def start(self, spawn: Callable[[Callable[[], None], str], None]) -> None:
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        if os.path.exists(self.path):
            os.unlink(self.path)  # a stale socket of a previous run of this agent
        handler = self._handler

        class Conn(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                raw = self.rfile.read().decode()
                if raw.startswith("\n"):  # no CNI_* environment at all
                    head, stdin = "", raw[1:]
                else:
                    head, _, stdin = raw.partition("\n\n")
                env = dict(line.split("=", 1) for line in head.splitlines() if "=" in line)
                code, out = protocol.handle(handler, env, stdin)
                self.wfile.write(f"{code}\n{out}".encode())

        old = os.umask(0o077)
        try:
            self._server = _Server(self.path, Conn)
        finally:
            os.umask(old)
        spawn(self._server.serve_forever, "cni-server")

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
