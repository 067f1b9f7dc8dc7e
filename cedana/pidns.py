"""Pid namespaces held by cedana's small init (:mod:`cedana._pidinit`).

A :class:`PidNamespace` is a new pid (and mount) namespace whose pid 1 is cedana's init:
it reaps, forwards signals to the workload's root and exits as the root does; the
*holder*, this process's child in the caller's namespace, mirrors that exit status, so
``Popen.wait()`` on it is waiting on the workload. Two ways in:

- :meth:`PidNamespace.spawn` starts a command as the root (ns pid 2);
- :meth:`PidNamespace.runner` starts ``criu swrk`` inside, as the init's child, for a
  restore: CRIU, being in the namespace, restores the tree under its original pids
  there, and the restored root is reparented to the init when CRIU exits.

A tree already in such a namespace is dumped by a CRIU started inside it
(:class:`EnterRunner`: ``nsenter`` into its pid and mount namespaces), so CRIU sees the
tree's own pids, as it must for a tree whose root is not the namespace's pid 1.

Which namespace a restore uses (:func:`pid_namespace_mode`) and whether the tree's pids
are free here (:func:`await_pids_free`: waiting, for a bounded time, on the tree's own
zombies; :func:`check_pids_free`: PidInUse naming the holder) are decided here too.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import attrs

from cedana import procfs
from cedana.artifact import Manifest, ProcessEntry
from cedana.errors import (
    CedanaError,
    PidInUse,
    ProcessNotFound,
    RestoreFailed,
    UnsafeArtifact,
)
from cedana.options import PidNamespaceMode

__all__ = [
    "EnterRunner",
    "PidNamespace",
    "await_pids_free",
    "cedana_init_of",
    "check_pids_free",
    "host_pid",
    "ns_pids",
    "pid_namespace_mode",
]

logger = logging.getLogger("cedana.pidns")

#: The init's script: run by path, so it never imports the package.
INIT_SCRIPT = Path(__file__).with_name("_pidinit.py")

#: How long the init may take to make the namespace and say it is ready.
READY_TIMEOUT = 10.0


def ns_pids(pid: int) -> tuple[int, ...]:
    """``pid``'s pids in each pid namespace it is in, outermost (this /proc's) first
    (``NSpid`` of /proc/PID/status).

    Raises:
        ProcessNotFound: No such pid.
    """
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("NSpid:"):
                    return tuple(int(x) for x in line.split()[1:])
    except (FileNotFoundError, ProcessLookupError) as exc:
        raise ProcessNotFound(f"no process with pid {pid}") from exc
    return (pid,)


def ns_sid(pid: int) -> int:
    """``pid``'s session id as its own (innermost) pid namespace sees it (0: its session
    leader is outside that namespace)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("NSsid:"):
                return int(line.split()[-1])
    return procfs.proc_info(pid).sid


def pidns_id(pid: int) -> str:
    """The identity of ``pid``'s pid namespace (``pid:[INODE]``)."""
    try:
        return os.readlink(f"/proc/{pid}/ns/pid")
    except (FileNotFoundError, ProcessLookupError) as exc:
        raise ProcessNotFound(f"no process with pid {pid}") from exc


def host_pid(ancestor: int, ns_pid: int) -> int | None:
    """The pid (in this /proc) of the descendant of ``ancestor`` whose innermost pid is
    ``ns_pid``; None when there is none (yet)."""
    try:
        tree = procfs.tree(ancestor)
    except ProcessNotFound:
        return None
    for info in tree:
        with contextlib.suppress(ProcessNotFound):
            if info.pid != ancestor and ns_pids(info.pid)[-1] == ns_pid:
                return info.pid
    return None


