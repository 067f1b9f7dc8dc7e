"""Run one zdtm static test, checkpointed and restored once, as zdtm.py runs it.

What zdtm.py does with a static test (test/zdtm.py: ``zdtm_test``, ``criu``, ``cr``,
``do_run_test``), done the same way here:

1. Start: ``make -C zdtm/static NAME.pid`` from CRIU's ``test/`` directory, with
   ``TMPDIR`` and ``ZDTM_THREAD_BOMB=5`` in the environment (no ``ZDTM_UID``: every
   test runs as root). The test daemonizes: its parent writes ``NAME.pid`` once the
   child is ready and exits; the child calls ``setsid()``, takes /dev/null for stdin
   and ``NAME.out.inprogress`` for stdout and stderr. A ``NAME.hook --post-start``
   runs while make waits.
2. Checkpoint once, the tree killed after the dump (``NAME.hook --pre-dump`` first),
   wait until the tree is gone, then restore it detached (``--pre-restore`` and
   ``--post-restore`` hooks around it, ``ZDTM_TEST_PID`` and ``ZDTM_IMG_DIR`` set).
3. Stop: SIGTERM, wait for it to die; the test passed when ``PASS`` is a word of the
   last line of ``NAME.out``. ``NAME.hook --clean`` runs last.
4. ``crfail`` tests pass when the checkpoint or the restore fails (a failed dump
   must leave the test running, and it must then pass); their success is a failure.

The checkpoint and restore go either through raw CRIU (:class:`RawCriu`: ``criu dump``
and ``criu restore --restore-detached`` with the desc's options as written) or through
cedana (:class:`Cedana`: ``cedana.Process(pid).checkpoint`` and ``cedana.restore``, the
desc's options translated by :func:`tests.zdtm.suite.translate`). Paths a desc gives
relative to zdtm.py's images directory are made absolute for both
(:func:`tests.zdtm.suite.rebase`).

Like zdtm_ct (CRIU's test/zdtm_ct.c), every run happens in fresh mount, pid, network
and IPC namespaces, with its own /proc and its own devpts instance, so that restored
pids, pty numbers and ports cannot be taken by anything else on the machine; the
runner is the namespace's init (:func:`enter_namespaces`). Each test and mode runs in
a forked worker (:func:`run_isolated`) under a deadline; afterwards every other
process of the namespace is killed, so a hung or leaking test costs only its own run.
"""

from __future__ import annotations

import contextlib
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn, Protocol

import attrs

from tests.zdtm.suite import Test, rebase, translate

__all__ = [
    "Cedana",
    "Context",
    "Driver",
    "Outcome",
    "RawCriu",
    "clean",
    "enter_namespaces",
    "inside_namespaces",
    "run_isolated",
    "run_test",
    "setup_namespace",
]

#: Set in the environment of the runner once it is the init of its namespaces.
INSIDE = "CEDANA_ZDTM_INSIDE"

Step = Callable[[str], None]


@attrs.frozen(kw_only=True)
class Outcome:
    """How one test went in one mode: ``pass``, ``fail`` or ``skip``, and why."""

    status: str
    reason: str = ""
    step: str = ""
    seconds: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return attrs.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Outcome:
        return cls(**{k: data[k] for k in ("status", "reason", "step", "seconds") if k in data})


class Failed(Exception):
    """The run failed at ``step`` for ``reason``."""

    def __init__(self, step: str, reason: str):
        super().__init__(f"{step}: {reason}")
        self.step = step
        self.reason = reason


class CrFailed(Exception):
    """A dump or restore failed; ``clean`` is False when CRIU died of a signal."""

    def __init__(self, reason: str, *, clean: bool = True):
        super().__init__(reason)
        self.reason = reason
        self.clean = clean


@attrs.frozen(kw_only=True)
class Context:
    """Where one run happens.

    Attributes:
        test_dir: CRIU's ``test/`` directory, the cwd of everything (as for zdtm.py).
        work: This run's scratch directory (images, logs, the artifact).
        criu: The criu binary raw runs use.
        env: The environment of tests and hooks.
    """

    test_dir: Path
    work: Path
    criu: str
    env: Mapping[str, str]

    @property
    def static(self) -> Path:
        return self.test_dir / "zdtm" / "static"


