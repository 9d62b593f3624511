"""``flatnet``: one entry point; ``main()`` maps every FlatnetError to a message and exit 1."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from flatnet.errors import ConfigError, FlatnetError, ManifestErrors

__all__ = ["app", "main"]

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    help="flatnet: the Kubernetes pod network on the kernel's own parts.",
)
lab_app = typer.Typer(no_args_is_help=True, help="Multi-node clusters on one machine.")
app.add_typer(lab_app, name="lab")
policy_app = typer.Typer(no_args_is_help=True, help="NetworkPolicy: what policies decide.")
app.add_typer(policy_app, name="policy")
# not a terminal (make demo, CI logs, a pipe): as wide as the table needs, so no
# cell is ever wrapped or cut; on a terminal, cells wrap (see _table)
_WIDTH = 1000
out = Console(width=None if sys.stdout.isatty() or "COLUMNS" in os.environ else _WIDTH)
err = Console(stderr=True, width=None if sys.stderr.isatty() or "COLUMNS" in os.environ else _WIDTH)


class Output(StrEnum):
    """``-o``: what a command prints (kubectl's names)."""

    wide = "wide"
    json = "json"
    yaml = "yaml"
    name = "name"


def _table(*headers: str, title: str | None = None, header: bool = True) -> Table:
    """A table whose cells wrap instead of being cut: an IP or an endpoint list
    is never shown as "10.…" (narrow terminals get taller rows)."""
    t = Table(title=title, show_header=header)
    for h in headers:
        t.add_column(h, overflow="fold")
    return t


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
    add_help_option=False,
)
def agent(ctx: typer.Context) -> None:
    """Run the node agent (options: flatnet agent --help)."""
    from flatnet.agent.main import main as agent_main

    agent_main(ctx.args)


@app.command()
def dns(
    store: Annotated[str, typer.Option(help="sqlite://PATH or etcd://HOST:PORT")],
    listen: Annotated[str, typer.Option(help="address:port to serve on")] = "0.0.0.0:53",
    upstream: Annotated[str, typer.Option(help="resolver for other names, ip[:port]")] = "",
    domain: str = "cluster.local",
    ttl: int = 30,
) -> None:
    """Run the cluster DNS server (as the kube-dns pod does)."""
    from flatnet.dns.server import DNSServer
    from flatnet.store import open_store

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    host, _, port = listen.rpartition(":")
    up = None
    if upstream:
        uh, _, up_port = upstream.partition(":")
        up = (uh, int(up_port or 53))
    srv = DNSServer(open_store(store), (host or "0.0.0.0", int(port)), up, domain, ttl)
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: srv.stop.set())
    srv.serve()


@app.command("ingress-controller")
def ingress_controller(
    store: Annotated[str, typer.Option(help="sqlite://PATH or etcd://HOST:PORT")],
    state_dir: Annotated[str, typer.Option(help="HAProxy's files: config, maps, socket")],
    ingress_class: Annotated[str, typer.Option("--class", help="the IngressClass served")] = (
        "flatnet"
    ),
    http_port: int = 80,
) -> None:
    """Run the ingress controller: the store's Ingresses, driven into HAProxy
    (as the ingress controller's pod does)."""
    import threading

    from flatnet.ingress.controller import Controller
    from flatnet.ingress.haproxy import Frontends
    from flatnet.store import open_store

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    c = Controller(open_store(store), Path(state_dir), ingress_class, Frontends(http_port))
    c.run(stop)


FileOpt = Annotated[str, typer.Option("-f", "--filename", help="manifest file, - for stdin")]
LabOpt = Annotated[str | None, typer.Option()]
StoreOpt = Annotated[str | None, typer.Option(help="datastore URL instead of a lab")]


def _read(file: str) -> tuple[Any, Any]:
    """A manifest file's Namespaces, Pods and Services, and its NetworkPolicies
    (each with its line)."""
    from flatnet.manifest import docs
    from flatnet.policy.files import split

    try:
        text = sys.stdin.read() if file == "-" else Path(file).read_text()
    except OSError as e:
        raise ConfigError(f"{file}: cannot read: {e.strerror}") from None
    return split(docs(text, file), file, None)


TimeoutOpt = Annotated[
    float, typer.Option(help="seconds to wait for new pods to get ready (then warn)")
]


WaitOpt = Annotated[
    bool, typer.Option("--wait", help="return once every Ready node has programmed the change")
]


@app.command()
def apply(
    file: FileOpt,
    lab: LabOpt = None,
    store: StoreOpt = None,
    timeout: TimeoutOpt = 20.0,
    wait: WaitOpt = False,
) -> None:
    """Create what is new, change what differs, leave what is equal (as kubectl
    apply): the Namespaces, NetworkPolicies, Services and (on a lab) Pods of a
    manifest file. New pods are waited for until ready (or failed); those that
    are not are named."""
    from flatnet import keys, namespaces, services
    from flatnet.ingress import objects as ingress_objects
    from flatnet.ipam import load_config
    from flatnet.lb import pools
    from flatnet.policy import objects as policy_objects

    m, pols = _read(file)
    pods, svcs = m.pods, m.services
    s, st = _store_for(lab, store)
    try:
        if pods and st is None:
            raise ConfigError(f"{file}: Pods can only be applied to a lab (give --lab)")
        cfg = load_config(s) if svcs or m.pools else None  # before anything is written
        if cfg is not None:  # pools and services checked before anything is written
            pools.check(cfg, m.pools, pools.load_all(s).values())
            services.plan(s, cfg, svcs, m.pools)
        namespaces.ensure(s)
        have = set(namespaces.load_all(s))
        m.require_namespaces(have, file)
        pols.require_namespaces(have | {n.name for n in m.namespaces}, file)
        the = None
        if pods:
            from flatnet.lab.lab import Lab

            the = Lab(st)
            plan = the.plan_pods(pods, file)  # checked before anything is made
        for ns, verdict in namespaces.apply(s, m.namespaces):
            out.print(f"namespace/{ns.name} {verdict}", markup=False)
        # policies before pods: a new pod is isolated from its first packet
        for pol, verdict in policy_objects.apply(s, [p for _, p in pols]):
            out.print(f"{_policy_kind(pol)}/{pol.name} {verdict}", markup=False)
        for pool, verdict in pools.apply(s, cfg, m.pools) if cfg is not None else ():
            out.print(f"ipaddresspool/{pool.name} {verdict}", markup=False)
        before = services.load_all(s)
        for svc in services.apply(s, cfg, svcs) if cfg is not None else ():
            old = before.get(svc.key)
            verdict = "created" if old is None else "unchanged" if old == svc else "configured"
            lb = f", external IP {svc.ingress_ip}" if svc.ingress_ip else ""
            out.print(f"service/{svc.name} {verdict} (clusterIP {svc.cluster_ip or '-'}{lb})")
        for c, verdict in ingress_objects.apply_classes(s, m.ingress_classes):
            out.print(f"ingressclass.networking.k8s.io/{c.name} {verdict}", markup=False)
        for ing, verdict in ingress_objects.apply(s, m.ingresses):
            out.print(f"ingress.networking.k8s.io/{ing.name} {verdict}", markup=False)
        not_ready = []
        if the is not None:
            not_ready = the.add_pods(plan.created, s, timeout=timeout)
            the.relabel(plan.configured, s)
            for verdict, group in (
                ("created", plan.created),
                ("configured", plan.configured),
                ("unchanged", plan.unchanged),
            ):
                for p in group:
                    out.print(
                        f"pod/{p.name} {verdict}"
                        + (f" on {p.node}" if verdict == "created" else "")
                    )
            _not_ready(not_ready, the.name)
        if wait:
            pod_keys = [keys.pod(p.namespace, p.name) for p in pods]
            _wait_programmed(
                s,
                [o.key for o in svcs] + pod_keys,
                [policy_objects.key(p) for _, p in pols] + pod_keys + [n.key for n in m.namespaces],
            )
    finally:
        s.close()


