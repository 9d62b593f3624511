"""Lab files: what they describe, and every mistake named with file and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from flatnet.errors import LabFileError
from flatnet.lab import topo

GOOD = """\
kind: Lab
name: t1
nodes: [node1, node2]
external: true
---
apiVersion: v1
kind: Pod
metadata: {name: a, labels: {app: web}}
spec: {nodeName: node1, containers: [{name: main}]}
---
apiVersion: v1
kind: Pod
metadata:
  name: b
  annotations: {flatnet.io/network-mode: "container:a"}
spec: {nodeName: node1, containers: [{name: c, command: [sleep, infinity]}]}
"""


def test_good_file() -> None:
    t = topo.parse(GOOD, "lab.yaml")
    assert t.nodes == ("node1", "node2") and t.datastore == "sqlite"
    assert [(p.name, p.mode) for p in t.pods] == [("a", "bridge"), ("b", "container:a")]
    assert t.pods[1].commands == (("sleep", "infinity"),)
    assert t.node_ip("node2") == "192.168.50.12" and t.external_ip == "192.168.50.254"


@pytest.mark.parametrize(
    "bad,line,words",
    [
        (GOOD.replace("nodes: [node1, node2]", "nodes: [node1, Node_2]"), 3, "Node_2"),
        (GOOD.replace("name: t1", "name: t1\nbogus: 1"), 3, "bogus"),
        (
            GOOD.replace(
                "nodeName: node1, containers: [{name: main}]",
                "nodeName: node9, containers: [{name: main}]",
            ),
            9,
            "'node9'",
        ),
        (GOOD.replace("kind: Lab", "kind: Cluster"), 1, "kind: Lab"),
        (GOOD.replace('"container:a"', '"bridgey"'), 15, "'bridgey'"),
        (GOOD.replace('"container:a"', '"container:zz"'), 11, "container:zz"),
        (GOOD + "---\napiVersion: apps/v1\nkind: Deployment\n", 18, "'Deployment'"),
        (GOOD.replace("name: t1", "name: t1\nnetwork: {podCIDR: 10.244.0.0/33}"), 3, "podCIDR"),
        (GOOD.replace("external: true", "external: [true"), 5, "not valid YAML"),
        # ranges that overlap break the cluster quietly: refused, naming both
        (
            GOOD.replace("name: t1", "name: t1\nunderlayCIDR: 10.244.7.0/24"),
            3,
            "segment 10.244.7.0/24 overlaps network.podCIDR 10.244.0.0/16",
        ),
        (
            GOOD.replace("name: t1", "name: t1\nnetwork: {podCIDR: 192.168.0.0/16}"),
            3,
            "segment 192.168.50.0/24 overlaps network.podCIDR 192.168.0.0/16",
        ),
        (
            GOOD.replace("name: t1", "name: t1\nnetwork: {serviceCIDR: 10.244.0.0/20}"),
            3,
            "network.serviceCIDR: 10.244.0.0/20 overlaps network.podCIDR 10.244.0.0/16",
        ),
        (
            GOOD.replace("name: t1", "name: t1\nunderlay: routed\nunderlayCIDR: 10.96.0.0/24"),
            4,
            "segment 10.96.0.0/24 overlaps network.serviceCIDR 10.96.0.0/12",
        ),
        (
            GOOD.replace("name: t1", "name: t1\nunderlayCIDR: 192.168.50.0/28").replace(
                "[node1, node2]", "[node1, node2, node3, node4]"
            ),
            3,
            "/28 segments hold 3 node(s) each (from .11), the lab puts 4 on one",
        ),
        (
            GOOD.replace(
                "spec: {nodeName: node1, containers: [{name: main}]}",
                "spec: {nodeName: node1, containers: []}",
            ),
            9,
            "containers",
        ),
    ],
)
def test_mistakes_name_file_line_and_field(bad: str, line: int, words: str) -> None:
    with pytest.raises(LabFileError) as e:
        topo.parse(bad, "lab.yaml")
    assert e.value.path == "lab.yaml" and e.value.line == line, str(e.value)
    assert words in str(e.value)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(LabFileError, match="cannot read lab file"):
        topo.load(tmp_path / "nope.yaml")


def test_examples_parse() -> None:
    for f in Path(__file__).parents[2].joinpath("examples").glob("*.yaml"):
        assert topo.load(f).nodes
