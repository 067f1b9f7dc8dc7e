"""Reading live processes from /proc: the tree, descriptors, sockets.

Used before a dump to decide what CRIU must be told (shell-job, external
descriptors, established connections) while nothing is frozen yet.
"""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Collection, Container, Iterable, Iterator
from pathlib import Path

import attrs

from cedana.errors import NotCheckpointable, ProcessNotFound

__all__ = [
    "Descriptor",
    "ProcInfo",
    "TcpConnection",
    "anonymous_memory",
    "check_not_traced",
    "children",
    "descriptors",
    "established_tcp",
    "holder_of",
    "holders",
    "proc_info",
    "tracer_of",
    "tree",
]

PROC = Path("/proc")
_PF_KTHREAD = 0x00200000
_TCP_ESTABLISHED = "01"


@attrs.frozen(kw_only=True)
class ProcInfo:
    """One live process as /proc shows it."""

    pid: int
    ppid: int
    pgid: int
    sid: int
    state: str
    comm: str
    cmdline: tuple[str, ...]
    kernel_thread: bool
    start_time: int = 0  # clock ticks after boot: tells a pid's reuse apart

    @property
    def command(self) -> str:
        """The command line, or ``[comm]`` when it has none."""
        return " ".join(self.cmdline) if self.cmdline else f"[{self.comm}]"


@attrs.frozen(kw_only=True)
class Descriptor:
    """An open descriptor of a process: its number, what it points at, its mode."""

    pid: int
    fd: int
    target: str
    flags: int
    tty_index: int | None = None  # a pty master's: the N of its slave /dev/pts/N

    @property
    def writable(self) -> bool:
        return self.flags & os.O_ACCMODE != os.O_RDONLY

    @property
    def readable(self) -> bool:
        return self.flags & os.O_ACCMODE != os.O_WRONLY


@attrs.frozen(kw_only=True)
class TcpConnection:
    """An established TCP connection held by a process of the tree."""

    pid: int
    fd: int
    local: str
    remote: str


