"""The agent's command line: one definition, reached by `python -m flatnet agent`
(the fast path labs use) and by the `flatnet agent` CLI command alike."""

from __future__ import annotations

import subprocess
import sys

import pytest

ENTRIES = {
    "python -m flatnet": [sys.executable, "-m", "flatnet"],
    "flatnet CLI": [sys.executable, "-c", "from flatnet.cli import main; main()"],
}


@pytest.mark.parametrize("entry", ENTRIES)
def test_agent_help_and_missing_option(entry: str) -> None:
    argv = ENTRIES[entry]
    h = subprocess.run([*argv, "agent", "--help"], capture_output=True, text=True)
    assert h.returncode == 0 and "--proxy-resync" in h.stdout and "--underlay-ip" in h.stdout
    r = subprocess.run([*argv, "agent", "--node", "n1"], capture_output=True, text=True)
    assert r.returncode == 2
    assert "--store" in r.stderr and "required" in r.stderr


def test_fast_path_does_not_import_the_cli_framework() -> None:
    code = (
        "import sys; sys.argv = ['flatnet', 'agent', '--help']\n"
        "try:\n    import flatnet.__main__\nexcept SystemExit:\n    pass\n"
        "print(sorted(m for m in ('typer', 'rich', 'pyroute2') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True).stdout
    assert out.strip().splitlines()[-1] == "[]"
