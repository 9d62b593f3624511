"""How it works — a lab pod, made as a runtime makes one.

Per pod, in this order (each recorded in the state file first): a namespace
(:func:`pod_netns`; host mode: the node's own; ``container:<pod>``: the
other pod's); for bridge pods ``/etc/netns/<ns>/resolv.conf`` as kubelet
writes it (dnsPolicy ClusterFirst); the ``loopback`` plugin, then the node's
conflist (flatnet, portmap) through the CNI binaries, driven as libcni
drives them; one process per container in the namespace (agnhost netexec
when the pod names no command), each under the restart loop of
:mod:`flatnet.lab.kubelet`; the pod's record in the store (Pending). The
lab's kubelet then keeps its phase and readiness true; :func:`add_pods`
waits until each new pod is ready or has visibly failed. Deleting a pod goes
the other way, and first takes it out of every service's endpoints and waits
until every node's proxy has programmed that.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace

from flatnet import keys
from flatnet.cni.runtime import Chain, load_conflist
from flatnet.errors import ConfigError, KernelError
from flatnet.ipam import load_config
from flatnet.kernel import netns
from flatnet.lab.kubelet import container_argv, status_file
from flatnet.lab.procs import ETC_NETNS, pod_hostname, py, spawn, which
from flatnet.lab.state import LabState, NodeState, PodState
from flatnet.lab.waits import wait_policies, wait_proxies
from flatnet.manifest import AGNHOST_PORT, Pod, pod_ref, ref_name
from flatnet.model import PodRecord
from flatnet.services import dns_ip
from flatnet.store import Store

__all__ = [
    "LOOPBACK",
    "PodPlan",
    "add_pods",
    "check_commands",
    "check_new_pods",
    "delete_pod",
    "plan_pods",
    "pod_netns",
    "relabel",
    "wait_ready",
]

Progress = Callable[[str, int, int], None]
LOOPBACK = {"cniVersion": "1.0.0", "name": "cni-loopback", "plugins": [{"type": "loopback"}]}
_lock = threading.Lock()
READY_TIMEOUT = 20.0  # how long new pods are waited for until ready


@dataclass(frozen=True)
class PodPlan:
    """What applying a file's pods to a running lab does, as kubectl says it."""

    created: list[Pod] = field(default_factory=list)
    configured: list[Pod] = field(default_factory=list)  # relabelled in place
    unchanged: list[Pod] = field(default_factory=list)


def _commands(p: Pod) -> list[list[str]]:
    return [list(c) for c in p.commands]


def plan_pods(st: LabState, pods: list[Pod], path: str) -> PodPlan:
    """Check a file's pods against the running lab before anything is made: new
    ones must fit; existing ones may change their labels only (in place: the pod
    keeps running and keeps its IP); any other change is refused, naming it."""
    plan = PodPlan()
    for p in pods:
        have = st.pods.get(p.ref)
        if have is None:
            check_new_pods(st, [q for q in pods if q.ref not in st.pods], path, [p])
            plan.created.append(p)
            continue
        for what, old, new in (
            ("metadata.namespace", have.namespace, p.namespace),
            ("spec.nodeName", have.node, p.node),
            ("its network mode", have.mode, p.mode),
            ("spec.containers[].command", have.commands, _commands(p)),
            ("spec.containers[].ports", have.ports, dict(p.ports)),
            ("spec.restartPolicy", have.restart_policy, p.restart_policy),
            ("the readiness port", have.probe, p.probe),
        ):
            if old != new:
                raise ConfigError(
                    f"{path}: pod '{p.ref}': {what} cannot change in place ({old} -> {new}); "
                    f"delete the pod, then apply"
                )
        (plan.configured if have.labels != p.labels else plan.unchanged).append(p)
    return plan


def relabel(st: LabState, pods: list[Pod], store: Store) -> None:
    """New labels for running pods: in the state and the store (services and DNS
    follow them), waiting until every node's proxy has programmed that."""
    rev = 0
    for p in pods:
        info = st.pods[p.ref]
        info.labels = dict(p.labels)
        key = keys.pod(p.namespace, p.name)
        kv = store.get(key)
        if kv is not None:
            rec = replace(PodRecord.from_json(kv.value), labels=dict(p.labels))
            rev = store.put(key, rec.to_json())
    st.save()
    if rev:
        wait_proxies(store, rev)
        wait_policies(store, rev)


