"""The node agent process: ``flatnet agent`` — wiring and life cycle, nothing else.

Start-up, in order (:func:`assemble`): open the store, agree on the cluster
config, find the underlay, claim (or re-claim) the node subnet under a TTL
lease (:class:`~flatnet.agent.lease.LeaseKeeper`), set up the backend and the
node (sysctls, bridge, masquerade), load the fast path, and make the policy
table's keeper, the pod network (whose ADD admits each pod to the policy
table first), the peer watcher and the service proxy. Then :meth:`Agent.start`
serves the CNI plugin and starts the threads: peers, proxy, policy, the log
of denied attempts (:mod:`flatnet.policy.denials`), the LoadBalancer
announcer and its ARP responder (:mod:`flatnet.agent.announcer`), lease keep-alive,
IP reclaim, and the heartbeat (:mod:`flatnet.agent.heartbeat`: the node's
Ready condition). The agent never switches its own threads into another
namespace: ``ns`` (None on a real host) names where its kernel objects go.
"""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Callable
from dataclasses import dataclass

from flatnet import backends
from flatnet.agent.announcer import Announcer
from flatnet.agent.cni import CNIHandler, CNIServer
from flatnet.agent.heartbeat import HeartbeatKeeper
from flatnet.agent.lease import LeaseKeeper
from flatnet.agent.node import setup_node
from flatnet.agent.peers import PeerWatcher
from flatnet.agent.pods import PodNetwork, attached
from flatnet.backends import Backend, Context
from flatnet.backends.bgp import Bgp
from flatnet.errors import ConfigError, KernelError
from flatnet.fastpath import FastPath, remove
from flatnet.ipam import PodIPAM, save_config
from flatnet.kernel import links, underlay
from flatnet.kernel.api import FastPathMaps
from flatnet.kernel.arp import ArpResponder
from flatnet.kernel.conntrack import Conntrack
from flatnet.kernel.nft import Nft
from flatnet.kernel.routes import Routes
from flatnet.kernel.veths import NodeVeths
from flatnet.model import Allocation, Lease, NetworkConfig
from flatnet.policy.denials import DenialLog
from flatnet.policy.guard import Guard, PodIdentity
from flatnet.policy.sync import PolicySync
from flatnet.proxy.sync import ServiceProxy
from flatnet.store import Store, open_store

__all__ = ["Agent", "AgentOptions", "Parts", "assemble"]

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
    policy_resync: float = 300.0  # the whole policy table rewritten this often
    heartbeat: float = 1.0  # seconds between heartbeats; NotReady after 3 missed
    policy_log: str = "/run/flatnet/policy.log"  # denied connection attempts, a JSON line each
    state_dir: str = "/run/flatnet"  # a backend's daemon keeps its files here (bgp: bird/)


@dataclass(frozen=True)
class Parts:
    """A running node's parts, made by :func:`assemble`."""

    store: Store
    keeper: LeaseKeeper
    backend: Backend
    announcer: Announcer
    arp: ArpResponder
    pods: PodNetwork
    peers: PeerWatcher
    proxy: ServiceProxy
    policy: PolicySync
    denials: DenialLog
    cni: CNIServer
    heartbeat: HeartbeatKeeper


