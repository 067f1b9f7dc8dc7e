"""``python -m tests.zdtm [--only NAME,...] [--mode raw,cedana] [--results FILE]``, as root.

Builds CRIU's zdtm static tests from the source tree scripts/provision unpacked,
runs every usable one (host flavor) once through raw CRIU and once through cedana,
each run in fresh namespaces of its own, prints a table (test, raw, cedana, reason),
the skipped tests and why, and a summary line, and writes it all to a JSON results
file. Exits 1 when a test that raw CRIU passes fails through cedana (with one mode:
when any test fails), 2 when it cannot run at all.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from tests.zdtm.run import (
    Cedana,
    Context,
    Outcome,
    RawCriu,
    clean,
    enter_namespaces,
    inside_namespaces,
    run_isolated,
    run_test,
    setup_namespace,
)
from tests.zdtm.suite import Test, build, discover, load, locked, source_tree

#: zdtm.py reserves this many huge pages for the tests that map them.
HUGEPAGES = 20
DRIVERS: dict[str, type[RawCriu] | type[Cedana]] = {"raw": RawCriu, "cedana": Cedana}
#: What a run in the namespaces writes its outcome to, in its work directory.
OUTCOME = "outcome.json"


def parse(argv: Sequence[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.zdtm", description=__doc__.split("\n\n")[1]
    )
    parser.add_argument("--only", help="comma-separated test names (default: every test)")
    parser.add_argument(
        "--mode", default="raw,cedana", help="raw, cedana or both, comma-separated (default both)"
    )
    parser.add_argument(
        "--results", type=Path, default=Path("build/zdtm-results.json"), help="JSON results file"
    )
    parser.add_argument(
        "--timeout", type=float, default=60, help="seconds one test may take in one mode"
    )
    parser.add_argument("--src", type=Path, help="CRIU source tree (default: provision's)")
    parser.add_argument("--no-build", action="store_true", help="use the tests as built")
    parser.add_argument("--keep", action="store_true", help="keep images and logs (path printed)")
    # One test in one mode, inside the namespaces the run above enters for it.
    parser.add_argument("--run-one", help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    args.modes = [m.strip() for m in args.mode.split(",") if m.strip()]
    unknown = [m for m in args.modes if m not in DRIVERS]
    if unknown or not args.modes:
        parser.error(f"--mode takes raw and/or cedana, not {args.mode!r}")
    args.names = [n.strip() for n in args.only.split(",") if n.strip()] if args.only else None
    return args


def criu_binary() -> str | None:
    return shutil.which("criu") or shutil.which("criu", path="/usr/local/sbin:/usr/sbin:/sbin")


def main(argv: Sequence[str]) -> int:
    args = parse(argv)
    if os.geteuid() != 0:
        print("zdtm: run as root (CRIU and zdtm's tests need it)", file=sys.stderr)
        return 2
    source = args.src or source_tree()
    if source is None or not (source / "test" / "zdtm" / "static" / "Makefile").is_file():
        print(
            "zdtm: no CRIU source tree with test/zdtm (its path is in "
            "/usr/local/src/cedana/criu-src); run scripts/provision",
            file=sys.stderr,
        )
        return 2
    criu = criu_binary()
    if criu is None:
        print("zdtm: criu is not installed; run scripts/provision", file=sys.stderr)
        return 2
    if shutil.which("unshare") is None or shutil.which("make") is None:
        print("zdtm: needs make and unshare; run scripts/provision", file=sys.stderr)
        return 2
    source = source.resolve()
    if args.run_one is not None:
        if not inside_namespaces():
            print("zdtm: --run-one is for the runner's own namespaces", file=sys.stderr)
            return 2
        return run_one_inside(args, source, criu)
    return run_all(args, source, criu)


# --- inside: one test in one mode ----------------------------------------------------------


def run_one_inside(args: Any, source: Path, criu: str) -> int:
    """Run ``args.run_one`` in ``args.modes[0]`` as the init of these namespaces."""
    setup_namespace()
    test = load(source, args.run_one)
    driver = DRIVERS[args.modes[0]]()
    # zdtm.py's environment for tests: TMPDIR, ZDTM_THREAD_BOMB (with its noop freezer).
    # Hooks are Python scripts that import pycriu: this Python (which has it) comes first.
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    env = {
        **os.environ,
        "PATH": path,
        "TMPDIR": os.environ.get("TMPDIR", "/tmp"),
        "ZDTM_THREAD_BOMB": "5",
    }
    ctx = Context(test_dir=source / "test", work=args.work, criu=criu, env=env)
    outcome = run_isolated(
        lambda step: run_test(test, driver, ctx, step),
        timeout=args.timeout,
        log=args.work / "runner.log",
        after=lambda: clean(test, ctx),
    )
    (args.work / OUTCOME).write_text(json.dumps(outcome.to_dict()) + "\n")
    return 0


# --- outside: build, every test both ways, report -------------------------------------------


#: The cgroup v1 hierarchies zdtm's cgroup tests use (zdtm_mount_cgroups).
CGROUP_HIERARCHIES = ("zdtmtst", "zdtmtst.defaultroot")


def _in_hierarchy(name: str, action: Callable[[Path], None]) -> None:
    """Mount cgroup hierarchy ``name`` on a temporary directory, run ``action`` on it, and
    unmount it again."""
    where = Path(tempfile.mkdtemp(prefix="cedana-zdtm-cg-"))
    try:
        mount = ["mount", "-t", "cgroup", "-o", f"none,name={name}", "zdtm", str(where)]
        if subprocess.run(mount, capture_output=True, check=False).returncode != 0:
            return
        try:
            action(where)
        finally:
            subprocess.run(["umount", "-l", str(where)], capture_output=True, check=False)
    finally:
        with contextlib.suppress(OSError):
            where.rmdir()


def _rmdir(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.rmdir()


@contextlib.contextmanager
def zdtm_environment() -> Iterator[None]:
    """What zdtm.py sets up around a run, undone afterwards: its test cgroup hierarchies,
    each kept alive by an empty ``holder.UUID`` group (as zdtm_mount_cgroups does, but
    always: that script skips it when the hierarchies already exist, and a hierarchy
    that comes and goes between tests makes CRIU's cgroup restore fail with EBUSY), and
    a few huge pages."""
    holder = f"holder.{uuid.uuid4()}"
    for name in CGROUP_HIERARCHIES:
        _in_hierarchy(name, lambda root: (root / holder).mkdir(exist_ok=True))
    pages = Path("/proc/sys/vm/nr_hugepages")
    before = pages.read_text().strip()
    with contextlib.suppress(OSError):
        if int(before) < HUGEPAGES:
            pages.write_text(str(HUGEPAGES))
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            pages.write_text(before)
        for name in CGROUP_HIERARCHIES:
            _in_hierarchy(name, lambda root: _rmdir(root / holder))


def run_one(test: Test, mode: str, source: Path, work: Path, timeout: float) -> Outcome:
    """One test in one mode, in fresh namespaces; the outcome it wrote back."""
    why = DRIVERS[mode]().unsupported(test)
    if why is not None:
        return Outcome(status="skip", reason=why)
    where = work / test.name / mode
    where.mkdir(parents=True)
    timeout = max(timeout, 2.0 * test.desc.timeout)
    argv = ["--run-one", test.name, "--mode", mode, "--src", str(source), "--work", str(where)]
    started = time.monotonic()
    status = enter_namespaces([*argv, "--timeout", str(timeout)], timeout=timeout + 30)
    try:
        return Outcome.from_dict(json.loads((where / OUTCOME).read_text()))
    except (OSError, ValueError):
        what = "timed out (killed)" if status is None else f"exited with {status}, no outcome"
        return Outcome(
            status="fail",
            reason=f"the runner in the namespaces {what}",
            seconds=time.monotonic() - started,
        )


def cleanout(test: Test, test_dir: Path) -> None:
    """Remove what the test left beside itself (``make NAME.cleanout``, as zdtm.py does)."""
    subprocess.run(
        ["make", "--no-print-directory", "-C", "zdtm/static", f"{test.name}.cleanout"],
        cwd=test_dir,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        check=False,
    )


def _cell(outcome: Outcome | None) -> str:
    if outcome is None:
        return "-"
    return {"pass": "pass", "fail": "FAIL", "skip": "skip"}[outcome.status]


def _reason(outcomes: dict[str, Outcome]) -> str:
    """The reason a row shows: cedana's failure first (what this suite is about)."""
    for mode in ("cedana", "raw"):
        o = outcomes.get(mode)
        if o is not None and o.status == "fail":
            where = f"{o.step}: " if o.step else ""
            return f"{mode}: {where}{o.reason}"
    for mode in ("cedana", "raw"):
        o = outcomes.get(mode)
        if o is not None and o.status == "skip":
            return f"{mode} skipped: {o.reason}"
    return ""


def _with(
    status: str, mode: str, ran: list[Test], results: dict[str, dict[str, Outcome]]
) -> list[str]:
    return [
        t.name for t in ran if (o := results[t.name].get(mode)) is not None and o.status == status
    ]


def report(
    tests: list[Test], results: dict[str, dict[str, Outcome]], modes: list[str]
) -> dict[str, Any]:
    """Print the table, the skipped tests and the summary line; return the summary."""
    ran = [t for t in tests if t.skip is None]
    width = max([len(t.name) for t in ran] + [4])
    print(f"\n{'test':<{width}}  {'raw':<6}{'cedana':<8}reason")
    for t in ran:
        row = results[t.name]
        raw, ced = _cell(row.get("raw")), _cell(row.get("cedana"))
        print(f"{t.name:<{width}}  {raw:<6}{ced:<8}{_reason(row)}")
    skipped: dict[str, list[str]] = {}
    for t in tests:
        if t.skip is not None:
            skipped.setdefault(t.skip, []).append(t.name)
    if skipped:
        print(f"\nskipped ({len(tests) - len(ran)}):")
        for why, names in sorted(skipped.items()):
            print(f"  {why}: {', '.join(names)}")
    summary: dict[str, Any] = {"run": len(ran), "skipped": len(tests) - len(ran)}
    parts = [f"zdtm static (host flavor): {len(ran)} run, {len(tests) - len(ran)} skipped"]
    for mode in modes:
        passed = _with("pass", mode, ran, results)
        summary[f"{mode}_passed"] = len(passed)
        summary[f"{mode}_failed"] = _with("fail", mode, ran, results)
        summary[f"{mode}_skipped"] = _with("skip", mode, ran, results)
        parts.append(f"{'raw CRIU' if mode == 'raw' else 'cedana'} passed {len(passed)}")
    if {"raw", "cedana"} <= set(modes):
        raw_passed = set(_with("pass", "raw", ran, results))
        raw_failed = set(summary["raw_failed"])
        only = [n for n in summary["cedana_failed"] if n in raw_passed]
        both = [n for n in summary["cedana_failed"] if n in raw_failed]
        summary["cedana_only_failures"] = only
        summary["both_failed"] = both
        parts.append(
            f"{len(only)} fail only through cedana" + (f" ({', '.join(only)})" if only else "")
        )
        parts.append(f"{len(both)} fail in both")
        if summary["cedana_skipped"]:
            parts.append(f"{len(summary['cedana_skipped'])} not expressible through cedana")
    print("\n" + "; ".join(parts))
    return summary


def run_all(args: Any, source: Path, criu: str) -> int:
    test_dir = source / "test"
    static = test_dir / "zdtm" / "static"
    work = Path(tempfile.mkdtemp(prefix="cedana-zdtm-"))
    started = time.monotonic()
    try:
        with locked(static):
            if not args.no_build:
                build(source, args.names, work / "build.log")
            try:
                tests = discover(source, criu=criu, only=args.names)
            except KeyError as exc:
                print(f"zdtm: no such test: {exc.args[0]}", file=sys.stderr)
                return 2
            results: dict[str, dict[str, Outcome]] = {t.name: {} for t in tests}
            ran = [t for t in tests if t.skip is None]
            with zdtm_environment():
                for i, test in enumerate(ran, 1):
                    row = results[test.name]
                    for mode in args.modes:
                        row[mode] = run_one(test, mode, source, work, args.timeout)
                    cleanout(test, test_dir)
                    cells = "  ".join(f"{m} {_cell(row[m])}" for m in args.modes)
                    print(f"[{i}/{len(ran)}] {test.name}  {cells}  {_reason(row)}", flush=True)
        summary = report(tests, results, args.modes)
        summary["seconds"] = round(time.monotonic() - started, 1)
        write_results(args.results, source, criu, args.modes, tests, results, summary)
        print(f"results: {args.results}" + (f"; images and logs: {work}" if args.keep else ""))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    if {"raw", "cedana"} <= set(args.modes):
        return 1 if summary["cedana_only_failures"] else 0
    return 1 if any(summary[f"{m}_failed"] for m in args.modes) else 0


def write_results(
    path: Path,
    source: Path,
    criu: str,
    modes: list[str],
    tests: list[Test],
    results: dict[str, dict[str, Outcome]],
    summary: dict[str, Any],
) -> None:
    """The run as JSON: the machine, the summary, and every test with its options and
    each mode's outcome (status, reason, step, seconds)."""
    version = subprocess.run([criu, "--version"], capture_output=True, text=True, check=False)
    data = {
        "source": str(source),
        "criu": version.stdout.split("\n")[0].removeprefix("Version: ").strip(),
        "kernel": platform.release(),
        "modes": modes,
        "summary": summary,
        "tests": [
            {
                "name": t.name,
                "skip": t.skip,
                "flags": sorted(t.desc.flags),
                "options": {
                    "dump": list(t.desc.dump_options),
                    "restore": list(t.desc.restore_options),
                },
                **{mode: o.to_dict() for mode, o in results[t.name].items()},
            }
            for t in tests
        ],
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
