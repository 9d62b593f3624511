"""Every documented command, called wrong as users do: one line on stderr naming
the command and the problem, exit 2 — never a traceback (no root, no lab)."""

from __future__ import annotations

import subprocess
import sys

import pytest

FLATNET = [sys.executable, "-m", "flatnet"]

MISTAKES = {
    "foo": "No such command 'foo'",
    "get": "Missing argument 'kind'",
    "get pods --bogus": "No such option: --bogus",
    "get pods -w": "No such option: -w",
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
