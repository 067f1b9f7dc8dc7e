"""Cgroups of a runc container, as CRIU needs them.

This machine kind matters: on cgroup v1 (or hybrid: v1 controllers plus a
cgroup2 mount at ``/sys/fs/cgroup/unified``) runc uses the v1 freezer, and a
container without its own cgroup namespace sees ``/sys/fs/cgroup/<hierarchy>``
as bind mounts of its host cgroups, which CRIU must treat as external. On a
pure cgroup v2 host there is one unified hierarchy and ``/sys/fs/cgroup`` is a
real cgroup2 mount inside the container.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from cedana.rootfs.mounts import MountEntry, mountinfo

__all__ = ["freezer_path", "rename_path", "unified_mode", "v1_hierarchies"]

CGROUP_ROOT = "/sys/fs/cgroup"


def unified_mode(mounts: list[MountEntry] | None = None) -> bool:
    """True when ``/sys/fs/cgroup`` itself is a cgroup2 mount (pure v2, no v1 controllers)."""
    mounts = mountinfo() if mounts is None else mounts
    top = [m for m in mounts if m.mountpoint == CGROUP_ROOT]
    return bool(top) and top[-1].fstype == "cgroup2"


def v1_hierarchies(mounts: list[MountEntry] | None = None) -> list[str]:
    """Mount points of the host's cgroup v1 hierarchies (``/sys/fs/cgroup/cpu``, ...).

    runc mirrors each as a bind mount at ``/sys/fs/cgroup/<basename>`` in a
    container without a cgroup namespace.
    """
    mounts = mountinfo() if mounts is None else mounts
    seen: list[str] = []
    for m in mounts:
        if m.fstype == "cgroup" and m.mountpoint not in seen:
            seen.append(m.mountpoint)
    return seen


def freezer_path(cgroup_paths: Mapping[str, str], *, unified: bool) -> str | None:
    """The cgroup CRIU freezes the container through (runc's ``Path("freezer")``).

    The v1 freezer controller's directory, or on a pure v2 host the unified
    cgroup; None when there is none (CRIU then stops tasks with ptrace).
    """
    path = cgroup_paths.get("" if unified else "freezer")
    if path and os.path.isdir(path):
        return path
    return None


def rename_path(path: str, old: str, new: str) -> str:
    """Point a config's ``cgroupsPath`` at container ``new`` when it ends with ``old``
    (``/any/old``, or systemd's ``slice:prefix:old``); others are kept.

    A runtime that names the cgroup ``PREFIX-old`` (podman's cgroupfs ``libpod-ID``)
    gets ``/any/new``: the restored container's own, and not its runtime's name for it.
    """
    if old == new:
        return path
    if ":" in path:  # systemd: slice:prefix:name
        parts = path.split(":")
        if parts[-1] == old:
            parts[-1] = new
        return ":".join(parts)
    head, sep, tail = path.rpartition("/")
    if tail == old or (sep and tail.endswith(f"-{old}")):
        return f"{head}{sep}{new}"
    return path
