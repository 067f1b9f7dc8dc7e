"""Rootfs-only checkpoints: a container's root filesystem changes, without CRIU.

Some containers cannot be checkpointed process by process (system containers that
virtualise ``/proc``, a systemd inside), and some need only their files carried over.
A rootfs-only checkpoint saves the container's writable layer and what it takes to
start a fresh container like it (its OCI config, the runtime's own record, the image
reference), and nothing of its processes: it runs no CRIU, and the container keeps
running. It is the checkpoint template's second form (:func:`checkpoint_rootfs`), run by
:meth:`~cedana.RuncContainer.checkpoint_as` for every runc-based runtime when
``rootfs_only`` is set, through the same seam as a process checkpoint: the runtime's
live check and its snapshotter (:class:`~cedana.container.runc.RuntimeLayer`), so a
runtime built on :class:`~cedana.RuncContainer` and a snapshotter gets it for free.

In order:

1. The runtime's live check and extras (its snapshotter, facts, members), the
   container's ``config.json``, the destination and the signing key: everything that
   can be refused is, before the container is touched.
2. The container's cgroup is frozen (:func:`cedana.container.freezer.frozen`), the
   snapshotter writes the changes (``container/rootfs-diff.tar``, the same member and
   manifest ``rootfs`` entry as a process checkpoint's, so everything that reads a
   diff reads this one), and the cgroup is thawed, on every path.
3. The artifact is written from the scratch copy while the container runs on: manifest
   kind ``"rootfs"``, no process tree. A cedana that knows only the kinds ``process`` and
   ``container`` refuses its manifest rather than take it for either.

With ``shift_owners`` the owners are recorded as the container sees them (its
``uidMappings``/``gidMappings`` applied backwards, :class:`~cedana.rootfs.idmap.IdShift`),
as an image layer holds them; the entry says so (``owners: "container"``) and keeps the
mappings, and a restore stores them under the new container's mappings.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cedana.artifact import (
    HostInfo,
    Manifest,
    check_destination,
    sweep_temporaries,
    write_artifact,
)
from cedana.artifact.signing import signing_key
from cedana.checkpoint import Checkpoint
from cedana.container.bundle import load_config, write_private
from cedana.container.freezer import frozen
from cedana.errors import ContainerError, InvalidOption, NotCheckpointable
from cedana.process import CheckpointOptions
from cedana.rootfs.idmap import IdShift
from cedana.staging import scratch_dir

if TYPE_CHECKING:
    from cedana.container.runc import RuntimeLayer

__all__ = ["ROOTFS_KIND", "checkpoint_rootfs", "is_rootfs", "refuse_rootfs"]

logger = logging.getLogger("cedana.runc")

#: The manifest's ``kind`` of a rootfs-only checkpoint.
ROOTFS_KIND = "rootfs"
#: What the manifest's host records as CRIU's version: none ran.
NO_CRIU = "none (rootfs only)"


def is_rootfs(manifest: Manifest) -> bool:
    """Whether ``manifest`` is a rootfs-only checkpoint's."""
    return manifest.kind == ROOTFS_KIND


def refuse_rootfs(ckpt: Checkpoint) -> None:
    """For the restores that run CRIU: a rootfs-only checkpoint has no processes to restore,
    so say what starts it instead.

    Raises:
        ContainerError: ``ckpt`` is a rootfs-only checkpoint.
    """
    if is_rootfs(ckpt.manifest):
        raise ContainerError(
            f"{ckpt.path} is a rootfs-only checkpoint of a {ckpt.manifest.runtime} container "
            "(its root filesystem changes, no processes): start it as a new container with "
            f"cedana restore / cedana.restore (or {ckpt.manifest.runtime}'s restore_fresh)"
        )


