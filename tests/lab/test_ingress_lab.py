"""Ingress on a lab, as a user reaches it: the external host through the
controller's Service (NodePort, externalTrafficPolicy Local), hosts and paths
to the right pods, the client's address in X-Forwarded-For, route and
endpoint changes applied without a reload, a bad Ingress refused with its
line, and nothing of HAProxy left after ``lab down``."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest
from lab.test_bgp import up_example, wait_for
from lab.test_lab import flatnet, run

from flatnet.lab.state import LabState

pytestmark = pytest.mark.lab


def get(name: str, url: str, host: str) -> dict:  # type: ignore[type-arg]
    r = run(name, "external", "curl", "-s", "-m", "2", "-H", f"Host: {host}", url)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)  # type: ignore[no-any-return]


def status(name: str) -> dict:  # type: ignore[type-arg]
    items = json.loads(flatnet("get", "ingresses", "--lab", name, "-o", "json").stdout)["items"]
    return items[0]  # type: ignore[no-any-return]


def haproxies(name: str) -> list[str]:
    out = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    return [a for a in out.splitlines() if "haproxy" in a and f"/labs/{name}/" in a]


def test_ingress_from_the_external_host(uniq: str, tmp_path: Path) -> None:
    with up_example("ingress.yaml", uniq, tmp_path) as name:
        st = LabState.load(name)
        svcs = json.loads(flatnet("get", "svc", "-n", "kube-system", "--lab", name,
                                  "-o", "json").stdout)["items"]  # fmt: skip
        port = next(s for s in svcs if s["name"] == "flatnet-ingress")["ports"][0]["nodePort"]
        base = f"http://{st.nodes['node1'].underlay_ip}:{port}"
        # hosts and paths: /cart to cart-1, the rest of the host to web-1, other hosts
        # to the default backend; the backend sees the whole path and the client's IP
        cart = get(name, f"{base}/cart/items?x=1", "shop.example")
        assert cart["pod"] == "cart-1" and cart["path"] == "/cart/items?x=1"
        headers = {k.lower(): v for k, v in cart["headers"].items()}
        assert headers["x-forwarded-for"] == ["192.168.50.254"]  # the client's own address
        assert get(name, f"{base}/cartx", "shop.example")["pod"] == "web-1"
        assert get(name, f"{base}/anything", "other.example")["pod"] == "web-1"
        s = status(name)
        assert s["class"] == "<none>" and s["hosts"] == ["shop.example"] and s["reloads"] == 1
        # a route changes: the maps are swapped, HAProxy is not reloaded
        f = tmp_path / "more.yaml"
        head = "apiVersion: networking.k8s.io/v1"  # the file's Ingress, /cart now /basket
        doc = head + (tmp_path / "lab.yaml").read_text().split(head, 1)[1]
        f.write_text(doc.replace("path: /cart,", "path: /basket,"))
        flatnet("apply", "-f", str(f), "--lab", name)
        wait_for("/basket routed", lambda: get(name, f"{base}/basket/1", "shop.example")["pod"]
                 == "cart-1")  # fmt: skip
        assert get(name, f"{base}/cart/1", "shop.example")["pod"] == "web-1"
        # an endpoint more: its slot filled at runtime
        pod = tmp_path / "pod.yaml"
        pod.write_text("apiVersion: v1\nkind: Pod\nmetadata: {name: cart-2, labels: {app: cart}}\n"
                       "spec: {nodeName: node2, containers: [{name: main}]}\n")  # fmt: skip
        flatnet("apply", "-f", str(pod), "--lab", name)
        seen: set[str] = set()
        deadline = time.monotonic() + 10
        while seen != {"cart-1", "cart-2"} and time.monotonic() < deadline:
            seen.add(get(name, f"{base}/basket/", "shop.example")["pod"])
        assert seen == {"cart-1", "cart-2"}
        assert status(name)["reloads"] == 1
        # a bad Ingress: its line and field, nothing applied
        f.write_text(f.read_text().replace("pathType: Prefix", "pathType: Regex", 1))
        r = flatnet("apply", "-f", str(f), "--lab", name, check=False)
        assert r.returncode != 0 and "more.yaml:" in r.stderr and "pathType" in r.stderr
        assert get(name, f"{base}/basket/1", "shop.example")["pod"].startswith("cart-")
        assert haproxies(name)
    assert haproxies(name) == []
