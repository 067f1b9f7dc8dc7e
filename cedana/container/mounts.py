"""Which mounts of a runc container CRIU must treat as external, under which keys.

A container's bind mounts (host directories, cgroup v1 hierarchies, device
nodes, ``/dev/null`` over masked files) come from outside its root
filesystem: CRIU cannot dump them, only record that "something is mounted
here" under a key, and at restore be told what to mount for each key. The
keys are runc's convention, so that ``runc restore`` (and containerd, podman,
docker, all of which call it) can answer them from the config:

- a bind mount: its destination, resolved inside the rootfs like runc does
  (``SecureJoin``), e.g. ``/data``;
- each cgroup v1 hierarchy of a ``cgroup`` mount without a cgroup namespace:
  ``/sys/fs/cgroup/<hierarchy>``;
- a masked path that is a file: its path, with the value ``/dev/null``;
- a device node: its path (``/dev/null``, ``/dev/zero``... and the config's).
"""

from __future__ import annotations

import errno as errno_mod
import os
import posixpath
import stat
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["DEFAULT_DEVICES", "ext_mounts", "is_bind", "masked_files", "secure_join"]

#: The device nodes runc adds to every container (libcontainer/specconv AllowedDevices).
DEFAULT_DEVICES = ("/dev/null", "/dev/random", "/dev/full", "/dev/tty", "/dev/zero", "/dev/urandom")

_MAX_LINKS = 255


def secure_join(root: str | os.PathLike[str] | None, unsafe: str) -> str:
    """Resolve ``unsafe`` inside ``root`` as runc's ``SecureJoin`` does; return it root-relative.

    Symlinks met on the way are followed but can never leave ``root`` (an
    absolute target restarts at ``root``, ``..`` stops at it); components that
    do not exist are kept as written. With ``root`` None the path is only
    cleaned lexically.

    Returns:
        An absolute path inside the container (``/var/run`` -> ``/run`` when it is a link).
    """
    resolved: list[str] = []
    remaining = unsafe
    links = 0
    while remaining:
        comp, _, remaining = remaining.partition("/")
        if comp in ("", "."):
            continue
        if comp == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = [*resolved, comp]
        if root is None:
            resolved = candidate
            continue
        full = os.path.join(os.fspath(root), *candidate)
        try:
            target = os.readlink(full)
        except OSError as exc:
            # Not a symlink, or not there (ENOENT / ENOTDIR): keep the name as written.
            if exc.errno not in (errno_mod.EINVAL, errno_mod.ENOENT, errno_mod.ENOTDIR):
                raise
            resolved = candidate
            continue
        links += 1
        if links > _MAX_LINKS:
            raise OSError(errno_mod.ELOOP, f"too many symlinks resolving {unsafe} in {root}")
        if target.startswith("/"):
            resolved = []
        remaining = target + ("/" + remaining if remaining else "")
    return "/" + "/".join(resolved)


def is_bind(mount: Mapping[str, Any]) -> bool:
    """True for an OCI mount runc makes as a bind mount (``bind``/``rbind`` option or type)."""
    options = mount.get("options") or []
    return mount.get("type") == "bind" or "bind" in options or "rbind" in options


def ext_mounts(
    config: Mapping[str, Any],
    *,
    rootfs: str | os.PathLike[str] | None,
    cgroup_v1: Sequence[str],
    cgroup_unified: bool,
    masked_files: Sequence[str],
) -> list[tuple[str, str]]:
    """CRIU ``ext_mnt`` (key, value) pairs for a dump, in runc's order and with runc's keys.

    Args:
        config: The OCI ``config.json``.
        rootfs: The container's root filesystem on the host, to resolve
            destinations through its symlinks; None to resolve lexically.
        cgroup_v1: The host's cgroup v1 hierarchy mount points.
        cgroup_unified: The host is pure cgroup v2.
        masked_files: The masked paths that exist in the container and are not
            directories (runc masks those with ``/dev/null``).
    """
    linux = config.get("linux") or {}
    has_cgroupns = any(ns.get("type") == "cgroup" for ns in linux.get("namespaces") or [])
    out: list[tuple[str, str]] = []

    def add(destination: str) -> None:
        key = secure_join(rootfs, destination)
        out.append((key, key))

    for m in config.get("mounts") or []:
        destination = str(m.get("destination", ""))
        if is_bind(m):
            add(destination)
        elif m.get("type") == "cgroup" and not (cgroup_unified or has_cgroupns):
            for hierarchy in cgroup_v1:
                add(posixpath.join(destination, posixpath.basename(hierarchy)))
    for path in masked_files:
        out.append((path, "/dev/null"))
    config_devices = [str(d.get("path")) for d in linux.get("devices") or [] if d.get("path")]
    for device in [d for d in DEFAULT_DEVICES if d not in config_devices] + config_devices:
        add(device)
    return out


def masked_files(pid: int, masked: Sequence[str]) -> list[str]:
    """The masked paths that exist in the running container and are not directories."""
    out = []
    for path in masked:
        try:
            st = os.stat(f"/proc/{pid}/root/{path.lstrip('/')}")
        except OSError:
            continue
        if not stat.S_ISDIR(st.st_mode):
            out.append(path)
    return out
