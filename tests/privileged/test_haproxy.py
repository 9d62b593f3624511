"""HAProxy driven as the ingress controller drives it, in a fresh namespace:
the routes of :mod:`flatnet.ingress.routes` as configuration and maps agree
with the reference matcher request by request (the Kubernetes path table,
hosts, wildcards, the default backend); maps and server slots change at
runtime without a reload; a reload keeps serving; a bad configuration is
refused and the running one stays."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from unit.test_ingress import K8S_EXAMPLES

from flatnet.errors import ConfigError
from flatnet.ingress.haproxy import Backend as HaBackend
from flatnet.ingress.haproxy import Frontends, backend_name, maps, render, slots_for
from flatnet.ingress.model import Backend, HTTPPath, Ingress, Rule
from flatnet.ingress.routes import Table, match, table
from flatnet.kernel import netns
from flatnet.kernel.haproxy import HAProxy
from flatnet.lab.procs import wait_port

pytestmark = pytest.mark.privileged

SERVERS = """
import sys, threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
class H(BaseHTTPRequestHandler):
    def do_GET(self):
        body = str(self.server.server_address[1]).encode()
        self.send_response(200); self.send_header("Content-Length", str(len(body)))
        self.end_headers(); self.wfile.write(body)
    def log_message(self, *a): pass
for p in sys.argv[1:]:
    s = ThreadingHTTPServer(("127.0.0.1", int(p)), H)
    threading.Thread(target=s.serve_forever, daemon=True).start()
