"""Every documented command, called wrong as users do: one line on stderr naming
the command and the problem, exit 2 — never a traceback (no root, no lab)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

FLATNET = [sys.executable, "-m", "flatnet"]

MISTAKES = {
    "foo": "No such command 'foo'",
    "get": "Missing argument 'kind'",
    "get pods --bogus": "No such option: --bogus",
    "get pods -n": "requires an argument",
    "get pods -w --bogus": "No such option: --bogus",
    "describe": "Missing argument 'kind'",
    "describe pod": "Missing argument 'name'",
    "apply -f x.yaml --timeout soon": "Invalid value for '--timeout'",
    "lab exec -n": "requires an argument",
    "policy explain a": "Missing argument 'TO'",
    "policy explain a b -f x.yaml --port none": "Invalid value for '--port'",
    "policy explain a b -f x.yaml --port 70000": "Invalid value for '--port'",
    "get pods -o jsn": "'jsn' is not one of 'wide', 'json', 'yaml', 'name'",
    "apply": "Missing option '-f'",
    "apply -f": "requires an argument",
    "delete --bogus": "No such option: --bogus",
    "install-cni --bogus": "No such option: --bogus",
    "dns --bogus": "No such option: --bogus",
    "agent --node n1 --store sqlite:///x --bogus": "unrecognized arguments: --bogus",
    "lab up": "Missing argument 'file'",
    "lab down": "Missing argument 'name'",
    "lab ups x.yaml": "No such command 'ups'",
    "lab check --bogus": "No such option: --bogus",
    "lab exec": "Missing argument 'target'",
    "lab cni": "Missing argument 'node'",
    "lab set-backend": "Missing argument 'backend'",
    "lab fast-path --bogus": "No such option: --bogus",
    "lab restart-agent": "Missing argument 'node'",
    "lab restart-etcd --down": "requires an argument",
    "lab restart-etcd --down soon": "Invalid value for '--down'",
    "lab ls --bogus": "No such option: --bogus",
    "logs": "Missing argument 'pod'",
    "lab logs": "Missing argument 'target'",
    "lab logs node1 --tail many": "Invalid value for '--tail'",
    "lab check --matrix --port http": "Invalid value for '--port'",
    "policy log --bogus": "No such option: --bogus",
    "policy log --follow now": "Got unexpected extra argument",
    "policy logs": "No such command 'logs'",
}


def flatnet(args: str) -> subprocess.CompletedProcess[str]:
    env = {"FLATNET_LABS_DIR": "/nonexistent/flatnet-labs", "PATH": "/usr/bin:/bin"}
    return subprocess.run([*FLATNET, *args.split()], capture_output=True, text=True, env=env)


@pytest.mark.parametrize("args", MISTAKES)
def test_a_usage_error_is_one_line_and_exit_2(args: str) -> None:
    r = flatnet(args)
    lines = r.stderr.strip().splitlines()
    command = "flatnet " + " ".join(w for w in args.split() if not w.startswith("-"))
    assert r.returncode == 2, r.stderr
    assert len(lines) == 1 and "Traceback" not in r.stderr, r.stderr
    assert lines[0].startswith("error: flatnet") and MISTAKES[args] in lines[0]
    assert lines[0].split(":")[1].strip() in command  # names the command it is about


def test_bare_groups_show_help_and_succeed() -> None:
    for args in ("", "lab"):
        r = flatnet(args)
        assert r.returncode == 0 and "Usage:" in r.stdout and r.stderr == ""


def test_messages_are_printed_verbatim() -> None:
    """Brackets are not rich markup: a name with [a-z0-9] reaches the user whole."""
    r = flatnet("lab down x[a-z0-9]")
    assert r.returncode == 1
    assert r.stderr.strip() == (
        "error: no lab named 'x[a-z0-9]' (no /nonexistent/flatnet-labs/x[a-z0-9]/state.json)"
    )


def test_get_output_formats_and_a_store_that_does_not_exist(tmp_path: Path) -> None:
    from flatnet.model import PodRecord
    from flatnet.store.sqlite import SqliteStore

    db = tmp_path / "store.db"
    s = SqliteStore(str(db))
    p = PodRecord("web-1", "default", "n1", "10.244.0.2", phase="Running")
    s.put(p.key, p.to_json())
    s.close()
    url = f"sqlite://{db}"
    assert flatnet(f"get pods --store {url} -o name").stdout == "pod/web-1\n"
    got = yaml.safe_load(flatnet(f"get pods --store {url} -o yaml").stdout)
    assert got["items"][0]["ip"] == "10.244.0.2"
    table = flatnet(f"get pods --store {url}").stdout
    assert "10.244.0.2" in table and "…" not in table  # never cut
    gone = tmp_path / "typo.db"
    r = flatnet(f"get pods --store sqlite://{gone}")
    assert r.returncode == 1 and "does not exist" in r.stderr and not gone.exists()
    r = flatnet(f"get pdos --store {url}")
    assert r.returncode == 1 and "unknown kind 'pdos'" in r.stderr


def test_namespaces_names_describe_and_watch(tmp_path: Path) -> None:
    import time

    from flatnet.model import PodRecord
    from flatnet.store.sqlite import SqliteStore

    db = tmp_path / "store.db"
    s = SqliteStore(str(db))
    for ns in ("default", "shop"):  # the same name in two namespaces
        p = PodRecord("web", ns, "n1", "10.244.0.2" if ns == "shop" else "10.244.0.3")
        s.put(p.key, p.to_json())
    url = f"--store sqlite://{db}"
    assert flatnet(f"get pods {url} -o name").stdout == "pod/web\n"  # default only
    assert flatnet(f"get pods {url} -A -o name").stdout == "pod/web\npod/web\n"
    assert "10.244.0.2" in flatnet(f"get pods web -n shop {url}").stdout
    r = flatnet(f"get pods nosuch {url}")
    assert r.returncode == 1 and r.stderr.strip() == (
        "error: pod 'nosuch' not found in namespace 'default'"
    )
    r = flatnet(f"get pods -n nope {url}")
    assert r.returncode == 0 and r.stderr.strip() == "No resources found in nope namespace."
    d = flatnet(f"describe pod web -n shop {url}").stdout
    assert "namespace:" in d and "shop" in d and "10.244.0.2" in d
    # -w: the table, then a line for each change, until interrupted
    env = {"FLATNET_LABS_DIR": "/nonexistent", "PATH": "/usr/bin:/bin", "COLUMNS": "200"}
    w = subprocess.Popen(
        [*FLATNET, "get", "pods", *url.split(), "-w"], stdout=subprocess.PIPE, text=True, env=env
    )
    try:
        time.sleep(2.5)  # the interpreter starts, prints the table
        p = PodRecord("web", "default", "n1", "10.244.0.3", phase="Running")
        s.put(p.key, p.to_json())
        time.sleep(1.5)
    finally:
        w.terminate()
        got, _ = w.communicate(timeout=10)
        s.close()
    assert got.count("10.244.0.3") == 2 and "Running" in got.splitlines()[-2], got


POLICY = """\
apiVersion: v1
kind: Service
metadata: {name: web, namespace: x}
spec: {selector: {pod: a}, ports: [{port: 80}]}
---
apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata: {name: from-y, namespace: x}
spec:
  podSelector: {matchLabels: {pod: a}}
  ingress: [{from: [{namespaceSelector: {matchLabels: {team: y}}}], ports: [{port: http}]}]
