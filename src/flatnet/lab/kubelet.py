"""How it works — the lab's kubelet: pod phase and readiness that are true.

Each container of a lab pod runs under a small ``sh`` loop
(:func:`container_argv`), as containerd's shim runs a container: it appends
``running`` to the container's status file, runs the command, appends
``exited <code>``, and — per the pod's ``restartPolicy`` (Always, OnFailure,
Never) — starts it again after a back-off that doubles from 1 s to 10 s, or
appends ``done`` and ends. Nothing else is needed to know what happened: the
file is the container's history.

One :class:`Kubelet` process per lab (``python -m flatnet.lab.kubelet LAB``,
started by ``lab up``, stopped with the lab) reads the lab's state file and
those status files every :data:`PERIOD`, and for each pod works out:

- its phase and kubectl's STATUS: Pending until a container started; Running;
  ``CrashLoopBackOff`` while a crashed container waits to restart; when every
  container has ended, Succeeded (``Completed``) or Failed (``Error``, with
  the exit code in ``message``); RESTARTS counts the restarts;
- READY, from a TCP check like a kubelet's ``tcpSocket`` probe: a connect to
  the pod's IP and readiness port from inside its network namespace (the port
  of ``readinessProbe.tcpSocket``, else the first TCP container port, named or
  not, else agnhost's 8080). One success makes it ready; three failures in a
  row make it not ready (``failureThreshold``); a pod with no port is ready
  while all its containers run.

It writes what changed to the pod's record with a compare-and-swap, so a
concurrent relabel or delete (``Terminating``) is never overwritten; services
follow: only ready pods are endpoints.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from flatnet import keys
from flatnet.errors import FlatnetError
from flatnet.kernel import netns
from flatnet.lab.state import LABS_DIR, LabState, PodState, alive
from flatnet.manifest import ref_name
from flatnet.model import PodRecord
from flatnet.store import Store, open_store
from flatnet.store.base import KV

__all__ = [
    "ContainerState",
    "Kubelet",
    "PERIOD",
    "container_argv",
    "container_state",
    "pod_status",
    "probe",
    "status_file",
]

log = logging.getLogger("flatnet.lab.kubelet")

PERIOD = 0.2  # seconds between looks at the pods
READY_EVERY = 5  # a ready pod is probed every 5th look (1 s)
FAILURE_THRESHOLD = 3

# sh -c LOOP STATUS POLICY CMD...: $0 is the status file, $1 the policy
_LOOP = """status=$0 policy=$1 delay=1
shift
while :; do
  echo running >> "$status"
  "$@"
  rc=$?
  echo "exited $rc" >> "$status"
  if [ "$policy" = Never ] || { [ "$policy" = OnFailure ] && [ $rc -eq 0 ]; }; then
    echo done >> "$status"
    exit $rc
  fi
  sleep $delay
  delay=$((delay * 2)); [ $delay -gt 10 ] && delay=10