def _policy_kind(p: Any) -> str:
    """kubectl's name of a policy's kind, as apply and delete print it."""
    from flatnet.policy.model import ClusterNetworkPolicy

    if isinstance(p, ClusterNetworkPolicy):
        return "clusternetworkpolicy.policy.networking.k8s.io"
    return "networkpolicy.networking.k8s.io"


def _wait_programmed(s: Any, for_proxies: list[str], for_policies: list[str]) -> None:
    """``apply --wait``: until the proxy and the policy table of every Ready
    node have what was written."""
    from flatnet.lab.waits import revision_of, wait_policies, wait_proxies

    start = time.monotonic()
    nodes = wait_proxies(s, revision_of(s, for_proxies), timeout=30)
    nodes = sorted(set(nodes) | set(wait_policies(s, revision_of(s, for_policies), timeout=30)))
    out.print(
        f"programmed on {len(nodes)} Ready node(s) ({', '.join(nodes) or '-'}) in "
        f"{time.monotonic() - start:.2f}s",
        markup=False,
    )


IgnoreOpt = Annotated[
    bool, typer.Option("--ignore-not-found", help="what is already gone is no error")
]


@app.command()
def delete(
    file: FileOpt, lab: LabOpt = None, store: StoreOpt = None, ignore_not_found: IgnoreOpt = False
) -> None:
    """Delete the NetworkPolicies, Services (and, on a lab, the Pods) named in a
    manifest file; each is reported deleted or not found (exit 1, unless
    --ignore-not-found)."""
    from flatnet import namespaces, services
    from flatnet.ingress import objects as ingress_objects
    from flatnet.lb import pools
    from flatnet.policy import objects as policy_objects

    m, pols = _read(file)
    pods, svcs = m.pods, m.services
    s, st = _store_for(lab, store)
    missing = []
    try:
        if pods and st is None:
            raise ConfigError(f"{file}: Pods can only be deleted from a lab (give --lab)")
        deleted = policy_objects.delete(s, [p for _, p in pols])
        for _, p in pols:
            if p in deleted:
                out.print(f"{_policy_kind(p)}/{p.name} deleted")
            else:
                missing.append(f"{_policy_kind(p)}/{p.name}")
        gone = set(ingress_objects.delete(s, m.ingresses, m.ingress_classes))
        for what, ref, name in [
            *[("ingress.networking.k8s.io", i.ref, i.name) for i in m.ingresses],
            *[("ingressclass.networking.k8s.io", c.name, c.name) for c in m.ingress_classes],
        ]:
            if ref in gone:
                out.print(f"{what}/{name} deleted")
            else:
                missing.append(f"{what}/{name}")
        gone = set(services.delete(s, [(x.namespace, x.name) for x in svcs]))
        for x in svcs:
            if f"{x.namespace}/{x.name}" in gone:
                out.print(f"service/{x.name} deleted")
            else:
                missing.append(f"service/{x.name}")
        if pods:
            from flatnet.lab.lab import Lab

            the = Lab(st)
            for p in pods:
                if the.delete_pod(p.ref, s):
                    out.print(f"pod/{p.name} deleted")
                else:
                    missing.append(f"pod/{p.name}")
        gone = set(pools.delete(s, [p.name for p in m.pools]))
        for p in m.pools:
            if p.name in gone:
                out.print(f"ipaddresspool/{p.name} deleted")
            else:
                missing.append(f"ipaddresspool/{p.name}")
        gone = set(namespaces.delete(s, [n.name for n in m.namespaces]))
        for n in m.namespaces:
            if n.name in gone:
                out.print(f"namespace/{n.name} deleted")
            else:
                missing.append(f"namespace/{n.name}")
    finally:
        s.close()
    for what in missing:
        if ignore_not_found:
            out.print(f"{what} not found (ignored)")
        else:
            _say(f"{what} not found")
    if missing and not ignore_not_found:
        raise typer.Exit(1)


@app.command("install-cni")
def install_cni(
    bin_dir: str = "/opt/cni/bin",
    conf_dir: str = "/etc/cni/net.d",
    agent_socket: str = "/run/flatnet/agent.sock",
    portmap: bool = True,
    plugin: str = typer.Option("auto", help="auto | c (compiled thin entry) | python"),
    python: str = typer.Option("", help="interpreter for a python plugin (default: python3)"),
) -> None:
    """Install the CNI plugin binary and a conflist (flatnet + portmap)."""
    from flatnet.cni.install import install

    exe, conf = install(bin_dir, conf_dir, agent_socket, portmap, python or None, plugin)
    out.print(f"installed {exe} and {conf}")


