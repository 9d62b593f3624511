"""How a lab names pods: NAME in default, NS/NAME elsewhere; their network
namespaces; and what a wrong name is told (no lab is built)."""

from __future__ import annotations

import pytest

from flatnet.errors import ConfigError
from flatnet.lab.lab import Lab
from flatnet.lab.pods import pod_netns
from flatnet.lab.state import LabState, NodeState, PodState


def lab() -> Lab:
    st = LabState("t1", namespaces=["fl-t1-sw", "fl-t1-ext"], external="fl-t1-ext")
    st.nodes["n1"] = NodeState("fl-t1-n-n1", "192.168.50.11")
    for ref, ns in (("web", "default"), ("shop/web", "shop")):
        st.pods[ref] = PodState("n1", ns, "bridge", "c", pod_netns("t1", ns, "web"))
    return Lab(st)


def test_refs_and_namespaces() -> None:
    the = lab()
    assert the.pod_ref("web") == "web" and the.pod_ref("web", "shop") == "shop/web"
    assert the.pod_ref("shop/web", "other") == "shop/web"  # typed whole
    assert the.pod_ref("n1") == "n1"  # a node is no pod of default
    assert the.namespace_of("shop/web") == "fl-t1-p-shop_web"
    assert the.namespace_of("web") == "fl-t1-p-web" and the.namespace_of("n1") == "fl-t1-n-n1"


def test_a_wrong_name_says_what_there_is() -> None:
    the = lab()
    with pytest.raises(
        ConfigError, match=r"no pod 'nope' in namespace 'shop' \(pods: web, shop/web\)"
    ):
        the.namespace_of(the.pod_ref("nope", "shop"))
    with pytest.raises(
        ConfigError, match="no pod, node or host named 'nope'.*hosts: external, switch"
    ):
        the.namespace_of(the.pod_ref("nope"))
