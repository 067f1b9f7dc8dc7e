"""Descriptors that lead out of a process tree: which ones do, and how a restore reattaches
them.

CRIU brings back everything a tree holds but not the processes outside it that the tree talks
to. Before a dump, :func:`outside_descriptors` asks who else holds what the tree holds (a pipe
leads outside only when a live process outside holds its other end; a terminal only when the
tree does not hold its pty master). At restore, :func:`inherit_plan` and :func:`inherited_fds`
turn the manifest's record into CRIU's ``inherit_fd`` pairs, one per pipe, each on a descriptor
of its own, and :func:`open_stdio` opens what the caller gave as the restored tree's stdio.
"""

from __future__ import annotations

import contextlib
import os
import re
import stat
import subprocess
from collections.abc import Collection, Iterator, Mapping, Sequence
from typing import IO, Any

import attrs

from cedana import procfs

__all__ = [
    "Inherit",
    "StdioTarget",
    "inherit_plan",
    "inherited_fds",
    "open_stdio",
    "outside_descriptors",
]

#: What a caller may give as a restored tree's stdin, stdout or stderr: a descriptor, a
#: path, a file object, or None for /dev/null.
StdioTarget = int | str | os.PathLike[str] | IO[Any] | None


_PTY_SLAVE = re.compile(r"/dev/pts/(\d+)")
_PTY_MASTERS = ("/dev/ptmx", "/dev/pts/ptmx")


def _is_outside_terminal(target: str, mastered: Collection[int]) -> bool:
    """Whether a descriptor's target is a terminal whose other side is not in the tree: a
    pty slave whose master the tree does not hold, or a tty or console device."""
    slave = _PTY_SLAVE.fullmatch(target)
    if slave is not None:
        return int(slave.group(1)) not in mastered
    if target in _PTY_MASTERS or target == "/dev/tty":  # /dev/tty: whatever the ctty is
        return False
    return target == "/dev/console" or target.startswith("/dev/tty")


def _directions(d: procfs.Descriptor) -> set[str]:
    return {"r"} if not d.writable else {"w"} if not d.readable else {"r", "w"}


def outside_descriptors(
    fds: Mapping[int, Sequence[procfs.Descriptor]],
) -> tuple[list[dict[str, Any]], bool]:
    """The tree's descriptors that lead outside it, and whether it sits on a terminal.

    ``fds`` holds each process's open descriptors. A pipe leads outside only when the
    tree holds one of its ends and a live process outside the tree holds the other: CRIU
    cannot bring that process back, so restore reattaches the pipe to what the caller
    gives (``inherit_fd``). Any other pipe (both ends inside, the other end closed, or in
    flight over a unix socket) is the tree's own: CRIU recreates it with its buffered
    data. Likewise a terminal leads outside only when the tree holds a tty, or a pty
    slave whose master it does not hold; a pty pair of its own is dumped like a pipe.
    """
    ends: dict[str, set[str]] = {}
    pipes: list[procfs.Descriptor] = []
    mastered = {d.tty_index for ds in fds.values() for d in ds if d.tty_index is not None}
    terminal = False
    for descriptors in fds.values():
        for d in descriptors:
            if d.target.startswith("pipe:["):
                ends.setdefault(d.target, set()).update(_directions(d))
                pipes.append(d)
            elif _is_outside_terminal(d.target, mastered):
                terminal = True
    one_way = {key: held for key, held in ends.items() if len(held) == 1}
    leading_out = {
        d.target
        for d in procfs.holders(one_way, exclude=fds.keys())
        if _directions(d) - one_way[d.target]
    }
    external = [
        {"pid": d.pid, "fd": d.fd, "key": d.target, "writable": d.writable}
        for d in pipes
        if d.target in leading_out
    ]
    return external, terminal