@app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
def agnhost(ctx: typer.Context) -> None:
    """Test server/prober for pods: netexec --http-port N | connect HOST:PORT | get URL."""
    from flatnet import agnhost as a

    raise typer.Exit(a.main(ctx.args))


# -- lab ---------------------------------------------------------------------
def _one_lab(name: str | None) -> str:
    from flatnet.lab.state import list_labs

    if name:
        return name
    labs = list_labs()
    if len(labs) != 1:
        raise ConfigError(
            f"{len(labs)} labs are up ({', '.join(s.name for s in labs) or '-'}); "
            "name one with --lab"
        )
    return labs[0].name


@contextlib.contextmanager
def _progress() -> Iterator[Callable[[str, int, int], None]]:
    """Progress bars on stderr, one per step: ``progress(step, done, total)``."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("{task.description:<42}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err,
        transient=False,
    ) as bar:
        tasks: dict[str, Any] = {}

        def progress(step: str, done: int, total: int) -> None:
            if step not in tasks:
                tasks[step] = bar.add_task(step, total=total)
            bar.update(tasks[step], completed=done)

        yield progress


@lab_app.command("up")
def lab_up(
    file: str,
    backend: Annotated[str | None, typer.Option()] = None,
    keep_on_failure: Annotated[
        bool, typer.Option(help="leave a lab that failed to come up as it is, to debug")
    ] = False,
) -> None:
    """Build the lab described in FILE."""
    from dataclasses import replace

    from flatnet.lab import topo
    from flatnet.lab.lab import Lab

    t = topo.load(file)
    Lab.precheck(t)
    if backend:
        opts = t.network.backend_options if backend == t.network.backend else {}
        t = replace(t, network=replace(t.network, backend=backend, backend_options=opts))
    start = time.monotonic()
    with _progress() as progress:
        the = Lab.build(t, progress, keep_on_failure)
    st = the.st
    bad = the.not_ready()
    out.print(
        f"lab [bold]{st.name}[/]: {len(st.nodes)} node(s), {len(st.pods) - len(bad)}/"
        f"{len(st.pods)} pod(s) ready in {time.monotonic() - start:.1f}s"
    )
    _not_ready(bad, st.name)


@lab_app.command("down")
def lab_down(name: str) -> None:
    """Remove everything lab NAME made (also after a crash), and the logs a
    failed lab up of NAME kept."""
    from flatnet.lab.lab import Lab, failed_logs, remove_failed_logs

    logs = remove_failed_logs(name)
    try:
        removed = Lab.load(name).down()
    except ConfigError:
        if not logs:
            raise
        out.print(f"the logs of the failed lab {name} removed ({failed_logs(name)})")
        return
    out.print(f"lab {name} removed ({len(removed)} namespaces)")


@lab_app.command("restart-agent")
def lab_restart_agent(node: str, lab: Annotated[str | None, typer.Option()] = None) -> None:
    """Stop NODE's agent (if it runs) and start it again; pods keep their traffic."""
    from flatnet.lab.lab import Lab

    the = Lab.load(_one_lab(lab))
    if node not in the.st.nodes:
        raise ConfigError(f"lab '{the.name}' has no node '{node}' ({', '.join(the.st.nodes)})")
    pid = the.restart_agent(node)
    out.print(f"agent on {node} restarted (pid {pid})")


@lab_app.command("restart-etcd")
def lab_restart_etcd(
    lab: Annotated[str | None, typer.Option()] = None,
    down: Annotated[float, typer.Option(help="seconds to stay down")] = 0.0,
) -> None:
    """Stop the lab's etcd, wait DOWN seconds, start it again (same data)."""
    from flatnet.lab.lab import Lab

    the = Lab.load(_one_lab(lab))
    the.restart_etcd(down)
    out.print(f"etcd of lab {the.name} is back after {down:.0f}s down")


@lab_app.command("set-backend")
def lab_set_backend(
    backend: str,
    lab: Annotated[str | None, typer.Option()] = None,
    fast_path: Annotated[
        bool | None,
        typer.Option(help="turn the eBPF fast path on or off (default: leave it as it is)"),
    ] = None,
) -> None:
    """Switch a running lab to BACKEND (host-gw, vxlan, udp, none)."""
    from collections import Counter

    from flatnet.lab.lab import Lab

    the = Lab.load(_one_lab(lab))
    start = time.monotonic()
    with _progress() as progress:
        on = the.set_backend(backend, progress, fast_path)
    mtus = Counter(the.pod_mtus().values())
    out.print(
        f"lab {the.name} now runs backend {backend}, fast path {'on' if on else 'off'} "
        f"({time.monotonic() - start:.1f}s); pod MTU: "
        + (", ".join(f"{m} ({n} pods)" for m, n in sorted(mtus.items())) or "no bridge pods"),
        markup=False,
    )
    if len(mtus) > 1:
        _say("pods differ in MTU: recreate those the agent could not change (see lab logs NODE)")


@lab_app.command("fast-path")
def lab_fast_path(lab: Annotated[str | None, typer.Option()] = None) -> None:
    """Show where each node's eBPF fast path is attached and which pods its map holds."""
    from flatnet import fastpath
    from flatnet.lab.state import LabState

    st = LabState.load(_one_lab(lab))
    owner: dict[str, str] = {}  # pods sharing a namespace (container:<pod>) share an IP
    for name, p in sorted(st.pods.items()):
        if p.ip:
            owner[p.ip] = f"{owner[p.ip]},{name}" if p.ip in owner else name
    peer_of = {info.underlay_ip: node for node, info in st.nodes.items()}
    t = _table("NODE", "PROGRAM", "ATTACHED TO (tcx ingress)", "PODS IN ITS MAP", "VXLAN FROM")
    for node, info in st.nodes.items():
        s = fastpath.status(info.ns)
        ids = sorted({i for v in s.devices.values() for i in v})
        t.add_row(
            node,
            ", ".join(map(str, ids)) or "off",
            " ".join(sorted(s.devices)),
            " ".join(f"{owner.get(ip, ip)}={ip}" for ip in sorted(s.pods)),
            " ".join(peer_of.get(ip, ip) for ip in s.peers),
        )
    out.print(t)


