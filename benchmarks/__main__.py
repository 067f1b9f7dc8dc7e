"""``python -m benchmarks [NAME ...]``: run the named benchmarks (all by default).

Each benchmark also runs on its own: ``python -m benchmarks.process --help``.
"""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = ["process", "runc", "containerd"]


def main(argv: list[str]) -> int:
    names = [a for a in argv if not a.startswith("-")] or BENCHMARKS
    flags = [a for a in argv if a.startswith("-")]
    status = 0
    for name in names:
        try:
            module = importlib.import_module(f"benchmarks.{name}")
        except ModuleNotFoundError:
            print(f"benchmarks: no benchmark named {name!r}", file=sys.stderr)
            status = 1
            continue
        status |= module.main(flags)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
