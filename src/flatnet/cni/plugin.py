#!/usr/bin/env python3
"""flatnet's CNI plugin: a thin entry that hands the call to the node agent.

It imports only ``os``, ``sys`` and the builtin ``_socket`` (``json`` and
``socket`` alone cost more than Python's own start-up), so under
``python -IS`` it costs little more than the interpreter. ``flatnet
install-cni`` copies this file as the plugin binary with the agent's socket
path baked into ``DEFAULT_SOCKET``; a network config may still name another
with ``agentSocket``.

Wire format on the agent's unix socket (plain text, no JSON to parse here):
request  = ``KEY=VALUE`` lines of the CNI_* environment, an empty line, stdin;
response = the exit code, a newline, the text for stdout.
VERSION is answered here; an unreachable agent is CNI error 11 (try again
later), or 50 for STATUS.
"""

from __future__ import annotations

import _socket
import os
import sys

SUPPORTED = ["0.4.0", "1.0.0", "1.1.0"]
DEFAULT_SOCKET = "/run/flatnet/agent.sock"


def _conf(stdin: str) -> dict:
    import json  # only on the slow paths

    try:
        conf = json.loads(stdin)
        return conf if isinstance(conf, dict) else {}
    except ValueError:
        return {}


def _version(conf: dict) -> str:
    v = conf.get("cniVersion")
    return v if v in SUPPORTED else SUPPORTED[-1]


def _fail(stdin: str, code: int, msg: str) -> int:
    import json

    out = {"cniVersion": _version(_conf(stdin)), "code": code, "msg": msg, "details": ""}
    sys.stdout.write(json.dumps(out))
    return 1


def _ask(path: str, request: bytes) -> tuple[int, bytes]:
    s = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    try:
        s.settimeout(120)
        s.connect(path)
        s.sendall(request)
        s.shutdown(_socket.SHUT_WR)
        chunks = []
        while True:
            b = s.recv(65536)
            if not b:
                break
            chunks.append(b)
    finally:
        s.close()
    code, _, out = b"".join(chunks).partition(b"\n")
    return int(code), out


def main() -> int:
    stdin = sys.stdin.read()
    command = os.environ.get("CNI_COMMAND", "")
    if command == "VERSION":
        import json

        ver = _version(_conf(stdin))
        sys.stdout.write(json.dumps({"cniVersion": ver, "supportedVersions": SUPPORTED}))
        return 0
    path = _conf(stdin).get("agentSocket") if '"agentSocket"' in stdin else None
    path = path if isinstance(path, str) and path else DEFAULT_SOCKET
    env = "".join(f"{k}={v}\n" for k, v in os.environ.items() if k.startswith("CNI_"))
    try:
        code, out = _ask(path, f"{env}\n{stdin}".encode())
    except (OSError, ValueError) as e:
        return _fail(
            stdin, 50 if command == "STATUS" else 11, f"flatnet agent not reachable at {path}: {e}"
        )
    sys.stdout.buffer.write(out)
    return code


if __name__ == "__main__":
    sys.exit(main())
