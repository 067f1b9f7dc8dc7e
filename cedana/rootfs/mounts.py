"""Mounts: reading ``/proc/PID/mountinfo`` and calling mount(2) / umount2(2).

Shared by the snapshotters (which find and make overlay mounts) and the
container layer (which needs the host's cgroup mounts and a container's own
mount table).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno as errno_mod
import os
import re
from collections.abc import Sequence
from pathlib import Path

import attrs

__all__ = ["MountEntry", "find_mount", "make_shared", "mount", "mountinfo", "umount"]

MNT_DETACH = 2
_ESCAPE = re.compile(r"\\([0-7]{3})")


def unescape(field: str) -> str:
    r"""Undo mountinfo's octal escapes (``\040`` for a space, ``\134`` for a backslash...)."""
    return _ESCAPE.sub(lambda m: chr(int(m.group(1), 8)), field)


@attrs.frozen(kw_only=True)
class MountEntry:
    """One line of ``/proc/PID/mountinfo`` (see proc(5)), unescaped.

    ``super_options`` is kept as the raw, still escaped, comma-separated text
    because a filesystem's own options may themselves hold escaped commas; use
    :meth:`super_option_list` to split it.
    """

    mount_id: int
    parent_id: int
    device: str
    root: str
    mountpoint: str
    options: str
    fstype: str
    source: str
    super_options: str

    def super_option_list(self) -> list[str]:
        """The filesystem's options, split on commas, then unescaped."""
        return [unescape(o) for o in self.super_options.split(",") if o]


def parse_mountinfo(text: str) -> list[MountEntry]:
    """Parse mountinfo ``text``; malformed lines are skipped."""
    out = []
    for line in text.splitlines():
        left, sep, right = line.partition(" - ")
        if not sep:
            continue
        a = left.split(" ")
        b = right.split(" ")
        if len(a) < 6 or len(b) < 3:
            continue
        out.append(
            MountEntry(
                mount_id=int(a[0]),
                parent_id=int(a[1]),
                device=a[2],
                root=unescape(a[3]),
                mountpoint=unescape(a[4]),
                options=a[5],
                fstype=b[0],
                source=unescape(b[1]),
                super_options=b[2],
            )
        )
    return out


def mountinfo(pid: int | str = "self") -> list[MountEntry]:
    """The mount table of ``pid``'s mount namespace, in mount order."""
    return parse_mountinfo(Path(f"/proc/{pid}/mountinfo").read_text())


def find_mount(path: str | os.PathLike[str], pid: int | str = "self") -> MountEntry | None:
    """The mount whose mountpoint is ``path`` (the topmost if several), or None."""
    where = os.path.realpath(path)
    found = None
    for entry in mountinfo(pid):
        if entry.mountpoint == where:
            found = entry
    return found


def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)


def mount(source: str, target: str | os.PathLike[str], fstype: str, data: str = "") -> None:
    """mount(2) ``source`` on ``target``; OSError with errno on failure."""
    raw = data.encode()
    if len(raw) >= 4096:
        raise OSError(
            errno_mod.E2BIG,
            f"mount options for {target} are {len(raw)} bytes, over the kernel's one-page limit",
        )
    rc = _libc().mount(source.encode(), os.fsencode(target), fstype.encode(), 0, raw or None)
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"mount {fstype} on {target}: {os.strerror(err)}", os.fspath(target))


#: mount(2)'s flag that makes a mount (the peer group of) a shared one.
MS_SHARED = 1 << 20


def make_shared(target: str | os.PathLike[str]) -> None:
    """mount(2) ``MS_SHARED`` on ``target`` (``mount --make-shared``); OSError on failure."""
    rc = _libc().mount(None, os.fsencode(target), None, MS_SHARED, None)
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"make-shared {target}: {os.strerror(err)}", os.fspath(target))


#: mount(2)'s flag for a bind mount (without ``MS_REC``: the mounts below are not carried).
MS_BIND = 1 << 12


def bind_mount(source: str | os.PathLike[str], target: str | os.PathLike[str]) -> None:
    """mount(2) ``MS_BIND`` ``source`` on ``target``, not recursive: the mounts below
    ``source`` are not seen there (``mount --bind``); OSError on failure."""
    rc = _libc().mount(os.fsencode(source), os.fsencode(target), None, MS_BIND, None)
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"bind {source} on {target}: {os.strerror(err)}", os.fspath(target))


def umount(target: str | os.PathLike[str], *, detach: bool = False) -> None:
    """umount2(2) ``target``; OSError with errno on failure."""
    rc = _libc().umount2(os.fsencode(target), MNT_DETACH if detach else 0)
    if rc != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"umount {target}: {os.strerror(err)}", os.fspath(target))


def is_mountpoint(path: str | os.PathLike[str]) -> bool:
    """True when something is mounted exactly at ``path``."""
    return find_mount(path) is not None


def overlay_options(
    lower: Sequence[str], upper: str | None, work: str | None, *, userxattr: bool = False
) -> str:
    """The ``data`` string for an overlay mount.

    Raises:
        ValueError: A path holds ``,`` or ``:``, which overlay's option syntax cannot carry.
    """
    for p in (*lower, upper or "", work or ""):
        if "," in p or ":" in p:
            raise ValueError(
                f"overlay layer path {p!r} holds ',' or ':', which overlay cannot take"
            )
    parts = ["lowerdir=" + ":".join(lower)]
    if upper is not None and work is not None:
        parts += [f"upperdir={upper}", f"workdir={work}"]
    if userxattr:
        parts.append("userxattr")
    return ",".join(parts)