def checkpoint_rootfs(
    container_id: str,
    runtime: RuntimeLayer,
    path: str | os.PathLike[str],
    options: CheckpointOptions,
) -> Checkpoint:
    """Write a rootfs-only checkpoint of ``runtime``'s container ``container_id`` at ``path``.

    Raises:
        ContainerNotFound, ContainerNotRunning: As the runtime's live check says.
        NotCheckpointable: The container has no writable layer to capture, or no cgroup
            to freeze.
        InvalidOption: ``shift_owners`` for a container without a user namespace.
        ArtifactExists: ``path`` exists and ``overwrite`` was not set.
        NoSpace, OSError: Writing failed; the container runs on, thawed.
    """
    from cedana.container.runc import CONFIG_MEMBER, CONTAINER_DIR

    dest = Path(path)
    options.check_path(dest)
    check_destination(dest, overwrite=options.overwrite)
    signer = signing_key(options.signing_key)
    sweep_temporaries(dest.parent)
    state = runtime.live_state()
    extras = runtime.dump_extras(state)
    name = runtime.runtime_name
    snapshotter = extras.snapshotter
    if snapshotter is None:
        raise NotCheckpointable(
            f"{name} container {container_id!r} has no writable layer to capture (its root "
            f"filesystem {state.rootfs} is not an overlay with an upper directory), so a "
            "rootfs-only checkpoint would hold nothing; run it on an overlay rootfs"
        )
    config_bytes, config = load_config(state.bundle)
    shift: IdShift | None = None
    if options.shift_owners:
        shift = IdShift.of_config(config, what=f"{name} container {container_id!r}")
        if shift is None:
            raise InvalidOption(
                f"{name} container {container_id!r} has no user namespace mappings, so its "
                "files' owners are the same inside and out: drop shift_owners "
                "(--shift-owners)"
            )
    process = config.get("process") or {}
    container = {
        "id": container_id,
        "runtime": name,
        "root": str(state.root),
        "bundle": str(state.bundle),
        "rootfs": str(state.rootfs),
        "status": extras.status or state.status,
        "config": CONFIG_MEMBER,
        "terminal": bool(process.get("terminal")),
        "cgroup_paths": dict(state.cgroup_paths),
    }
    entry: dict[str, Any] = {
        "captured": True,
        "snapshotter": snapshotter.name,
        "format": snapshotter.format,
        "dir": CONTAINER_DIR,
        **snapshotter.layers_json(),
        **(extras.rootfs or {}),
        "owners": "container" if shift is not None else "host",
        **({"mappings": shift.to_json()} if shift is not None else {}),
    }
    started = time.monotonic()
    logger.debug("rootfs-only checkpoint %s %s -> %s: start", name, container_id, dest)
    with scratch_dir(
        ".cedana-rootfs-",
        parent=options.work_dir,
        fills="the rootfs changes (the size of its writable layer)",
    ) as work:
        members = work / "members"
        own = members / CONTAINER_DIR
        own.mkdir(mode=0o700, parents=True)
        write_private(members / CONFIG_MEMBER, config_bytes)
        for member, data in (extras.members or {}).items():
            write_private(members / member, data)
        with frozen(state.cgroup_paths, what=container_id) as froze:
            began = time.monotonic()
            diff = snapshotter.capture(state.rootfs, own, shift=shift)
            held = time.monotonic() - began
        logger.debug(
            "rootfs-only checkpoint %s: %s captured in %.3fs (%s)",
            container_id,
            diff.describe(),
            held,
            "frozen" if froze else "paused already",
        )
        manifest = Manifest(
            host=HostInfo.current(criu_version=NO_CRIU),
            kind=ROOTFS_KIND,
            runtime=name,
            options=options.to_manifest(),
            tree=(),
            workload={
                "container": container,
                **(extras.workload or {}),
                "rootfs": {**entry, "diff": diff.to_json()},
                "frozen_seconds": round(held, 6),
            },
        )
        write_artifact(
            members,
            dest,
            manifest,
            compress=options.compress,
            level=options.level,
            threads=options.threads,
            directory=options.directory,
            overwrite=options.overwrite,
            signer=signer,
        )
    logger.debug(
        "rootfs-only checkpoint %s: complete in %.3fs", container_id, time.monotonic() - started
    )
    return Checkpoint.open(dest, verify=False, trust="any")


def recorded_shift(rootfs: Mapping[str, Any]) -> bool:
    """Whether a manifest's ``rootfs`` entry records owners as the container saw them."""
    return rootfs.get("owners") == "container"