class Driver(Protocol):
    """Checkpoints and restores a test's tree."""

    name: str

    def unsupported(self, test: Test) -> str | None:
        """Why this driver cannot run ``test`` as its desc asks, or None."""

    def dump(self, test: Test, pid: int, ctx: Context) -> None:
        """Dump the tree at ``pid`` and kill it; raise CrFailed."""

    def restore(self, test: Test, ctx: Context) -> int:
        """Restore it detached; return the root pid; raise CrFailed."""

    def images(self, ctx: Context) -> Path:
        """A directory holding one subdirectory of the dump's images (ZDTM_IMG_DIR)."""


def first_error(log: Path) -> str:
    """CRIU's first error line in ``log`` (RLIMIT_NOFILE noise skipped), or ''."""
    try:
        lines = log.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    for line in lines:
        if "Error (" in line and "RLIMIT_NOFILE" not in line:
            return line.split("): ", 1)[-1].strip()
    return ""


@attrs.define
class RawCriu:
    """``criu dump`` / ``criu restore --restore-detached`` on the command line with the
    desc's options, as zdtm.py's ``criu_cli`` runs them: no ``--shell-job`` unless the desc
    asks, since every test leads its own session (cedana, too, decides it per tree)."""

    name: str = "raw"

    def unsupported(self, test: Test) -> str | None:
        return None

    def _dir(self, ctx: Context) -> Path:
        return ctx.work / "dump" / "1"

    def _run(self, action: str, args: Sequence[str], ctx: Context, timeout: float) -> None:
        images = self._dir(ctx)
        argv = [
            ctx.criu,
            action,
            "--no-default-config",
            "--images-dir",
            str(images),
            "--log-file",
            f"{action}.log",
            "--verbosity=4",
            *args,
        ]
        (images / f"{action}.cropt").write_text(" ".join(argv) + "\n")
        with open(images / f"{action}.stdout", "wb") as out:
            try:
                rc = subprocess.run(
                    argv,
                    cwd=ctx.test_dir,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    timeout=timeout,
                    check=False,
                ).returncode
            except subprocess.TimeoutExpired:
                raise CrFailed(f"criu {action} still running after {timeout:.0f}s") from None
        if rc != 0:
            why = first_error(images / f"{action}.log") or f"criu {action} exited with {rc}"
            raise CrFailed(why, clean=rc > 0)

    def dump(self, test: Test, pid: int, ctx: Context) -> None:
        self._dir(ctx).mkdir(parents=True)
        options = rebase(test.desc.dump_options, ctx.test_dir)
        self._run("dump", ["--tree", str(pid), *options], ctx, 60)

    def restore(self, test: Test, ctx: Context) -> int:
        pidfile = ctx.static / f"{test.name}.pid"
        options = rebase(test.desc.restore_options, ctx.test_dir)
        args = ["--pidfile", str(pidfile), *options, "--restore-detached"]
        self._run("restore", args, ctx, 60)
        return int(pidfile.read_text().split()[0])

    def images(self, ctx: Context) -> Path:
        return self._dir(ctx).parent


@attrs.define
class Cedana:
    """``cedana.Process(pid).checkpoint(...)`` and ``cedana.restore(...)``, the desc's
    CRIU options given as cedana's keywords or through ``criu=``."""

    name: str = "cedana"

    def unsupported(self, test: Test) -> str | None:
        missing = [
            *translate(test.desc.dump_options, side="dump").unsupported,
            *translate(test.desc.restore_options, side="restore").unsupported,
        ]
        if missing:
            return f"needs {', '.join(dict.fromkeys(missing))}, which CRIU's RPC cannot take"
        return None

    def _artifact(self, ctx: Context) -> Path:
        return ctx.work / "checkpoint.tar.zst"

    def dump(self, test: Test, pid: int, ctx: Context) -> None:
        import cedana

        opts = translate(rebase(test.desc.dump_options, ctx.test_dir), side="dump")
        try:
            cedana.Process(pid).checkpoint(
                self._artifact(ctx), criu=dict(opts.criu), **dict(opts.keywords)
            )
        except cedana.CedanaError as exc:
            raise CrFailed(_one_line(exc)) from exc

    def restore(self, test: Test, ctx: Context) -> int:
        import cedana

        opts = translate(rebase(test.desc.restore_options, ctx.test_dir), side="restore")
        try:
            restored = cedana.restore(
                self._artifact(ctx), criu=dict(opts.criu), **dict(opts.keywords)
            )
        except cedana.CedanaError as exc:
            raise CrFailed(_one_line(exc)) from exc
        return int(restored.pid)

    def images(self, ctx: Context) -> Path:
        import cedana

        where = ctx.work / "images"
        if not where.exists():
            (where / "1").mkdir(parents=True)
            cedana.open(self._artifact(ctx)).extract(where / "1")
        return where


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


