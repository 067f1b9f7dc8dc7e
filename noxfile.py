"""Everything a person runs: tests, lint, typecheck, docs, demo, bench.

Every session that installs cedana (all but ``lint``) first runs
scripts/provision (as root), which installs CRIU, runc and containerd
idempotently and leaves a pycriu wheel in WHEELS, then installs cedana with
that wheel: on a fresh machine whichever session runs first provisions it.
``session.posargs`` pass through to pytest, the demo and the benchmark.
"""

from __future__ import annotations

import os
from pathlib import Path

import nox

nox.options.sessions = ["lint", "typecheck", "docs", "tests"]
nox.options.reuse_existing_virtualenvs = True

ROOT = Path(__file__).parent
WHEELS = os.environ.get("CEDANA_WHEELS", "/usr/local/share/cedana/wheels")
PYTHON = "3.11"


def provision(session: nox.Session) -> None:
    """Install the system pieces (needs root); skipped with a note otherwise."""
    if os.geteuid() != 0:
        session.warn("not root: skipping scripts/provision; integration tests will be skipped")
        return
    session.run("bash", str(ROOT / "scripts" / "provision"), external=True)


def install(session: nox.Session, *extras: str) -> None:
    spec = f".[{','.join(extras)}]" if extras else "."
    session.install("--find-links", WHEELS, spec)


@nox.session(python=PYTHON)
def tests(session: nox.Session) -> None:
    """Unit and integration tests (integration needs root; CI=true makes skips fail)."""
    provision(session)
    install(session, "test")
    session.run("pytest", *(session.posargs or ["tests"]))


@nox.session(python=PYTHON)
def lint(session: nox.Session) -> None:
    """ruff check and ruff format --check."""
    session.install("ruff==0.17.6")
    session.run("ruff", "check", ".")
    session.run("ruff", "format", "--check", ".")


@nox.session(python=PYTHON)
def typecheck(session: nox.Session) -> None:
    """mypy --strict on the package; the tests and benchmarks too, with untyped defs allowed."""
    provision(session)
    session.install("mypy==2.4.1", "--find-links", WHEELS, ".[test]")
    session.run("mypy", "cedana", "tests", "benchmarks")


@nox.session(python=PYTHON)
def docs(session: nox.Session) -> None:
    """Sphinx with -W, then the doctests.

    sphinx-argparse renders the command line page from cedana.cli.build_parser(), so the
    reference cannot fall behind the parser (docs/cli.rst says more).
    """
    provision(session)
    session.install("--find-links", WHEELS, ".", "sphinx", "sphinx-argparse>=0.5")
    session.run("sphinx-build", "-W", "-b", "html", "docs", "docs/_build/html")
    session.run("sphinx-build", "-W", "-b", "doctest", "docs", "docs/_build/doctest")


@nox.session(python=PYTHON)
def demo(session: nox.Session) -> None:
    """Spawn a counter, checkpoint it, restore it, show it continued."""
    provision(session)
    install(session)
    session.run("python", "-m", "cedana", "demo", *session.posargs)


@nox.session(python=PYTHON)
def bench(session: nox.Session) -> None:
    """cedana vs raw CRIU (and tar | zstd) and the runtimes' own checkpointing (containerd,
    docker, podman), and its registry client vs skopeo; same workload, same run; ratios."""
    provision(session)
    install(session, "containerd", "docker", "oci", "kata", "bench")
    session.run("python", "-m", "benchmarks", *session.posargs)


@nox.session(python=PYTHON)
def bench_scaling(session: nox.Session) -> None:
    """Seconds per GiB of cedana and raw CRIU at growing process sizes, drawn as a picture.

    Not a default session (several minutes, and 8 GiB workloads need the memory and disk):
    arguments pass to ``python -m benchmarks.scaling`` (``--sizes 256,1024``, ``--plot F``).
    """
    provision(session)
    install(session, "bench")
    session.run("python", "-m", "benchmarks.scaling", *session.posargs)


@nox.session(python=PYTHON)
def zdtm(session: nox.Session) -> None:
    """CRIU's zdtm static tests through raw CRIU and through cedana, side by side (as root).

    Like ``tests``, it runs scripts/provision first. Not a default session: it builds and
    runs some 300 tests twice (about a quarter of an hour; docs/zdtm.rst). Arguments pass
    to ``python -m tests.zdtm`` (``--only pty00,pipe00``, ``--keep``).
    """
    provision(session)
    install(session)
    session.run("python", "-m", "tests.zdtm", *session.posargs)
