"""Build a lab from its description, the way a real cluster is put together.

Order (every object is recorded in the state file before the next is made):

1. ``fl-<lab>-sw``: the underlay switch, a namespace holding bridge ``br0``;
2. per node ``fl-<lab>-n-<node>``: ``eth0`` on the switch with the node's
   underlay IP; ``fl-<lab>-ext`` the same for the external host, which also
   runs a test server and is the nodes' default gateway;
3. the datastore: a SQLite file, or a real etcd inside the switch namespace
   listening on the underlay (agents reach it over the network, as on real
   hosts) and on a unix socket for the CLI;
4. per node: the CNI plugin and conflist installed in the node's own dirs,
   and ``flatnet agent`` started inside the node namespace; ready when the
   plugin's STATUS succeeds;
5. pods, as a runtime creates them: a namespace, the ``loopback`` plugin,
   then the node's conflist (flatnet + portmap) through the CNI binaries,
   then one process per container inside the namespace.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

from flatnet import keys, services
from flatnet.cni.install import install
from flatnet.cni.runtime import Chain, load_conflist
from flatnet.errors import ConfigError, FlatnetError, KernelError, LabTimeout
from flatnet.ipam import load_config, save_config
from flatnet.kernel import links, netns
from flatnet.kernel.nft import Nft
from flatnet.lab.delay import rule as delay_rule
from flatnet.lab.state import LABS_DIR, LabState
from flatnet.lab.topo import LabTopo
from flatnet.manifest import Pod
from flatnet.model import PeerStatus, PodRecord, ProxyStatus, Service, ServicePort
from flatnet.services import dns_ip
from flatnet.store import Store, open_store

__all__ = ["Progress", "build", "spawn", "wait_port"]

Progress = Callable[[str, int, int], None]
REF_CNI = "/usr/lib/cni"
_lock = threading.Lock()
LOOPBACK = {"cniVersion": "1.0.0", "name": "cni-loopback", "plugins": [{"type": "loopback"}]}


ETC_NETNS = Path("/etc/netns")


def in_ns(ns: str, argv: list[str]) -> tuple[list[str], Callable[[], None] | None]:
    """``argv`` and a ``preexec_fn`` that run it inside ``ns``: through ``ip netns
    exec`` when the pod has its own /etc files (resolv.conf), else by setns."""
    if (ETC_NETNS / ns).is_dir():
        return ["ip", "netns", "exec", ns, *argv], None
    return argv, netns.preexec(ns)


def spawn(ns: str, argv: list[str], log: Path, env: dict[str, str] | None = None) -> int:
    """Start ``argv`` detached (own session) inside namespace ``ns``; returns its PID."""
    argv, enter = in_ns(ns, argv)
    with open(log, "ab") as out:
        p = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            start_new_session=True,
            preexec_fn=enter,
            env=dict(os.environ, **(env or {})),
        )
    return p.pid


def impair(ns: str, dev: str, how: dict[str, str]) -> None:
    """Rate (tbf) and loss (an nftables rule in a table of the lab's own) on
    ``dev``'s egress in ``ns``. Delay and jitter are a process of their own
    (:mod:`flatnet.lab.delay`, started by the builder): this kernel has no
    netem qdisc."""
    if how.get("rate"):
        _tool(ns, "tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate", how["rate"],
              "burst", "256kb", "latency", "50ms")  # fmt: skip
    if how.get("loss"):
        per_10k = int(float(how["loss"].rstrip("%")) * 100)
        rule = f'oifname "{dev}" numgen random mod 10000 < {per_10k} drop'
        Nft(ns).apply(
            "table inet flatnet-lab-impair {\n  chain out {\n"
            f"    type filter hook postrouting priority 0;\n    {rule}\n  }}\n}}\n",
            what="table inet flatnet-lab-impair",
        )


def delay_line(
    ns: str, dev: str, how: dict[str, str], log: Path, record: Callable[[int], None]
) -> None:
    """Start the delay line for ``dev``'s egress in ``ns`` (``record`` gets its
    PID at once, so a failure below leaves nothing unowned), wait until it
    holds the queue, then send the link through it."""
    argv = _py("flatnet.lab.delay", "--delay", how["delay"], "--jitter", how.get("jitter") or "0ms")
    record(spawn(ns, argv, log))
    bound = Path("/proc/thread-self/net/netfilter/nfnetlink_queue")
    deadline = time.monotonic() + 10
    while not netns.run_in(netns.path_of(ns), lambda: bound.exists() and bound.read_text() != ""):
        if time.monotonic() > deadline:
            raise KernelError(f"the delay line in '{ns}' did not bind its queue (see {log})")
        time.sleep(0.02)
    _tool(ns, "iptables", *delay_rule(dev))


def _tool(ns: str, *argv: str) -> None:
    """Run a configuration tool (tc, iptables) in ``ns``; its complaint becomes a KernelError."""
    r = subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True)
    if r.returncode != 0:
        raise KernelError(f"{' '.join(argv)} in '{ns}' failed: {r.stderr.strip()}")


def wait_port(ns: str, port: int, timeout: float = 20.0, host: str = "127.0.0.1") -> None:
    import socket

    def probe() -> bool:
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return True
        except OSError:
            return False

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if netns.run_in(netns.path_of(ns), probe):
            return
        time.sleep(0.05)
    raise LabTimeout(f"nothing listens on {host}:{port} in '{ns}' after {timeout}s")


def _py(*args: str) -> list[str]:
    return [sys.executable, "-m", *args]


class _Builder:
    def __init__(self, topo: LabTopo, progress: Progress) -> None:
        self.t = topo
        self.progress = progress
        self.st = LabState(topo.name, file=os.path.abspath(topo.path), datastore=topo.datastore)
        self.prefix = f"fl-{topo.name}-"
        self.plen = int(topo.underlay_cidr.split("/")[1])
        self.st.segments = topo.segments()
        self.agent_url = ""

    # -- underlay ---------------------------------------------------------
    def underlay(self) -> None:
        """Switch namespace with one bridge per segment; nodes (and the external
        host, on segment A) plugged in; for ``routed``, a router between A and B."""
        t = self.t
        segs = t.segments()
        sw = self.st.add_ns(self.prefix + "sw")
        for i in range(len(segs)):
            links.bridge(sw, f"br{i}")
        ports = iter(range(1000))
        if t.underlay == "routed":
            rt = self.st.add_ns(self.prefix + "rt")
            self.st.router = rt
            for i, cidr in enumerate(segs):
                self._plug(sw, i, rt, f"p{next(ports)}", f"eth{i}", t.router_ip(i), cidr)
            netns.sysctl(rt, "net.ipv4.ip_forward", "1")
        members: list[tuple[str, str, str, int]] = [
            (n, self.prefix + "n-" + n, t.node_ip(n), t.segment_of(n)) for n in t.nodes
        ]
        if t.external:
            members.append(("external", self.prefix + "ext", t.external_ip, 0))
            self.st.external = self.prefix + "ext"
        how = dict(t.netem)
        for i, (name, ns, ip, seg) in enumerate(members):
            self.st.add_ns(ns)
            self._plug(
                sw, seg, ns, f"p{next(ports)}", "eth0", ip, segs[seg], self._routes(name, seg)
            )
            if name != "external":
                self.st.nodes[name] = {"ns": ns, "underlayIP": ip}
                impair(ns, "eth0", how)
                if how.get("delay"):
                    log = self.st.dir / f"delay-{name}.log"
                    record = partial(self.st.add_process, what=f"delay:{name}")
                    delay_line(ns, "eth0", how, log, record)
            self.progress("underlay: node namespaces on the switch", i + 1, len(members))
        self.st.save()
        if t.external:
            pid = spawn(
                self.st.external,
                _py("flatnet.agnhost", "netexec", "--http-port", "8080"),
                self.st.dir / "external.log",
                {"FLATNET_POD_NAME": "external"},
            )
            self.st.add_process(pid, "external")

    def _routes(self, member: str, seg: int) -> dict[str, str]:
        """Routes of a node or the external host. routed: nodes leave through their
        segment's router, the external host reaches segment B through it; l2: nodes
        leave through the external host, if there is one."""
        t = self.t
        if t.underlay == "routed":
            if member == "external":
                return {t.segments()[1]: t.router_ip(0)}
            return {"0.0.0.0/0": t.router_ip(seg)}
        return {"0.0.0.0/0": t.external_ip} if t.external and member != "external" else {}

    def _plug(
        self,
        sw: str,
        seg: int,
        ns: str,
        port: str,
        ifname: str,
        ip: str,
        cidr: str,
        routes: dict[str, str] | None = None,
    ) -> None:
        """A veth from bridge ``br<seg>`` in the switch to ``ifname`` in ``ns``."""
        links.plug(sw, port, f"br{seg}", ns, ifname)
        links.add_address(ns, ifname, ip, int(cidr.split("/")[1]), routes)

    # -- datastore ----------------------------------------------------------
    def datastore(self) -> tuple[str, str]:
        """Returns (url for agents, url for this machine's CLI)."""
        self.st.dir.mkdir(parents=True, exist_ok=True)
        if self.t.datastore == "sqlite":
            url = f"sqlite://{self.st.dir / 'store.db'}"
            self.st.store_url = url
            self.st.save()
            return url, url
        from flatnet.store.etcd_server import EtcdServer

        sw = self.prefix + "sw"
        links.add_address(sw, "br0", self.t.store_ip, self.plen)
        if self.t.underlay == "routed":  # nodes on segment B reach etcd via the router
            links.add_route(sw, self.t.segments()[1], self.t.router_ip(0), "br0")
        (self.st.dir / "etcd").mkdir(exist_ok=True)
        srv = EtcdServer(
            host=self.t.store_ip,
            argv_prefix=("ip", "netns", "exec", sw),
            data_dir=self.st.dir / "etcd",
            client_port=2379,
            peer_port=2380,
            unix_socket=True,
        )
        srv.start(30)  # stops etcd itself if it never gets ready
        assert srv.proc is not None
        self.st.etcd_argv = srv.argv()
        self.st.add_process(srv.proc.pid, "etcd")
        self.st.store_url = srv.socket_url
        self.st.save()
        return srv.url, srv.socket_url

    # -- agents -------------------------------------------------------------
    def agents(self, agent_url: str, store: Store) -> None:
        total = len(self.t.nodes)
        for node in self.t.nodes:
            d = self.st.dir / "nodes" / node
            d.mkdir(parents=True, exist_ok=True)
            sock = str(d / "agent.sock")
            install(str(d / "bin"), str(d / "net.d"), sock)
            for plugin in Path(REF_CNI).iterdir():  # one bin dir, as on a host
                link = d / "bin" / plugin.name
                if not link.exists():
                    link.symlink_to(plugin)
            info = self.st.nodes[node]
            info.update(socket=sock, confDir=str(d / "net.d"), binDir=str(d / "bin"))
            argv = _py(
                "flatnet",
                "agent",
                "--node",
                node,
                "--store",
                agent_url,
                "--socket",
                sock,
                "--underlay-ip",
                info["underlayIP"],
                "--resync",
                str(self.t.agent_resync),
            )
            info["agentArgv"] = argv
            self.st.add_process(spawn(info["ns"], argv, d / "agent.log"), f"agent:{node}")
        for i, node in enumerate(self.t.nodes):
            wait_agent(node, self.st.nodes[node])
            self.progress("agents ready", i + 1, total)
        wait_peers(store, set(self.t.nodes), self.progress)

    # -- pods ---------------------------------------------------------------
    def pods(self, store: Store) -> None:
        if self.t.dns:
            self.dns(store)
        add_pods(self.st, list(self.t.pods), store, self.progress)
        if self.t.services:
            services.apply(store, load_config(store), self.t.services)
            wait_proxies(store, self.st, store.revision())

    def dns(self, store: Store) -> None:
        """The cluster DNS: a kube-dns pod in kube-system running ``flatnet dns``
        behind the kube-dns service VIP; the external host, if any, runs dnsmasq
        as the upstream resolver (so no query leaves the machine)."""
        upstream = []
        if self.t.external:
            hosts = self.st.dir / "upstream.hosts"
            hosts.write_text(f"{self.t.external_ip} external.{UPSTREAM_ZONE}\n")
            argv = [
                "dnsmasq", "--keep-in-foreground", "--no-resolv", "--no-hosts",
                f"--addn-hosts={hosts}", f"--listen-address={self.t.external_ip}",
                "--bind-interfaces", "--pid-file=", "--user=root", "--group=root",
                f"--local=/{UPSTREAM_ZONE}/", "--log-facility=-",
            ]  # fmt: skip
            self.st.add_process(
                spawn(self.st.external, argv, self.st.dir / "dnsmasq.log"), "dnsmasq"
            )
            upstream = ["--upstream", self.t.external_ip]
        node = self.t.nodes[0]
        pod = Pod(
            "kube-dns",
            "kube-system",
            node,
            {"k8s-app": "kube-dns"},
            "bridge",
            (tuple(_py("flatnet", "dns", "--store", self.agent_url, *upstream)),),
            {"dns": [53, "UDP"], "dns-tcp": [53, "TCP"], "metrics": [53, "TCP"]},
        )
        svc = Service(
            "kube-dns",
            "kube-system",
            cluster_ip=dns_ip(self.t.network),
            selector={"k8s-app": "kube-dns"},
            ports=(
                ServicePort(53, "UDP", "dns", "dns"),
                ServicePort(53, "TCP", "dns-tcp", "dns-tcp"),
            ),
        )
        services.apply(store, load_config(store), [svc])
        add_pods(self.st, [pod], store)


UPSTREAM_ZONE = "flatnet.test"


def check_new_pods(st: LabState, pods: list[Pod], path: str) -> None:
    """Pods from a manifest, checked against the running lab before anything is made."""
    for p in pods:
        if p.name in st.pods:
            raise ConfigError(f"{path}: pod '{p.name}' exists already in lab '{st.name}'")
        if p.node not in st.nodes:
            raise ConfigError(
                f"{path}: pod '{p.name}': spec.nodeName: '{p.node}' is not one of the lab's "
                f"nodes ({', '.join(st.nodes)})"
            )
        other = p.shares_with
        if other is not None and other not in st.pods and other not in [q.name for q in pods]:
            raise ConfigError(f"{path}: pod '{p.name}': no pod '{other}' to share a network with")


def add_pods(st: LabState, pods: list[Pod], store: Store, progress: Progress | None = None) -> None:
    """Create pods as a runtime does (in parallel), then mark each ready once it
    serves: endpoints only ever point at pods that answer."""
    first = [p for p in pods if p.shares_with is None]
    later = [p for p in pods if p.shares_with is not None]
    done = [0]

    def one(p: Pod) -> None:
        _create_pod(st, p, store)
        with _lock:
            done[0] += 1
            if progress:
                progress("pods running", done[0], len(pods))

    for batch in (first, later):
        with ThreadPoolExecutor(max_workers=6) as ex:
            list(ex.map(one, batch))
    with ThreadPoolExecutor(max_workers=6) as ex:
        list(ex.map(lambda p: _ready(st, p, store), pods))


def _record(st: LabState, p: Pod, ready: bool) -> PodRecord:
    info = st.pods[p.name]
    return PodRecord(
        p.name,
        p.namespace,
        p.node,
        info["ip"],
        netns.path_of(info["ns"]),
        p.mode,
        p.labels,
        info["containerID"],
        "Running",
        ready,
        dict(p.ports),
    )


def _create_pod(st: LabState, p: Pod, store: Store) -> None:
    node = st.nodes[p.node]
    cid = uuid.uuid4().hex
    rec: dict[str, Any] = {
        "node": p.node,
        "namespace": p.namespace,
        "mode": p.mode,
        "containerID": cid,
        "labels": p.labels,
    }
    if p.mode == "host":
        ns, ip = node["ns"], node["underlayIP"]
    elif p.shares_with:
        other = st.pods[p.shares_with]
        ns, ip = other["ns"], other["ip"]
    else:
        ns = f"fl-{st.name}-p-{p.name}"
        with _lock:
            st.pods[p.name] = dict(rec, ns=ns, ip="")
            st.add_ns(ns)
        if p.mode == "bridge":
            _resolv_conf(st, p, ns, store)
        ip = _attach(st, p, ns, cid, node)
    rec.update(ns=ns, ip=ip)
    with _lock:
        st.pods[p.name] = rec
        st.save()
    for i, cmd in enumerate(p.commands or ((),)):
        argv = list(cmd) or _py("flatnet.agnhost", "netexec", "--http-port", "8080")
        log = st.dir / "pods" / f"{p.name}.{i}.log"
        log.parent.mkdir(exist_ok=True)
        pid = spawn(ns, argv, log, {"FLATNET_POD_NAME": p.name})
        with _lock:
            st.add_process(pid, f"pod:{p.name}")
    store.put(keys.pod(p.namespace, p.name), _record(st, p, False).to_json())


def _resolv_conf(st: LabState, p: Pod, ns: str, store: Store) -> None:
    """What kubelet gives a pod with dnsPolicy ClusterFirst."""
    cfg = load_config(store)
    d = ETC_NETNS / ns
    with _lock:
        st.etc_dirs.append(str(d))
        st.save()
    d.mkdir(parents=True, exist_ok=True)
    (d / "resolv.conf").write_text(
        f"search {p.namespace}.svc.cluster.local svc.cluster.local cluster.local\n"
        f"nameserver {dns_ip(cfg)}\n"
        "options ndots:5\n"
    )


def _attach(st: LabState, p: Pod, ns: str, cid: str, node: dict[str, Any]) -> str:
    path = netns.path_of(ns)
    lo = Chain(LOOPBACK, [node["binDir"]], ns=node["ns"])
    lo.add(cid, path, "lo", pod=(p.namespace, p.name))
    if p.mode == "none":
        return ""
    chain = Chain(
        load_conflist(node["confDir"]),
        [node["binDir"]],
        ns=node["ns"],
        cache_dir=str(st.dir / "cni-cache"),
    )
    result = chain.add(cid, path, "eth0", pod=(p.namespace, p.name))
    return str(result["ips"][0]["address"].split("/")[0])


def _ready(st: LabState, p: Pod, store: Store) -> None:
    """A pod is ready when it serves: agnhost on 8080, else its first TCP port."""
    ns = st.pods[p.name]["ns"]
    tcp = [int(v[0]) for v in p.ports.values() if v[1] == "TCP"]
    if not any(p.commands):
        wait_port(ns, 8080)
    elif tcp and p.mode != "none":
        wait_port(ns, tcp[0])
    store.put(keys.pod(p.namespace, p.name), _record(st, p, True).to_json())


def delete_pod(st: LabState, name: str, store: Store) -> bool:
    """Delete a pod gracefully: out of every service's endpoints first (and wait
    until every node's proxy has programmed that), then stop it and tear down its
    network with CNI DEL. Returns False if there is no such pod."""
    info = st.pods.get(name)
    if info is None:
        return False
    sharing = [n for n, o in st.pods.items() if n != name and o["ns"] == info["ns"]]
    if info["mode"] != "host" and sharing and not info["mode"].startswith("container:"):
        raise ConfigError(
            f"pod '{name}': pods {', '.join(sharing)} share its network; delete them first"
        )
    key = keys.pod(info["namespace"], name)
    kv = store.get(key)
    if kv is not None:
        rec = PodRecord.from_json(kv.value)
        rev = store.put(key, replace(rec, phase="Terminating", ready=False).to_json())
        wait_proxies(store, st, rev)  # every proxy publishes its revision after each batch
    st.kill(f"pod:{name}", exact=True)
    if info["mode"] in ("bridge", "none"):
        node = st.nodes[info["node"]]
        path = netns.path_of(info["ns"])
        pod = (info["namespace"], name)
        if info["mode"] == "bridge":
            chain = Chain(
                load_conflist(node["confDir"]),
                [node["binDir"]],
                ns=node["ns"],
                cache_dir=str(st.dir / "cni-cache"),
            )
            chain.delete(info["containerID"], path, "eth0", pod=pod)
        Chain(LOOPBACK, [node["binDir"]], ns=node["ns"]).delete(
            info["containerID"], path, "lo", pod=pod
        )
        netns.delete(info["ns"])
        st.namespaces.remove(info["ns"])
        d = ETC_NETNS / info["ns"]
        if str(d) in st.etc_dirs:
            shutil.rmtree(d, ignore_errors=True)
            st.etc_dirs.remove(str(d))
    store.delete(key)
    del st.pods[name]
    st.save()
    return True


def wait_proxies(store: Store, st: LabState, rev: int, timeout: float = 10) -> None:
    """Until every node's service proxy has programmed the store up to ``rev``."""
    deadline = time.monotonic() + timeout
    while True:
        seen = {
            s.node: s.revision
            for s in (ProxyStatus.from_json(kv.value) for kv in store.range(keys.PROXY))
        }
        late = [n for n in st.nodes if seen.get(n, 0) < rev]
        if not late:
            return
        if time.monotonic() > deadline:
            raise LabTimeout(
                f"the service proxies of {', '.join(late)} did not reach revision {rev} "
                f"within {timeout}s"
            )
        time.sleep(0.02)


def wait_agent(node: str, info: dict[str, Any], timeout: float = 30) -> None:
    """Until the node's agent answers CNI STATUS."""
    chain = Chain(load_conflist(info["confDir"]), [info["binDir"]], ns=info["ns"])
    plugin = {"type": "flatnet", "agentSocket": info["socket"]}
    chain.conf = dict(chain.conf, cniVersion="1.1.0")
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        r = chain.exec_plugin(plugin, "STATUS", {})
        if r.code == 0:
            return
        time.sleep(0.1)
    log = Path(info["confDir"]).parent / "agent.log"
    tail = log.read_text()[-800:] if log.exists() else ""
    raise LabTimeout(f"agent on node '{node}' not ready after {timeout}s:\n{tail}")


def wait_peers(store: Store, nodes: set[str], progress: Progress, timeout: float = 30) -> None:
    """Until every agent has programmed (or refused) every other node."""
    deadline = time.monotonic() + timeout
    while True:
        done = set()
        for kv in store.range(keys.STATUS):
            s = PeerStatus.from_json(kv.value)
            if s.node in nodes and set(s.programmed) | set(s.refused) | {s.node} == nodes:
                done.add(s.node)
        progress("peers programmed", len(done), len(nodes))
        if done == nodes:
            return
        if time.monotonic() > deadline:
            raise LabTimeout(
                f"nodes {', '.join(sorted(nodes - done))} did not program their peers "
                f"within {timeout}s"
            )
        time.sleep(0.05)


def restart_agent(st: LabState, node: str) -> int:
    """Stop the node's agent (if it still runs) and start it again; returns its PID."""
    what = f"agent:{node}"
    st.kill(what, exact=True)
    info = st.nodes[node]
    pid = spawn(info["ns"], info["agentArgv"], st.dir / "nodes" / node / "agent.log")
    st.add_process(pid, what)
    wait_agent(node, info)
    return pid


def restart_etcd(st: LabState, down: float = 0.0, timeout: float = 30) -> None:
    """Stop the lab's etcd, keep it down ``down`` seconds, start it again on the
    same data: what agents see when their datastore goes away and comes back."""
    if not st.etcd_argv:
        raise ConfigError(f"lab '{st.name}' runs no etcd (datastore: {st.datastore})")
    st.kill("etcd", exact=True)
    time.sleep(down)
    d = st.dir / "etcd"  # its cwd: the unix socket is relative to it
    with open(d / "etcd.log", "ab") as log:
        p = subprocess.Popen(
            st.etcd_argv,
            cwd=d,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=log,
            start_new_session=True,
        )
    st.add_process(p.pid, "etcd")
    deadline = time.monotonic() + timeout
    while True:
        try:
            s = open_store(st.store_url)
            try:
                s.revision()
                return
            finally:
                s.close()
        except FlatnetError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def set_backend(
    st: LabState, backend: str, progress: Progress, fast_path: bool | None = None
) -> bool:
    """Switch a running lab's backend (and the fast path, unless None): new
    config in the store, every agent restarted (each removes the old backend's
    objects and programs the new). Returns whether the fast path is on."""
    store = open_store(st.store_url)
    try:
        cfg = load_config(store)
        opts = cfg.backend_options if backend == cfg.backend else {}
        fast = cfg.fast_path if fast_path is None else fast_path
        new = replace(cfg, backend=backend, backend_options=opts, fast_path=fast)
        store.put(keys.CONFIG, new.to_json())
        for i, node in enumerate(st.nodes):
            restart_agent(st, node)
            progress("agents restarted", i + 1, len(st.nodes))
        wait_peers(store, set(st.nodes), progress)
    finally:
        store.close()
    return fast


def build(topo: LabTopo, progress: Progress) -> LabState:
    """Build the lab; on any failure everything made so far is removed."""
    if (LABS_DIR / topo.name / "state.json").exists():
        raise ConfigError(
            f"lab '{topo.name}' exists already; remove it with 'flatnet lab down {topo.name}'"
        )
    b = _Builder(topo, progress)
    b.st.save()
    try:
        b.underlay()
        agent_url, cli_url = b.datastore()
        b.agent_url = agent_url
        store = open_store(cli_url)
        try:
            save_config(store, topo.network)
            b.agents(agent_url, store)
            b.pods(store)
        finally:
            store.close()
        return b.st
    except BaseException:
        b.st.destroy()
        raise
