"""A rootfs-only containerd checkpoint started afresh: a new containerd container from the
same image, whose new snapshot holds the changes, and a task started as ``ctr run`` starts
one (no CRIU images), so containerd manages it like any other.

Confined as a process restore into containerd is: the spec's hooks and host-facing fields
(:func:`cedana.container.confine.check_config`), the runtime and its options (a runc
shim, no host binaries), the image by its recorded chain id, the diff entry by entry.
Everything is checked before containerd is asked to make anything; what it made is
removed again if a later step fails (task, container, snapshot, under a lease).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import attrs

from cedana.checkpoint import Checkpoint
from cedana.container import confine
from cedana.container.fresh import check_rootfs_checkpoint
from cedana.container.rootfs_only import recorded_shift
from cedana.container.state import LIVE
from cedana.errors import CedanaError, ContainerError, RestoreFailed
from cedana.rootfs.containerd import ContainerdSnapshotter
from cedana.rootfs.idmap import IdShift
from cedana.rootfs.overlay import DIFF_NAME, check_upper
from cedana.runtimes._containerd_api import ContainerdClient, ContainerRecord
from cedana.staging import scratch_dir

if TYPE_CHECKING:
    from cedana.runtimes.containerd import ContainerdContainer

__all__ = ["restore_fresh"]

logger = logging.getLogger("cedana.containerd")


def restore_fresh(
    cls: type[ContainerdContainer],
    ckpt: Checkpoint,
    *,
    name: str | None,
    namespace: str | None,
    address: str,
    log: str | os.PathLike[str] | None,
    work_dir: str | os.PathLike[str] | None,
    hooks: Mapping[str, Any] | None,
    grants: confine.Grants | None,
    client: ContainerdClient | None,
) -> ContainerdContainer:
    """:meth:`cedana.ContainerdContainer.restore_fresh`, done."""
    from cedana.runtimes import containerd as ctd_mod  # it holds the helpers and imports us

    _, diff_dir = check_rootfs_checkpoint(ckpt, ctd_mod.CONTAINERD)
    manifest = ckpt.manifest
    info = manifest.workload["container"]
    ctd = manifest.workload["containerd"]
    rootfs = manifest.workload.get("rootfs") or {}
    old = (str(ctd["namespace"]), str(info["id"]))
    name = name or old[1]
    namespace = namespace or old[0]
    members = [m.name for m in manifest.members]
    spec_member = confine.check_member(
        ctd.get("spec"), members, what="containerd.spec", default=ctd_mod.SPEC_MEMBER
    )
    record = ContainerRecord.from_json(
        ctd,
        id=name,
        snapshot_key=name,
        labels={**dict(ctd.get("labels") or {}), ctd_mod.RESTORED_FROM_LABEL: "/".join(old)},
    )
    task_options = ctd_mod._checked_runtime(record, namespace)
    spec = ctd_mod._checked_spec(
        ckpt.read_member(spec_member), old=old, new=(namespace, name), hooks=hooks, grants=grants
    )
    shift = IdShift.of_config(json.loads(spec), what="its spec") if recorded_shift(rootfs) else None

    started = time.monotonic()
    logger.debug("fresh containerd %s/%s from %s: start", namespace, name, ckpt.path)
    connection = (
        contextlib.nullcontext(client)
        if client is not None
        else ContainerdClient(address, namespace)
    )
    with connection as api:
        snapshotter = str(ctd["snapshotter"])
        ctd_mod._check_name_free(api, name, snapshotter)
        image = ctd_mod._image_for(api, ctd, namespace)
        if not api.snapshot_exists(snapshotter, image.chain_id):
            raise ContainerError(
                f"image {image.name!r} is not unpacked for snapshotter {snapshotter!r} in "
                f"namespace {namespace!r}; unpack it there first (ctr -n {namespace} images "
                f"unpack --snapshotter {snapshotter} {image.name})"
            )
        record = attrs.evolve(record, image=image.name, spec=spec)
        uri = f"file://{os.path.abspath(log)}" if log is not None else ""
        with (
            scratch_dir(".cedana-fresh-", parent=work_dir, fills="the rootfs changes") as work,
            api.lease(),
            contextlib.ExitStack() as undo,
        ):
            undo.callback(logger.debug, "fresh containerd %s/%s: failed", namespace, name)
            wanted = f"{diff_dir}/{DIFF_NAME}"
            ckpt.extract(work / "members", only=lambda member: member == wanted)
            check_upper(work / "members" / wanted)  # before anything is made for it
            store = ContainerdSnapshotter(api, snapshotter, name, parent=image.chain_id)
            mounts = store.prepare()
            undo.callback(ctd_mod._cleanup, name, store.remove)
            applied = store.apply(work / "members" / diff_dir, shift=shift)
            logger.debug("snapshot %s: changes applied: %s", name, applied.describe())
            api.create_container(record)
            undo.callback(ctd_mod._cleanup, name, api.delete_container, name)
            undo.callback(ctd_mod._cleanup, name, ctd_mod._remove_task, api, name)
            try:
                api.create_task(name, mounts, options=task_options, stdout=uri, stderr=uri)
                api.start_task(name)
            except CedanaError as exc:
                raise RestoreFailed(f"containerd could not start {name!r}: {exc}") from exc
            task = api.task(name)
            if task is None or task.status not in LIVE:
                raise RestoreFailed(
                    f"containerd started {name!r} but it is {task.status if task else 'gone'}"
                )
            undo.pop_all()
    logger.debug(
        "fresh containerd %s/%s: pid %d in %.3fs",
        namespace,
        name,
        task.pid,
        time.monotonic() - started,
    )
    return cls(name, namespace=namespace, address=address, client=client)
