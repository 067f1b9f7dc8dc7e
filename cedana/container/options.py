"""A runc container's config -> the CRIU options its dump needs, as runc's checkpoint sets them.

Mirrors runc 1.1's ``Checkpoint`` (libcontainer/container_linux.go) and the
options its command line always adds: the root is the container's rootfs;
cgroups are managed (mode ``default``) and frozen through the freezer cgroup;
the network namespace's devices are left out (``empty_ns``: runc restores it
empty); a pty whose master lives outside is allowed (``orphan_pts_master``);
bind mounts, cgroup v1 bind mounts, masked files and device nodes are external
mounts under runc's keys (see :mod:`cedana.container.mounts`); network and pid
namespaces given by path are external namespaces (see
:mod:`cedana.container.namespaces`); the CRIU configuration file is runc's
(``/etc/criu/runc.conf``, or the ``org.criu.config`` annotation). Images dumped
with these options restore with ``runc restore``.

:func:`dump_options` is pure (config plus :class:`ContainerFacts`), so it is
unit-tested without root; :func:`gather_facts` reads the live container.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import attrs

from cedana.container import cgroups, mounts, namespaces
from cedana.container.state import RuncState
from cedana.rootfs.mounts import mountinfo

__all__ = ["RUNC_CRIU_CONFIG", "ContainerFacts", "dump_options", "gather_facts"]

#: The CRIU configuration file runc passes unless the config's annotations say otherwise.
RUNC_CRIU_CONFIG = "/etc/criu/runc.conf"


@attrs.frozen(kw_only=True)
class ContainerFacts:
    """What the running container and the host add to its config for a dump.

    Attributes:
        rootfs: The root filesystem on the host (CRIU's ``root``).
        freezer: The cgroup to freeze the container through, if any.
        cgroup_v1: The host's cgroup v1 hierarchy mount points.
        cgroup_unified: The host is pure cgroup v2.
        masked_files: Masked paths present in the container that are not directories.
    """

    rootfs: str
    freezer: str | None = None
    cgroup_v1: tuple[str, ...] = ()
    cgroup_unified: bool = False
    masked_files: tuple[str, ...] = ()


def criu_config_file(config: Mapping[str, Any]) -> str | None:
    """runc's choice of CRIU configuration file for this config (None: none at all)."""
    annotations = config.get("annotations") or {}
    if "org.criu.config" in annotations:
        return str(annotations["org.criu.config"]) or None
    return RUNC_CRIU_CONFIG


def dump_options(
    config: Mapping[str, Any],
    facts: ContainerFacts,
    *,
    inode_of: Callable[[str], int] = lambda p: os.stat(p).st_ino,
    resolve_in_rootfs: bool = True,
) -> dict[str, Any]:
    """The container-specific ``criu_opts`` for dumping a container run from ``config``.

    The Process layer adds the pid, leave_running, tcp_established and file_locks.

    Args:
        config: The OCI ``config.json``.
        facts: What the live container adds.
        inode_of: Finds a namespace file's inode (unit tests pass a fake).
        resolve_in_rootfs: Resolve mount destinations through the rootfs' symlinks.

    Raises:
        OSError: A namespace path in the config does not exist.
    """
    linux = config.get("linux") or {}
    opts: dict[str, Any] = {
        "root": facts.rootfs,
        "manage_cgroups": True,
        "manage_cgroups_mode": "default",
        "orphan_pts_master": True,
        # runc's checkpoint defaults: no shell job, no external unix sockets, and the
        # network namespace's devices left out (runc restores it empty).
        "shell_job": False,
        "ext_unix_sk": False,
        "empty_ns": namespaces.CLONE_NEWNET,
        "ext_mnt": mounts.ext_mounts(
            config,
            rootfs=facts.rootfs if resolve_in_rootfs else None,
            cgroup_v1=facts.cgroup_v1,
            cgroup_unified=facts.cgroup_unified,
            masked_files=facts.masked_files,
        ),
        "external": namespaces.external_namespaces(linux.get("namespaces") or [], inode_of),
    }
    if facts.freezer:
        opts["freeze_cgroup"] = facts.freezer
    config_file = criu_config_file(config)
    if config_file:
        opts["config_file"] = config_file
    return opts


def gather_facts(state: RuncState, config: Mapping[str, Any]) -> ContainerFacts:
    """Read what :func:`dump_options` needs from the running container and the host."""
    host_mounts = mountinfo()
    unified = cgroups.unified_mode(host_mounts)
    linux = config.get("linux") or {}
    return ContainerFacts(
        rootfs=os.fspath(state.rootfs),
        freezer=cgroups.freezer_path(state.cgroup_paths, unified=unified),
        cgroup_v1=() if unified else tuple(cgroups.v1_hierarchies(host_mounts)),
        cgroup_unified=unified,
        masked_files=tuple(mounts.masked_files(state.pid, linux.get("maskedPaths") or [])),
    )
