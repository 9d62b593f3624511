"""Manifests as users write them: every mistake of a file at once, unknown
fields named with the field meant, Namespaces, names unique per namespace."""

from __future__ import annotations

import pytest

from flatnet.errors import ManifestErrors
from flatnet.manifest import docs, objects

GOOD = """\
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {team: a}}
---
apiVersion: v1
kind: Pod
metadata: {name: web, namespace: shop}
spec:
  nodeName: n1
  restartPolicy: Never
  containers:
  - name: main
    image: nginx            # accepted, not used
    ports: [{containerPort: 9000}]
---
apiVersion: v1
kind: Pod
metadata: {name: web}
spec: {nodeName: n1, containers: [{name: main}]}
"""


def parse(text: str):  # type: ignore[no-untyped-def]
    return objects(docs(text, "f.yaml"), "f.yaml", None)


def test_namespaces_and_the_same_name_in_two_of_them() -> None:
    m = parse(GOOD)
    (ns,) = m.namespaces
    assert ns.labels == {"team": "a", "kubernetes.io/metadata.name": "shop"}
    shop, default = m.pods
    assert (shop.ref, default.ref) == ("shop/web", "web")
    assert (shop.probe, shop.restart_policy) == (9000, "Never")  # an unnamed port is probed
    assert default.probe == 8080  # agnhost, for a container without a command
    assert m.line("Pod", "shop", "web") == 5


def test_every_mistake_at_once_with_did_you_mean() -> None:
    bad = (
        GOOD.replace("restartPolicy: Never", "restartPolicy: Sometimes")
        .replace("image: nginx", "imge: nginx")
        .replace(
            "spec: {nodeName: n1, containers", "spec: {hostNetwrok: true, nodeName: n1, containers"
        )
        + "---\napiVersion: v1\nkind: Namespace\nmetadata: {name: shop}\n"
    )
    with pytest.raises(ManifestErrors) as e:
        parse(bad)
    lines = str(e.value).splitlines()
    assert lines == [
        "f.yaml:10: spec.restartPolicy: Input should be 'Always', 'OnFailure' or 'Never'",
        "f.yaml:13: spec.containers[0].imge: unknown field (did you mean 'image'?)",
        "f.yaml:19: spec.hostNetwrok: unknown field (did you mean 'hostNetwork'?)",
        "f.yaml:21: namespace 'shop' is defined twice (first on line 1)",
    ], lines
    assert e.value.line == 10  # the first, for callers that show one


def test_a_kind_flatnet_does_not_know_is_named() -> None:
    with pytest.raises(ManifestErrors, match="f.yaml:1: kind 'Deployment' is not supported"):
        parse("apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: x}\n")
