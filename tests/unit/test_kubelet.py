"""The lab kubelet's logic: a container's history read from its status file,
a pod's phase from its containers, and the restart loop run for real (sh)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from flatnet.lab.kubelet import ContainerState, container_argv, container_state, pod_status
from flatnet.model import PodRecord


def test_container_state_from_its_history() -> None:
    assert container_state([], True) == ContainerState("waiting")
    assert container_state(["running"], True) == ContainerState("running")
    assert container_state(["running", "exited 3"], True) == ContainerState("backoff", 3)
    assert container_state(["running", "exited 3", "running"], True) == ContainerState(
        "running", 0, 1
    )
    assert container_state(["running", "exited 2", "done"], False) == ContainerState(
        "terminated", 2
    )
    # its loop was killed while the command ran: it will never run again
    assert container_state(["running"], False) == ContainerState("terminated", 137)


REC = PodRecord("p", "default", "n1", "10.244.0.5")


@pytest.mark.parametrize(
    ("states", "probe_ok", "want"),
    [
        ([ContainerState("waiting")], True, ("Pending", "ContainerCreating", False, "")),
        ([ContainerState("running")], True, ("Running", "", True, "")),
        ([ContainerState("running")], False, ("Running", "", False, "")),  # not serving yet
        (
            [ContainerState("running"), ContainerState("backoff", 1, 4)],
            True,
            ("Running", "CrashLoopBackOff", False, "container 1 exited with code 1"),
        ),
        ([ContainerState("terminated")], True, ("Succeeded", "Completed", False, "")),
        (
            [ContainerState("terminated", 127)],
            True,
            ("Failed", "Error", False, "container 0 exited with code 127"),
        ),
    ],
)
def test_pod_status_as_kubectl_shows_it(
    states: list[ContainerState], probe_ok: bool, want: tuple[str, str, bool, str]
) -> None:
    got = pod_status(REC, states, probe_ok)
    assert (got.phase, got.reason, got.ready, got.message) == want
    assert got.status == (want[1] or want[0])
    assert got.serving == (want[2] and want[0] == "Running")
    assert got.restarts == sum(c.restarts for c in states)


def _run(tmp_path: Path, policy: str, script: str, wait: float) -> list[str]:
    status = tmp_path / "c.status"
    p = subprocess.Popen(container_argv(["sh", "-c", script], status, policy))
    deadline = time.monotonic() + wait
    while p.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    if p.poll() is None:
        p.kill()
        p.wait()
    return status.read_text().split("\n")[:-1]


def test_the_restart_loop_follows_restart_policy(tmp_path: Path) -> None:
    assert _run(tmp_path / "a", "Never", "exit 3", 5) == ["running", "exited 3", "done"]
    assert _run(tmp_path / "b", "OnFailure", "exit 0", 5) == ["running", "exited 0", "done"]
    # Always: restarted after a 1 s back-off, again and again
    lines = _run(tmp_path / "c", "Always", "exit 1", 1.6)
    assert lines[:3] == ["running", "exited 1", "running"], lines
    assert "done" not in lines


@pytest.fixture(autouse=True)
def _dirs(tmp_path: Path) -> None:
    for d in "abc":
        (tmp_path / d).mkdir()