"""


def test_policy_explain_says_what_decides_and_apply_takes_policies(tmp_path: Path) -> None:
    from flatnet import namespaces
    from flatnet.model import Namespace, PodRecord
    from flatnet.store.sqlite import SqliteStore

    db = tmp_path / "store.db"
    s = SqliteStore(str(db))
    namespaces.ensure(s)
    namespaces.apply(s, [Namespace.of("x"), Namespace.of("y", {"team": "y"}), Namespace.of("z")])
    for ns, ip in (("x", "10.244.0.2"), ("y", "10.244.1.2"), ("z", "10.244.2.2")):
        p = PodRecord("a", ns, "n1", ip, labels={"pod": "a"}, ports={"http": [8080, "TCP"]})
        s.put(p.key, p.to_json())
    s.close()
    f = tmp_path / "p.yaml"
    f.write_text(POLICY)
    url = f"--store sqlite://{db}"
    r = flatnet(f"policy explain y/a x/a --port 8080 -f {f} {url}")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == "y/a (10.244.1.2) -> x/a (10.244.0.2) port 8080/TCP: allowed"
    assert "ingress of x/a (10.244.0.2): isolated by x/from-y; allowed by x/from-y ingress[0]" in (
        r.stdout
    )
    assert "egress of y/a (10.244.1.2): not isolated" in r.stdout
    r = flatnet(f"policy explain a x/a -n z --port 8080 -f {f} {url}")  # z is not team y
    assert r.returncode == 1 and "DENIED" in r.stdout and "no rule allows it" in r.stdout
    r = flatnet(f"policy explain 10.244.1.2 x/a --port 80 -f {f} {url}")  # the name means 8080
    assert r.returncode == 1 and "DENIED" in r.stdout
    r = flatnet(f"policy explain nosuch x/a --port 80 -f {f} {url}")
    assert r.returncode == 1 and "no pod 'nosuch' in namespace 'default'" in r.stderr
    # apply checks everything before it writes: this store has no cluster config
    # for the file's Service, so the policy is not created either
    r = flatnet(f"apply -f {f} {url}")
    assert r.returncode == 1 and "no cluster network config" in r.stderr
    assert flatnet(f"get netpol -A {url} -o name").stdout == ""
    # a policy in a namespace that does not exist: refused with its line
    only = POLICY[POLICY.index("apiVersion: networking") :]
    f.write_text(only.replace("namespace: x", "namespace: nope"))
    r = flatnet(f"apply -f {f} {url}")
    assert r.returncode == 1
    assert f"{f}:1: networkpolicy 'from-y': metadata.namespace: namespace 'nope' not found" in (
        r.stderr
    )
    # applied, it is the cluster's: explain without -f judges by it, get shows it
    f.write_text(only)
    r = flatnet(f"apply -f {f} {url}")
    assert r.returncode == 0 and r.stdout == "networkpolicy.networking.k8s.io/from-y created\n"
    assert "unchanged" in flatnet(f"apply -f {f} {url}").stdout
    r = flatnet(f"policy explain a x/a -n z --port 8080 {url}")
    assert r.returncode == 1 and "isolated by x/from-y; no rule allows it" in r.stdout
    (item,) = json.loads(flatnet(f"get networkpolicies -n x -o json {url}").stdout)["items"]
    assert item["pods"] == ["x/a"] and item["policyTypes"] == ["Ingress"]
    assert item["podSelector"] == "pod=a"
    r = flatnet(f"delete -f {f} {url}")
    assert r.returncode == 0 and "networkpolicy.networking.k8s.io/from-y deleted" in r.stdout
    r = flatnet(f"delete -f {f} {url}")
    assert r.returncode == 1 and "networkpolicy.networking.k8s.io/from-y not found" in r.stderr
