"""How it works — the ingress controller: the store's Ingresses, driven into HAProxy.

One process per cluster (in the lab: the pod ``ingress-haproxy`` of
``flatnet-system``, exposed by the Service ``flatnet-ingress``), running
HAProxy (:class:`flatnet.kernel.haproxy.HAProxy`) in its own namespace. It
follows ``ingresses/``, ``ingressclasses/``, ``services/`` and ``pods/``
and after every batch of changes computes :func:`flatnet.ingress.desired.desired`:

- the first time, or when the structure differs (a backend more or less,
  more slots, another default backend): the maps are written and HAProxy
  reloads (master-worker: the new worker takes the listening sockets, the
  old one finishes its connections);
- otherwise only what changed is set at runtime: each changed map swapped
  atomically, each changed backend's slots refilled.

It publishes ``ingress/status`` (reloads, the last one, routes, conflicts)
for ``flatnet get ingresses``. HAProxy outlives the controller: a restarted
controller adopts it (a reload with what the store says now).
"""

from __future__ import annotations

import json
import logging
import threading
import time
from pathlib import Path

from flatnet import keys
from flatnet.ingress.desired import Desired, desired, select
from flatnet.ingress.haproxy import Frontends, render
from flatnet.ingress.model import Ingress, IngressClass
from flatnet.kernel.haproxy import HAProxy
from flatnet.store import Store
from flatnet.store.follow import follow
from flatnet.view import ClusterView, ViewFollower

__all__ = ["Controller"]

log = logging.getLogger("flatnet.ingress")


class Controller(ViewFollower):
    def __init__(
        self, store: Store, state: Path, ingress_class: str, fe: Frontends | None = None
    ) -> None:
        self.store, self.state, self.mine = store, state, ingress_class
        self.fe = fe or Frontends()
        self.haproxy = HAProxy(None, state)  # this process already runs in its namespace
        self.view = ClusterView()
        self.ingresses: dict[str, Ingress] = {}
        self.classes: dict[str, IngressClass] = {}
        self.running: Desired | None = None
        self.reloads, self.last_reload = 0, 0.0

    # -- following the store ----------------------------------------------------
    def _take(self, key: str, value: str | None) -> None:
        if key.startswith(keys.INGRESSES):
            ref = key.removeprefix(keys.INGRESSES)
            if value is None:
                self.ingresses.pop(ref, None)
            else:
                self.ingresses[ref] = Ingress.from_json(value)
        elif key.startswith(keys.INGRESS_CLASSES):
            if value is None:
                self.classes.pop(keys.last(key), None)
            else:
                self.classes[keys.last(key)] = IngressClass.from_json(value)

    def _reset(self) -> None:
        self.ingresses, self.classes = {}, {}

    # -- driving HAProxy ----------------------------------------------------------
    def sync(self) -> None:
        mine = select(self.ingresses.values(), self.classes.values(), self.mine)
        now = {b.name: b.slots for b in self.running.backends} if self.running else {}
        want = desired(mine, self.view, now)
        have = self.running
        if have is not None and want == have:
            return
        t0 = time.perf_counter()
        if have is None:
            text = render(self.state, list(want.backends), want.default, self.fe)
            self._reloaded(self.haproxy.ensure(text, want.maps), want, t0)
            have = want  # started (or adopted) with all of it
        for name, entries in want.maps.items():  # the map files too: a reload reads them
            if entries != have.maps.get(name):
                self.haproxy.set_map(name, entries)
        if want.structure != have.structure:
            self.haproxy.reload(render(self.state, list(want.backends), want.default, self.fe))
            self._reloaded("reloaded", want, t0)
        elif have is not want:
            old = {b.name: b.servers for b in have.backends}
            for b in want.backends:
                if old.get(b.name) != b.servers:
                    self.haproxy.set_servers(b.name, b.slots, list(b.servers))
            log.info("HAProxy changed at runtime (%.3fs)", time.perf_counter() - t0)
        for c in want.conflicts:
            if self.running is None or c not in self.running.conflicts:
                log.warning("%s", c)
        self.running = want
        self._publish(len(mine))

    def _reloaded(self, how: str, want: Desired, t0: float) -> None:
        self.reloads += 1
        self.last_reload = time.time()
        log.info("HAProxy %s: %d backend(s) (%.3fs)", how, len(want.backends),
                 time.perf_counter() - t0)  # fmt: skip

    def _publish(self, ingresses: int) -> None:
        assert self.running is not None
        body = {
            "class": self.mine,
            "ingresses": ingresses,
            "routes": sum(len(v) for k, v in self.running.maps.items() if k != "hosts"),
            "reloads": self.reloads,
            "lastReload": self.last_reload,
            "conflicts": list(self.running.conflicts),
        }
        try:
            self.store.put(keys.INGRESS_STATUS, json.dumps(body, sort_keys=True))
        except Exception as e:
            log.warning("cannot publish the controller's status: %s", e)

    def run(self, stop: threading.Event) -> None:
        prefixes = (keys.SERVICES, keys.PODS, keys.INGRESSES, keys.INGRESS_CLASSES)
        follow(self.store, prefixes, stop, self.listed, self.changed, None, 30.0, log)