@lab_app.command("ls")
def lab_ls() -> None:
    """List the labs on this machine."""
    from flatnet.lab.state import list_labs

    t = _table("NAME", "NODES", "PODS", "DATASTORE", "FILE")
    for s in list_labs():
        t.add_row(s.name, str(len(s.nodes)), str(len(s.pods)), s.datastore, s.file)
    out.print(t)


@lab_app.command(
    "exec", context_settings={"allow_extra_args": True, "ignore_unknown_options": True}
)
def lab_exec(
    ctx: typer.Context,
    target: str,
    lab: Annotated[str | None, typer.Option()] = None,
    namespace: NsOpt = "default",
) -> None:
    """Run a command in a pod ([-n NS] POD), a node, or the external, router or
    switch host: exec TARGET -- CMD..."""
    from flatnet.lab.lab import Lab

    the = Lab.load(_one_lab(lab))
    ref = the.pod_ref(target, namespace)
    ns = the.namespace_of(ref)
    pod = the.st.pods.get(ref)
    if not ctx.args:
        raise ConfigError("no command given: flatnet lab exec TARGET -- CMD")

    from flatnet.lab.procs import in_ns, pod_hostname
    from flatnet.manifest import ref_name

    name = ref_name(ref)
    env = dict(os.environ, FLATNET_POD_NAME=name)
    host = pod_hostname(name, pod.mode) if pod is not None else ""
    argv, enter = in_ns(ns, ctx.args, host)
    raise typer.Exit(subprocess.call(argv, preexec_fn=enter, env=env))


TailOpt = Annotated[int, typer.Option(help="only the last N lines (-1: all)")]


@lab_app.command("logs")
def lab_logs(
    target: str, lab: LabOpt = None, tail: TailOpt = -1, namespace: NsOpt = "default"
) -> None:
    """Show the log of a node's agent, of the lab's kubelet, or of a pod's
    containers: logs NODE|kubelet|[-n NS] POD."""
    from flatnet.lab.lab import Lab

    the = Lab.load(_one_lab(lab))
    _show_logs(the.logs(the.pod_ref(target, namespace)), tail)


@app.command("logs")
def logs(pod: str, lab: LabOpt = None, tail: TailOpt = -1, namespace: NsOpt = "default") -> None:
    """Show what a lab pod's containers printed: logs [-n NS] POD (one file per container)."""
    from flatnet.lab.lab import Lab

    the = Lab.load(_one_lab(lab))
    ref = the.pod_ref(pod, namespace)
    if ref not in the.st.pods:
        raise ConfigError(
            f"lab '{the.name}' has no pod '{pod}' in namespace '{namespace}' "
            f"(pods: {', '.join(the.st.pods) or 'none'})"
        )
    _show_logs(the.logs(ref), tail)


def _show_logs(files: list[Path], tail: int) -> None:
    for f in files:
        lines = f.read_text(errors="replace").splitlines() if f.exists() else []
        if len(files) > 1:
            print(f"==> {f.name} <==")
        shown = lines if tail < 0 else lines[len(lines) - tail :] if tail else []
        if shown:
            print("\n".join(shown))


@lab_app.command("cni")
def lab_cni(node: str, lab: Annotated[str | None, typer.Option()] = None) -> None:
    """Where a node's CNI config and plugins are, for outside runtimes and harnesses."""
    from flatnet.kernel import netns
    from flatnet.lab.state import LabState

    st = LabState.load(_one_lab(lab))
    if node not in st.nodes:
        raise ConfigError(f"lab '{st.name}' has no node '{node}'")
    n = st.nodes[node]
    print(json.dumps({"netns": netns.path_of(n.ns), "confDir": n.conf_dir, "binDir": n.bin_dir}))


@lab_app.command("check")
def lab_check(
    lab: Annotated[str | None, typer.Option()] = None,
    output: Annotated[
        Output, typer.Option("-o", "--output", help="wide (a table) or json")
    ] = Output.wide,
    matrix: Annotated[
        bool,
        typer.Option("--matrix", help="the NetworkPolicy truth table: every pod to every pod"),
    ] = False,
    port: Annotated[
        list[int] | None, typer.Option(min=1, max=65535, help="--matrix: a port (repeat; 80, 81)")
    ] = None,
    protocol: Annotated[
        list[str] | None, typer.Option(help="--matrix: tcp or udp (repeat; both)")
    ] = None,
) -> None:
    """Probe the lab as a user would: pod to pod, pod to the external host, node
    to pod, pod to each Service by its DNS name, and each NodePort from the
    external host (reach + source IP seen); a table per probe for small labs,
    a matrix for big ones; says which pods it skipped and why; fails when a
    probe fails or none ran. With --matrix: the upstream NetworkPolicy truth
    table per port and protocol (. reached, X blocked), compared with what
    the cluster's policies say; fails on any cell that differs."""
    from dataclasses import asdict

    from flatnet.lab import probe
    from flatnet.lab.lab import Lab

    if output not in (Output.wide, Output.json):
        raise ConfigError(f"lab check: -o {output} is not supported (wide or json)")
    if not matrix and (port or protocol):
        raise ConfigError("lab check: --port and --protocol go with --matrix")
    the = Lab.load(_one_lab(lab))
    if matrix:
        _policy_matrix(the, port or [80, 81], protocol or ["tcp", "udp"], output)
    st = the.st
    s = the.store()
    try:
        results = probe.matrix(st, s)
    finally:
        s.close()
    skipped = probe.skipped(st)
    passed = sum(r.passed for r in results)
    if output == Output.json:
        rows = [asdict(r) for r in results]
        print(json.dumps({"probes": rows, "skipped": skipped, "passed": passed,
                          "total": len(results)}, indent=2))  # fmt: skip
    else:
        pods = {r.client for r in results if r.kind == "pod→pod"}
        if len(pods) > BIG_LAB:
            _check_matrix(results)
        else:
            _check_table(results, st)
        for kind in probe.KINDS:
            mine = [r for r in results if r.kind == kind]
            if mine:
                ok = sum(r.passed for r in mine)
                out.print(f"{kind:<18} {ok}/{len(mine)} passed", markup=False)
        for name, why in sorted(skipped.items()):
            out.print(f"skipped {name}: {why}", markup=False)
        out.print(f"{passed}/{len(results)} probes passed")
    if not results:
        _say("no probes ran: the lab has no pod with a test server (agnhost) and an IP")
    raise typer.Exit(0 if results and passed == len(results) else 1)


