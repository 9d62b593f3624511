"""``python tools/imports.py``: the import graph between flatnet's packages.

One line per package: the flatnet packages it imports, directly. The layers
contract in pyproject.toml (``lint-imports``) is what keeps these arrows
pointing down; this shows them.
"""

from __future__ import annotations

import grimp

__all__ = ["graph", "main"]


def _top(module: str) -> str:
    return ".".join(module.split(".")[:2])


def graph() -> dict[str, set[str]]:
    g = grimp.build_graph("flatnet")
    out: dict[str, set[str]] = {}
    for m in g.modules:
        src = _top(m)
        out.setdefault(src, set())
        for dst in map(_top, g.find_modules_directly_imported_by(m)):
            if dst != src:
                out[src].add(dst)
    return out


def main() -> None:
    for pkg, deps in sorted(graph().items(), key=lambda kv: (len(kv[1]), kv[0])):
        short = sorted(d.removeprefix("flatnet.") for d in deps)
        print(f"{pkg.removeprefix('flatnet.'):<10} -> {', '.join(short) or '-'}")


if __name__ == "__main__":
    main()