threading.Event().wait()
"""
HTTP = 18080


@pytest.fixture
def ns(uniq: str) -> Iterator[str]:
    name = f"fl-{uniq}-hx"
    netns.create(name)
    subprocess.run(["ip", "-n", name, "link", "set", "lo", "up"], check=True)
    try:
        yield name
    finally:
        netns.delete(name)


def start_servers(ns: str, ports: list[int]) -> subprocess.Popen[bytes]:
    argv = ["ip", "netns", "exec", ns, sys.executable, "-c", SERVERS, *map(str, ports)]
    p = subprocess.Popen(argv)
    for port in ports:  # listening before the first request (else: a 503)
        wait_port(ns, port)
    return p


def get(ns: str, host: str, path: str) -> tuple[int, str]:
    r = subprocess.run(
        ["ip", "netns", "exec", ns, "curl", "-s", "-m", "2", "-w", "\n%{http_code}",
         "-H", f"Host: {host}", f"http://127.0.0.1:{HTTP}{path}"],
        capture_output=True, text=True,
    )  # fmt: skip
    body, _, code = r.stdout.rpartition("\n")
    return int(code or 0), body.strip()


def examples() -> list[Ingress]:
    """One host per example of the Kubernetes table: ``e<i>.test``."""
    out = []
    for i, (paths, _, _) in enumerate(K8S_EXAMPLES):
        hps = tuple(HTTPPath(p, t, Backend(f"s{i}-{j}", 80)) for j, (p, t) in enumerate(paths))
        rule = Rule(f"e{i}.test", hps)
        out.append(Ingress(f"e{i}", rules=(rule,)))
    wild = Rule("*.w.test", (HTTPPath("/", "Prefix", Backend("w", 80)),))
    out.append(Ingress("wild", rules=(wild,)))
    out.append(Ingress("any", default_backend=Backend("dflt", 80), created=1.0))
    return out


def served(t: Table) -> tuple[list[HaBackend], dict[str, int]]:
    """One backend per target, each one server on a port of its own."""
    ports = {backend_name(x): 19000 + i for i, x in enumerate(sorted(t.targets, key=str))}
    return [HaBackend(b, slots_for(1), (("127.0.0.1", p),)) for b, p in ports.items()], ports


def expect(t: Table, ports: dict[str, int], host: str, path: str) -> tuple[int, str]:
    hit = match(t, host, path)
    return (404, "not found") if hit is None else (200, str(ports[backend_name(hit)]))


@pytest.fixture
def proxy(ns: str, tmp_path: Path) -> Iterator[tuple[HAProxy, Table, dict[str, int]]]:
    t = table(examples())
    backends, ports = served(t)
    servers = start_servers(ns, list(ports.values()))
    h = HAProxy(ns, tmp_path / "hx")
    dflt = backend_name(t.default) if t.default else "be_404"
    try:
        h.ensure(render(h.dir, backends, dflt, Frontends(HTTP)), maps(t))
        yield h, t, ports
    finally:
        h.stop()
        servers.kill()
        servers.wait()


def test_haproxy_routes_every_request_as_the_reference_matcher(
    proxy: tuple[HAProxy, Table, dict[str, int]], ns: str
) -> None:
    h, t, ports = proxy
    for i, (_, path, matches) in enumerate(K8S_EXAMPLES):
        want = expect(t, ports, f"e{i}.test", path)
        assert (want[1] != str(ports[backend_name(t.default)])) == matches  # type: ignore[arg-type]
        assert get(ns, f"e{i}.test", path) == want, (i, path)
        assert get(ns, f"E{i}.TEST:80", path) == want  # case and port do not matter
    assert get(ns, "a.w.test", "/x")[1] == str(ports["be_default_w_80"])
    assert get(ns, "a.b.w.test", "/x") == expect(t, ports, "a.b.w.test", "/x")  # one label only
    assert get(ns, "nowhere.test", "/") == expect(t, ports, "nowhere.test", "/")
    # without a default backend: a 404
    t2 = table([i for i in examples() if i.name != "any"])
    h.set_map("hosts", maps(t2)["hosts"])
    h.reload(render(h.dir, served(t)[0], "be_404", Frontends(HTTP)))
    assert get(ns, "nowhere.test", "/") == (404, "not found")


def test_maps_and_servers_change_at_runtime_and_a_reload_keeps_serving(
    proxy: tuple[HAProxy, Table, dict[str, int]], ns: str
) -> None:
    h, t, ports = proxy
    worker = h.worker_pid()
    # a route moves to another backend: one atomic map swap, no reload
    m = maps(t)
    moved = [(k, "be_default_w_80" if k == "e1.test@/foo" else v) for k, v in m["exact"]]
    h.set_map("exact", moved)
    assert get(ns, "e1.test", "/foo")[1] == str(ports["be_default_w_80"])
    assert h.worker_pid() == worker
    # endpoints: two servers in the slots, then one
    be = "be_default_w_80"
    two = [("127.0.0.1", ports[be]), ("127.0.0.1", ports["be_default_dflt_80"])]
    h.set_servers(be, slots_for(1), two)
    seen = {get(ns, "a.w.test", "/")[1] for _ in range(6)}
    assert seen == {str(ports[be]), str(ports["be_default_dflt_80"])}
    h.set_servers(be, slots_for(1), [("127.0.0.1", ports[be])])
    assert {get(ns, "a.w.test", "/")[1] for _ in range(6)} == {str(ports[be])}
    assert h.worker_pid() == worker
    # a reload: a new worker, the same answers (the map file holds the swap)
    backends, _ = served(t)
    h.reload(render(h.dir, backends, backend_name(t.default), Frontends(HTTP)))  # type: ignore[arg-type]
    assert h.worker_pid() != worker
    assert get(ns, "e1.test", "/foo")[1] == str(ports["be_default_w_80"])
    # a bad configuration is refused; the running one stays
    with pytest.raises(ConfigError, match="HAProxy refused the configuration"):
        h.reload("global\n  nonsense-keyword 1\n")
    assert get(ns, "e1.test", "/foo")[0] == 200
    # stop: nothing of it left
    pid = h.pid()
    assert h.stop() and pid is not None
    time.sleep(0.1)
    assert not Path(f"/proc/{pid}").exists()
