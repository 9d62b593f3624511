"""What the benchmarks share: the source tree on the path, the CLI, percentiles."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SRC = str(Path(__file__).parents[1] / "src")
if SRC not in sys.path:
    sys.path.insert(0, SRC)


def flatnet(*args: str) -> str:
    """Run the flatnet CLI from this tree; exit with its output if it fails."""
    r = subprocess.run(
        [sys.executable, "-m", "flatnet", *args],
        capture_output=True,
        text=True,
        env=dict(os.environ, PYTHONPATH=SRC),
    )
    if r.returncode != 0:
        raise SystemExit(f"flatnet {' '.join(args)} failed:\n{r.stdout}{r.stderr}")
    return r.stdout


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def bfd_up(ns: str, bird_dir: Path, peer_ip: str) -> bool:
    """Whether the BIRD of ``bird_dir`` (in ``ns``) has its BFD session to
    ``peer_ip`` Up: until it is, a silent failure is noticed only by BGP's hold
    timer (BFD declares down only what it had up)."""
    from flatnet.errors import KernelError
    from flatnet.kernel.bird import Bird

    try:
        lines = Bird(ns, bird_dir).command("show bfd sessions")
    except KernelError:
        return False
    return any(t.split()[:1] == [peer_ip] and "Up" in t.split()[1:4] for _, t in lines)