@contextlib.contextmanager
def open_stdio(
    stdin: StdioTarget = None, stdout: StdioTarget = None, stderr: StdioTarget = None
) -> Iterator[tuple[int, int, int]]:
    """Descriptors for what a caller gave as a restored workload's stdio: a descriptor or
    file object as is, a path opened (stdout and stderr for appending), None as /dev/null.
    Closes what it opened."""
    opened: list[int] = []

    def one(target: StdioTarget, writing: bool) -> int:
        if isinstance(target, int):
            return target
        if target is not None and hasattr(target, "fileno"):
            return int(target.fileno())
        if target is None:
            fd = os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)
        else:
            flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND if writing else os.O_RDONLY
            fd = os.open(os.fspath(target), flags | os.O_CLOEXEC, 0o600)
        opened.append(fd)
        return fd

    try:
        yield one(stdin, False), one(stdout, True), one(stderr, True)
    finally:
        for fd in opened:
            with contextlib.suppress(OSError):
                os.close(fd)


def _outside_fd(fd: int, writable: bool, stdio: tuple[int, int, int]) -> int:
    """Which of the given stdio an outside descriptor of the tree is reattached to."""
    if fd in (0, 2):
        return stdio[fd]
    return stdio[1] if fd == 1 or writable else stdio[0]


@attrs.frozen(kw_only=True)
class Inherit:
    """One outside pipe of the manifest, and the descriptor it is reattached to."""

    key: str  # CRIU's name for it, ``pipe:[INODE]``
    fd: int
    tree_writes: bool  # the tree holds the write end


def inherit_plan(
    external: Sequence[Mapping[str, Any]], stdio: tuple[int, int, int]
) -> list[Inherit]:
    """What each of the manifest's outside pipes is reattached to: one entry per pipe.

    CRIU hands an inherited descriptor to every holder of the pipe it names, so a pipe
    shared by several processes, or at several fds of one, is one entry. Its lowest fd
    number decides which of ``stdio`` it becomes (one pipe at fds 1 and 2 goes to stdout).
    """
    first: dict[str, Mapping[str, Any]] = {}
    for ext in sorted(external, key=lambda e: (int(e["fd"]), int(e["pid"]))):
        first.setdefault(str(ext["key"]), ext)
    return [
        Inherit(
            key=key,
            fd=_outside_fd(int(ext["fd"]), bool(ext.get("writable")), stdio),
            tree_writes=bool(ext.get("writable")),
        )
        for key, ext in first.items()
    ]


def _relay(fd: int, tree_writes: bool) -> int:
    """A new pipe between the tree and ``fd``, with a detached ``cat`` copying between them
    (to ``fd`` when the tree writes, from it when it reads); returns the tree's end."""
    r, w = os.pipe()
    tree_end, cat_end = (w, r) if tree_writes else (r, w)
    src, dst = (cat_end, fd) if tree_writes else (fd, cat_end)
    try:
        # "&" detaches cat from us (sh exits at once); a background job's stdin would be
        # /dev/null, so its input comes through fd 3.
        subprocess.run(
            ["sh", "-c", "exec 3<&0; cat <&3 3<&- &"],
            stdin=src,
            stdout=dst,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            check=True,
        )
    except BaseException:
        os.close(tree_end)
        raise
    finally:
        os.close(cat_end)
    return tree_end


@contextlib.contextmanager
def inherited_fds(plan: Sequence[Inherit]) -> Iterator[list[tuple[str, int]]]:
    """CRIU's ``inherit_fd`` pairs for ``plan``, each with a descriptor of its own.

    CRIU takes each inherited descriptor into its store and closes it, so two entries on
    one fd (``stdout=f, stderr=f``) get a dup. It then reopens it through /proc/self/fd
    with the pipe's flags: a regular file would be written from offset 0 by every holder,
    and a socket cannot be reopened, so those get a pipe of their own, relayed to the
    file or socket by a detached ``cat`` (as a shell's ``| cat >> FILE`` would). The
    descriptors made here are closed afterwards.
    """
    seen: set[int] = set()
    made: list[int] = []
    pairs = []
    try:
        for entry in plan:
            fd = entry.fd
            if stat.S_ISREG(os.fstat(fd).st_mode) or stat.S_ISSOCK(os.fstat(fd).st_mode):
                fd = _relay(fd, entry.tree_writes)
                made.append(fd)
            elif fd in seen:
                fd = os.dup(fd)
                made.append(fd)
            seen.add(fd)
            pairs.append((entry.key, fd))
        yield pairs
    finally:
        for fd in made:
            os.close(fd)