BIG_LAB = 8  # more client pods than this: lab check draws a matrix, not a row per probe


def _policy_matrix(the: Any, ports: list[int], protocols: list[str], output: Output) -> None:
    from flatnet.lab import reach

    protos = [p.upper() for p in protocols]
    for p in protos:
        if p not in ("TCP", "UDP"):
            raise ConfigError(f"--protocol: '{p.lower()}' is not tcp or udp")
    s = the.store()
    try:
        tables = reach.tables(the.st, s, ports, protos)
    finally:
        s.close()
    tables = [t for t in tables if len(t.pods) > 1]
    wrong = sum(len(t.wrong) for t in tables)
    if output == Output.json:
        print(json.dumps({"tables": [
            {"port": t.port, "protocol": t.protocol, "pods": t.pods,
             "observed": t.text("observed"), "expected": t.text("expected"),
             "wrong": [f"{a} -> {b}" for a, b in t.wrong]} for t in tables
        ], "wrong": wrong}, indent=2))  # fmt: skip
    else:
        for t in tables:
            out.print(f"{t.protocol}/{t.port}: reachability (. reached, X blocked)", markup=False)
            out.print(t.text(), markup=False, highlight=False)
            if t.wrong:
                out.print("expected (what the policies say):", markup=False)
                out.print(t.text("expected"), markup=False, highlight=False)
                for a, b in t.wrong:
                    verdict = "reached" if t.observed[(a, b)] else "blocked"
                    out.print(f"WRONG {a} -> {b} {t.protocol}/{t.port}: {verdict}", markup=False)
            out.print("")
        cells = sum(len(t.observed) for t in tables)
        if tables:
            out.print(f"{cells - wrong}/{cells} cells as the policies say", markup=False)
    if not tables:
        _say("no pods to probe: none declares those ports (containerPort) with an IP")
    raise typer.Exit(0 if tables and not wrong else 1)


def _check_table(results: list[Any], st: Any) -> None:
    t = _table("KIND", "FROM", "TO", "TARGET", "PATH", "ICMP", "TCP", "SOURCE IP SEEN",
               title="connectivity")  # fmt: skip
    node_of = {n: p.node for n, p in st.pods.items()}
    for r in results:
        where = node_of.get(r.client, r.client)
        path = (
            "same node" if node_of.get(r.server) == where else "cross node"
        ) if r.kind in ("pod→pod", "node→pod") else "-"  # fmt: skip
        if not r.ok:
            verdict = f"[red]FAIL[/] {escape(r.detail[:60])}"
        elif not r.passed:
            verdict = "[red]NATed[/]" if r.icmp else "[red]no ping[/]"
        elif r.kind in ("pod→external", "external→nodeport"):
            verdict = "[green]ok[/]"
        elif r.kind == "pod→service" and r.seen_ip != st.pods[r.client].ip:
            verdict = "[green]ok[/] hairpin (to itself: masqueraded)"
        else:
            verdict = "[green]ok[/] no NAT"
        icmp = "-" if r.kind in ("pod→service", "external→nodeport") else (
            "[green]ok[/]" if r.icmp else "[red]FAIL[/]"
        )  # fmt: skip
        t.add_row(r.kind, r.client, r.server, r.target, path, icmp, verdict, r.seen_ip or "-")
    out.print(t)


def _check_matrix(results: list[Any]) -> None:
    """Big labs: one row per client, one column per target; ``.`` passed, ``X``
    failed (the failures are listed below it)."""
    for kind, kinds in (("pod→pod", ("pod→pod", "pod→external")), ("node→pod", ("node→pod",))):
        mine = [r for r in results if r.kind in kinds]
        if not mine:
            continue
        clients = sorted({r.client for r in mine})
        servers = sorted({r.server for r in mine}, key=lambda x: (x == "external", x))
        verdict = {(r.client, r.server): r.passed for r in mine}
        t = _table("FROM \\ TO", *[str(i) for i in range(len(servers))], title=kind)
        for c in clients:
            cells = [
                "" if (c, x) not in verdict else "." if verdict[(c, x)] else "[red]X[/]"
                for x in servers
            ]
            t.add_row(c, *cells)
        out.print(t)
        out.print("  " + "  ".join(f"{i}={x}" for i, x in enumerate(servers)), markup=False)
    for r in results:
        if not r.passed:
            out.print(
                f"FAIL {r.kind} {r.client} -> {r.server} ({r.target}): "
                f"{r.detail or ('no ping' if not r.icmp else 'source seen ' + r.seen_ip)}",
                markup=False,
            )


# -- policy ------------------------------------------------------------------
@policy_app.command("explain")
def policy_explain(
    source: Annotated[str, typer.Argument(metavar="FROM", help="a pod (NAME, NS/NAME) or an IP")],
    target: Annotated[str, typer.Argument(metavar="TO", help="a pod (NAME, NS/NAME) or an IP")],
    port: Annotated[int, typer.Option(min=1, max=65535, help="the destination port")],
    file: Annotated[
        str | None,
        typer.Option(
            "-f", "--filename", help="judge by this file's policies (what if), not the cluster's"
        ),
    ] = None,
    protocol: Annotated[str, typer.Option(help="tcp, udp or sctp")] = "tcp",
    namespace: NsOpt = "default",
    lab: LabOpt = None,
    store: StoreOpt = None,
) -> None:
    """May FROM open a connection to TO on --port? Says allowed or denied, and
    which NetworkPolicies and rules decide, from both sides (egress of FROM,
    ingress of TO); exit 0 allowed, 1 denied. The cluster's policies, pods and
    namespaces; with -f, that file's policies instead (what they would do)."""
    from flatnet import namespaces, query
    from flatnet.policy import objects as policy_objects
    from flatnet.policy.verdict import decide

    proto = protocol.upper()
    if proto not in ("TCP", "UDP", "SCTP"):
        raise ConfigError(f"--protocol: '{protocol}' is not tcp, udp or sctp")
    from_file = _read(file)[1] if file is not None else None
    s, _ = _store_for(lab, store)
    try:
        if from_file is not None:
            policies, cluster = from_file.namespaced, from_file.cluster
        else:
            policies = list(policy_objects.load_all(s).values())
            cluster = list(policy_objects.load_cluster(s).values())
        pods = query.pod_records(s)
        ns_labels = {n: ns.labels for n, ns in namespaces.load_all(s).items()}
    finally:
        s.close()
    src, dst = (_endpoint(x, namespace, pods) for x in (source, target))
    v = decide(policies, ns_labels, src, dst, port, proto, cluster)
    out.print(
        f"{_who(src)} -> {_who(dst)} port {port}/{proto}: "
        + ("allowed" if v.allowed else "DENIED"),
        markup=False,
    )
    for what, side, ep in (("egress of", v.egress, src), ("ingress of", v.ingress, dst)):
        for line in _explain_side(side, ep):
            out.print(f"  {what} {_who(ep)}: {line}", markup=False)
    raise typer.Exit(0 if v.allowed else 1)


