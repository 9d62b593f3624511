"""``flatnet install-cni``: the plugin binary and a conflist, as on a real host."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from flatnet.cni import plugin
from flatnet.errors import ConfigError

__all__ = ["conflist", "install"]


def conflist(agent_socket: str, portmap: bool = True, name: str = "flatnet") -> dict:
    # the socket path is baked into the installed binary; naming it here too
    # keeps the conflist readable for people (the plugin reads it only if set).
    plugins: list[dict] = [{"type": "flatnet"}]
    if agent_socket != plugin.DEFAULT_SOCKET:
        plugins[0]["agentSocket"] = agent_socket
    if portmap:
        plugins.append({"type": "portmap", "capabilities": {"portMappings": True}})
    # Debian's reference plugins (1.1.1) speak CNI up to 1.0.0.
    return {"cniVersion": "1.0.0" if portmap else "1.1.0", "name": name, "plugins": plugins}


def plugin_python() -> str:
    """The interpreter for the plugin. It needs only the standard library, so the
    system's ``python3`` serves when it is 3.9 or newer: Debian's is built with
    PGO and LTO and starts in ~11 ms here against ~15 ms for a source-built one
    (the plugin runs once per CNI call). Otherwise the Python running flatnet."""
    system = shutil.which("python3", path="/usr/bin:/bin")
    if system:
        ok = subprocess.run(
            [system, "-IS", "-c", "import sys; sys.exit(sys.version_info < (3, 9))"],
            capture_output=True,
        )
        if ok.returncode == 0:
            return system
    return sys.executable


def compile_shim(out: Path, agent_socket: str) -> bool:
    """Build the compiled thin entry (shim.c) as ``out``; False without a C compiler."""
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        return False
    src = Path(__file__).with_name("shim.c")
    r = subprocess.run(
        [cc, "-O2", "-s", "-o", str(out), f"-DFLATNET_SOCKET={json.dumps(agent_socket)}", str(src)],
        capture_output=True,
        text=True,
    )
    if r.returncode != 0:
        raise ConfigError(f"compiling {src} with {cc} failed: {r.stderr.strip()}")
    return True


def install(
    bin_dir: str,
    conf_dir: str,
    agent_socket: str = plugin.DEFAULT_SOCKET,
    portmap: bool = True,
    python: str | None = None,
    kind: str = "auto",
) -> tuple[Path, Path]:
    """Write ``<bin_dir>/flatnet`` and ``<conf_dir>/10-flatnet.conflist``. Idempotent.

    ``kind`` picks the plugin binary: ``c`` the compiled thin entry (shim.c),
    ``python`` plugin.py run with ``-IS`` by ``python`` (default
    :func:`plugin_python`), ``auto`` the compiled one when a C compiler is
    present. Both speak the same wire format to the agent."""
    if kind not in ("auto", "c", "python"):
        raise ConfigError(f"plugin kind '{kind}' is not one of auto, c, python")
    b, c = Path(bin_dir), Path(conf_dir)
    b.mkdir(parents=True, exist_ok=True)
    c.mkdir(parents=True, exist_ok=True)
    exe = b / "flatnet"
    tmp = exe.with_suffix(".tmp")
    if kind == "python" or not compile_shim(tmp, agent_socket):
        if kind == "c":
            raise ConfigError("plugin kind 'c' needs a C compiler (cc or gcc) on PATH")
        src = (
            Path(plugin.__file__)
            .read_text()
            .split("\n", 1)[1]
            .replace(
                f'DEFAULT_SOCKET = "{plugin.DEFAULT_SOCKET}"',
                f"DEFAULT_SOCKET = {agent_socket!r}",
                1,
            )
        )
        tmp.write_text(f"#!{python or plugin_python()} -IS\n{src}")
    tmp.chmod(0o755)
    os.replace(tmp, exe)
    conf = c / "10-flatnet.conflist"
    conf.write_text(json.dumps(conflist(agent_socket, portmap), indent=2) + "\n")
    return exe, conf
