"""``flatnet install-cni``: the plugin binary and a conflist, as on a real host."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from flatnet.cni import plugin

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


def install(
    bin_dir: str, conf_dir: str, agent_socket: str = plugin.DEFAULT_SOCKET, portmap: bool = True
) -> tuple[Path, Path]:
    """Write ``<bin_dir>/flatnet`` (the thin plugin, run by this Python with -IS)
    and ``<conf_dir>/10-flatnet.conflist``. Idempotent."""
    b, c = Path(bin_dir), Path(conf_dir)
    b.mkdir(parents=True, exist_ok=True)
    c.mkdir(parents=True, exist_ok=True)
    src = (
        Path(plugin.__file__)
        .read_text()
        .split("\n", 1)[1]
        .replace(
            f'DEFAULT_SOCKET = "{plugin.DEFAULT_SOCKET}"', f"DEFAULT_SOCKET = {agent_socket!r}", 1
        )
    )
    exe = b / "flatnet"
    tmp = exe.with_suffix(".tmp")
    tmp.write_text(f"#!{sys.executable} -IS\n{src}")
    tmp.chmod(0o755)
    os.replace(tmp, exe)
    conf = c / "10-flatnet.conflist"
    conf.write_text(json.dumps(conflist(agent_socket, portmap), indent=2) + "\n")
    return exe, conf