def cedana_init_of(pid: int) -> int | None:
    """The pid (in this /proc) of the init of ``pid``'s pid namespace when that namespace
    is a child of ours held by cedana's init; None when ``pid`` is in our own namespace
    (or in one that cedana does not hold, e.g. a container's).

    A dump of such a tree runs CRIU in ``pid``'s mount namespace (:class:`EnterRunner`),
    so that namespace must be the init's, in our user namespace (only root changes its
    mounts): anyone may name an init ``_pidinit.py`` in a user and mount namespace of
    their own, with their program bound over CRIU's path.
    """
    ours = pidns_id(os.getpid())
    theirs = pidns_id(pid)
    if theirs == ours:
        return None
    try:
        mine = os.readlink("/proc/self/ns/user")
        if os.readlink(f"/proc/{pid}/ns/user") != mine:
            return None
    except OSError:
        return None
    current = pid
    while current > 1:
        try:
            if pidns_id(current) != theirs:
                return None
            if ns_pids(current)[-1] == 1:
                with open(f"/proc/{current}/cmdline", "rb") as f:
                    argv = f.read().split(b"\0")
                if not any(a.endswith(b"_pidinit.py") for a in argv):
                    return None
                same = os.readlink(f"/proc/{current}/ns/mnt") == os.readlink(f"/proc/{pid}/ns/mnt")
                return current if same and os.readlink(f"/proc/{current}/ns/user") == mine else None
            current = procfs.proc_info(current).ppid
        except (ProcessNotFound, OSError):
            return None
    return None


@attrs.frozen
class EnterRunner:
    """Starts ``criu swrk`` inside the pid and mount namespaces of ``pid`` (``nsenter``),
    for a dump of a tree in a namespace cedana's init holds."""

    pid: int

    def start(self, argv: Sequence[str], pass_fds: Sequence[int]) -> subprocess.Popen[bytes]:
        """Start ``argv`` under ``nsenter``; it waits for CRIU, and the session for it."""
        return subprocess.Popen(
            ["nsenter", "--target", str(self.pid), "--pid", "--mount", "--", *argv],
            pass_fds=tuple(pass_fds),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )


