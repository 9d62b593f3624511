"""The CNI wire protocol, pure: parsing, versions, error codes (no kernel)."""

from __future__ import annotations

import json
from typing import Any

import pytest

from flatnet.cni import protocol
from flatnet.cni.protocol import Request
from flatnet.errors import CNIError, SubnetExhausted

ENV = {
    "CNI_COMMAND": "ADD",
    "CNI_CONTAINERID": "abc123",
    "CNI_NETNS": "/run/netns/x",
    "CNI_IFNAME": "eth0",
    "CNI_PATH": "/opt/cni/bin",
}


class Fake:
    def __init__(self, fail: Exception | None = None) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.fail = fail

    def add(self, req: Request) -> dict[str, Any]:
        self.calls.append(("add", req))
        if self.fail:
            raise self.fail
        return {
            "interfaces": [{"name": "eth0", "sandbox": req.netns}],
            "ips": [{"address": "10.244.1.2/24", "gateway": "10.244.1.1", "interface": 0}],
        }

    def delete(self, req: Request) -> None:
        self.calls.append(("del", req))

    def check(self, req: Request) -> None:
        self.calls.append(("check", req))

    def gc(self, req: Request, valid: set[tuple[str, str]]) -> None:
        self.calls.append(("gc", valid))

    def status(self, req: Request) -> None:
        self.calls.append(("status", req))


def conf(version: str = "1.0.0", **kw: Any) -> str:
    return json.dumps({"cniVersion": version, "name": "flatnet", "type": "flatnet", **kw})


@pytest.mark.parametrize("version", protocol.SUPPORTED)
def test_add_result_in_request_version(version: str) -> None:
    code, out = protocol.handle(Fake(), ENV, conf(version))
    res = json.loads(out)
    assert code == 0 and res["cniVersion"] == version
    assert ("version" in res["ips"][0]) == (version == "0.4.0")


def test_version_verb_needs_no_agent() -> None:
    code, out = protocol.handle(Fake(), {"CNI_COMMAND": "VERSION"}, conf("0.4.0"))
    assert code == 0
    assert json.loads(out) == {
        "cniVersion": "0.4.0",
        "supportedVersions": ["0.4.0", "1.0.0", "1.1.0"],
    }


@pytest.mark.parametrize(
    "env,stdin,code,words",
    [
        (ENV, "{not json", 6, "not valid JSON"),
        (ENV, conf("0.3.1"), 1, "cniVersion '0.3.1'"),
        ({**ENV, "CNI_COMMAND": "GC"}, conf("1.0.0"), 1, "GC needs cniVersion 1.1.0"),
        ({k: v for k, v in ENV.items() if k != "CNI_NETNS"}, conf(), 4, "CNI_NETNS"),
        ({**ENV, "CNI_COMMAND": "FROB"}, conf(), 4, "CNI_COMMAND 'FROB'"),
        ({**ENV, "CNI_CONTAINERID": "-bad"}, conf(), 4, "CNI_CONTAINERID '-bad'"),
        ({**ENV, "CNI_IFNAME": "a-very-long-ifname0"}, conf(), 4, "CNI_IFNAME"),
        ({**ENV, "CNI_ARGS": "FOO=1"}, conf(), 2, "unknown key(s) FOO"),
    ],
)
def test_bad_input_codes(env: dict[str, str], stdin: str, code: int, words: str) -> None:
    fake = Fake()
    rc, out = protocol.handle(fake, env, stdin)
    err = json.loads(out)
    assert rc == 1 and err["code"] == code and words in err["msg"], err
    assert fake.calls == []


def test_cni_args_ignore_unknown_and_pod_name() -> None:
    fake = Fake()
    env = {**ENV, "CNI_ARGS": "IgnoreUnknown=1;FOO=1;K8S_POD_NAMESPACE=ns;K8S_POD_NAME=p"}
    assert protocol.handle(fake, env, conf())[0] == 0
    assert fake.calls[0][1].pod == "ns/p"


def test_del_without_netns_is_valid() -> None:
    fake = Fake()
    env = {**ENV, "CNI_COMMAND": "DEL", "CNI_NETNS": ""}
    assert protocol.handle(fake, env, conf()) == (0, "")
    assert fake.calls[0][0] == "del"


def test_gc_passes_valid_attachments() -> None:
    fake = Fake()
    stdin = json.dumps(
        {
            "cniVersion": "1.1.0",
            "name": "n",
            "type": "flatnet",
            "cni.dev/valid-attachments": [{"containerID": "a", "ifname": "eth0"}],
        }
    )
    assert protocol.handle(fake, {"CNI_COMMAND": "GC", "CNI_PATH": "/x"}, stdin)[0] == 0
    assert fake.calls == [("gc", {("a", "eth0")})]


def test_handler_errors_map_to_codes() -> None:
    rc, out = protocol.handle(Fake(SubnetExhausted("subnet 10.244.1.0/24 is full")), ENV, conf())
    assert rc == 1 and json.loads(out)["code"] == 101 and "10.244.1.0/24" in out
    rc, out = protocol.handle(Fake(CNIError(11, "later")), ENV, conf())
    assert json.loads(out)["code"] == 11
    rc, out = protocol.handle(Fake(RuntimeError("boom")), ENV, conf())
    assert json.loads(out)["code"] == 999 and "boom" in out
