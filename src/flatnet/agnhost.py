"""A test server and prober for pods, like Kubernetes' agnhost (stdlib only).

``netexec --http-port N`` answers ``/hostname``, ``/clientip`` (the source
IP:port it saw), ``/echo?msg=`` and ``/healthz``; with ``--udp-port`` it also
echoes UDP datagrams prefixed with the peer address. ``serve-hostname --port
80 --port 81`` answers its name on each port, on TCP and UDP (the upstream
NetworkPolicy model's server). ``connect HOST:PORT [--protocol udp] --timeout
1s`` exits 0 when a TCP connection succeeds (for UDP: an answer comes back);
``get URL`` prints a body. Run as ``python -m flatnet.agnhost`` so pods start
fast.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import socket
import sys
import threading
import urllib.parse
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

__all__ = ["main"]


def _hostname() -> str:
    return os.environ.get("FLATNET_POD_NAME") or socket.gethostname()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:  # noqa: N802
        url = urllib.parse.urlsplit(self.path)
        if url.path == "/hostname":
            body = _hostname()
        elif url.path == "/clientip":
            body = f"{self.client_address[0]}:{self.client_address[1]}"
        elif url.path == "/echo":
            body = urllib.parse.parse_qs(url.query).get("msg", [""])[0]
        elif url.path in ("/healthz", "/"):
            body = "ok"
        else:  # any other path: the request as seen here (gateway-api's echo server)
            body = json.dumps({
                "path": self.path,
                "host": self.headers.get("Host", ""),
                "method": self.command,
                "headers": {k: self.headers.get_all(k) for k in self.headers},
                "pod": _hostname(),
                "client": self.client_address[0],
            }, sort_keys=True)  # fmt: skip
        data = body.encode()
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, fmt: str, *args: object) -> None:
        pass


def _udp_echo(port: int) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", port))
    while True:
        data, peer = s.recvfrom(65535)
        s.sendto(f"{peer[0]}:{peer[1]} ".encode() + data, peer)


def netexec(http_port: int, udp_port: int | None) -> int:
    if udp_port:
        threading.Thread(target=_udp_echo, args=(udp_port,), daemon=True).start()
    ThreadingHTTPServer.allow_reuse_address = True
    ThreadingHTTPServer.request_queue_size = 512  # bursts of connects are not dropped
    srv = ThreadingHTTPServer(("0.0.0.0", http_port), _Handler)
    srv.daemon_threads = True
    srv.serve_forever()
    return 0


def _hostname_tcp(port: int) -> None:
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("0.0.0.0", port))
    srv.listen(512)
    while True:
        conn, _ = srv.accept()
        with conn, contextlib.suppress(OSError):
            conn.sendall(_hostname().encode())


def _hostname_udp(port: int) -> None:
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind(("0.0.0.0", port))
    while True:
        _, peer = s.recvfrom(65535)
        s.sendto(_hostname().encode(), peer)


def serve_hostname(ports: list[int]) -> int:
    for port in ports:
        for serve in (_hostname_tcp, _hostname_udp):
            threading.Thread(target=serve, args=(port,), daemon=True).start()
    threading.Event().wait()
    return 0


def udp_answers(host: str, port: int, timeout: float) -> bool:
    """Does a datagram to ``host:port`` get an answer within ``timeout``?"""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        try:
            s.connect((host, port))
            s.send(b"hostname")
            return bool(s.recv(65535))
        except OSError:
            return False


def _seconds(text: str) -> float:
    return float(text[:-2]) / 1000 if text.endswith("ms") else float(text.rstrip("s"))


def connect(target: str, timeout: float, protocol: str = "tcp") -> int:
    host, _, port = target.rpartition(":")
    if protocol == "udp":
        if udp_answers(host, int(port), timeout):
            return 0
        print(f"connect {target}/udp: no answer within {timeout}s", file=sys.stderr)
        return 1
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return 0
    except OSError as e:
        print(f"connect {target}: {e}", file=sys.stderr)
        return 1


def get(url: str, timeout: float) -> int:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:
            sys.stdout.write(r.read().decode())
            return 0
    except OSError as e:
        print(f"get {url}: {e}", file=sys.stderr)
        return 1


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="flatnet agnhost")
    sub = ap.add_subparsers(dest="cmd", required=True)
    n = sub.add_parser("netexec")
    n.add_argument("--http-port", type=int, default=8080)
    n.add_argument("--udp-port", type=int, default=None)
    c = sub.add_parser("connect")
    c.add_argument("target")
    c.add_argument("--timeout", default="1s")
    c.add_argument("--protocol", choices=("tcp", "udp"), default="tcp")
    h = sub.add_parser("serve-hostname")
    h.add_argument("--port", type=int, action="append", required=True)
    g = sub.add_parser("get")
    g.add_argument("url")
    g.add_argument("--timeout", default="2s")
    a = ap.parse_args(argv)
    if a.cmd == "netexec":
        return netexec(a.http_port, a.udp_port)
    if a.cmd == "connect":
        return connect(a.target, _seconds(a.timeout), a.protocol)
    if a.cmd == "serve-hostname":
        return serve_hostname(a.port)
    return get(a.url, _seconds(a.timeout))


if __name__ == "__main__":
    sys.exit(main())
