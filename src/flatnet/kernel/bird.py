"""How it works — one BIRD 2 daemon, owned by the process that started it.

Files, all in one directory of the owner's (``bird.conf``, ``bird.ctl`` the
control socket, ``bird.pid``, ``bird.log``): BIRD runs as
``bird -c bird.conf -s bird.ctl -P bird.pid`` in the owner's network
namespace (it daemonizes, in a session of its own, so it outlives an agent
restart — the routes it holds do not flap while the agent is away).

- :meth:`Bird.ensure` writes the config and starts BIRD, or adopts the one
  already running from this directory (its PID file names a live ``bird``
  whose command line has this config) and reconfigures it. A BIRD started
  after a crash of the previous one runs with ``-R`` (graceful-restart
  recovery: it waits for its peers' routes before touching the kernel).
- :meth:`Bird.configure` replaces the config file atomically and asks BIRD to
  re-read it over the control socket: sessions whose options did not change
  stay up, new peers start, removed ones stop (measured: a new route at the
  peers 1–2 ms after ``configure``).
- :meth:`Bird.protocols` reads ``show protocols``: each protocol's state and
  info (a BGP session's ``Established``, ``Active``, ``Connect``...).

The control socket speaks lines ``NNNN-text`` (more follows) and ``NNNN text``
(the last); codes 8000 and up are errors, 9000 and up parse errors; a line
starting with a space continues the previous code.
"""

from __future__ import annotations

import os
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from flatnet.errors import ConfigError, KernelError
from flatnet.kernel import netns, pidfile

__all__ = ["Bird", "Protocol", "parse_protocols", "reply"]

BIRD = "/usr/sbin/bird"


@dataclass(frozen=True)
class Protocol:
    name: str
    proto: str  # BGP, Kernel, Static, BFD, Device
    state: str  # up, start, down
    info: str  # BGP: Established, Active, Connect, Idle... and why


def reply(sock: socket.socket, buf: bytearray) -> list[tuple[int, str]]:
    """Read one reply (up to its last line) from the control socket."""
    out: list[tuple[int, str]] = []
    code = 0
    while True:
        while b"\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                raise KernelError("BIRD closed its control socket")
            buf += chunk
        raw, _, rest = bytes(buf).partition(b"\n")
        buf[:] = rest
        line = raw.decode(errors="replace")
        if line.startswith(" "):
            out.append((code, line[1:]))
            continue
        code, sep, text = int(line[:4]), line[4:5], line[5:]
        out.append((code, text))
        if sep == " ":
            return out


def parse_protocols(lines: list[tuple[int, str]]) -> dict[str, Protocol]:
    """``show protocols`` (with ``timeformat protocol iso long``: Since is a
    date and a time)."""
    out = {}
    for code, text in lines:
        if code not in (1002, 0) or not text.strip():
            continue
        parts = text.split(None, 6)
        if len(parts) < 6:
            continue
        name, proto, _table, state = parts[:4]
        info = parts[6] if len(parts) > 6 else ""
        out[name] = Protocol(name, proto, state, info.strip())
    return out


class Bird:
    """The BIRD of one owner, in namespace ``ns`` (None: this one)."""

    def __init__(self, ns: str | None, directory: Path | str) -> None:
        self.ns = ns
        self.dir = Path(directory)
        self.conf = self.dir / "bird.conf"
        self.ctl = self.dir / "bird.ctl"
        self.pidfile = self.dir / "bird.pid"
        self.log = self.dir / "bird.log"

    # -- life ---------------------------------------------------------------
    def pid(self) -> int | None:
        """The running BIRD of this directory, or None."""
        return pidfile.running(self.pidfile, self.conf, "bird")

    def ensure(self, text: str, reconfigure: bool = True) -> str:
        """Run BIRD with config ``text``: adopt a running one (reconfigured,
        unless ``reconfigure`` is false: the owner will, once it knows all
        of it) or start one. Returns what happened: adopted, started, recovered."""
        self.dir.mkdir(parents=True, exist_ok=True)
        if self.pid() is not None:
            if reconfigure:
                self.configure(text)
            return "adopted"
        recovering = self.pidfile.exists()  # the last one did not stop cleanly
        self._write(text)
        self.ctl.unlink(missing_ok=True)
        argv = [BIRD, "-c", str(self.conf), "-s", str(self.ctl), "-P", str(self.pidfile)]
        if recovering:
            argv.append("-R")
        r = subprocess.run(argv, capture_output=True, text=True, preexec_fn=netns.preexec(self.ns))
        if r.returncode != 0:
            raise ConfigError(f"BIRD refused {self.conf}: {(r.stderr or r.stdout).strip()}")
        self._wait_socket(10.0)
        return "recovered" if recovering else "started"

    def _wait_socket(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.command("show status")
                return
            except (OSError, KernelError) as e:
                if time.monotonic() > deadline:
                    raise KernelError(
                        f"BIRD's control socket {self.ctl} does not answer: {e}"
                    ) from e
                time.sleep(0.02)

    def stop(self, timeout: float = 5.0) -> bool:
        """Stop BIRD (SIGTERM, as ``birdc down``) and wait; False if none ran."""
        return pidfile.stop(self.pidfile, self.pid(), timeout)

    # -- config -------------------------------------------------------------
    def _write(self, text: str) -> None:
        """The config, with BIRD's log going to ``bird.log`` beside it."""
        tmp = self.conf.with_suffix(".tmp")
        tmp.write_text(
            f'log "{self.log}" {{ info, remote, warning, error, auth, fatal, bug }};\n' + text
        )
        os.replace(tmp, self.conf)

    def configure(self, text: str) -> None:
        """Replace the config and have BIRD re-read it (sessions stay up)."""
        old = self.conf.read_text() if self.conf.exists() else None
        self._write(text)
        lines = self.command("configure")
        bad = [t for c, t in lines if c >= 8000]
        if bad:
            if old is not None:
                self.conf.write_text(old)
            raise ConfigError(f"BIRD refused the new {self.conf}: {'; '.join(bad)}")

    # -- the control socket -------------------------------------------------
    def command(self, cmd: str) -> list[tuple[int, str]]:
        """One command over the control socket; its reply lines (code, text)."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5.0)
            try:
                s.connect(str(self.ctl))
                buf = bytearray()
                reply(s, buf)  # the greeting: 0001 BIRD 2.0.12 ready.
                s.sendall(cmd.encode() + b"\n")
                return reply(s, buf)
            except OSError as e:
                raise KernelError(f"BIRD's control socket {self.ctl}: {cmd}: {e}") from e

    def protocols(self) -> dict[str, Protocol]:
        return parse_protocols(self.command("show protocols"))
