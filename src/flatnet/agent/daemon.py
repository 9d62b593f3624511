"""The node agent process: ``flatnet agent``.

Start-up, in order: open the store, agree on the cluster config, claim (or
re-claim) the node subnet under a TTL lease, set up the node (sysctls,
bridge, masquerade), then serve the CNI plugin on a unix socket. Background
threads renew the lease and reclaim IPs of pods whose namespace vanished
without a DEL. The agent never switches its own threads into another
namespace: ``ns`` (None on a real host) names where its kernel objects go.
"""

from __future__ import annotations

import contextlib
import ipaddress
import logging
import os
import signal
import socketserver
import threading
from dataclasses import dataclass
from typing import Any

from flatnet import backends
from flatnet.agent import fastpath
from flatnet.agent.fastpath import FastPath
from flatnet.agent.node import setup_node
from flatnet.agent.peers import PeerWatcher
from flatnet.agent.pods import PodNetwork
from flatnet.backends import Context
from flatnet.cni import protocol
from flatnet.cni.protocol import Request
from flatnet.errors import CNIError, Code, ConfigError, KernelError
from flatnet.ipam import PodIPAM, lease_subnet, save_config
from flatnet.kernel import links, netns
from flatnet.kernel.nft import Nft
from flatnet.model import Lease, NetworkConfig
from flatnet.proxy.sync import ServiceProxy
from flatnet.store import Store, open_store

__all__ = ["Agent", "AgentOptions"]

log = logging.getLogger("flatnet.agent")


@dataclass(frozen=True)
class AgentOptions:
    node: str
    store_url: str
    socket_path: str = "/run/flatnet/agent.sock"
    underlay_ip: str = ""
    bridge: str = "fl0"
    ns: str | None = None
    network: NetworkConfig | None = None  # proposed if the store has none yet
    reclaim_grace: float = 60.0
    reclaim_every: float = 30.0
    reap_delay: float = 0.5  # batch window for destroying deleted pods' veths
    resync_every: float = 10.0  # peer routes re-converged this often without events
    proxy_resync: float = 300.0  # the whole service table rewritten this often