def check_commands(pods: list[Pod], path: str) -> None:
    """Every container's command exists (kubectl would show the pod failing
    with exit code 127; before anything is made is kinder)."""
    for p in pods:
        for i, cmd in enumerate(p.commands):
            try:
                if cmd:
                    which(cmd[0])
            except KernelError as e:
                raise ConfigError(f"{path}: pod '{p.ref}': container {i}: {e}") from None


def check_new_pods(st: LabState, pods: list[Pod], path: str, only: list[Pod] | None = None) -> None:
    """Pods from a manifest (``only`` of them, when given; the rest are what else
    the file brings), checked against the running lab before anything is made."""
    check_commands(only if only is not None else pods, path)
    for p in only if only is not None else pods:
        if p.ref in st.pods:
            raise ConfigError(f"{path}: pod '{p.ref}' exists already in lab '{st.name}'")
        if p.node not in st.nodes:
            raise ConfigError(
                f"{path}: pod '{p.ref}': spec.nodeName: '{p.node}' is not one of the lab's "
                f"nodes ({', '.join(st.nodes)})"
            )
        other = pod_ref(p.namespace, p.shares_with) if p.shares_with else None
        if other is not None and other not in st.pods and other not in [q.ref for q in pods]:
            raise ConfigError(f"{path}: pod '{p.ref}': no pod '{other}' to share a network with")


def add_pods(
    st: LabState,
    pods: list[Pod],
    store: Store,
    progress: Progress | None = None,
    timeout: float = READY_TIMEOUT,
) -> list[PodRecord]:
    """Create pods as a runtime does (in parallel), then wait until the lab's
    kubelet has each ready, or visibly failed (Failed, CrashLoopBackOff), for
    at most ``timeout`` seconds. Returns the pods that are not ready."""
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
    return wait_ready(store, [keys.pod(p.namespace, p.name) for p in pods], timeout)


_GAVE_UP = ("Failed", "Succeeded", "CrashLoopBackOff")  # waiting longer changes nothing


def wait_ready(
    store: Store, pod_keys: list[str], timeout: float = READY_TIMEOUT
) -> list[PodRecord]:
    """Until each pod is ready or has visibly failed; returns those not ready."""
    deadline = time.monotonic() + timeout
    while True:
        recs = [PodRecord.from_json(kv.value) for k in pod_keys if (kv := store.get(k))]
        waiting = [r for r in recs if not r.ready and r.status not in _GAVE_UP]
        if not waiting or time.monotonic() > deadline:
            return [r for r in recs if not r.ready]
        time.sleep(0.05)


def _record(st: LabState, p: Pod) -> PodRecord:
    info = st.pods[p.ref]
    return PodRecord(
        p.name,
        p.namespace,
        p.node,
        info.ip,
        netns.path_of(info.ns),
        p.mode,
        p.labels,
        info.container_id,
        "Pending",
        False,
        dict(p.ports),
        created=info.created,
        containers=len(p.commands) or 1,
    )


def _create_pod(st: LabState, p: Pod, store: Store) -> None:
    node = st.nodes[p.node]
    cid = uuid.uuid4().hex
    rec = PodState(
        p.node, p.namespace, p.mode, cid, "", "", dict(p.labels), _commands(p), dict(p.ports),
        p.probe, p.restart_policy,
    )  # fmt: skip
    if p.mode == "host":
        ns, ip = node.ns, node.underlay_ip
    elif p.shares_with:
        other = st.pods[pod_ref(p.namespace, p.shares_with)]
        ns, ip = other.ns, other.ip
    else:
        ns = pod_netns(st.name, p.namespace, p.name)
        with _lock:
            st.pods[p.ref] = replace(rec, ns=ns)
            st.add_ns(ns)
        if p.mode == "bridge":
            _resolv_conf(st, p, ns, store)
            # the API server has the pod, with its labels, before its CNI ADD:
            # the node's policy table isolates it from its first packet
            store.put(keys.pod(p.namespace, p.name), _record(st, p).to_json())
        ip = _attach(st, p, ns, cid, node)
        if p.mode == "bridge":
            _hosts(ns, p.name, ip)
    with _lock:
        st.pods[p.ref] = replace(rec, ns=ns, ip=ip)
        st.save()
    for i, cmd in enumerate(p.commands or ((),)):
        argv = list(cmd) or py("flatnet.agnhost", "netexec", "--http-port", str(AGNHOST_PORT))
        log = st.dir / "pods" / f"{p.ref}.{i}.log"
        log.parent.mkdir(parents=True, exist_ok=True)
        status = status_file(st, p.ref, i)
        status.unlink(missing_ok=True)  # a pod of the same name before
        host = pod_hostname(p.name, p.mode)
        argv = container_argv(argv, status, p.restart_policy)
        pid = spawn(ns, argv, log, _pod_env(p.name), hostname=host)
        with _lock:
            st.add_process(pid, f"pod:{p.ref}")
    store.put(keys.pod(p.namespace, p.name), _record(st, p).to_json())


