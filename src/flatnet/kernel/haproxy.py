"""How it works — one HAProxy (Debian's 2.6), owned by the process that started it.

Files, all in one directory of the owner's: ``haproxy.cfg``, the map files
it names, ``admin.sock`` (the worker's runtime API, level admin, ``expose-fd
listeners`` so a reload hands its listening sockets over), ``master.sock``
(the master's CLI) and ``haproxy.pid``. HAProxy runs as ``haproxy -W -D -S
master.sock -f haproxy.cfg -p haproxy.pid`` in the owner's network
namespace: a master process (its PID in the PID file) and one worker, in a
session of their own.

- :meth:`HAProxy.ensure` writes the files and starts HAProxy, or adopts the
  one running from this directory (checked against its command line);
- :meth:`HAProxy.reload` rewrites the configuration and sends the master
  SIGUSR2: a new worker takes the listening sockets, the old one finishes
  its connections (what this machine measured: no failed request);
- :meth:`HAProxy.set_map` replaces a map's entries atomically at runtime
  (``prepare map``, ``add map @ver``, ``commit map @ver``) and rewrites its
  file, so a reload starts from the same entries;
- :meth:`HAProxy.set_servers` fills a backend's server slots (``set server
  addr/port``, ``state ready``) and empties the rest (``state maint``).

Every runtime command goes through the master's CLI as ``@1 <command>``: to
the current worker. Right after a reload the old worker still answers on
``admin.sock`` for a moment, and a map swapped there would be lost with it
(seen in a test: a reload "done" by one answer from the new worker, then the
old one answered again). One connection per call, commands separated by
``;`` run in order; a reply line starting with an error word is raised.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from pathlib import Path

from flatnet.errors import ConfigError, KernelError
from flatnet.kernel import netns, pidfile

__all__ = ["HAPROXY", "HAProxy"]

HAPROXY = "/usr/sbin/haproxy"
_ERRORS = ("Unknown", "No such", "Missing", "Require", "Invalid", "unable", "Error", "error")


class HAProxy:
    def __init__(self, ns: str | None, state: Path) -> None:
        self.ns, self.dir = ns, state
        self.conf = state / "haproxy.cfg"
        self.sock = state / "admin.sock"
        self.master = state / "master.sock"
        self.pidfile = state / "haproxy.pid"

    # -- life -----------------------------------------------------------------
    def pid(self) -> int | None:
        """The running master of this directory, or None."""
        return pidfile.running(self.pidfile, self.conf, "haproxy")

    def ensure(self, config: str, maps: dict[str, list[tuple[str, str]]]) -> str:
        """Run HAProxy with ``config`` and ``maps`` (name -> entries, files
        ``<name>.map``): adopt a running one (then reloaded, and its maps set)
        or start one. Returns "adopted" or "started"."""
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.pid() is not None:
            for name, entries in maps.items():
                self.set_map(name, entries)
            self.reload(config)
            return "adopted"
        for name, entries in maps.items():
            _write(self.dir / f"{name}.map", _map_text(entries))
        self._check(config)
        _write(self.conf, config)
        self.sock.unlink(missing_ok=True)
        self.master.unlink(missing_ok=True)
        argv = [HAPROXY, "-W", "-D", "-S", str(self.master), "-f", str(self.conf), "-p",
                str(self.pidfile)]  # fmt: skip
        r = subprocess.run(argv, capture_output=True, text=True, preexec_fn=netns.preexec(self.ns))
        if r.returncode != 0:
            raise KernelError(f"HAProxy did not start ({self.conf}): {_alerts(r)}")
        self._wait_socket(10.0)
        return "started"

    def reload(self, config: str) -> None:
        """New configuration, taken by a new worker; the old one drains."""
        self._check(config)
        pid = self.pid()
        if pid is None:
            raise KernelError(f"no HAProxy runs from {self.dir} to reload")
        before = self.worker_pid()
        _write(self.conf, config)
        os.kill(pid, signal.SIGUSR2)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if self.worker_pid() not in (before, 0):
                    return
            except KernelError:
                pass  # the master re-executes: its CLI is back in a moment
            time.sleep(0.01)
        raise KernelError(f"HAProxy of {self.dir} did not reload within 10s")

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop master and workers (SIGTERM, then SIGKILL); False if none ran."""
        return pidfile.stop(self.pidfile, self.pid(), timeout)

    def _check(self, config: str) -> None:
        """``haproxy -c`` on the text before it is used: a refusal is a ConfigError."""
        test = self.dir / "haproxy.cfg.check"
        _write(test, config)
        try:
            r = subprocess.run(
                [HAPROXY, "-c", "-q", "-f", str(test)], capture_output=True, text=True
            )
        finally:
            test.unlink(missing_ok=True)
        if r.returncode != 0:
            raise ConfigError(f"HAProxy refused the configuration: {_alerts(r)}")

    def _wait_socket(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.command("show info")
                return
            except KernelError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.02)

    # -- the runtime API --------------------------------------------------------
    def command(self, cmd: str, payload: str = "") -> str:
        """One command (or several, ``;``-separated) to the current worker; the
        reply's text. While the master re-executes (a reload) it is retried."""
        line = "; ".join(f"@1 {c.strip()}" for c in cmd.split(";"))
        body = payload.rstrip("\n").encode()  # the payload ends at its first empty line
        data = line.encode() + (b" <<\n" + body + b"\n\n" if payload else b"\n")
        deadline = time.monotonic() + 3.0
        while True:
            try:
                out = self._exchange(data)
                break
            except (ConnectionResetError, ConnectionRefusedError, FileNotFoundError) as e:
                if time.monotonic() > deadline:
                    raise KernelError(f"HAProxy's master CLI {self.master}: {cmd[:60]}: {e}") from e
                time.sleep(0.02)
            except OSError as e:
                raise KernelError(f"HAProxy's master CLI {self.master}: {cmd[:60]}: {e}") from e
        bad = [ln for ln in out.splitlines() if ln.startswith(_ERRORS)]
        if bad:
            raise KernelError(f"HAProxy's runtime API: {cmd[:60]}: {bad[0]}")
        return out

    def _exchange(self, data: bytes) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5.0)
            s.connect(str(self.master))
            s.sendall(data)
            s.shutdown(socket.SHUT_WR)  # the master CLI answers, then closes
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode(errors="replace")

    def worker_pid(self) -> int:
        for line in self.command("show info").splitlines():
            if line.startswith("Pid:"):
                return int(line.split()[1])
        return 0

    def set_map(self, name: str, entries: list[tuple[str, str]]) -> None:
        """All of a map's entries at once, atomically; its file too."""
        path = self.dir / f"{name}.map"
        out = self.command(f"prepare map {path}")
        ver = out.split(":")[-1].strip()
        if entries:
            self.command(f"add map @{ver} {path}", _map_text(entries))
        self.command(f"commit map @{ver} {path}")
        _write(path, _map_text(entries))

    def set_servers(self, backend: str, slots: int, servers: list[tuple[str, int]]) -> None:
        """Slots 1..len(servers) serve those addresses; the others are in maint."""
        cmds = []
        for i in range(slots):
            slot = f"{backend}/s{i + 1}"
            if i < len(servers):
                ip, port = servers[i]
                cmds += [
                    f"set server {slot} addr {ip} port {port}",
                    f"set server {slot} state ready",
                ]
            else:
                cmds.append(f"set server {slot} state maint")
        self.command(";".join(cmds))


def _map_text(entries: list[tuple[str, str]]) -> str:
    return "".join(f"{k} {v}\n" for k, v in entries)


def _write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _alerts(r: subprocess.CompletedProcess[str]) -> str:
    lines = [ln for ln in (r.stderr + r.stdout).splitlines() if "ALERT" in ln or "error" in ln]
    return "; ".join(lines[:3]) or (r.stderr or r.stdout).strip()[:300]
