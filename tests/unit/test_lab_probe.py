"""Which services lab check can probe: a TCP port whose endpoints are all test
servers (a UDP-only service is skipped, not a crash)."""

from __future__ import annotations

from pathlib import Path

from flatnet.lab.probe import _services
from flatnet.model import PodRecord, Service, ServicePort
from flatnet.store.sqlite import SqliteStore


def test_only_tcp_ports_served_by_test_pods_are_probed(tmp_path: Path) -> None:
    s = SqliteStore(tmp_path / "store.db")
    try:
        for name, ns in (("web", "default"), ("api", "shop"), ("db", "default")):
            p = PodRecord(name, ns, "n1", f"10.244.0.{len(name)}", labels={"app": name},
                          phase="Running", ready=True, running=1)  # fmt: skip
            s.put(p.key, p.to_json())
        svcs = [
            Service("web", "default", cluster_ip="10.96.0.11", selector={"app": "web"},
                    ports=(ServicePort(53, "UDP", "dns", 8080),
                           ServicePort(80, "TCP", "http", 8080))),
            Service("udp", "default", cluster_ip="10.96.0.12", selector={"app": "web"},
                    ports=(ServicePort(53, "UDP", "", 8080),)),
            Service("api", "shop", cluster_ip="10.96.0.13", selector={"app": "api"},
                    ports=(ServicePort(80, "TCP", "", 8080),)),
            Service("db", "default", cluster_ip="10.96.0.14", selector={"app": "db"},
                    ports=(ServicePort(5432, "TCP", "", 5432),)),  # not the test server's port
        ]  # fmt: skip
        for svc in svcs:
            s.put(svc.key, svc.to_json())
        got = {(svc.name, sp.port, frozenset(refs)) for svc, sp, refs in
               _services(s, {"web", "shop/api", "db"})}  # fmt: skip
        assert got == {("web", 80, frozenset({"web"})), ("api", 80, frozenset({"shop/api"}))}
    finally:
        s.close()