@policy_app.command("log")
def policy_log(
    follow: Annotated[bool, typer.Option("-f", "--follow", help="then print each new one")] = False,
    pod: Annotated[
        str | None, typer.Option(help="only attempts from or to this pod (NAME, NS/NAME)")
    ] = None,
    namespace: NsOpt = "default",
    count: Annotated[
        bool, typer.Option("--count", help="the kernel's counts of denied packets per pod")
    ] = False,
    output: Annotated[Output, typer.Option("-o", "--output", help="wide or json")] = Output.wide,
    lab: LabOpt = None,
    file: Annotated[
        str | None, typer.Option(help="a node's log (default: the lab's nodes', else the agent's)")
    ] = None,
) -> None:
    """Denied connection attempts, one line each: time, node, source and
    destination pod, protocol/port, direction, and the policy that isolated
    the pod (or the ClusterNetworkPolicy rule that denied it). Logged by the
    kernel at most 10 a second per pod and rule; --count gives the exact
    per-pod counts from the policy tables, and the frames each pod sent with a
    source that is not its own (dropped)."""
    from flatnet.policy.denials import Follower, text

    if output not in (Output.wide, Output.json):
        raise ConfigError(f"policy log: -o {output} is not supported (wide or json)")
    if file is not None:
        paths = [Path(file)]
        if not paths[0].exists():
            raise ConfigError(f"--file: {file} does not exist")
    else:
        from flatnet.lab.lab import Lab

        the = Lab.load(_one_lab(lab))
        if count:
            _policy_counts(the, output)
            return
        paths = [the.st.dir / "nodes" / n / "policy.log" for n in the.st.nodes]
    want = None
    if pod is not None:
        ns, _, name = pod.rpartition("/")
        want = f"{ns or namespace}/{name}"
    reader = Follower(paths)
    shown = 0
    while True:
        for line in reader.new():
            if want is not None and want not in (line["srcPod"], line["dstPod"]):
                continue
            print(json.dumps(line) if output == Output.json else text(line), flush=True)
            shown += 1
        if not follow:
            if not shown:
                whose = f" from or to {want}" if want is not None else ""
                err.print(f"no denied connection attempts logged{whose}", markup=False,
                          highlight=False)  # fmt: skip
            return
        time.sleep(0.3)


def _policy_counts(the: Any, output: Output) -> None:
    """Each pod direction's drop counters, read from every node's policy table."""
    import re

    from flatnet.kernel.nft import Nft

    rows = []
    for node, info in the.st.nodes.items():
        nft = Nft(info.ns)
        try:
            objs = nft.list_json("table ip flatnet-policy") + nft.list_json(
                "table bridge flatnet-guard"
            )
        finally:
            nft.close()
        for o in objs:
            rule = o.get("rule")
            if not rule or "comment" not in rule:
                continue
            packets = next((e["counter"]["packets"] for e in rule["expr"] if "counter" in e), None)
            m = re.match(r"(\S+) (ingress|egress): (.*)", rule["comment"])
            forged = re.match(r"(\S+): (forged source)", rule["comment"])
            if packets is not None and m:
                rows.append({"node": node, "pod": m[1], "direction": m[2], "reason": m[3],
                             "packets": packets})  # fmt: skip
            elif packets and forged:  # what a pod sent as someone else
                rows.append({"node": node, "pod": forged[1], "direction": "sent",
                             "reason": forged[2], "packets": packets})  # fmt: skip
    if output == Output.json:
        print(json.dumps({"items": rows}, indent=2))
        return
    t = _table("NODE", "POD", "DIRECTION", "DENIED PACKETS", "WHY")
    for r in sorted(rows, key=lambda r: (r["pod"], r["direction"])):
        t.add_row(r["node"], r["pod"], r["direction"], str(r["packets"]), r["reason"])
    out.print(t)


def _explain_side(side: Any, ep: Any) -> list[str]:
    """What decided one direction, tier by tier (Admin, NetworkPolicy, Baseline)."""
    if ep.pod is None or ep.pod.mode == "host":
        return [
            f"not subject to policy ({'not a pod' if ep.pod is None else 'on the host network'})"
        ]
    out = []
    tier = side.decided_by
    if side.admin is not None:
        action, rule = side.admin
        out.append(f"Admin tier: {action} by {rule}" + (" (on to the NetworkPolicies)"
                   if action == "Pass" else ""))  # fmt: skip
    if tier in ("admin",):
        return out
    if side.isolating:
        verdict = (
            "allowed by " + ", ".join(side.allowed_by) if side.allowed_by else "no rule allows it"
        )
        return [*out, f"isolated by {', '.join(side.isolating)}; {verdict}"]
    if side.baseline is not None:
        action, rule = side.baseline
        out.append(f"not isolated by a NetworkPolicy; Baseline tier: {action} by {rule}")
        return out
    return [*out, "not isolated (no policy selects it)"]


def _endpoint(x: str, namespace: str, pods: list[Any]) -> Any:
    """A pod by NAME (in ``namespace``), NS/NAME or IP; or a bare IP."""
    import ipaddress

    from flatnet.policy.verdict import Endpoint

    ns, _, name = x.rpartition("/")
    ns = ns or namespace
    for p in pods:
        if (p.namespace, p.name) == (ns, name):
            return Endpoint(p.ip, p)
    try:
        ipaddress.IPv4Address(x)
    except ValueError:
        raise ConfigError(f"no pod '{name}' in namespace '{ns}', and '{x}' is no IP") from None
    owner = next((p for p in pods if p.ip == x and p.mode == "bridge"), None)
    return Endpoint(x, owner)