def proc_info(pid: int) -> ProcInfo:
    """Read ``/proc/PID``.

    Raises:
        ProcessNotFound: No such process (or it exited meanwhile).
    """
    try:
        stat = (PROC / str(pid) / "stat").read_text()
        raw_cmdline = (PROC / str(pid) / "cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError):
        raise ProcessNotFound(f"no process with pid {pid}") from None
    # comm is parenthesised and may itself contain spaces or parentheses.
    comm = stat[stat.index("(") + 1 : stat.rindex(")")]
    fields = stat[stat.rindex(")") + 2 :].split()
    cmdline = tuple(a.decode(errors="replace") for a in raw_cmdline.split(b"\0") if a)
    return ProcInfo(
        pid=pid,
        state=fields[0],
        ppid=int(fields[1]),
        pgid=int(fields[2]),
        sid=int(fields[3]),
        comm=comm,
        cmdline=cmdline,
        kernel_thread=bool(int(fields[6]) & _PF_KTHREAD),
        start_time=int(fields[19]),
    )


def children(pid: int) -> list[int]:
    """The pids whose parent is ``pid`` (any of its threads), adopted orphans included."""
    kids: list[int] = []
    try:
        for task in (PROC / str(pid) / "task").iterdir():
            text = (task / "children").read_text()
            kids.extend(int(c) for c in text.split())
    except (FileNotFoundError, ProcessLookupError):
        pass
    return kids


def tree(pid: int) -> list[ProcInfo]:
    """The process tree rooted at ``pid``, root first, parents before children."""
    out = [proc_info(pid)]
    queue = [pid]
    while queue:
        for child in children(queue.pop(0)):
            try:
                out.append(proc_info(child))
            except ProcessNotFound:
                continue
            queue.append(child)
    return out


def descriptors(pid: int, targets: Container[str] | None = None) -> list[Descriptor]:
    """Every open descriptor of ``pid`` (descriptors closed meanwhile are skipped), or
    only those pointing at one of ``targets``."""
    fd_dir = PROC / str(pid) / "fd"
    out = []
    try:
        names = os.listdir(fd_dir)
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return []
    for name in names:
        try:
            target = os.readlink(fd_dir / name)
            if targets is not None and target not in targets:
                continue
            info = (PROC / str(pid) / "fdinfo" / name).read_text()
        except (FileNotFoundError, ProcessLookupError, PermissionError):
            continue  # closed meanwhile, or a process even root may not look into
        flags, tty_index = 0, None
        for line in info.splitlines():
            if line.startswith("flags:"):
                flags = int(line.split()[1], 8)
            elif line.startswith("tty-index:"):
                tty_index = int(line.split()[1])
        out.append(
            Descriptor(pid=pid, fd=int(name), target=target, flags=flags, tty_index=tty_index)
        )
    return sorted(out, key=lambda d: d.fd)


def holders(targets: Collection[str], *, exclude: Collection[int]) -> list[Descriptor]:
    """The descriptors pointing at one of ``targets`` (``pipe:[INODE]``...) held by every
    live process but those in ``exclude``: who else holds what a tree holds."""
    if not targets:
        return []
    wanted = set(targets)
    out: list[Descriptor] = []
    for entry in os.listdir(PROC):
        if entry.isdigit() and int(entry) not in exclude:
            out += descriptors(int(entry), wanted)
    return out


def _addr(hex_addr: str) -> str:
    host, port = hex_addr.split(":")
    raw = bytes.fromhex(host)
    if len(raw) == 4:
        ip = socket.inet_ntop(socket.AF_INET, struct.pack("<I", int(host, 16)))
        return f"{ip}:{int(port, 16)}"
    words = struct.unpack("<4I", raw)
    ip = socket.inet_ntop(socket.AF_INET6, struct.pack(">4I", *words))
    return f"[{ip}]:{int(port, 16)}"


def _tcp_table(pid: int) -> Iterator[tuple[int, str, str, str]]:
    """(inode, local, remote, state) for each TCP socket in pid's network namespace."""
    for name in ("tcp", "tcp6"):
        try:
            lines = (PROC / str(pid) / "net" / name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            f = line.split()
            yield int(f[9]), _addr(f[1]), _addr(f[2]), f[3]


def established_tcp(pid: int, fds: Iterable[Descriptor]) -> list[TcpConnection]:
    """Established TCP connections among ``fds`` (all of them in ``pid``'s netns)."""
    by_inode = {}
    for d in fds:
        if d.target.startswith("socket:["):
            by_inode[int(d.target[8:-1])] = d
    if not by_inode:
        return []
    out = []
    for inode, local, remote, state in _tcp_table(pid):
        holder = by_inode.get(inode)
        if holder is not None and state == _TCP_ESTABLISHED:
            out.append(TcpConnection(pid=holder.pid, fd=holder.fd, local=local, remote=remote))
    return out


def holder_of(pid: int) -> str | None:
    """Say who holds ``pid`` and what would free it (for a pid-in-use error); None if free."""
    try:
        info = proc_info(pid)
    except ProcessNotFound:
        return None
    if info.state == "Z":
        if info.ppid == os.getpid():
            return (
                f"a zombie of {info.comm!r} whose parent is this very process (pid "
                f"{info.ppid}), which has not reaped it: call wait() on it (its "
                "subprocess.Popen's wait() or poll(), or os.waitpid) before restoring"
            )
        try:
            parent = proc_info(info.ppid).command
        except ProcessNotFound:
            parent = "?"
        return (
            f"a zombie of {info.comm!r} whose parent (pid {info.ppid}, {parent}) has not "
            "reaped it; that parent must wait() for it or exit"
        )
    return (
        f"{info.command!r} (state {info.state}); stop it, or restore where the pid is free "
        "(another machine, a new pid namespace)"
    )


def check_dumpable(info: ProcInfo) -> None:
    """Refuse targets CRIU cannot dump, before anything is frozen."""
    if info.kernel_thread:
        raise NotCheckpointable(
            f"pid {info.pid} ({info.comm}) is a kernel thread; only user processes can be "
            "checkpointed"
        )
    if info.pid == 1:
        raise NotCheckpointable("pid 1 is this machine's init; it cannot be checkpointed")
    own = os.getpid()
    ancestor = own
    while ancestor > 1:
        if ancestor == info.pid:
            raise NotCheckpointable(
                f"pid {info.pid} is this process or one of its ancestors; a tree cannot "
                "checkpoint itself; run cedana from outside the tree"
            )
        try:
            ancestor = proc_info(ancestor).ppid
        except ProcessNotFound:
            break


def tracer_of(pid: int) -> int:
    """The pid ptracing any thread of ``pid`` (``TracerPid`` in /proc), 0 when none (or gone)."""
    try:
        tasks = os.listdir(PROC / str(pid) / "task")
    except (FileNotFoundError, ProcessLookupError):
        return 0
    for tid in tasks:
        try:
            status = (PROC / str(pid) / "task" / tid / "status").read_text()
        except (FileNotFoundError, ProcessLookupError):
            continue
        for line in status.splitlines():
            if line.startswith("TracerPid:"):
                tracer = int(line.split()[1])
                if tracer:
                    return tracer
                break
    return 0


def check_not_traced(tree: Iterable[ProcInfo]) -> None:
    """Refuse a tree a process of which is already ptraced: CRIU must seize every task,
    and a task has one tracer at a time (another checkpoint, a debugger, strace).

    Raises:
        NotCheckpointable: Naming the traced pid and its tracer.
    """
    for info in tree:
        tracer = tracer_of(info.pid)
        if tracer:
            try:
                who = proc_info(tracer).comm
            except ProcessNotFound:
                who = "gone"
            raise NotCheckpointable(
                f"pid {info.pid} is being checkpointed or traced by another process (pid "
                f"{tracer}, {who}); wait for it to finish, then checkpoint again"
            )


def anonymous_memory(pids: Iterable[int]) -> int | None:
    """The anonymous memory (and swap) of ``pids`` in bytes, about what CRIU dumps of them
    (``smaps_rollup``: the kernel walks their page tables, so only when it is wanted);
    None when nothing could be read."""
    total = 0
    for pid in pids:
        try:
            with open(PROC / str(pid) / "smaps_rollup", encoding="ascii") as f:
                for line in f:
                    key, _, value = line.partition(":")
                    if key in ("Anonymous", "Swap"):
                        total += int(value.split()[0]) << 10
        except (OSError, ValueError, IndexError):
            continue
    return total or None