# --- processes -------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    """True while ``pid`` exists (a zombie too: it still holds the pid)."""
    return os.path.exists(f"/proc/{pid}")


def _tree(pid: int) -> list[int]:
    from cedana import procfs
    from cedana.errors import ProcessNotFound

    try:
        return [info.pid for info in procfs.tree(pid)]
    except ProcessNotFound:
        return [pid]


def _wait_gone(pids: Sequence[int], timeout: float) -> list[int]:
    """Wait until every pid is gone (reaped by the namespace's init); the ones left."""
    deadline = time.monotonic() + timeout
    left = [p for p in pids if _alive(p)]
    while left and time.monotonic() < deadline:
        time.sleep(0.01)
        left = [p for p in left if _alive(p)]
    return left


def _tail(path: Path) -> str:
    try:
        lines = [ln.strip() for ln in path.read_text(errors="replace").splitlines()]
    except OSError:
        return ""
    lines = [ln for ln in lines if ln]
    return lines[-1] if lines else ""


def _hook(test: Test, arg: str, ctx: Context, env: Mapping[str, str]) -> None:
    hook = ctx.static / f"{test.name}.hook"
    if not os.access(hook, os.X_OK):
        return
    log = ctx.work / "hooks.log"
    with open(log, "ab") as out:
        try:
            rc = subprocess.run(
                [f"zdtm/static/{test.name}.hook", arg],
                cwd=ctx.test_dir,
                env=dict(env),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                timeout=60,
                check=False,
            ).returncode
        except subprocess.TimeoutExpired:
            raise Failed("hook", f"{test.name}.hook {arg} still running after 60s") from None
    if rc != 0:
        raise Failed("hook", f"{test.name}.hook {arg} exited with {rc}: {_tail(log)}")


