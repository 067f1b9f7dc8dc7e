"""runc's own record of a container: ``ROOT/ID/state.json``, and its status.

runc keeps, per container, a ``state.json`` under its state root (``/run/runc``
by default) with the init pid and start time, the bundle, the cgroup and
namespace paths and the container's original stdio (``external_descriptors``,
which runc's checkpoint writes as ``descriptors.json``). The status is not
stored; it is worked out the way runc does: the init is gone (or another
process has its pid) -> stopped; the exec FIFO is still there -> created; the
freezer cgroup is frozen -> paused; otherwise running.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from cedana import procfs
from cedana.errors import ContainerError, ContainerNotFound, ProcessNotFound

__all__ = ["DEFAULT_ROOT", "LIVE", "RuncState", "check_id", "read_state"]

#: runc's default state root.
DEFAULT_ROOT = Path("/run/runc")

#: The states of a container with a process tree to checkpoint.
LIVE = ("running", "paused")

_ID = re.compile(r"^[\w+\-.]+$")


def check_id(container_id: str) -> str:
    """Return ``container_id`` if runc accepts it (``[A-Za-z0-9_+.-]``, not ``.``/``..``).

    Raises:
        ContainerError: It is not a valid runc container id.
    """
    if not _ID.match(container_id) or container_id in (".", ".."):
        raise ContainerError(
            f"{container_id!r} is not a valid runc container id (letters, digits, '_', '+', "
            "'-' and '.')"
        )
    return container_id


@attrs.frozen(kw_only=True)
class RuncState:
    """A runc container as its ``state.json`` and ``/proc`` describe it.

    Attributes:
        id: The container id.
        root: runc's state root.
        pid: The init process, as seen from the host.
        status: ``"running"``, ``"paused"``, ``"created"`` or ``"stopped"``.
        bundle: The bundle directory (holds ``config.json``).
        rootfs: The root filesystem, an absolute host path.
        created: When runc created (or restored) it, as runc wrote it.
        cgroup_paths: Controller (``""`` for the unified hierarchy) -> cgroup directory.
        namespace_paths: runc's namespace names (``NEWNET``...) -> ``/proc/PID/ns/...``.
        external_descriptors: What the init's fds 0, 1, 2 were at start
            (``/dev/null``, ``pipe:[N]``...).
        raw: The whole ``state.json``.
    """

    id: str
    root: Path
    pid: int
    status: str
    bundle: Path
    rootfs: Path
    created: str
    cgroup_paths: Mapping[str, str]
    namespace_paths: Mapping[str, str]
    external_descriptors: tuple[str, ...]
    raw: Mapping[str, Any] = attrs.field(repr=False, factory=dict)


def _start_time(pid: int) -> int | None:
    """The start time of live process ``pid``; None if it is gone or a zombie."""
    try:
        info = procfs.proc_info(pid)
    except ProcessNotFound:
        return None
    return None if info.state in ("Z", "X") else info.start_time


def _frozen(cgroup_paths: Mapping[str, str]) -> bool:
    freezer = cgroup_paths.get("freezer")
    if freezer:
        try:
            return Path(freezer, "freezer.state").read_text().strip() != "THAWED"
        except OSError:
            return False
    unified = cgroup_paths.get("")
    if unified:
        try:
            return Path(unified, "cgroup.freeze").read_text().strip() == "1"
        except OSError:
            return False
    return False


def _status(root: Path, container_id: str, pid: int, start: int) -> str:
    if pid <= 0 or _start_time(pid) != start:
        return "stopped"
    if (root / container_id / "exec.fifo").exists():
        return "created"
    return "running"


def read_state(root: str | os.PathLike[str], container_id: str) -> RuncState:
    """Read container ``container_id`` from runc's state root ``root``.

    Raises:
        ContainerNotFound: runc has no such container under ``root``.
        ContainerError: Its ``state.json`` cannot be read.
    """
    root = Path(root)
    check_id(container_id)
    path = root / container_id / "state.json"
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        raise ContainerNotFound(
            f"no runc container {container_id!r} under {root} (runc --root {root} list shows "
            "the ones there)"
        ) from None
    except (OSError, ValueError) as exc:
        raise ContainerError(
            f"cannot read runc's state for {container_id!r} ({path}): {exc}"
        ) from exc
    try:
        config = raw.get("config") or {}
        labels = config.get("labels") or []
        bundle = next((lb[len("bundle=") :] for lb in labels if lb.startswith("bundle=")), "")
        pid = int(raw.get("init_process_pid") or 0)
        start = int(raw.get("init_process_start") or 0)
        cgroup_paths = dict(raw.get("cgroup_paths") or {})
        status = _status(root, container_id, pid, start)
        if status == "running" and _frozen(cgroup_paths):
            status = "paused"
        return RuncState(
            id=container_id,
            root=root,
            pid=pid,
            status=status,
            bundle=Path(bundle),
            rootfs=Path(config.get("rootfs") or Path(bundle, "rootfs")),
            created=str(raw.get("created", "")),
            cgroup_paths=cgroup_paths,
            namespace_paths=dict(raw.get("namespace_paths") or {}),
            external_descriptors=tuple(raw.get("external_descriptors") or ()),
            raw=raw,
        )
    except (TypeError, ValueError, AttributeError) as exc:
        raise ContainerError(
            f"runc's state for {container_id!r} ({path}) is malformed: {exc}"
        ) from exc