def _who(ep: Any) -> str:
    return f"{ep.pod.namespace}/{ep.pod.name} ({ep.ip})" if ep.pod is not None else ep.ip


# -- get ---------------------------------------------------------------------
KINDS = {k: kind for kind, names in {
    "pod": ("pods", "pod", "po"),
    "node": ("nodes", "node", "no"),
    "service": ("services", "service", "svc"),
    "endpoints": ("endpoints", "endpoint", "ep"),
    "namespace": ("namespaces", "namespace", "ns"),
    "networkpolicy": ("networkpolicies", "networkpolicy", "netpol"),
    "clusternetworkpolicy": ("clusternetworkpolicies", "clusternetworkpolicy", "cnp"),
    "ipaddresspool": ("ipaddresspools", "ipaddresspool", "ippool"),
    "ingress": ("ingresses", "ingress", "ing"),
    "ingressclass": ("ingressclasses", "ingressclass"),
}.items() for k in names}  # fmt: skip
CLUSTER_WIDE = ("node", "namespace", "clusternetworkpolicy", "ipaddresspool", "ingressclass")
NsOpt = Annotated[str, typer.Option("-n", "--namespace", help="the namespace (default: default)")]
AllNsOpt = Annotated[bool, typer.Option("-A", "--all-namespaces", help="every namespace")]


def _print_items(output: Output, kind: str, items: list[dict[str, Any]]) -> None:
    """``-o json|yaml|name`` as kubectl prints them."""
    if output == Output.json:
        print(json.dumps({"items": items}, indent=2))
    elif output == Output.yaml:
        import yaml

        print(yaml.safe_dump({"items": items}, sort_keys=False, default_flow_style=False), end="")
    else:
        for it in items:
            print(f"{kind}/{it['name']}")


def _store_for(lab: str | None, store: str | None) -> Any:
    from flatnet.lab.state import LabState
    from flatnet.store import open_store

    if store:
        return open_store(store, create=False), None
    st = LabState.load(_one_lab(lab))
    return open_store(st.store_url), st


_KIND_LIST = (
    "pods, nodes, services, endpoints, namespaces, networkpolicies or clusternetworkpolicies"
)


@app.command()
def get(
    kind: str,
    name: Annotated[str | None, typer.Argument(help="only this object")] = None,
    lab: Annotated[str | None, typer.Option()] = None,
    store: Annotated[str | None, typer.Option(help="datastore URL instead of a lab")] = None,
    output: Annotated[
        Output, typer.Option("-o", "--output", help="wide|json|yaml|name")
    ] = Output.wide,
    namespace: NsOpt = "default",
    all_namespaces: AllNsOpt = False,
    watch: Annotated[
        bool, typer.Option("-w", "--watch", help="then print each object again when it changes")
    ] = False,
) -> None:
    """Show what the cluster holds: get
    pods|nodes|services|endpoints|namespaces|networkpolicies|clusternetworkpolicies [NAME]
    [-n NS | -A]
    [-o wide|json|yaml|name] [-w]."""
    if kind not in KINDS:
        raise ConfigError(f"unknown kind '{kind}': use {_KIND_LIST}")
    what = KINDS[kind]
    s, _ = _store_for(lab, store)
    try:
        items, cols = _items(s, what, namespace, all_namespaces, name)
        _show(items, cols, what, output, namespace, all_namespaces)
        seen = {_ident(it): it for it in items}
        while watch:  # as kubectl get -w: a line (or object) per change, until ^C
            time.sleep(0.5)
            now, _ = _items(s, what, namespace, all_namespaces, name, missing_ok=True)
            for it in now:
                if seen.get(_ident(it)) != it:
                    _show([it], cols, what, output, namespace, all_namespaces, header=False)
            for gone in set(seen) - {_ident(it) for it in now}:
                out.print(f"{what}/{gone[1]} deleted", markup=False)
            seen = {_ident(it): it for it in now}
    finally:
        s.close()


def _ident(item: dict[str, Any]) -> tuple[str, str]:
    return (str(item.get("namespace", "")), str(item["name"]))


@app.command()
def describe(
    kind: str,
    name: str,
    lab: LabOpt = None,
    store: StoreOpt = None,
    namespace: NsOpt = "default",
) -> None:
    """Everything flatnet knows of one object: describe pod|node|service|namespace NAME [-n NS]."""
    if kind not in KINDS:
        raise ConfigError(f"unknown kind '{kind}': use {_KIND_LIST}")
    s, _ = _store_for(lab, store)
    try:
        (item,), _ = _items(s, KINDS[kind], namespace, False, name)
    finally:
        s.close()
    item.pop("proxies", None)
    width = max(len(k) for k in item) + 2
    for k, v in item.items():
        if k == "created" and v:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(v))
            v = f"{when} ({_age(time.time() - v)} ago)"
        elif isinstance(v, dict):
            v = ", ".join(f"{a}={b}" for a, b in v.items()) or "<none>"
        elif isinstance(v, list):
            v = (
                ", ".join(str(x) if not isinstance(x, dict) else _port_or_dict(x) for x in v)
                or "<none>"
            )
        out.print(f"{k + ':':<{width}}{v if v != '' else '<none>'}", markup=False, highlight=False)


def _port_or_dict(x: dict[str, Any]) -> str:
    from flatnet.query import port_text

    return port_text(x) if "port" in x else str(x)