def _make(ctx: Context, target: str) -> subprocess.Popen[bytes]:
    """``make -C zdtm/static TARGET`` from ``test/``, as zdtm.py runs it, logged."""
    out = open(ctx.work / "make.log", "ab")  # noqa: SIM115 - the child holds it
    try:
        return subprocess.Popen(
            ["make", "--no-print-directory", "-C", "zdtm/static", target],
            cwd=ctx.test_dir,
            env=dict(ctx.env),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    finally:
        out.close()


def _start(test: Test, ctx: Context) -> int:
    """Start the test as zdtm.py does; return the pid its pid file names."""
    timeout = test.desc.timeout
    cleanout = _make(ctx, f"{test.name}.cleanout")
    if cleanout.wait(timeout=timeout) != 0:
        raise Failed("start", f"make {test.name}.cleanout failed")
    make = _make(ctx, f"{test.name}.pid")
    try:
        _hook(test, "--post-start", ctx, ctx.env)
        rc = make.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        raise Failed("start", f"not started after {timeout}s") from None
    finally:
        if make.poll() is None:
            make.kill()
            make.wait()
    if rc != 0:
        out = ctx.static / f"{test.name}.out"  # .inprogress until the test exits
        why = _tail(out) or _tail(out.with_name(out.name + ".inprogress"))
        raise Failed("start", why or _tail(ctx.work / "make.log") or f"make exited {rc}")
    pid = int((ctx.static / f"{test.name}.pid").read_text().split()[0])
    if not _alive(pid):
        raise Failed("start", f"pid {pid} from {test.name}.pid is not running")
    return pid


def _stop(test: Test, pid: int, ctx: Context) -> None:
    """SIGTERM, wait for it to end, and judge its output as zdtm.py does."""
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        raise Failed("stop", f"pid {pid} was gone before SIGTERM") from None
    if _wait_gone([pid], test.desc.timeout):
        raise Failed("stop", f"pid {pid} still running {test.desc.timeout}s after SIGTERM")
    last = _tail(ctx.static / f"{test.name}.out")
    if "PASS" not in last.split():
        why = last or _tail(ctx.static / f"{test.name}.out.inprogress") or "no output"
        raise Failed("result", why)


def clean(test: Test, ctx: Context) -> None:
    """``NAME.hook --clean``, once the test is dead (zdtm.py runs it after killing the
    test when it failed)."""
    with contextlib.suppress(Failed):
        _hook(test, "--clean", ctx, ctx.env)


def run_test(test: Test, driver: Driver, ctx: Context, step: Step) -> Outcome:
    """Start ``test``, checkpoint and restore it once through ``driver``, stop and judge it."""
    started = time.monotonic()
    crfail = test.desc.crfail
    env = dict(ctx.env)

    def done(status: str, reason: str = "", at: str = "") -> Outcome:
        return Outcome(status=status, reason=reason, step=at, seconds=time.monotonic() - started)

    current = "start"
    try:
        step("start")
        pid = _start(test, ctx)
        env["ZDTM_TEST_PID"] = str(pid)
        current = "dump"
        step("dump")
        _hook(test, "--pre-dump", ctx, env)
        tree = _tree(pid)
        try:
            driver.dump(test, pid, ctx)
        except CrFailed as exc:
            if not (crfail and exc.clean):
                raise Failed("dump", exc.reason) from None
            step("stop")  # the expected failure: the test must go on and pass
            _stop(test, pid, ctx)
            return done("pass", f"dump failed as expected: {exc.reason}")
        left = _wait_gone(tree, test.desc.timeout)
        if left:
            raise Failed("dump", f"pid {left[0]} still there {test.desc.timeout}s after the dump")
        with contextlib.suppress(FileNotFoundError):
            (ctx.static / f"{test.name}.pid").unlink()
        current = "restore"
        step("restore")
        _hook(test, "--pre-restore", ctx, env)
        try:
            pid = driver.restore(test, ctx)
        except CrFailed as exc:
            if not (crfail and exc.clean):
                raise Failed("restore", exc.reason) from None
            return done("pass", f"restore failed as expected: {exc.reason}")
        env["ZDTM_TEST_PID"] = str(pid)
        if os.access(ctx.static / f"{test.name}.hook", os.X_OK):
            env["ZDTM_IMG_DIR"] = str(driver.images(ctx))
        _hook(test, "--post-restore", ctx, env)
        if "--link-remap" in test.desc.dump_options:
            left_behind = sorted(ctx.static.glob("link_remap*"))
            if left_behind:
                raise Failed("restore", f"link-remap files left: {left_behind[0].name}")
        current = "stop"
        step("stop")
        _stop(test, pid, ctx)
        if crfail:
            return done(
                "fail", "checkpoint and restore succeeded, but crfail expects a failure", "restore"
            )
        return done("pass")
    except Failed as exc:
        return done("fail", exc.reason, exc.step)
    except Exception as exc:  # a bug of the harness or of cedana: report it, go on
        return done("fail", f"{type(exc).__name__}: {_one_line(exc)}", current)


# --- isolation ----------------------------------------------------------------------------


def inside_namespaces() -> bool:
    """True in the runner that :func:`enter_namespaces` started."""
    return os.environ.get(INSIDE) == "1" and os.getpid() == 1


def enter_namespaces(argv: Sequence[str], *, timeout: float | None = None) -> int | None:
    """Run ``python -m tests.zdtm ARGV`` as the init of fresh mount, pid, network and IPC
    namespaces (zdtm_ct's set); return its exit status, or None when it ran past
    ``timeout`` (it is killed, and with it everything in its namespaces)."""
    unshare = shutil.which("unshare")
    if unshare is None:
        raise FileNotFoundError("unshare (util-linux) is not installed; run scripts/provision")
    cmd = [
        unshare,
        "--mount",
        "--pid",
        "--net",
        "--ipc",
        "--fork",
        "--kill-child",  # the init dies with unshare, and the namespace with its init
        "--mount-proc",
        "--propagation",
        "slave",
        sys.executable,
        "-m",
        "tests.zdtm",
        *argv,
    ]
    env = {**os.environ, INSIDE: "1"}
    try:
        return subprocess.run(
            cmd, env=env, stdin=subprocess.DEVNULL, timeout=timeout, check=False
        ).returncode
    except subprocess.TimeoutExpired:
        return None


def setup_namespace() -> None:
    """Inside: a private devpts instance (ptmx included) and the loopback up, as zdtm_ct."""
    steps = [
        ["umount", "-l", "/dev/pts"],
        ["mount", "-t", "devpts", "-o", "newinstance,ptmxmode=0666", "zdtm_devpts", "/dev/pts"],
        ["mount", "--bind", "/dev/pts/ptmx", "/dev/ptmx"],
        ["ip", "link", "set", "up", "dev", "lo"],
    ]
    for argv in steps:
        subprocess.run(argv, check=True, stdin=subprocess.DEVNULL, capture_output=True)


def _reap() -> dict[int, int]:
    """Reap every exited child of the init; their exit statuses by pid."""
    statuses = {}
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            break
        statuses[pid] = status
    return statuses


def sweep(timeout: float = 10) -> None:
    """Kill every process of the namespace but the init, and reap them."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        others = [int(p) for p in os.listdir("/proc") if p.isdigit() and int(p) != os.getpid()]
        if not others:
            return
        for pid in others:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.01)
        _reap()


def _worker(work: Callable[[Step], Outcome], channel: int, log: Path) -> NoReturn:
    """The forked worker: run ``work``, telling the init each step and the outcome."""
    code = 0
    try:
        devnull = os.open(os.devnull, os.O_RDWR)
        os.dup2(devnull, 0)  # nothing may reach the terminal the runner may have
        with open(log, "ab") as out:
            os.dup2(out.fileno(), 1)
            os.dup2(out.fileno(), 2)
        tempfile.tempdir = str(log.parent)  # cedana's scratch dirs go with the run's

        def step(name: str) -> None:
            os.write(channel, (json.dumps({"step": name}) + "\n").encode())

        result = work(step)
        os.write(channel, (json.dumps({"outcome": result.to_dict()}) + "\n").encode())
    except BaseException:
        traceback.print_exc()
        code = 1
    finally:
        os._exit(code)


def run_isolated(
    work: Callable[[Step], Outcome],
    *,
    timeout: float,
    log: Path,
    after: Callable[[], None] | None = None,
) -> Outcome:
    """Run ``work`` in a forked worker of the init, reaping orphans meanwhile; kill it and
    everything else in the namespace when it is done or after ``timeout`` seconds, then
    call ``after``."""
    started = time.monotonic()
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(read_end)
        _worker(work, write_end, log)
    os.close(write_end)
    buffer = b""
    current = "start"
    outcome: Outcome | None = None
    exited = False
    try:
        while True:
            if pid in _reap():
                exited = True
            ready, _, _ = select.select([read_end], [], [], 0.02)
            if ready:
                chunk = os.read(read_end, 65536)
                buffer += chunk
                *lines, buffer = buffer.split(b"\n")
                for line in lines:
                    message = json.loads(line)
                    if "step" in message:
                        current = message["step"]
                    else:
                        outcome = Outcome.from_dict(message["outcome"])
                if not chunk:
                    if exited:
                        break
                    time.sleep(0.01)  # the worker closed its end and is exiting
            elif exited and outcome is not None:
                break
            if time.monotonic() - started > timeout:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                outcome = Outcome(
                    status="fail",
                    reason=f"timed out after {timeout:.0f}s (killed)",
                    step=current,
                    seconds=time.monotonic() - started,
                )
                break
    finally:
        os.close(read_end)
        sweep()
    if after is not None:
        after()
    if outcome is None:
        return Outcome(
            status="fail",
            reason="the runner's worker died",
            step=current,
            seconds=time.monotonic() - started,
        )
    return outcome
