"""How it works — a lab: built from its description, changed while it runs, stopped.

:class:`Lab` wraps the state file (:class:`~flatnet.lab.state.LabState`) of one
lab. :meth:`Lab.build` puts a cluster together as a real one is, each object
recorded in the state file before the next is made, and on any failure
removes everything made so far:

1. the underlay (:mod:`flatnet.lab.underlay`): switch, nodes, external host;
2. the datastore: a SQLite file, or a real etcd inside the switch namespace
   listening on the underlay (agents reach it over the network, as on real
   hosts) and on a unix socket for the CLI;
3. the lab's kubelet (:mod:`flatnet.lab.kubelet`), which keeps pods' phase
   and readiness true from their processes;
4. per node: the CNI plugin and conflist installed in the node's own dirs,
   and ``flatnet agent`` started inside the node namespace; ready when the
   plugin's STATUS succeeds, then every agent has programmed every peer;
5. cluster DNS (a kube-dns pod running ``flatnet dns`` behind the VIP; the
   external host runs dnsmasq as its upstream), the file's pods
   (:mod:`flatnet.lab.pods`) and services.

Changes: add and delete pods, restart an agent or the etcd, switch the
backend. :meth:`Lab.down` stops its processes and deletes its namespaces.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

from flatnet import keys, namespaces, services
from flatnet.cni.install import install
from flatnet.errors import ConfigError, FlatnetError
from flatnet.ingress import objects as ingress_objects
from flatnet.ingress.manifest import CONTROLLER
from flatnet.ingress.model import IngressClass
from flatnet.ipam import load_config, save_config
from flatnet.kernel import links
from flatnet.lab import pods as pods_
from flatnet.lab.procs import py, spawn
from flatnet.lab.state import LABS_DIR, LabState
from flatnet.lab.topo import LabTopo, router_peering
from flatnet.lab.underlay import (
    Underlay,
    router_bird,
    router_ips,
    segment_members,
    stop_router_bird,
)
from flatnet.lab.waits import (
    revision_of,
    wait_agent,
    wait_announced,
    wait_peers,
    wait_proxies,
)
from flatnet.lb import pools as lb_pools
from flatnet.manifest import Pod, pod_ref
from flatnet.model import PodRecord, Service, ServicePort
from flatnet.policy import objects as policies
from flatnet.services import dns_ip
from flatnet.store import Store, open_store

__all__ = ["Lab", "Progress", "failed_logs", "remove_failed_logs"]

Progress = Callable[[str, int, int], None]
REF_CNI = "/usr/lib/cni"
UPSTREAM_ZONE = "flatnet.test"


class _Builder:
    """The steps of :meth:`Lab.build` after the underlay, over one state."""

    def __init__(self, topo: LabTopo, st: LabState, progress: Progress) -> None:
        self.t, self.st, self.progress = topo, st, progress
        self.prefix = f"fl-{topo.name}-"
        self.plen = int(topo.underlay_cidr.split("/")[1])
        self.agent_url = ""

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

    # -- the kubelet ----------------------------------------------------------
    def kubelet(self) -> None:
        """The process that keeps pods' phase and readiness true
        (:mod:`flatnet.lab.kubelet`); it changes nothing in any namespace."""
        argv = py("flatnet.lab.kubelet", self.st.name)
        self.st.add_process(spawn(None, argv, self.st.dir / "kubelet.log"), "kubelet")

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
            info.socket, info.conf_dir, info.bin_dir = sock, str(d / "net.d"), str(d / "bin")
            argv = py(
                "flatnet",
                "agent",
                "--node",
                node,
                "--store",
                agent_url,
                "--socket",
                sock,
                "--underlay-ip",
                info.underlay_ip,
                "--resync",
                str(self.t.agent_resync),
                "--policy-log",
                str(d / "policy.log"),
                "--state-dir",
                str(d),
                "--heartbeat",
                "0.4",  # a dead agent's L2 addresses move within 1.2 s (+ a watch)
            )
            info.agent_argv = argv
            self.st.add_process(spawn(info.ns, argv, d / "agent.log"), f"agent:{node}")
        for i, node in enumerate(self.t.nodes):
            wait_agent(node, self.st.nodes[node])
            self.progress("agents ready", i + 1, total)
        wait_peers(store, set(self.t.nodes), self.progress)

    # -- pods ---------------------------------------------------------------
    def pods(self, store: Store) -> None:
        if self.t.dns:
            self.dns(store)
        pods_.add_pods(self.st, list(self.t.pods), store, self.progress)
        if self.t.pools:
            lb_pools.apply(store, load_config(store), list(self.t.pools))
        cfg = load_config(store)
        done = services.apply(store, cfg, self.t.services) if self.t.services else []
        extra = self.ingress(store)  # its controller finds the services there from the start
        done += services.apply(store, cfg, extra) if extra else []
        if done:
            wait_proxies(store, revision_of(store, [s.key for s in done]))
            if any(s.type == "LoadBalancer" for s in done):
                wait_announced(store, self.t.network.backend, self.st.router)

    def ingress(self, store: Store) -> list[Service]:
        """With Ingresses or IngressClasses in the file: those in the store
        (and the IngressClass ``flatnet``, the default, if the file has none of
        flatnet's), the controller's pod ``kube-system/ingress-haproxy`` (HAProxy
        in its namespace, its files in ``<lab>/ingress/``) and the Service that
        exposes it, ``kube-system/flatnet-ingress`` — LoadBalancer where the
        file has an address pool, else NodePort. Returns that Service."""
        t = self.t
        if not (t.ingresses or t.ingress_classes):
            return []
        ours = [c for c in t.ingress_classes if c.controller == CONTROLLER]
        classes = [*t.ingress_classes] + (
            [] if ours else [IngressClass("flatnet", CONTROLLER, True)]
        )
        served = (ours or classes[-1:])[0].name
        ingress_objects.apply_classes(store, classes)
        ingress_objects.apply(store, t.ingresses)
        argv = py("flatnet", "ingress-controller", "--store", self.agent_url,
                  "--state-dir", str(self.st.dir / "ingress"), "--class", served)  # fmt: skip
        labels = {"app.kubernetes.io/name": "flatnet-ingress"}
        pod = Pod("ingress-haproxy", "kube-system", t.nodes[0], labels, "bridge", (tuple(argv),),
                  {"http": [80, "TCP"]}, probe=80)  # fmt: skip
        pods_.add_pods(self.st, [pod], store)
        return [Service(
            "flatnet-ingress", "kube-system",
            type="LoadBalancer" if t.pools else "NodePort",
            external_local=True,  # the client's address reaches HAProxy (X-Forwarded-For)
            selector=labels,
            ports=(ServicePort(80, "TCP", "http", 80),),
        )]  # fmt: skip

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
            (tuple(py("flatnet", "dns", "--store", self.agent_url, *upstream)),),
            {"dns": [53, "UDP"], "dns-tcp": [53, "TCP"], "metrics": [53, "TCP"]},
            probe=53,
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
        pods_.add_pods(self.st, [pod], store)


def failed_logs(name: str) -> Path:
    """Where the logs of lab ``name`` are kept when it failed to come up."""
    return LABS_DIR / f"{name}.failed"


def remove_failed_logs(name: str) -> bool:
    """Remove the kept logs of a failed ``lab up`` of ``name``; False: none."""
    d = failed_logs(name)
    if not d.is_dir():
        return False
    shutil.rmtree(d)
    return True


class Lab:
    """One lab, by its state file: build it, change it, take it down."""

    def __init__(self, st: LabState) -> None:
        self.st = st

    @classmethod
    def load(cls, name: str) -> Lab:
        return cls(LabState.load(name))

    @property
    def name(self) -> str:
        return self.st.name

    def store(self) -> Store:
        """The lab's datastore, opened for this machine's CLI."""
        return open_store(self.st.store_url)

    def check_new_pods(self, new: list[Pod], path: str) -> None:
        pods_.check_new_pods(self.st, new, path)

    def plan_pods(self, pods: list[Pod], path: str) -> pods_.PodPlan:
        return pods_.plan_pods(self.st, pods, path)

    def relabel(self, pods: list[Pod], store: Store) -> None:
        pods_.relabel(self.st, pods, store)

    def add_pods(
        self,
        new: list[Pod],
        store: Store,
        progress: Progress | None = None,
        timeout: float = pods_.READY_TIMEOUT,
    ) -> list[PodRecord]:
        """Create the pods; returns those that did not get ready within ``timeout``."""
        return pods_.add_pods(self.st, new, store, progress, timeout)

    def not_ready(self) -> list[PodRecord]:
        """The lab's pods that are not ready now."""
        s = self.store()
        try:
            recs = [PodRecord.from_json(kv.value) for kv in s.range(keys.PODS)]
        finally:
            s.close()
        return [r for r in recs if not r.ready]

    def delete_pod(self, name: str, store: Store) -> bool:
        return pods_.delete_pod(self.st, name, store)

    def pod_ref(self, target: str, namespace: str = "default") -> str:
        """``target`` as the lab names pods: a pod of ``namespace`` if there is
        one (NAME, or NAMESPACE/NAME typed whole), else ``target`` unchanged
        (a node or a host)."""
        if "/" in target:
            return target
        ref = pod_ref(namespace, target)
        return ref if ref in self.st.pods or namespace != "default" else target

    def namespace_of(self, target: str) -> str:
        """The namespace of a pod, a node, ``external``, ``router`` or ``switch``."""
        st = self.st
        if target in st.pods:
            return st.pods[target].ns
        if target in st.nodes:
            return st.nodes[target].ns
        named = {"external": st.external, "router": st.router, "switch": f"fl-{st.name}-sw"}
        if named.get(target) and named[target] in st.namespaces:
            return named[target]
        have = [n for n in ("external", "router", "switch") if named[n] in st.namespaces]
        if "/" in target:  # NS/NAME, or -n NS: only a pod can be meant
            ns, name = target.split("/", 1)
            raise ConfigError(
                f"lab '{st.name}' has no pod '{name}' in namespace '{ns}' "
                f"(pods: {', '.join(st.pods) or 'none'})"
            )
        raise ConfigError(
            f"lab '{st.name}' has no pod, node or host named '{target}' "
            f"(pods: {', '.join(st.pods) or 'none'}; nodes: {', '.join(st.nodes)}; "
            f"hosts: {', '.join(have)})"
        )

    def logs(self, target: str) -> list[Path]:
        """The log files of a pod (one per container) or of a node's agent."""
        st = self.st
        if target in st.pods:
            return sorted((st.dir / "pods").glob(f"{target}.*.log"))
        if target in st.nodes:
            return [st.dir / "nodes" / target / "agent.log"]
        if target == "kubelet":
            return [st.dir / "kubelet.log"]
        raise ConfigError(
            f"lab '{st.name}' has no pod or node named '{target}' "
            f"(pods: {', '.join(st.pods) or 'none'}; nodes: {', '.join(st.nodes)})"
        )

    def down(self) -> list[str]:
        """Stop the lab's processes and delete its namespaces; the names deleted."""
        return self.st.destroy()

    @staticmethod
    def precheck(topo: LabTopo) -> None:
        """What can be refused before anything is made (and before any progress
        is shown): a name a lab holds already, a pod command that does not exist."""
        name = topo.name
        if (LABS_DIR / name / "state.json").exists():
            raise ConfigError(
                f"lab '{name}' exists already; remove it with 'flatnet lab down {name}'"
            )
        pods_.check_commands(list(topo.pods), topo.path)

    @classmethod
    def build(cls, topo: LabTopo, progress: Progress, keep_on_failure: bool = False) -> Lab:
        """Build the lab; on any failure everything made so far is removed (unless
        ``keep_on_failure``), its logs kept in ``<labs dir>/<name>.failed/``."""
        cls.precheck(topo)
        st = LabState(topo.name, file=os.path.abspath(topo.path), datastore=topo.datastore)
        st.segments = topo.segments()
        b = _Builder(topo, st, progress)
        b.st.save()
        try:
            Underlay(topo, st, progress).build()
            agent_url, cli_url = b.datastore()
            b.agent_url = agent_url
            b.kubelet()
            store = open_store(cli_url)
            try:
                save_config(store, topo.network)
                namespaces.ensure(store)
                namespaces.apply(store, topo.namespaces)
                policies.apply(store, topo.policies)  # before any pod: isolated from the start
                b.agents(agent_url, store)
                b.pods(store)
            finally:
                store.close()
            return cls(b.st)
        except BaseException as e:
            if keep_on_failure:
                e.add_note(f"the lab is kept as it failed: see {st.dir}; 'flatnet lab down "
                           f"{topo.name}' removes it")  # fmt: skip
                raise
            kept = failed_logs(topo.name)
            b.st.destroy(keep_logs=kept)
            e.add_note(f"the lab was removed; its logs are in {kept}")
            raise

    def restart_agent(self, node: str) -> int:
        """Stop the node's agent (if it still runs) and start it again; returns its PID."""
        what = f"agent:{node}"
        self.st.kill(what, exact=True)
        info = self.st.nodes[node]
        pid = spawn(info.ns, info.agent_argv, self.st.dir / "nodes" / node / "agent.log")
        self.st.add_process(pid, what)
        wait_agent(node, info)
        return pid

    def restart_etcd(self, down: float = 0.0, timeout: float = 30) -> None:
        """Stop the lab's etcd, keep it down ``down`` seconds, start it again on the
        same data: what agents see when their datastore goes away and comes back."""
        if not self.st.etcd_argv:
            raise ConfigError(f"lab '{self.st.name}' runs no etcd (datastore: {self.st.datastore})")
        self.st.kill("etcd", exact=True)
        time.sleep(down)
        d = self.st.dir / "etcd"  # its cwd: the unix socket is relative to it
        with open(d / "etcd.log", "ab") as log:
            p = subprocess.Popen(
                self.st.etcd_argv,
                cwd=d,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,
            )
        self.st.add_process(p.pid, "etcd")
        deadline = time.monotonic() + timeout
        while True:
            try:
                s = open_store(self.st.store_url)
                try:
                    s.revision()
                    return
                finally:
                    s.close()
            except FlatnetError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)

    def pod_mtus(self) -> dict[str, int]:
        """The MTU of each bridge pod's eth0, as the pod sees it."""
        return {
            name: m
            for name, p in self.st.pods.items()
            if p.mode == "bridge" and (m := links.mtu(p.ns, "eth0")) is not None
        }

    def set_backend(self, backend: str, progress: Progress, fast_path: bool | None = None) -> bool:
        """Switch a running lab's backend (and the fast path, unless None): new
        config in the store, every agent restarted (each removes the old backend's
        objects, programs the new, and gives its pods the new MTU). Returns
        whether the fast path is on."""
        store = open_store(self.st.store_url)
        try:
            cfg = load_config(store)
            opts = cfg.backend_options if backend == cfg.backend else {}
            routed_bgp = backend == "bgp" and bool(self.st.router)
            if routed_bgp:  # as lab up does: every node peers with its router
                members, routers = segment_members(self.st), router_ips(self.st)
                opts = router_peering(opts, members, routers, self.st.router_as or 64500)
            fast = cfg.fast_path if fast_path is None else fast_path
            new = replace(cfg, backend=backend, backend_options=opts, fast_path=fast)
            if routed_bgp:
                router_bird(self.st, opts)
            store.put(keys.CONFIG, new.to_json())
            for i, node in enumerate(self.st.nodes):
                self.restart_agent(node)
                progress("agents restarted", i + 1, len(self.st.nodes))
            if cfg.backend == "bgp" and not routed_bgp and self.st.router:
                stop_router_bird(self.st)  # every node's agent stopped its own BIRD
            wait_peers(store, set(self.st.nodes), progress)
        finally:
            store.close()
        return fast
