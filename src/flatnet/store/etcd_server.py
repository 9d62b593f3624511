"""A real etcd server (Debian's etcd-server) for the lab, the tests and the benchmarks:
on loopback or a lab address, a data directory of its own, stopped by PID."""

from __future__ import annotations

import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

from flatnet.errors import StoreError

__all__ = ["EtcdServer", "free_port"]


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


class EtcdServer:
    """Debian's etcd on ``host`` with a temporary data dir; ``start``/``stop``.

    ``argv_prefix`` lets the lab run it inside a namespace (``ip netns exec``).
    The data dir is kept across ``stop``/``start`` so a restart keeps history.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        argv_prefix: tuple[str, ...] = (),
        data_dir: Path | None = None,
        client_port: int | None = None,
        peer_port: int | None = None,
        unix_socket: bool = False,
    ) -> None:
        self.host = host
        self.argv_prefix = argv_prefix
        self._own_dir = data_dir is None
        self.data_dir = data_dir or Path(tempfile.mkdtemp(prefix="flatnet-etcd-"))
        self.client_port = client_port or free_port()
        self.peer_port = peer_port or free_port()
        self.unix_socket = unix_socket
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def socket_url(self) -> str:
        """A unix-socket URL, reachable from any network namespace on this machine."""
        return f"etcd://unix://{self.data_dir}/etcd.sock:0"

    @property
    def url(self) -> str:
        return f"etcd://{self.host}:{self.client_port}"

    def argv(self) -> list[str]:
        c = f"http://{self.host}:{self.client_port}"
        p = f"http://{self.host}:{self.peer_port}"
        return [
            *self.argv_prefix,
            shutil.which("etcd") or "/usr/bin/etcd",
            "--name",
            "flatnet",
            "--data-dir",
            str(self.data_dir / "data"),
            "--listen-client-urls",
            c + (",unix://etcd.sock:0" if self.unix_socket else ""),
            "--advertise-client-urls",
            c,
            "--listen-peer-urls",
            p,
            "--initial-advertise-peer-urls",
            p,
            "--initial-cluster",
            f"flatnet={p}",
            "--log-level",
            "error",
            "--logger",
            "zap",
        ]

    def start(self, timeout: float = 20) -> None:
        with open(self.data_dir / "etcd.log", "ab") as log:
            self.proc = subprocess.Popen(
                self.argv(),
                stdout=log,
                stderr=log,
                cwd=self.data_dir,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        try:
            self.wait_ready(timeout)
        except BaseException:
            self.stop()
            raise

    def wait_ready(self, timeout: float) -> None:
        from flatnet.store.etcd import EtcdStore

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is not None and self.proc.poll() is not None:
                raise StoreError(
                    f"etcd exited with {self.proc.returncode}; see {self.data_dir / 'etcd.log'}"
                )
            try:
                ep = self.socket_url if self.unix_socket else self.url
                st = EtcdStore(ep[len("etcd://") :], timeout=1)
                try:
                    st.revision()
                    return
                finally:
                    st.close()
            except StoreError:
                time.sleep(0.1)
        raise StoreError(f"etcd on {self.host}:{self.client_port} not ready after {timeout}s")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def destroy(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.data_dir, ignore_errors=True)