@attrs.define(eq=False)
class PidNamespace:
    """A new pid namespace held by cedana's init; see the module docstring.

    Attributes:
        holder: The holder, this process's child: its exit status is the workload's.
        init: The init's pid in this /proc.
    """

    holder: subprocess.Popen[bytes]
    init: int

    @classmethod
    def _start(
        cls,
        flags: Sequence[str],
        argv: Sequence[str],
        *,
        pass_fds: Sequence[int] = (),
        stdio: tuple[int | None, int | None, int | None] = (None, None, None),
        cwd: str | os.PathLike[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> PidNamespace:
        # The holder's cwd and environment pass through the init to the workload.
        ready_r, ready_w = os.pipe()
        stdin, stdout, stderr = stdio
        try:
            holder = subprocess.Popen(
                [
                    sys.executable,
                    "-I",
                    str(INIT_SCRIPT),
                    *flags,
                    "--ready-fd",
                    str(ready_w),
                    "--",
                    *argv,
                ],
                pass_fds=(ready_w, *pass_fds),
                stdin=subprocess.DEVNULL if stdin is None else stdin,
                stdout=subprocess.DEVNULL if stdout is None else stdout,
                stderr=subprocess.DEVNULL if stderr is None else stderr,
                start_new_session=True,
                close_fds=True,
                cwd=cwd,
                env=env,
            )
        except OSError as exc:
            os.close(ready_r)
            raise CedanaError(f"cannot start cedana's pid-namespace init: {exc}") from exc
        finally:
            os.close(ready_w)
        try:
            said = _read_line(ready_r, READY_TIMEOUT)
        finally:
            os.close(ready_r)
        if said != "ready":
            _end(holder)
            raise CedanaError(
                "cedana's init could not make a new pid namespace: "
                f"{said or 'it exited before it was ready'}"
            )
        kids = procfs.children(holder.pid)
        if not kids:
            _end(holder)
            raise CedanaError("cedana's pid-namespace init ended before it was ready")
        ns = cls(holder=holder, init=kids[0])
        logger.debug("pid namespace: holder %d, init %d", holder.pid, ns.init)
        return ns

    @classmethod
    def spawn(
        cls,
        argv: Sequence[str],
        *,
        stdout: int,
        stderr: int,
        cwd: str | os.PathLike[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> tuple[PidNamespace, int]:
        """Start ``argv`` as the root of a new namespace (in a session of its own, stdin
        /dev/null); return the namespace and the root's pid in this /proc."""
        ns = cls._start(["--spawn"], argv, stdio=(None, stdout, stderr), cwd=cwd, env=env)
        root = _wait_host_pid(ns, 2)
        if root is None or not _wait_stopped(root):
            _end(ns.holder)
            raise CedanaError(f"cannot start {argv[0]} in a new pid namespace: it never began")
        os.kill(root, signal.SIGCONT)  # it stopped itself before its exec, to be seen first
        return ns, root

    @classmethod
    def for_restore(cls, tree_pids: Sequence[int], root_pid: int) -> _RestoreRunner:
        """A runner that starts CRIU in a new namespace for a tree of ``tree_pids`` whose
        root is ``root_pid`` (pids inside the namespace).

        Raises:
            UnsafeArtifact: ``root_pid`` is not one of ``tree_pids`` above the init's 1 (the
                manifest is not one cedana wrote): the init would wait on, and end the
                namespace with, another process.
        """
        pids = tuple(tree_pids)
        if (
            not all(isinstance(p, int) and not isinstance(p, bool) and p > 1 for p in pids)
            or not isinstance(root_pid, int)
            or isinstance(root_pid, bool)
            or root_pid not in pids
        ):
            raise UnsafeArtifact(
                f"the checkpoint's root pid {root_pid!r} is not one of its tree's pids "
                f"({', '.join(map(repr, pids))}) above 1; cedana writes none such: do not use "
                "this checkpoint"
            )
        return _RestoreRunner(tree_pids=pids, root_pid=root_pid)

    def root_host_pid(self, ns_pid: int) -> int | None:
        """The pid in this /proc of the process with ``ns_pid`` in this namespace."""
        return host_pid(self.init, ns_pid)

    def close(self) -> None:
        """End the namespace (kill its init, so the kernel kills everything in it) and
        reap the holder; for a failed restore."""
        _end(self.holder)


@attrs.define(eq=False)
class _RestoreRunner:
    """Starts ``criu swrk`` as the child of a new namespace's init (a CriuRequest runner);
    ``namespace`` is set once it has."""

    tree_pids: tuple[int, ...]
    root_pid: int
    namespace: PidNamespace | None = None

    def start(self, argv: Sequence[str], pass_fds: Sequence[int]) -> None:
        """Make the namespace and start CRIU in it; the init reaps CRIU."""
        # CRIU itself takes the pid after the highest of the tree's, so the tree finds
        # all of its own free.
        flags = ["--root-pid", str(self.root_pid), "--last-pid", str(max(self.tree_pids))]
        self.namespace = PidNamespace._start(flags, argv, pass_fds=pass_fds)

    def restored(self, ns_pid: int) -> tuple[PidNamespace, int]:
        """The namespace and the restored root's pid in this /proc, once CRIU has
        answered that it restored the root as ``ns_pid``."""
        if self.namespace is None:
            raise RestoreFailed("CRIU was not started in a new pid namespace")
        root = _wait_host_pid(self.namespace, ns_pid)
        if root is None:
            raise RestoreFailed(
                f"the restored root (pid {ns_pid} in its namespace) is not there after CRIU "
                "said it was restored"
            )
        return self.namespace, root

    def close(self) -> None:
        """End the namespace, if one was made (a failed restore)."""
        if self.namespace is not None:
            self.namespace.close()


def _wait_host_pid(ns: PidNamespace, ns_pid: int, timeout: float = READY_TIMEOUT) -> int | None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = ns.root_host_pid(ns_pid)
        if found is not None:
            return found
        if ns.holder.poll() is not None:
            return None
        time.sleep(0.002)
    return None


def _wait_stopped(pid: int, timeout: float = READY_TIMEOUT) -> bool:
    """Wait until ``pid`` is stopped (the spawned root stops itself before its exec)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if procfs.proc_info(pid).state == "T":
                return True
        except ProcessNotFound:
            return False
        time.sleep(0.002)
    return False


def _read_line(fd: int, timeout: float) -> str:
    data = b""
    deadline = time.monotonic() + timeout
    while b"\n" not in data and time.monotonic() < deadline:
        if select.select([fd], [], [], 0.05)[0]:
            chunk = os.read(fd, 512)
            if not chunk:
                break
            data += chunk
    return data.decode(errors="replace").strip()


def _end(holder: subprocess.Popen[bytes]) -> None:
    if holder.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            holder.send_signal(signal.SIGKILL)  # the init dies with it (PR_SET_PDEATHSIG)
    with contextlib.suppress(subprocess.TimeoutExpired):
        holder.wait(timeout=10)


# --------------------------------------------------------------------------- pids taken here


def check_pids_free(entries: Sequence[ProcessEntry], *, waited: float = 0) -> None:
    """Raise PidInUse naming the holder when a pid of the tree is taken (after ``waited``
    seconds of waiting for the tree's own zombies, which the message then says)."""
    for entry in entries:
        holder = procfs.holder_of(entry.pid)
        if holder is not None:
            after = (
                f" (after waiting {waited:g}s for the tree's own zombies to be reaped)"
                if waited
                else ""
            )
            raise PidInUse(
                f"cannot restore pid {entry.pid} ({entry.command!r}): CRIU restores every "
                f"process under its original pid, and it is taken by {holder}{after}; "
                "or restore into a new pid namespace: pid_namespace='new' (--new-pidns), "
                "or 'auto' to do so only when a pid is taken",
                errno=17,
            )


def _own_zombie(entry: ProcessEntry) -> bool:
    """Whether ``entry``'s pid is held by what is most likely the very process the
    checkpoint recorded, dead and waiting to be reaped by a parent other than this process
    (which never reaps a caller's child): the tree just dumped. Such a pid frees itself;
    one that is free again (reaped since it was seen taken) counts as such too."""
    try:
        info = procfs.proc_info(entry.pid)
    except ProcessNotFound:
        return True
    if info.state != "Z" or info.ppid == os.getpid():
        return False
    # comm is the executable's name: argv[0]'s, or a script's when an interpreter runs it
    # (``#!/usr/bin/python3`` makes argv "python3 ./train.py" and comm "train.py").
    words = entry.command.strip("[]").split(" ")[:2]
    return any(os.path.basename(w)[:15] == info.comm[:15] for w in words if w)


def await_pids_free(entries: Sequence[ProcessEntry], timeout: float) -> tuple[bool, float]:
    """Wait up to ``timeout`` seconds while the only pids of the tree that are taken are
    held by its own zombies (:func:`_own_zombie`); return whether every pid is free, and
    how long was waited."""
    started = time.monotonic()
    deadline = started + timeout
    announced = False
    while True:
        taken = [e for e in entries if procfs.holder_of(e.pid) is not None]
        waited = time.monotonic() - started if announced else 0.0
        if not taken:
            if announced:
                logger.info("restore: the tree's own zombies were reaped after %.2fs", waited)
            return True, waited
        if time.monotonic() >= deadline or not all(_own_zombie(e) for e in taken):
            return False, waited
        if not announced:
            announced = True
            logger.info(
                "restore: pid(s) %s are held by the tree's own zombies; waiting up to %gs "
                "for their parent to reap them",
                ", ".join(str(e.pid) for e in taken),
                timeout,
            )
        time.sleep(0.01)


def pid_namespace_mode(asked: PidNamespaceMode | None, manifest: Manifest) -> PidNamespaceMode:
    """The pid namespace a restore uses: as ``asked``, or by default ``"new"`` for a tree
    checkpointed in a namespace of its own (its pids are low ones, always taken here)."""
    if asked is not None:
        return asked
    return "new" if manifest.workload.get("pid_namespace") == "own" else "current"
