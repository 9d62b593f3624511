"""Lab start-up: one node with N pods (default 100), time until every pod is ready
(its CNI ADD done and its test server answering), and the agent's RSS."""

from __future__ import annotations

import os
import sys
import time
import uuid
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parents[1] / "src"))

from flatnet.lab import topo  # noqa: E402
from flatnet.lab.lab import Lab  # noqa: E402
from flatnet.lab.state import LabState  # noqa: E402

PODS = int(os.environ.get("PODS", "100"))


def main() -> None:
    name = "b" + uuid.uuid4().hex[:6]
    docs = [f"kind: Lab\nname: {name}\nnodes: [node1]\n"]
    for i in range(PODS):
        docs.append(
            "apiVersion: v1\nkind: Pod\n"
            f"metadata: {{name: p{i}}}\nspec: {{nodeName: node1, containers: [{{name: m}}]}}\n"
        )
    t = topo.parse("---\n".join(docs), "<bench>")
    start = time.monotonic()
    marks: dict[str, float] = {}

    def progress(step: str, done: int, total: int) -> None:
        if done == total:
            marks[step] = time.monotonic() - start

    st = None
    try:
        st = Lab.build(t, progress).st
        total = time.monotonic() - start
        for step, at in marks.items():
            print(f"  {step:<42} done at {at:6.2f} s")
        print(
            f"lab start-up: 1 node, {PODS} pods ready in {total:.2f} s "
            f"({total / PODS * 1000:.0f} ms per pod)"
        )
        pid = next(p.pid for p in st.processes if p.what == "agent:node1")
        rss = [
            ln
            for ln in Path(f"/proc/{pid}/status").read_text().splitlines()
            if ln.startswith("VmRSS:")
        ][0].split()[1]
        print(f"agent RSS with {PODS} pods: {int(rss) / 1024:.1f} MiB")
    finally:
        if st is not None or (Path("/run/flatnet/labs") / name).exists():
            LabState.load(name).destroy()


if __name__ == "__main__":
    main()
