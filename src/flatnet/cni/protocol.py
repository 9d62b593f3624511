"""CNI wire protocol (spec 1.1.0; 0.4.0 and 1.0.0 accepted), agent side.

The thin plugin forwards its environment and stdin unchanged; this module
validates them exactly as the spec asks, dispatches to a :class:`Handler`, and
renders the result or the error JSON in the request's ``cniVersion``.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any, Protocol

from flatnet.errors import CNIError, Code, FlatnetError

__all__ = ["SUPPORTED", "Handler", "Request", "error_json", "handle", "parse"]

SUPPORTED = ("0.4.0", "1.0.0", "1.1.0")
VERBS = ("ADD", "DEL", "CHECK", "VERSION", "GC", "STATUS")
_CID = re.compile(r"^[a-zA-Z0-9][a-zA-Z0-9_.\-]*$")
_KNOWN_ARGS = {
    "IgnoreUnknown",
    "K8S_POD_NAMESPACE",
    "K8S_POD_NAME",
    "K8S_POD_INFRA_CONTAINER_ID",
    "K8S_POD_UID",
}


@dataclass(frozen=True)
class Request:
    command: str
    version: str
    config: dict[str, Any]
    container_id: str = ""
    netns: str = ""
    ifname: str = ""
    args: dict[str, str] = field(default_factory=dict)

    @property
    def pod(self) -> str:
        ns, name = self.args.get("K8S_POD_NAMESPACE"), self.args.get("K8S_POD_NAME")
        return f"{ns}/{name}" if ns and name else ""


class Handler(Protocol):
    """What the agent implements; each returns a result dict (ADD) or None."""

    def add(self, req: Request) -> dict[str, Any]: ...

    def delete(self, req: Request) -> None: ...

    def check(self, req: Request) -> None: ...

    def gc(self, req: Request, valid: set[tuple[str, str]]) -> None: ...

    def status(self, req: Request) -> None: ...


def _version_of(stdin: str) -> str:
    try:
        v = json.loads(stdin).get("cniVersion")
        return v if v in SUPPORTED else SUPPORTED[-1]
    except Exception:
        return SUPPORTED[-1]


def error_json(version: str, code: int, msg: str, details: str = "") -> str:
    return json.dumps({"cniVersion": version, "code": code, "msg": msg, "details": details})


def _need(env: dict[str, str], *names: str) -> None:
    for n in names:
        if not env.get(n):
            raise CNIError(
                Code.INVALID_ENVIRONMENT, f"required environment variable {n} is missing"
            )


def _parse_args(raw: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for part in filter(None, raw.split(";")):
        if "=" not in part:
            raise CNIError(Code.INVALID_ENVIRONMENT, f"CNI_ARGS: '{part}' is not KEY=VALUE")
        k, v = part.split("=", 1)
        out[k] = v
    unknown = set(out) - _KNOWN_ARGS
    if unknown and out.get("IgnoreUnknown", "").lower() not in ("1", "true"):
        raise CNIError(
            Code.UNSUPPORTED_FIELD,
            f"CNI_ARGS: unknown key(s) {', '.join(sorted(unknown))} (and IgnoreUnknown is not set)",
        )
    return out


def parse(env: dict[str, str], stdin: str) -> Request:
    cmd = env.get("CNI_COMMAND", "")
    if cmd not in VERBS:
        raise CNIError(
            Code.INVALID_ENVIRONMENT, f"CNI_COMMAND '{cmd}' is not one of {', '.join(VERBS)}"
        )
    try:
        config = json.loads(stdin) if stdin.strip() else {}
    except json.JSONDecodeError as e:
        raise CNIError(Code.DECODE_FAILURE, f"network configuration is not valid JSON: {e}") from e
    if not isinstance(config, dict):
        raise CNIError(Code.DECODE_FAILURE, "network configuration must be a JSON object")
    version = config.get("cniVersion", "")
    if cmd != "VERSION" and version not in SUPPORTED:
        raise CNIError(
            Code.INCOMPATIBLE_VERSION,
            f"cniVersion '{version}' is not supported (supported: {', '.join(SUPPORTED)})",
        )
    if cmd in ("GC", "STATUS") and version != "1.1.0":
        raise CNIError(
            Code.INCOMPATIBLE_VERSION, f"{cmd} needs cniVersion 1.1.0, the request has '{version}'"
        )
    if cmd in ("ADD", "CHECK"):
        _need(env, "CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH")
    elif cmd == "DEL":
        _need(env, "CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH")
    cid, ifname = env.get("CNI_CONTAINERID", ""), env.get("CNI_IFNAME", "")
    if cid and not _CID.match(cid):
        raise CNIError(
            Code.INVALID_ENVIRONMENT, f"CNI_CONTAINERID '{cid}' does not match {_CID.pattern}"
        )
    if ifname and (len(ifname) > 15 or "/" in ifname or ifname in (".", "..")):
        raise CNIError(
            Code.INVALID_ENVIRONMENT,
            f"CNI_IFNAME '{ifname}' is not a valid interface name (≤15 chars)",
        )
    return Request(
        cmd,
        version or SUPPORTED[-1],
        config,
        cid,
        env.get("CNI_NETNS", ""),
        ifname,
        _parse_args(env.get("CNI_ARGS", "")),
    )


def render(version: str, result: dict[str, Any]) -> dict[str, Any]:
    """Convert a 1.x-shaped result to the request's version."""
    out = dict(result, cniVersion=version)
    if version == "0.4.0":
        out["ips"] = [dict(ip, version="4") for ip in result.get("ips", [])]
    return out


def handle(handler: Handler, env: dict[str, str], stdin: str) -> tuple[int, str]:
    """One CNI call: returns (exit code, stdout). Never raises."""
    version = _version_of(stdin)
    try:
        req = parse(env, stdin)
        version = req.version
        if req.command == "VERSION":
            return 0, json.dumps({"cniVersion": version, "supportedVersions": list(SUPPORTED)})
        if req.command == "ADD":
            return 0, json.dumps(render(version, handler.add(req)))
        if req.command == "DEL":
            handler.delete(req)
        elif req.command == "CHECK":
            handler.check(req)
        elif req.command == "GC":
            valid = {
                (a.get("containerID", ""), a.get("ifname", ""))
                for a in req.config.get("cni.dev/valid-attachments", [])
            }
            handler.gc(req, valid)
        else:
            handler.status(req)
        return 0, ""
    except FlatnetError as e:
        details = getattr(e, "details", "") or type(e).__name__
        return 1, error_json(version, e.cni_code, str(e), details)
    except Exception as e:  # a bug: still answer in the protocol
        return 1, error_json(version, 999, f"internal error: {e!r}", type(e).__name__)
