"""Finding the tools a lab runs (no root)."""

from __future__ import annotations

import pytest

from flatnet.errors import KernelError
from flatnet.lab.procs import which


def test_sbin_tools_are_found_without_sbin_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """sudo or a service may give a PATH without /usr/sbin: dnsmasq, tc and
    iptables live there, and a lab must still start them."""
    monkeypatch.setenv("PATH", "/usr/bin:/bin")
    assert which("dnsmasq").endswith("sbin/dnsmasq")
    assert which("sh") in ("/usr/bin/sh", "/bin/sh")
    with pytest.raises(KernelError, match="command 'brigde' is not found"):
        which("brigde")