def _items(
    s: Any,
    what: str,
    namespace: str,
    all_namespaces: bool,
    name: str | None,
    missing_ok: bool = False,
) -> tuple[list[dict[str, Any]], list[str]]:
    """The objects of one kind as ``-o json`` shows them, and the table's columns."""
    from flatnet import query

    if what == "pod":
        items = [r.to_dict() for r in query.pods(s)]
        cols = ["name", "ready", "status", "restarts", "age", "ip", "node", "mode"]
    elif what == "node":
        items = [r.to_dict() for r in query.nodes(s)]
        cols = ["name", "status", "underlayIP", "podSubnet", "backend", "peers", "refused"]
        if any(i["sessions"] or i["problem"] for i in items):
            cols.append("sessions")
    elif what == "namespace":
        items = [r.to_dict() for r in query.namespaces(s)]
        cols = ["name", "status", "age", "labels"]
    elif what == "networkpolicy":
        items = [r.to_dict() for r in query.network_policies(s)]
        cols = ["name", "podSelector", "policyTypes", "pods", "programmed"]
    elif what == "clusternetworkpolicy":
        items = [r.to_dict() for r in query.cluster_policies(s)]
        cols = ["name", "tier", "priority", "subject", "pods", "programmed"]
    elif what == "ipaddresspool":
        items = query.address_pools(s)
        cols = ["name", "addresses", "autoAssign", "advertisement", "inUse"]
    elif what == "ingress":
        items = query.ingresses(s)
        cols = ["name", "class", "hosts", "address", "ports", "age", "conflicts"]
    elif what == "ingressclass":
        items = query.ingress_classes(s)
        cols = ["name", "controller", "default"]
    else:
        rows = query.services(s)
        items = [dict(r.to_dict(), proxies=r.proxies) for r in rows]
        cols = ["name", "endpoints"] if what == "endpoints" else [
            "name", "type", "clusterIP", "externalIP", "ports", "endpoints", "selector",
            "programmed",
        ]  # fmt: skip
        if what == "service" and any(i["announcedBy"] for i in items):
            cols.insert(4, "announcedBy")
    namespaced = what not in CLUSTER_WIDE
    if namespaced and not all_namespaces:
        items = [it for it in items if it["namespace"] == namespace]
    if namespaced and all_namespaces:
        cols = ["namespace", *cols]
    if name is not None:
        items = [it for it in items if it["name"] == name]
        if not items and not missing_ok:
            where = f" in namespace '{namespace}'" if namespaced and not all_namespaces else ""
            raise ConfigError(f"{what} '{name}' not found{where}")
    return items, cols


def _show(
    items: list[dict[str, Any]],
    cols: list[str],
    what: str,
    output: Output,
    namespace: str,
    all_namespaces: bool,
    header: bool = True,
) -> None:
    """Print objects as ``get`` does: a table, or ``-o json|yaml|name``."""
    namespaced = what not in CLUSTER_WIDE
    items = [dict(it) for it in items]
    if output != Output.wide:
        for it in items:
            it.pop("proxies", None)  # only the wide table's PROGRAMMED n/N uses it
        _print_items(output, what, items)
        return
    if not items and header:
        where = f" in {namespace} namespace" if namespaced and not all_namespaces else ""
        err.print(f"No resources found{where}.", markup=False, highlight=False)
        return
    t = _table(*[c.upper() for c in cols], header=header)
    for it in items:
        t.add_row(*[_cell(c, it) for c in cols])
    out.print(t)


def _cell(col: str, item: dict[str, Any]) -> str:
    """One table cell of ``get -o wide``: lists joined, empty ones marked."""
    v = item.get(col, "")
    if col == "age":
        return _age(time.time() - item["created"]) if item.get("created") else "-"
    if col == "refused":
        return "; ".join(v.values()) or "-"
    if col == "sessions":  # bgp: BIRD's word for each session, and any trouble
        cells = [f"{peer}: {state}" for peer, state in sorted(v.items())]
        return "; ".join([*cells, *([item["problem"]] if item.get("problem") else [])]) or "-"
    if col in ("labels", "selector"):
        return ",".join(f"{k}={x}" for k, x in sorted(v.items())) or "-"
    if col == "endpoints":
        return ", ".join(v) or "<none>"
    if col == "programmed":
        return f"{len(item['programmedOn'])}/{item.get('proxies', item.get('tables'))}"
    if col == "ports" and isinstance(v, list) and v and isinstance(v[0], dict):
        from flatnet.query import port_text

        return ", ".join(port_text(p) for p in v) or "-"
    if isinstance(v, list):
        return ", ".join(v) or "-"
    return str(v)


def _age(seconds: float) -> str:
    """kubectl's AGE: 45s, 3m12s, 2h5m, 3d4h."""
    s = int(max(seconds, 0))
    if s < 120:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60}s" if s < 600 else f"{s // 60}m"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60}m"
    return f"{s // 86400}d{s % 86400 // 3600}h"


def _not_ready(pods: list[Any], lab: str) -> None:
    """A warning line per pod that did not get ready, saying where to look."""
    for r in pods:
        why = f"{r.status}" + (f": {r.message}" if r.message else "")
        ns = f" -n {r.namespace}" if r.namespace != "default" else ""
        err.print(
            f"warning: pod/{r.name} is not ready ({why}); see 'flatnet logs --lab {lab}{ns} "
            f"{r.name}' and 'flatnet get pods --lab {lab}{ns}'",
            markup=False,
            highlight=False,
            soft_wrap=True,
        )


def _say(msg: str) -> None:
    """One error line on stderr, printed verbatim (never read as rich markup)."""
    err.print(f"[red]error:[/] {escape(msg)}", highlight=False, soft_wrap=True)


def _usage(e: Exception) -> tuple[str, int] | None:
    """A command-line usage error as one line and its exit code, or None. Typer
    raises the exceptions of the click it bundles, not of an installed click:
    they are recognised by what they offer (``format_message``, ``exit_code``)."""
    code = getattr(e, "exit_code", None)
    if not (hasattr(e, "format_message") and isinstance(code, int)):
        return None
    ctx = getattr(e, "ctx", None)
    where = ctx.command_path if ctx is not None else "flatnet"
    line = " ".join(str(e.format_message()).split())
    if not line:  # a group called bare: its help was shown, as kubectl shows it
        return "", 0
    return f"{where}: {line} (see '{where} --help')", code


def main() -> None:
    try:
        rv = app(standalone_mode=False, prog_name="flatnet")  # returns typer.Exit's code
        if isinstance(rv, int) and rv:
            sys.exit(rv)
    except FlatnetError as e:
        for line in [str(x) for x in e.errors] if isinstance(e, ManifestErrors) else [str(e)]:
            _say(line)  # a file's mistakes: one "error:" line each
        for note in getattr(e, "__notes__", []):
            err.print(note, markup=False, highlight=False, soft_wrap=True)
        sys.exit(1)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        sys.exit(130)
    except Exception as e:
        usage = _usage(e)
        if usage is None:
            raise
        if usage[0]:
            _say(usage[0])
        sys.exit(usage[1])


if __name__ == "__main__":
    main()