class Agent:
    def __init__(self, opts: AgentOptions) -> None:
        self.opts = opts
        self.store: Store | None = None
        self.lease: Lease | None = None
        self.pods: PodNetwork | None = None
        self.ready = threading.Event()
        self._stop = threading.Event()
        self._server: socketserver.ThreadingUnixStreamServer | None = None
        self._threads: list[threading.Thread] = []

    # -- life cycle ---------------------------------------------------------
    def start(self) -> None:
        o = self.opts
        self.store = open_store(o.store_url)
        cfg = save_config(self.store, o.network or NetworkConfig())
        self.config = cfg
        underlay = o.underlay_ip or underlay_address(o.ns)
        dev, dev_mtu, nets = underlay_device(o.ns, underlay)
        self.backend = backends.get(cfg.backend)
        self._ttl_lease = self.store.grant(cfg.lease_ttl)
        opts = dict(cfg.backend_options)
        self._lease_data = lambda subnet: self.backend.lease_data(subnet, opts)
        self.lease = lease_subnet(  # published once, with what peers need (VTEP MAC...)
            self.store, cfg, o.node, underlay, self._ttl_lease, self._lease_data
        )
        ctx = self.ctx = Context(o.ns, self.lease, dev, dev_mtu, nets, opts)
        for other in backends.names():  # objects of a backend this node ran before
            if other != cfg.backend:
                backends.get(other).teardown(ctx)
        if self.backend.setup(ctx) != self.lease.backend_data:
            raise ConfigError(f"backend {cfg.backend}: set-up disagrees with its lease data")
        self.mtu = min(cfg.mtu, self.backend.pod_mtu(ctx))
        self.nft = Nft(o.ns)
        port = self.lease.backend_data.get("port")  # a UDP tunnel's port (vxlan, udp)
        tunnel_port = None if port is None else int(port)
        setup_node(
            o.ns,
            o.bridge,
            self.lease.subnet,
            cfg.pod_cidr,
            self.mtu,
            self.nft,
            underlay,
            tunnel_port,
        )
        ipam = PodIPAM(self.store, self.lease.subnet, o.node)
        self.pods = PodNetwork(o.ns, o.bridge, ipam, self.mtu, o.reap_delay)
        self.pods.start_reaper()
        self._fast_path(cfg, [dev, *self.backend.devices(ctx)], ipam)
        self.peers = PeerWatcher(
            self.store,
            self.backend,
            ctx,
            self.backend.devices(ctx),
            self._ttl_lease,
            o.resync_every,
            self.pods.fast.set_peers if self.pods.fast is not None else None,
        )
        self.proxy = ServiceProxy(
            self.store, self.nft, o.node, cfg.pod_cidr, self._ttl_lease, o.proxy_resync
        )
        self._serve()
        self._spawn(lambda: self.proxy.run(self._stop), "proxy")
        self._spawn(self._keepalive_loop, "lease-keepalive")
        self._spawn(self._reclaim_loop, "ip-reclaim")
        self._spawn(lambda: self.peers.run(self._stop), "peers")
        self.ready.set()
        log.info(
            "node %s ready: subnet %s, underlay %s on %s (MTU %d), backend %s, pod MTU %d",
            o.node,
            self.lease.subnet,
            underlay,
            dev,
            dev_mtu,
            cfg.backend,
            self.mtu,
        )

    def _fast_path(self, cfg: NetworkConfig, devices: list[str], ipam: PodIPAM) -> None:
        """Install the eBPF fast path, or take an earlier one away when it is off.
        A kernel without what it needs (tcx, conntrack kfuncs, BTF) gets a
        warning and the normal path: the fast path is only ever faster."""
        assert self.pods is not None
        if not cfg.fast_path:
            if n := fastpath.remove(self.opts.ns):
                log.info("fast path off: %d attachment(s) removed", n)
            return
        gateway_mac = links.ip_mac(str(ipam.gateway))
        assert self.lease is not None
        data = self.lease.backend_data
        vxlan = None
        if cfg.backend == "vxlan":
            tunnel, under = self.backend.devices(self.ctx)[0], self.ctx.underlay_dev
            vxlan = (int(data["vni"]), int(data["port"]), tunnel, under, self.lease.underlay_ip)
        size = ipam.subnet.num_addresses
        fast = FastPath(self.opts.ns, cfg.pod_cidr, gateway_mac, size, vxlan)
        veth = links.host_veth_name
        pods = [(a.ip, veth(a.container_id, a.ifname)) for a in self.pods.attached()]
        try:
            fast.install(devices, pods)
        except (KernelError, OSError) as e:
            fast.close()
            log.warning("fast path unavailable, pod traffic takes the node's stack: %s", e)
            return
        self.pods.fast = fast
        log.info("fast path on %s and %d pod veth(s)", ", ".join(devices), len(pods))

    def _spawn(self, fn: Any, name: str) -> None:
        t = threading.Thread(target=fn, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def _serve(self) -> None:
        path = self.opts.socket_path
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        if os.path.exists(path):
            os.unlink(path)  # a stale socket of a previous run of this agent
        agent = self

        class Conn(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                raw = self.rfile.read().decode()
                if raw.startswith("\n"):  # no CNI_* environment at all
                    head, stdin = "", raw[1:]
                else:
                    head, _, stdin = raw.partition("\n\n")
                env = dict(line.split("=", 1) for line in head.splitlines() if "=" in line)
                code, out = protocol.handle(agent, env, stdin)
                self.wfile.write(f"{code}\n{out}".encode())

        class Server(socketserver.ThreadingUnixStreamServer):
            request_queue_size = 1024  # runtimes start many pods at once
            daemon_threads = True

        old = os.umask(0o077)
        try:
            self._server = Server(path, Conn)
        finally:
            os.umask(old)
        self._spawn(self._server.serve_forever, "cni-server")

    def stop(self) -> None:
        """Stop serving; the data plane stays in the kernel (pods keep working)."""
        self._stop.set()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.opts.socket_path)
        for t in self._threads:
            if t.name in ("peers", "proxy"):
                t.join(timeout=5)
        if self.pods is not None:
            if self.pods.fast is not None:
                self.pods.fast.close()
            self.pods.close()
        if getattr(self, "backend", None) is not None:
            self.backend.stop()
        if self.store is not None:
            self.store.close()

    def run_forever(self) -> None:
        done = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: done.set())
        self.start()
        done.wait()
        self.stop()

    # -- background ---------------------------------------------------------
    def _keepalive_loop(self) -> None:
        assert self.store is not None
        period = max(1.0, self.config.lease_ttl / 3)
        while not self._stop.wait(period):
            try:
                if not self.store.keepalive(self._ttl_lease):
                    log.warning("subnet lease expired; re-claiming")
                    self._ttl_lease = self.store.grant(self.config.lease_ttl)
                    self.lease = lease_subnet(
                        self.store,
                        self.config,
                        self.opts.node,
                        self.lease.underlay_ip if self.lease else "",
                        self._ttl_lease,
                        self._lease_data,
                    )
                    self.peers.rebind(self._ttl_lease)
                    self.proxy.status_lease = self._ttl_lease
            except Exception as e:  # keep trying: the store may be back soon
                log.warning("lease keep-alive failed: %s", e)

    def _reclaim_loop(self) -> None:
        while not self._stop.wait(self.opts.reclaim_every):
            try:
                assert self.pods is not None
                freed = self.pods.orphans(self.opts.reclaim_grace)
                if freed:
                    log.info("reclaimed IPs of vanished pods: %s", ", ".join(freed))
            except Exception as e:
                log.warning("IP reclaim failed: %s", e)

    # -- CNI handler --------------------------------------------------------
    def _net(self, req: Request) -> PodNetwork:
        if self.pods is None or not self.ready.is_set():
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
        self._net(req).delete(req.container_id, req.ifname)

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


def underlay_device(ns: str | None, ip: str) -> tuple[str, int, tuple[str, ...]]:
    """The device holding the underlay ``ip``: its name, MTU and connected networks."""
    with netns.iproute(ns) as ipr:
        for a in ipr.get_addr(family=2):
            if a.get("IFA_ADDRESS") == ip:
                link = ipr.get_links(a["index"])[0]
                nets = tuple(
                    str(ipaddress.IPv4Network(f"{x.get('IFA_ADDRESS')}/{x['prefixlen']}", False))
                    for x in ipr.get_addr(index=a["index"], family=2)
                )
                return str(link.get("IFLA_IFNAME")), int(link.get("IFLA_MTU")), nets
    raise ConfigError(
        f"underlay IP {ip} is on no device in {'namespace ' + ns if ns else 'this host'}"
    )


def underlay_address(ns: str | None) -> str:
    """The node's underlay IP: the source address of its default route, else the
    first global IPv4 address."""
    with netns.iproute(ns) as ipr:
        for r in ipr.get_default_routes(family=2):
            oif = r.get("RTA_OIF")
            for a in ipr.get_addr(index=oif, family=2):
                return str(a.get("IFA_ADDRESS"))
        for a in ipr.get_addr(family=2):
            if a.get("IFA_ADDRESS") and not a.get("IFA_ADDRESS").startswith("127."):
                return str(a.get("IFA_ADDRESS"))
    raise ConfigError("cannot find the node's underlay IP: give --underlay-ip")