def assemble(o: AgentOptions, ready: threading.Event) -> Parts:
    """Make the node's parts, in order; on failure close what was opened."""
    with contextlib.ExitStack() as undo:
        store = open_store(o.store_url)
        undo.callback(store.close)
        cfg = save_config(store, o.network or NetworkConfig())
        ip = o.underlay_ip or underlay.address(o.ns)
        under = underlay.device(o.ns, ip)
        backend = backends.get(cfg.backend)
        options = dict(cfg.backend_options)
        keeper = LeaseKeeper(store, cfg, o.node, ip, lambda s: backend.lease_data(s, options))
        lease = keeper.claim()  # published once, with what peers need (VTEP MAC...)
        ctx = Context(
            o.ns, lease, under.dev, under.mtu, under.nets, options, o.state_dir, cfg.pod_cidr
        )
        for other in backends.names():  # objects of a backend this node ran before
            if other != cfg.backend:
                backends.get(other).teardown(ctx)
        if backend.setup(ctx) != lease.backend_data:
            raise ConfigError(f"backend {cfg.backend}: set-up disagrees with its lease data")
        undo.callback(backend.stop)
        mtu = min(cfg.mtu, backend.pod_mtu(ctx))
        nft = Nft(o.ns)
        port = lease.backend_data.get("port")  # a UDP tunnel's port (vxlan, udp)
        tunnel_port = None if port is None else int(port)
        setup_node(o.ns, o.bridge, lease.subnet, cfg.pod_cidr, mtu, nft, ip, tunnel_port)
        ipam = PodIPAM(store, lease.subnet, o.node)
        veths = NodeVeths(o.ns)
        undo.callback(veths.close)
        present = attached(veths, ipam)
        fast = _fast_path(o.ns, cfg, backend, ctx, ipam, present)
        if fast is not None:
            undo.callback(fast.close)
        ttl = keeper.ttl_lease
        own = {ip, str(ipam.gateway), str(ipam.subnet.network_address)}
        policy = PolicySync(store, nft, Conntrack(o.ns), o.node, own, ttl, o.policy_resync)
        guard = Guard(nft)
        guard.sync(
            PodIdentity(
                links.host_veth_name(a.container_id, a.ifname), links.ip_mac(a.ip), a.ip, a.pod
            )  # fmt: skip
            for a in present
        )
        pods = PodNetwork(veths, o.bridge, ipam, mtu, o.reap_delay, fast, policy.admit, guard)
        _remtu(pods, mtu)
        peers = PeerWatcher(
            store,
            backend,
            ctx,
            Routes(o.ns),
            ttl,
            o.resync_every,
            fast.set_peers if fast is not None else None,
        )
        proxy = ServiceProxy(store, nft, Conntrack(o.ns), o.node, cfg.pod_cidr, ttl, o.proxy_resync)
        keeper.subscribe(peers.rebind)
        keeper.subscribe(proxy.rebind)
        keeper.subscribe(policy.rebind)
        arp = ArpResponder(o.ns, under.dev)
        undo.callback(arp.close)
        speaker = backend.announce if isinstance(backend, Bgp) else None
        announcer = Announcer(store, o.node, cfg.backend, arp.hold, speaker, ttl)
        keeper.subscribe(announcer.rebind)
        cni = CNIServer(o.socket_path, CNIHandler(cfg, pods, ready))
        heartbeat = HeartbeatKeeper(store, o.node, o.heartbeat, 3 * o.heartbeat, under.nets)
        undo.pop_all()
    log.info(
        "node %s: subnet %s, underlay %s on %s (MTU %d), backend %s, pod MTU %d",
        o.node, lease.subnet, ip, under.dev, under.mtu, cfg.backend, mtu,
    )  # fmt: skip
    denials = DenialLog(o.ns, o.node, policy, o.policy_log)
    return Parts(
        store, keeper, backend, announcer, arp, pods, peers, proxy, policy, denials, cni, heartbeat
    )


def _fast_path(
    ns: str | None,
    cfg: NetworkConfig,
    backend: Backend,
    ctx: Context,
    ipam: PodIPAM,
    present: list[Allocation],
) -> FastPathMaps | None:
    """Install the eBPF fast path, or take an earlier one away when it is off.
    A kernel without what it needs (tcx, conntrack kfuncs, BTF) gets a
    warning and the normal path: the fast path is only ever faster."""
    if not cfg.fast_path:
        if n := remove(ns):
            log.info("fast path off: %d attachment(s) removed", n)
        return None
    devices = [ctx.underlay_dev, *backend.devices(ctx)]
    gateway_mac = links.ip_mac(str(ipam.gateway))
    fast = FastPath(ns, cfg.pod_cidr, gateway_mac, ipam.subnet.num_addresses, backend.tunnel(ctx))
    pods = [(a.ip, links.host_veth_name(a.container_id, a.ifname)) for a in present]
    try:
        fast.install(devices, pods)
    except (KernelError, OSError) as e:
        fast.close()
        log.warning("fast path unavailable, pod traffic takes the node's stack: %s", e)
        return None
    log.info("fast path on %s and %d pod veth(s)", ", ".join(devices), len(pods))
    return fast


