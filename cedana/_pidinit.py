"""cedana's pid-namespace init: hold a new pid namespace for one workload.

Run as a script (``python -I _pidinit.py ...``), never imported by the package, so it
starts in tens of milliseconds and needs nothing but the standard library. The process
the caller starts is the *holder*: it unshares a new pid and mount namespace and forks
the *init*, pid 1 of the new namespace, then waits for it and exits as the workload did
(the same code, or killed by the same signal), so the caller's ``Popen.wait()`` tells
the workload's fate. Signals the holder gets (TERM, INT, HUP, QUIT, USR1, USR2, CONT,
WINCH) go to the init, which hands them to the workload's root; when the holder dies
the init is killed (``PR_SET_PDEATHSIG``) and the kernel ends the whole namespace.

The init mounts a /proc of the new namespace (its mounts are slaves of the caller's, so
nothing leaks out), reaps every process that ends in the namespace, and exits when the
workload's root does (which ends the rest of the namespace), passing the root's wait
status to the holder on a pipe.

Two modes:

``--spawn -- ARGV``
    Start ARGV as the workload's root, in a session of its own (ns pid 2); it stops
    itself (SIGSTOP) before the exec, and the caller continues it once it has its pid.
``--root-pid N --last-pid M -- CRIU swrk FD``
    Run CRIU (its RPC socket at FD, inherited) to restore a tree whose root has ns pid N;
    ``ns_last_pid`` is set to M first, so CRIU itself gets a pid the tree does not need.

Before the workload (or CRIU) starts, the init writes ``ready\\n`` to the descriptor
named by ``--ready-fd``; an error before that is written there as one line instead.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import signal
import sys
import time

CLONE_NEWNS = 0x00020000
CLONE_NEWPID = 0x20000000
MS_NOSUID, MS_NODEV, MS_NOEXEC = 2, 4, 8
MS_REC, MS_SLAVE = 0x4000, 0x80000
PR_SET_PDEATHSIG = 1

FORWARDED = (
    signal.SIGTERM,
    signal.SIGINT,
    signal.SIGHUP,
    signal.SIGQUIT,
    signal.SIGUSR1,
    signal.SIGUSR2,
    signal.SIGCONT,
    signal.SIGWINCH,
)

#: The init's exit code when the workload never started (CRIU failed).
NOT_STARTED = 125

_libc = ctypes.CDLL(None, use_errno=True)


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _mount(source: str, target: str, fstype: str | None, flags: int) -> None:
    _check(
        _libc.mount(
            source.encode(), target.encode(), fstype.encode() if fstype else None, flags, None
        ),
        f"mount {target}",
    )


def _close_all_but(keep: int) -> None:
    """Close every descriptor above stderr but ``keep``: holding a copy of the workload's
    pipes would keep their readers from ever seeing the end."""
    os.closerange(3, keep)
    os.closerange(keep + 1, os.sysconf("SC_OPEN_MAX"))


def _reopen_here(keep: set[int]) -> None:
    """Reopen, by path and inside the new mount namespace, every inherited descriptor on
    a file or device (the workload's stdio, what CRIU is to hand the tree), at the same
    number, mode and offset. A descriptor opened in the caller's mount namespace points at
    a mount this one has a copy of, under another id, and CRIU cannot dump a descriptor
    whose mount is in no namespace it sees."""
    import fcntl
    import stat

    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd in keep:
            continue
        try:
            st = os.fstat(fd)
            if not (stat.S_ISREG(st.st_mode) or stat.S_ISCHR(st.st_mode)):
                continue
            path = os.readlink(f"/proc/self/fd/{fd}")
            flags = fcntl.fcntl(fd, fcntl.F_GETFL) & (os.O_ACCMODE | os.O_APPEND)
            new = os.open(path, flags | os.O_NOCTTY)
        except OSError:
            continue  # gone, deleted, or not ours to open: left as it is
        try:
            again = os.fstat(new)
            if (again.st_dev, again.st_ino) != (st.st_dev, st.st_ino):
                continue
            if stat.S_ISREG(st.st_mode) and not flags & os.O_APPEND:
                os.lseek(new, os.lseek(fd, 0, os.SEEK_CUR), os.SEEK_SET)
            os.dup2(new, fd, inheritable=os.get_inheritable(fd))
        finally:
            os.close(new)


def _parse(argv: list[str]) -> dict[str, object]:
    if "--" not in argv:
        raise SystemExit("usage: _pidinit.py [--spawn | --root-pid N --last-pid M] -- ARGV")
    split = argv.index("--")
    flags, command = argv[:split], argv[split + 1 :]
    parsed: dict[str, object] = {"command": command, "spawn": "--spawn" in flags}
    for name in ("--root-pid", "--last-pid", "--ready-fd", "--status-fd"):
        if name in flags:
            parsed[name[2:].replace("-", "_")] = int(flags[flags.index(name) + 1])
    return parsed


def _init(args: dict[str, object], ready: int, status_fd: int) -> int:
    """pid 1 of the new namespace: start the workload or CRIU, reap, forward, report."""
    root: int | None = None

    def forward(signum: int, _frame: object) -> None:
        if root is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(root, signum)

    for sig in FORWARDED:
        signal.signal(sig, forward)
    command = args["command"]
    assert isinstance(command, list)
    try:
        _check(_libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0), "prctl")
        _mount("none", "/", None, MS_REC | MS_SLAVE)
        _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
        _reopen_here({ready, status_fd})
        if not args["spawn"]:
            with open("/proc/sys/kernel/ns_last_pid", "w") as f:
                f.write(str(args["last_pid"]))
        child = os.fork()
        if child == 0:
            try:
                for sig in FORWARDED:
                    signal.signal(sig, signal.SIG_DFL)
                if args["spawn"]:
                    os.setsid()
                    # Stopped until the caller has seen its pid (PidNamespace.spawn goes on
                    # with SIGCONT): a workload that ends at once would otherwise be gone
                    # before its host pid could be found.
                    os.kill(os.getpid(), signal.SIGSTOP)
                os.execvp(command[0], command)
            finally:
                os._exit(127)
    except OSError as exc:
        os.write(ready, f"{exc}\n".encode())
        return NOT_STARTED
    os.write(ready, b"ready\n")
    os.close(ready)
    _close_all_but(status_fd)  # what was passed for CRIU or the workload is theirs alone
    root = child if args["spawn"] else int(str(args["root_pid"]))
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except ChildProcessError:
            return NOT_STARTED  # CRIU ended and the tree never came (or was reaped by it)
        if pid == root:
            os.write(status_fd, f"{status}\n".encode())
            _linger()
            return os.waitstatus_to_exitcode(status) & 0xFF
        # Anything else is reaped and forgotten: CRIU (once it has restored the tree, or
        # failed: then the namespace holds nothing and waitpid says so) and orphans.


def _linger() -> None:
    """Before pid 1 exits (which kills whatever is left in the namespace): kill the
    workload's orphans, and wait for processes that entered the namespace from outside
    (CRIU, dumping the tree, has just killed its root and is still writing)."""
    for kid in _children():
        with contextlib.suppress(ProcessLookupError):
            os.kill(kid, signal.SIGKILL)
    while True:
        try:
            while os.waitpid(-1, os.WNOHANG)[0] > 0:
                pass
        except ChildProcessError:
            pass
        others = [n for n in os.listdir("/proc") if n.isdigit() and n != "1"]
        if not others:
            return
        time.sleep(0.01)


def _children() -> list[int]:
    try:
        with open("/proc/1/task/1/children") as f:
            return [int(x) for x in f.read().split()]
    except OSError:
        return []


def _hold(args: dict[str, object]) -> int:
    """The holder, in the caller's pid namespace: make the namespace, wait, mirror the exit."""
    ready = int(str(args.get("ready_fd", -1)))
    _check(_libc.unshare(CLONE_NEWPID | CLONE_NEWNS), "unshare")
    status_r, status_w = os.pipe()
    init = os.fork()
    if init == 0:
        os.close(status_r)
        code = NOT_STARTED
        try:
            code = _init(args, ready, status_w)
        finally:
            os._exit(code)
    os.close(status_w)
    os.close(ready)
    _close_all_but(status_r)

    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(init, signum)

    for sig in FORWARDED:
        signal.signal(sig, forward)
    _, status = os.waitpid(init, 0)
    with os.fdopen(status_r, "rb") as pipe:
        told = pipe.read().strip()
    if told:
        status = int(told)
    if os.WIFSIGNALED(status):
        signum = os.WTERMSIG(status)
        if signum in FORWARDED:
            signal.signal(signum, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, [signum])
        os.kill(os.getpid(), signum)
    return os.waitstatus_to_exitcode(status) & 0xFF


if __name__ == "__main__":
    sys.exit(_hold(_parse(sys.argv[1:])))
