#!/usr/bin/env python3
"""flatnet's CNI plugin: a thin entry that hands the call to the node agent.

Standard library only and nothing heavy imported, so it starts in a few
milliseconds under ``python -I -S``; ``flatnet install-cni`` copies this file
as the plugin binary. It forwards CNI_* variables and stdin over the agent's
unix socket (``agentSocket`` in the network config) and prints the answer.
VERSION is answered here; an unreachable agent is CNI error 11 (try again
later), or 50 for STATUS.
"""

import json
import os
import socket
import sys

SUPPORTED = ["0.4.0", "1.0.0", "1.1.0"]
DEFAULT_SOCKET = "/run/flatnet/agent.sock"


def _fail(version, code, msg):
    out = {"cniVersion": version, "code": code, "msg": msg, "details": ""}
    sys.stdout.write(json.dumps(out))
    return 1


def _ask(path, request):
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(120)
        s.connect(path)
        s.sendall(request)
        s.shutdown(socket.SHUT_WR)
        chunks = []
        while True:
            b = s.recv(65536)
            if not b:
                break
            chunks.append(b)
    return json.loads(b"".join(chunks))


def main():
    stdin = sys.stdin.read()
    env = {k: v for k, v in os.environ.items() if k.startswith("CNI_")}
    try:
        conf = json.loads(stdin) if stdin.strip() else {}
        if not isinstance(conf, dict):
            conf = {}
    except ValueError:
        conf = {}
    version = conf.get("cniVersion") if conf.get("cniVersion") in SUPPORTED else SUPPORTED[-1]
    if env.get("CNI_COMMAND") == "VERSION":
        sys.stdout.write(json.dumps({"cniVersion": version, "supportedVersions": SUPPORTED}))
        return 0
    path = conf.get("agentSocket") or DEFAULT_SOCKET
    request = json.dumps({"env": env, "stdin": stdin}).encode()
    try:
        answer = _ask(path, request)
    except (OSError, ValueError) as e:
        code = 50 if env.get("CNI_COMMAND") == "STATUS" else 11
        return _fail(version, code, f"flatnet agent not reachable at {path}: {e}")
    sys.stdout.write(answer.get("stdout", ""))
    return int(answer.get("code", 1))


if __name__ == "__main__":
    sys.exit(main())