def _remtu(pods: PodNetwork, mtu: int) -> None:
    """Pods made under another backend get this one's MTU (or a plain word
    that they must be recreated)."""
    changed, stuck = pods.set_mtu(mtu)
    if changed:
        log.info("pod MTU is now %d for %d pod(s): %s", mtu, len(changed), ", ".join(changed))
    if stuck:
        log.warning(
            "pods %s keep their old MTU (their namespace cannot be entered): recreate them",
            ", ".join(stuck),
        )


class Agent:
    """One node's agent: :meth:`start` assembles and runs it, :meth:`stop`
    lets go (the data plane stays in the kernel, so pods keep working)."""

    def __init__(self, opts: AgentOptions) -> None:
        self.opts = opts
        self.ready = threading.Event()
        self.parts: Parts | None = None  # made by start()
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    @property
    def pods(self) -> PodNetwork | None:
        return self.parts.pods if self.parts is not None else None

    @property
    def lease(self) -> Lease | None:
        return self.parts.keeper.lease if self.parts is not None else None

    def start(self) -> None:
        p = self.parts = assemble(self.opts, self.ready)
        p.pods.start_reaper()
        p.cni.start(self._spawn)
        self._spawn(lambda: p.proxy.run(self._stop), "proxy")
        self._spawn(lambda: p.policy.run(self._stop), "policy")
        self._spawn(lambda: p.arp.run(self._stop), "arp")
        self._spawn(lambda: p.announcer.run(self._stop), "announcer")
        self._spawn(lambda: p.denials.run(self._stop), "policy-log")
        self._spawn(lambda: p.keeper.run(self._stop), "lease-keepalive")
        self._spawn(self._reclaim_loop, "ip-reclaim")
        self._spawn(lambda: p.peers.run(self._stop), "peers")
        self._spawn(self._observe_loop, "peers-observe")
        p.heartbeat.beat()  # Ready in get nodes, before CNI STATUS says ready
        self._spawn(lambda: p.heartbeat.run(self._stop), "heartbeat")
        self.ready.set()
        log.info("node %s ready", self.opts.node)

    def _spawn(self, fn: Callable[[], None], name: str) -> None:
        t = threading.Thread(target=fn, name=name, daemon=True)
        t.start()
        self._threads.append(t)

    def stop(self) -> None:
        """Stop serving; the data plane stays in the kernel (pods keep working)."""
        self._stop.set()
        p = self.parts
        if p is None:
            return
        p.heartbeat.stop()
        p.cni.stop()
        for t in self._threads:
            if t.name in ("peers", "proxy", "policy", "policy-log", "arp", "announcer"):
                t.join(timeout=5)
        p.arp.close()
        p.pods.close()
        p.backend.stop()
        p.store.close()

    def run_forever(self) -> None:
        done = threading.Event()
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, lambda *_: done.set())
        self.start()
        done.wait()
        self.stop()

    def _observe_loop(self) -> None:
        """What the backend's daemon holds (bgp: BIRD's sessions), twice a second."""
        assert self.parts is not None
        peers = self.parts.peers
        while not self._stop.wait(0.5):
            try:
                peers.refresh()
            except Exception as e:
                log.warning("peer status refresh failed: %s", e)

    def _reclaim_loop(self) -> None:
        assert self.parts is not None
        pods = self.parts.pods
        while not self._stop.wait(self.opts.reclaim_every):
            try:
                freed = pods.orphans(self.opts.reclaim_grace)
                if freed:
                    log.info("reclaimed IPs of vanished pods: %s", ", ".join(freed))
            except Exception as e:
                log.warning("IP reclaim failed: %s", e)