done"""


def status_file(st: LabState, ref: str, container: int) -> Path:
    """``ref``: the pod as the lab names it (NAME, or NAMESPACE/NAME)."""
    return st.dir / "pods" / f"{ref}.{container}.status"


def container_argv(argv: list[str], status: Path, policy: str) -> list[str]:
    """``argv`` run as a container: restarted per ``policy``, its history in ``status``."""
    return ["sh", "-c", _LOOP, str(status), policy, *argv]


@dataclass(frozen=True)
class ContainerState:
    """One container, from its status file: ``state`` is waiting (not started
    yet), running, backoff (ended, restarts soon) or terminated."""

    state: str
    exit_code: int = 0
    restarts: int = 0


def container_state(lines: list[str], running: bool) -> ContainerState:
    """What a container's status file says; ``running``: its loop still runs
    (a loop that was killed leaves a container that will never run again)."""
    starts = lines.count("running")
    codes = [int(x.split()[1]) for x in lines if x.startswith("exited ")]
    restarts = max(starts - 1, 0)
    code = codes[-1] if codes else 0
    if not lines:
        return ContainerState("waiting" if running else "terminated", 0 if running else 137)
    if lines[-1] == "done" or not running:
        return ContainerState("terminated", code if lines[-1] != "running" else 137, restarts)
    if lines[-1] == "running":
        return ContainerState("running", 0, restarts)
    return ContainerState("backoff", code, restarts)


def pod_status(rec: PodRecord, states: list[ContainerState], probe_ok: bool) -> PodRecord:
    """The record as the containers and the readiness check say it is."""
    running = sum(c.state == "running" for c in states)
    restarts = sum(c.restarts for c in states)
    failed = [(i, c) for i, c in enumerate(states) if c.state != "running" and c.exit_code]
    message = (
        f"container {failed[-1][0]} exited with code {failed[-1][1].exit_code}" if failed else ""
    )
    if all(c.state == "terminated" for c in states):
        ok = not failed
        phase, reason = ("Succeeded", "Completed") if ok else ("Failed", "Error")
    elif any(c.state == "backoff" for c in states):
        phase, reason = "Running", "CrashLoopBackOff"
    elif all(c.state == "waiting" for c in states):
        phase, reason = "Pending", "ContainerCreating"
    else:
        phase, reason = "Running", ""
    ready = phase == "Running" and running == len(states) and probe_ok
    return replace(
        rec,
        phase=phase,
        reason=reason,
        message=message,
        ready=ready,
        restarts=restarts,
        containers=len(states),
        running=running,
    )


def probe(pod: PodState) -> bool:
    """A TCP connect to the pod's readiness port, from inside its namespace."""
    if not pod.probe:
        return True
    try:
        s = netns.socket_in(pod.ns, socket.AF_INET, socket.SOCK_STREAM)
    except (OSError, FlatnetError):
        return False
    with s:
        s.settimeout(0.5)
        try:
            s.connect((pod.ip or "127.0.0.1", pod.probe))
            return True
        except OSError:
            return False


class Kubelet:
    """Watches one lab's pods and keeps their records true (see the module)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.ready: dict[str, bool] = {}  # pod -> last readiness verdict
        self.fails: dict[str, int] = {}
        self.looks = 0

    def look(self, st: LabState) -> None:
        """One pass over every pod (one read of the store for all of them)."""
        self.looks += 1
        records = {kv.key: kv for kv in self.store.range(keys.PODS)}
        for ref, pod in st.pods.items():
            kv = records.get(keys.pod(pod.namespace, ref_name(ref)))
            if kv is None:
                continue  # not recorded yet, or being deleted
            with contextlib.suppress(FlatnetError, OSError):
                self._one(st, ref, pod, kv)
        for gone in set(self.ready) - set(st.pods):
            self.ready.pop(gone, None)
            self.fails.pop(gone, None)

    def _readiness(self, name: str, pod: PodState, running: bool) -> bool:
        was = self.ready.get(name, False)
        if not running:
            ok = False
        elif was and self.looks % READY_EVERY:
            return True  # probed every READY_EVERY looks once ready
        elif probe(pod):
            self.fails[name] = 0
            ok = True
        else:
            self.fails[name] = self.fails.get(name, 0) + 1
            ok = was and self.fails[name] < FAILURE_THRESHOLD
        self.ready[name] = ok
        return ok

    def _one(self, st: LabState, ref: str, pod: PodState, kv: KV) -> None:
        rec = PodRecord.from_json(kv.value)
        if rec.phase == "Terminating":
            return
        loops = alive(st, f"pod:{ref}")
        if loops is None:
            return  # this copy of the state predates the pod's processes
        states = []
        for i in range(max(len(pod.commands), 1)):
            f = status_file(st, ref, i)
            lines = f.read_text().split("\n")[:-1] if f.exists() else []
            states.append(container_state(lines, loops))
        all_run = all(c.state == "running" for c in states)
        new = pod_status(rec, states, self._readiness(ref, pod, all_run))
        if new != rec:
            self.store.cas(kv.key, new.to_json(), kv.mod_revision)


def main(argv: list[str]) -> int:
    """``python -m flatnet.lab.kubelet LAB``: run until the lab is gone."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    (lab,) = argv
    st = LabState.load(lab)
    store = open_store(st.store_url)
    k = Kubelet(store)
    log.info("kubelet of lab %s: looking at its pods every %.1fs", lab, PERIOD)
    try:
        while (LABS_DIR / lab / "state.json").exists():
            try:
                k.look(LabState.load(lab))
            except (FlatnetError, OSError, ValueError) as e:  # a state file being replaced
                log.warning("look failed: %s", e)
            time.sleep(PERIOD)
    finally:
        store.close()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
