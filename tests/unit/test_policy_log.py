"""The policy log's lines: a logged packet named by pods and policies, printed
one line each, and followed across several nodes' files (also through a
rotation)."""

from __future__ import annotations

import json
import socket
from pathlib import Path
from types import SimpleNamespace

from flatnet.kernel.nflog import Logged
from flatnet.model import PodRecord
from flatnet.policy.compile import Allow, PodPolicy
from flatnet.policy.denials import Follower, describe, text

A = PodRecord("a", "x", "node1", "10.244.0.3")
B = PodRecord("b", "y", "node2", "10.244.1.3")
SYNC = SimpleNamespace(
    pods={"/a": A, "/b": B},
    table={"x/a": PodPolicy("x/a", A.ip, ingress=Allow(("x/deny", "x/other")))},
)


def test_a_logged_packet_names_pods_and_what_denied_it() -> None:
    g = Logged("ingress x/a", 1700000000.25, B.ip, A.ip, socket.IPPROTO_TCP, 40000, 80)
    line = describe(g, "node1", SYNC)  # type: ignore[arg-type]
    assert line == {
        "time": 1700000000.25, "node": "node1", "src": B.ip, "srcPod": "y/b", "dst": A.ip,
        "dstPod": "x/a", "protocol": "TCP", "port": 80, "direction": "ingress", "pod": "x/a",
        "reason": "isolated by x/deny, x/other",
    }  # fmt: skip
    assert text(line).endswith(
        "node1 DENIED y/b (10.244.1.3) -> x/a (10.244.0.3) TCP/80 ingress of x/a: "
        "isolated by x/deny, x/other"
    )
    rule = Logged("egress x/a cnp/c egress[0] (no db)", 1.0, A.ip, "8.8.4.4", 17, 5, 53)
    line = describe(rule, "node1", SYNC)  # type: ignore[arg-type]
    assert (line["reason"], line["dstPod"], line["protocol"]) == (
        "denied by cnp/c egress[0] (no db)", "", "UDP",
    )  # fmt: skip
    assert "-> 8.8.4.4 UDP/53 egress of x/a" in text(line)


def test_follower_merges_nodes_in_time_order_and_survives_rotation(tmp_path: Path) -> None:
    one, two = tmp_path / "n1.log", tmp_path / "n2.log"
    one.write_text(json.dumps({"time": 2}) + "\n" + json.dumps({"time": 4}) + "\n")
    two.write_text(json.dumps({"time": 3}) + "\n" + '{"time": 5')  # a line being written
    f = Follower([one, two, tmp_path / "n3.log"])  # n3: no log yet
    assert [x["time"] for x in f.new()] == [2, 3, 4]
    with open(two, "a") as w:
        w.write("}\n")
    assert [x["time"] for x in f.new()] == [5]
    assert f.new() == []
    one.write_text(json.dumps({"time": 9}) + "\n")  # rotated: a new, shorter file
    assert [x["time"] for x in f.new()] == [9]