def _pod_env(name: str) -> dict[str, str]:
    """A container's environment: the pod's name, and flatnet's own interpreter
    first on PATH — the lab's "image": ``python -m flatnet.agnhost`` works in
    any pod, whichever shell started the lab."""
    bin_dir = os.path.dirname(sys.executable)
    return {"FLATNET_POD_NAME": name, "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}


def pod_netns(lab: str, namespace: str, name: str) -> str:
    """A pod's network namespace: ``fl-<lab>-p-<pod>`` in ``default``,
    ``fl-<lab>-p-<namespace>_<pod>`` elsewhere (neither name can hold ``_``, so
    no two pods meet; ``-n-`` is the nodes')."""
    return f"fl-{lab}-p-{name}" if namespace == "default" else f"fl-{lab}-p-{namespace}_{name}"


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


def _hosts(ns: str, hostname: str, ip: str) -> None:
    """The pod's /etc/hosts, as kubelet writes it: its hostname resolves to its
    own IP without asking DNS (Python's HTTP server, for one, looks it up)."""
    (ETC_NETNS / ns / "hosts").write_text(
        f"127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n{ip}\t{hostname}\n"
    )


def _attach(st: LabState, p: Pod, ns: str, cid: str, node: NodeState) -> str:
    path = netns.path_of(ns)
    lo = Chain(LOOPBACK, [node.bin_dir], ns=node.ns)
    lo.add(cid, path, "lo", pod=(p.namespace, p.name))
    if p.mode == "none":
        return ""
    chain = Chain(
        load_conflist(node.conf_dir),
        [node.bin_dir],
        ns=node.ns,
        cache_dir=str(st.dir / "cni-cache"),
    )
    result = chain.add(cid, path, "eth0", pod=(p.namespace, p.name))
    return str(result["ips"][0]["address"].split("/")[0])


def delete_pod(st: LabState, ref: str, store: Store) -> bool:
    """Delete a pod (``ref``: NAME, or NAMESPACE/NAME) gracefully: out of every
    service's endpoints first (and wait until every node's proxy has programmed
    that), then stop it and tear down its network with CNI DEL. Returns False
    if there is no such pod."""
    name = ref_name(ref)
    info = st.pods.get(ref)
    if info is None:
        return False
    sharing = [n for n, o in st.pods.items() if n != ref and o.ns == info.ns]
    if info.mode != "host" and sharing and not info.mode.startswith("container:"):
        raise ConfigError(
            f"pod '{ref}': pods {', '.join(sharing)} share its network; delete them first"
        )
    key = keys.pod(info.namespace, name)
    kv = store.get(key)
    if kv is not None:
        rec = PodRecord.from_json(kv.value)
        rev = store.put(key, replace(rec, phase="Terminating", ready=False).to_json())
        wait_proxies(store, rev)  # every proxy publishes its revision after each batch
        wait_policies(store, rev)  # and no policy still counts its IP as this pod's
    st.kill(f"pod:{ref}", exact=True)
    if info.mode in ("bridge", "none"):
        node = st.nodes[info.node]
        path = netns.path_of(info.ns)
        pod = (info.namespace, name)
        if info.mode == "bridge":
            chain = Chain(
                load_conflist(node.conf_dir),
                [node.bin_dir],
                ns=node.ns,
                cache_dir=str(st.dir / "cni-cache"),
            )
            chain.delete(info.container_id, path, "eth0", pod=pod)
        Chain(LOOPBACK, [node.bin_dir], ns=node.ns).delete(info.container_id, path, "lo", pod=pod)
        netns.delete(info.ns)
        st.namespaces.remove(info.ns)
        d = ETC_NETNS / info.ns
        if str(d) in st.etc_dirs:
            shutil.rmtree(d, ignore_errors=True)
            st.etc_dirs.remove(str(d))
    store.delete(key)
    del st.pods[ref]
    st.save()
    return True
