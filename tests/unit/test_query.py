"""What `flatnet get` reads from the store, as rows (the CLI only renders them)."""

from __future__ import annotations

from pathlib import Path

from flatnet import keys, query
from flatnet.model import (
    Heartbeat,
    NodeRecord,
    PeerStatus,
    PodRecord,
    ProxyStatus,
    Service,
    ServicePort,
)
from flatnet.store.sqlite import SqliteStore


def test_rows_carry_what_kubectl_users_see(tmp_path: Path) -> None:
    s = SqliteStore(str(tmp_path / "store.db"))
    try:
        s.put(keys.node("n1"), NodeRecord("n1", "192.168.50.11", "10.244.0.0/24").to_json())
        s.put(keys.node("n2"), NodeRecord("n2", "192.168.51.12", "10.244.1.0/24").to_json())
        st = PeerStatus("n1", "host-gw", [], [], {"n2": "host-gw: peer 'n2' is not on this L2"})
        s.put(keys.peer_status("n1"), st.to_json())
        web = PodRecord("w", "default", "n1", "10.244.0.2", labels={"app": "w"}, phase="Running")
        s.put(web.key, PodRecord(**{**web.__dict__, "ready": True}).to_json())
        svc = Service("web", "default", "NodePort", "10.96.0.11", {"app": "w"},
                      (ServicePort(80, "TCP", "http", 8080, 30080),))  # fmt: skip
        rev = s.put(svc.key, svc.to_json())
        s.put(keys.proxy_status("n1"), ProxyStatus("n1", rev).to_json())
        s.put(keys.proxy_status("n2"), ProxyStatus("n2", rev - 1).to_json())
        s.put(keys.proxy_status("n3"), ProxyStatus("n3", rev).to_json())  # its agent died
        s.put(keys.heartbeat("n1"), Heartbeat("n1", 1.0, 3.0).to_json(), lease=s.grant(3))
        n1, n2 = query.nodes(s)
        assert list(n1.to_dict()) == [
            "name", "status", "podSubnet", "underlayIP", "backend", "peers", "refused", "pending",
            "sessions", "problem", "ready", "agentSince",
        ]  # fmt: skip
        assert n1.ready and n1.refused == st.refused and n1.since == 1.0
        assert (n2.ready, n2.status, n2.backend) == (False, "NotReady", "")
        (row,) = query.services(s)
        assert row.ports == [
            {"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080, "nodePort": 30080}
        ]
        assert query.port_text(row.ports[0]) == "http:80:30080/TCP"
        assert row.endpoints == ["10.244.0.2:8080"]
        # n2 is one revision behind; n3 is up to date but NotReady (no heartbeat)
        assert row.programmed_on == ["n1"] and row.proxies == 3
        assert row.to_dict()["clusterIP"] == "10.96.0.11"
        (pod,) = query.pods(s)
        assert (pod.name, pod.ip, pod.phase, pod.status) == (
            "w",
            "10.244.0.2",
            "Running",
            "Running",
        )
        assert (pod.ready, pod.restarts) == ("0/1", 0)  # no container runs yet: 0 of 1 ready
    finally:
        s.close()
