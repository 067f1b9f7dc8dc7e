"""A rootfs-only checkpoint started afresh under runc: :func:`plan_fresh` decides and checks
everything (the name, the bundle, the lower layers, the confined config) before anything is
made, and :meth:`FreshPlan.execute` makes the bundle (the same image layers with a new upper
directory holding the changes) and runs ``runc run --detach``; no CRIU. What fails on the way
is undone: the container runc made, the overlay mount, the bundle.

The artifact is untrusted input, held to the same rules as a process restore's
(:mod:`cedana.container.confine`): its config's hooks, host paths, host namespaces, extra
capabilities and devices are refused unless granted, its lower layers are mounted only if
they are still the recorded directories, and its diff is checked entry by entry
(:func:`cedana.rootfs.overlay.apply_upper`: no escaping names or links, no device nodes).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from cedana.checkpoint import Checkpoint
from cedana.container import confine
from cedana.container.bundle import (
    DEFAULT_BUNDLES,
    bundle_config,
    check_new_bundle,
    make_overlay_bundle,
)
from cedana.container.command import RuncCommand, log_errors
from cedana.container.rootfs_only import is_rootfs, recorded_shift
from cedana.container.state import DEFAULT_ROOT, LIVE, RuncState, check_id, read_state
from cedana.descriptors import StdioTarget, open_stdio
from cedana.errors import CedanaError, ContainerError, ContainerExists, RestoreFailed
from cedana.rootfs import OVERLAY, diff_format
from cedana.rootfs.idmap import IdShift
from cedana.rootfs.overlay import DIFF_NAME, check_upper
from cedana.staging import scratch_dir

__all__ = ["FreshPlan", "check_rootfs_checkpoint", "plan_fresh"]

logger = logging.getLogger("cedana.runc")

_RUNC = "runc"


def check_rootfs_checkpoint(ckpt: Checkpoint, runtime: str) -> tuple[str, str]:
    """Check that ``ckpt`` is a rootfs-only checkpoint of a ``runtime`` container with its
    changes in the overlay format; the member names of its config and its diff directory.

    Raises:
        ContainerError: It is another kind, of another runtime, or in another format.
        UnsafeArtifact: A member it names is not in the artifact.
    """
    manifest = ckpt.manifest
    if not is_rootfs(manifest) or manifest.runtime != runtime:
        what = f"{manifest.runtime} {manifest.kind}" if manifest.runtime else manifest.kind
        raise ContainerError(
            f"{ckpt.path} holds a {what} checkpoint, not the root filesystem changes of a "
            f"{runtime} container (cedana checkpoint {runtime}:... --rootfs-only); restore "
            "it with cedana restore"
        )
    info = manifest.workload.get("container") or {}
    rootfs = manifest.workload.get("rootfs") or {}
    if not rootfs.get("captured") or diff_format(rootfs) != OVERLAY:
        raise ContainerError(
            f"{ckpt.path} holds root filesystem changes in a {rootfs.get('format')!r} "
            "format, which this cedana cannot apply; upgrade"
        )
    members = [m.name for m in manifest.members]
    config = confine.check_member(
        info.get("config"), members, what="container.config", default="container/config.json"
    )
    diff_dir = confine.check_member(
        rootfs.get("dir"), members, what="rootfs.dir", default="container"
    )
    confine.check_member(f"{diff_dir}/{DIFF_NAME}", members, what="rootfs.dir", default="")
    return config, diff_dir


def plan_fresh(
    ckpt: Checkpoint,
    *,
    name: str | None = None,
    bundle: str | os.PathLike[str] | None = None,
    root: str | os.PathLike[str] | None = None,
    lower: Sequence[str | os.PathLike[str]] | None = None,
    hooks: Mapping[str, Any] | None = None,
    grants: confine.Grants | None = None,
) -> FreshPlan:
    """What starting ``ckpt`` afresh under runc will do, checked before anything is made
    (the keywords and errors are :meth:`cedana.RuncContainer.restore_fresh`'s)."""
    config_member, diff_dir = check_rootfs_checkpoint(ckpt, _RUNC)
    manifest = ckpt.manifest
    info = manifest.workload["container"]
    rootfs = manifest.workload.get("rootfs") or {}
    name = check_id(name or str(info["id"]))
    if root is None:
        recorded = Path(os.path.abspath(str(info.get("root") or DEFAULT_ROOT)))
        root_dir = recorded
        if recorded != DEFAULT_ROOT:
            confine.check_runc_root(recorded, recorded=True)
    else:
        root_dir = Path(os.path.abspath(root))
    if (root_dir / name).exists():
        raise ContainerExists(
            f"a runc container named {name!r} exists under {root_dir}; choose another name "
            "(name=... / --name) or delete it first"
        )
    if info.get("terminal"):
        raise ContainerError(
            f"{ckpt.path} holds a container that ran with a terminal; cedana starts rootfs "
            "checkpoints detached, without one: run it yourself on the bundle "
            "(runc run --console-socket) or checkpoint a container without a terminal"
        )
    bundle_dir = Path(os.path.abspath(bundle)) if bundle is not None else DEFAULT_BUNDLES / name
    check_new_bundle(bundle_dir)
    layers = confine.check_lower(
        list(rootfs.get("lower") or ()), rootfs.get("lower_identity"), given=lower
    )
    config = confine.check_config(
        bundle_config(
            ckpt.read_member(config_member),
            original_bundle=str(info["bundle"]),
            old_id=str(info["id"]),
            name=name,
        ),
        name=name,
        bundle=bundle_dir,
        grants=grants,
        hooks=hooks,
    )
    shift = (
        IdShift.of_config(config, what=f"{ckpt.path}'s config") if recorded_shift(rootfs) else None
    )
    return FreshPlan(
        source=ckpt.path,
        name=name,
        root=root_dir,
        bundle=bundle_dir,
        config=config,
        layers=layers,
        diff_dir=diff_dir,
        userxattr=bool(rootfs.get("userxattr")),
        shift=shift,
    )


@attrs.frozen(kw_only=True)
class FreshPlan:
    """A fresh runc container from a rootfs-only checkpoint, decided (:func:`plan_fresh`).

    Attributes:
        source: The artifact.
        name: The new container's id.
        root: runc's state root.
        bundle: The bundle to make.
        config: The confined config.json.
        layers: The lower layers (uppermost first) the changes go on.
        diff_dir: The member directory of the changes.
        userxattr: Overlay keeps its attributes as ``user.*``.
        shift: The config's user namespace mappings, for owners recorded as the container
            saw them; None stores them as recorded.
    """

    source: Path
    name: str
    root: Path
    bundle: Path
    config: Mapping[str, Any]
    layers: tuple[str, ...]
    diff_dir: str
    userxattr: bool = False
    shift: IdShift | None = None

    def execute(
        self,
        ckpt: Checkpoint,
        command: RuncCommand,
        *,
        stdin: StdioTarget = None,
        stdout: StdioTarget = None,
        stderr: StdioTarget = None,
        work_dir: str | os.PathLike[str] | None = None,
    ) -> RuncState:
        """Unpack the changes, make the bundle, ``runc run --detach``; on any failure undo
        what was made, newest first. Returns runc's state of the new container."""
        name = self.name
        started = time.monotonic()
        logger.debug("fresh runc %s from %s: start", name, self.source)
        with (
            scratch_dir(".cedana-fresh-", parent=work_dir, fills="the rootfs changes") as work,
            contextlib.ExitStack() as undo,
        ):
            members = work / "members"
            wanted = f"{self.diff_dir}/{DIFF_NAME}"
            ckpt.extract(members, only=lambda member: member == wanted)
            check_upper(members / wanted)
            made = make_overlay_bundle(
                self.bundle,
                members / self.diff_dir,
                self.config,
                self.layers,
                name=name,
                userxattr=self.userxattr,
                shift=self.shift,
            )
            undo.callback(made.remove)
            _let_mapped_root_in(self.bundle, self.config)
            undo.callback(_delete_if_made_here, command, self.root, name, self.bundle)
            with open_stdio(stdin, stdout, stderr) as (fd0, fd1, fd2):
                done = command.run(
                    "run", "--detach", "--bundle", os.fspath(self.bundle), name,
                    log=work / "runc.log", stdin=fd0, stdout=fd1, stderr=fd2,
                )  # fmt: skip
            if done.returncode != 0:
                raise RestoreFailed(
                    f"runc run of {name!r} failed: "
                    f"{log_errors(work / 'runc.log') or 'no message in its log'}"
                )
            state = read_state(self.root, name)
            if state.status not in LIVE:
                raise RestoreFailed(f"runc started {name!r} but it is {state.status}")
            undo.pop_all()
        logger.debug("fresh runc %s: pid %d in %.3fs", name, state.pid, time.monotonic() - started)
        return state


def _let_mapped_root_in(bundle: Path, config: Mapping[str, Any]) -> None:
    """A container in a user namespace reaches its rootfs as its own root, a host id the
    bundle's owner is not: the bundle becomes 0710 with that root's host group, as moby
    does for remapped roots, so it passes through it without listing it (nobody else
    does). Its parents must let it through too (``bundle=`` in such a directory)."""
    shift = IdShift.of_config(config, what="the config")
    if shift is None:
        return
    _, gid = shift.outside(0, 0)
    os.chown(bundle, -1, gid)
    os.chmod(bundle, 0o710)


def _delete_if_made_here(command: RuncCommand, root: Path, name: str, bundle: Path) -> None:
    """A failed start's cleanup: ``runc delete --force`` the container on this bundle."""
    with contextlib.suppress(CedanaError, OSError):
        state = read_state(root, name)
        if os.path.realpath(state.bundle) == os.path.realpath(bundle):
            command.delete(name, force=True)
