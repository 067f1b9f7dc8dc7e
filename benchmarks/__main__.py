"""``python -m benchmarks [NAME ...] [OPTIONS]``: run the named benchmarks (all by default),
each with the same options (``--rounds 5``...).

Each benchmark also runs on its own: ``python -m benchmarks.process --help``. The
scaling run (``python -m benchmarks.scaling``) is not among them: it takes its own
options (``--sizes``, ``--plot``) and much longer.
"""

from __future__ import annotations

import importlib
import sys

BENCHMARKS = [
    "process",
    "runc",
    "containerd",
    "docker",
    "podman",
    "rootfs",
    "registry",
    "pidns",
    "kata",
]


def main(argv: list[str]) -> int:
    # Names come first; everything from the first option on goes to each benchmark.
    first_option = next((i for i, a in enumerate(argv) if a.startswith("-")), len(argv))
    names, flags = argv[:first_option] or BENCHMARKS, argv[first_option:]
    status = 0
    for name in names:
        try:
            module = importlib.import_module(f"benchmarks.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"benchmarks.{name}":
                raise  # the benchmark is there; something it imports is not
            print(f"benchmarks: no benchmark named {name!r}", file=sys.stderr)
            if argv[:first_option]:  # asked for by name; the default list may run ahead of it
                status = 1
            continue
        status |= module.main(flags)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
