#!/usr/bin/env python3
"""flatnet's CNI plugin: a thin entry that hands the call to the node agent.

It imports only the builtins ``posix``, ``sys`` and ``_socket`` (``import json``
alone costs as much as Python's own start-up, ~11 ms here), so under
``python -IS`` it costs little more than the interpreter; the two fields it
reads from the config (``cniVersion``, ``agentSocket``) are found by
:func:`_field`, and JSON is imported only to report an error. ``flatnet
install-cni`` copies this file as the plugin binary with the agent's socket
path baked into ``DEFAULT_SOCKET``; a network config may still name another
with ``agentSocket``.

Wire format on the agent's unix socket (plain text, no JSON to parse here):
request  = ``KEY=VALUE`` lines of the CNI_* environment, an empty line, stdin;
response = the exit code, a newline, the text for stdout.
VERSION is answered here; an unreachable agent is CNI error 11 (try again
later), or 50 for STATUS.
"""

import _socket
import posix  # os without its imports: os alone costs ~2 ms to import here
import sys

SUPPORTED = ["0.4.0", "1.0.0", "1.1.0"]
DEFAULT_SOCKET = "/run/flatnet/agent.sock"


def _field(stdin: str, key: str) -> str:
    """The string value of top-level ``key`` in a JSON object, without parsing it
    (first occurrence; fields with escapes are not expected here)."""
    i = stdin.find(f'"{key}"')
    if i < 0:
        return ""
    rest = stdin[i + len(key) + 2 :].lstrip()
    if not rest.startswith(":"):
        return ""
    rest = rest[1:].lstrip()
    if not rest.startswith('"'):
        return ""
    end = rest.find('"', 1)
    return rest[1:end] if end > 0 else ""


def _version(stdin: str) -> str:
    v = _field(stdin, "cniVersion")
    return v if v in SUPPORTED else SUPPORTED[-1]


def _fail(stdin: str, code: int, msg: str) -> int:
    import json  # only on the error path

    out = {"cniVersion": _version(stdin), "code": code, "msg": msg, "details": ""}
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
    environ = posix.environ  # bytes -> bytes
    command = environ.get(b"CNI_COMMAND", b"").decode()
    if command == "VERSION":
        versions = ", ".join(f'"{v}"' for v in SUPPORTED)
        sys.stdout.write(
            f'{{"cniVersion": "{_version(stdin)}", "supportedVersions": [{versions}]}}'
        )
        return 0
    path = _field(stdin, "agentSocket") or DEFAULT_SOCKET
    env = b"".join(k + b"=" + v + b"\n" for k, v in environ.items() if k.startswith(b"CNI_"))
    try:
        code, reply = _ask(path, env + b"\n" + stdin.encode())
    except (OSError, ValueError) as e:
        return _fail(
            stdin, 50 if command == "STATUS" else 11, f"flatnet agent not reachable at {path}: {e}"
        )
    sys.stdout.buffer.write(reply)
    return code


if __name__ == "__main__":
    sys.exit(main())
