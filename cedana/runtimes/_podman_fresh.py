"""A rootfs-only podman checkpoint started afresh: ``podman create`` from the same image (by
id) with the process the container ran (its OCI spec's command, environment, working
directory and user), the changes written into the new container's containers/storage layer
before it is first mounted, then ``podman start``; no CRIU. podman manages it from then on.

The artifact chooses nothing host-facing: only those process fields (each checked to be of
its type) and a network mode of a private kind (``none``, ``bridge``, ``slirp4netns``,
``private``) reach podman; mounts, devices, capabilities, namespaces and hooks come from
podman's own defaults. The diff is checked entry by entry; a failure removes the container
podman made (its layer goes with it).
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from cedana.artifact.manifest import thaw
from cedana.checkpoint import Checkpoint
from cedana.container import confine
from cedana.container.fresh import check_rootfs_checkpoint
from cedana.errors import (
    CedanaError,
    ContainerError,
    ContainerExists,
    ImageNotFound,
    RestoreFailed,
)
from cedana.rootfs.containers_storage import ContainersStorageSnapshotter
from cedana.rootfs.overlay import DIFF_NAME, check_upper
from cedana.runtimes._podman_layout import checked_config
from cedana.staging import scratch_dir

if TYPE_CHECKING:
    from cedana.runtimes.podman import PodmanCLI, PodmanContainer

__all__ = ["create_flags", "restore_fresh"]

logger = logging.getLogger("cedana.podman")

#: Network modes a checkpoint may ask for: the container's own namespace, never another's.
_PRIVATE_NETWORKS = ("none", "bridge", "slirp4netns", "private", "pasta")
#: Environment variables podman sets for each container itself.
_OWN_ENV = ("HOSTNAME=", "container=")


def _refused(field: str, why: str) -> Exception:
    return confine.refused(f"{field}", why, "do not use this checkpoint")


def create_flags(spec: Mapping[str, Any], podman: Mapping[str, Any]) -> list[str]:
    """``podman create``'s flags for the process of ``spec`` (the checkpointed OCI spec) and
    the recorded network mode, each field checked; the image and name come apart.

    Raises:
        UnsafeArtifact: A field of another type, or a network mode that is not private.
    """
    process = spec.get("process")
    if not isinstance(process, Mapping):
        raise _refused("config.json process", "is missing")
    args = process.get("args")
    if not isinstance(args, list) or not args or not all(isinstance(a, str) for a in args):
        raise _refused("config.json process.args", "is not a list of strings")
    flags = ["--entrypoint", json.dumps(args)]
    env = process.get("env") or []
    if not isinstance(env, list) or not all(isinstance(e, str) and "=" in e for e in env):
        raise _refused("config.json process.env", "is not a list of NAME=VALUE strings")
    for item in env:
        if not item.startswith(_OWN_ENV):
            flags += ["--env", item]
    cwd = process.get("cwd")
    if cwd is not None:
        if not isinstance(cwd, str) or not cwd.startswith("/"):
            raise _refused("config.json process.cwd", f"is {cwd!r}, not an absolute path")
        flags += ["--workdir", cwd]
    user = process.get("user") or {}
    uid, gid = user.get("uid", 0), user.get("gid", 0)
    if not all(isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in (uid, gid)):
        raise _refused("config.json process.user", f"is {user!r}, not numeric ids")
    flags += ["--user", f"{uid}:{gid}"]
    network = str(podman.get("network_mode") or "")
    if network:
        if network not in _PRIVATE_NETWORKS:
            raise _refused(
                "manifest field podman.network_mode",
                f"is {network!r}, another namespace than the container's own",
            )
        flags += ["--network", network]
    return flags


def restore_fresh(
    cls: type[PodmanContainer],
    ckpt: Checkpoint,
    *,
    name: str | None,
    work_dir: str | os.PathLike[str] | None,
    api: PodmanCLI,
    client: PodmanCLI | None,
) -> PodmanContainer:
    """:meth:`cedana.PodmanContainer.restore_fresh`, done."""
    from cedana.runtimes import podman as podman_mod  # it holds the helpers and imports us

    config_member, diff_dir = check_rootfs_checkpoint(ckpt, podman_mod.PODMAN)
    pod = thaw(ckpt.manifest.workload.get("podman") or {})
    config = checked_config(pod.get("config") or {})
    name = name or str(config.get("name") or "")
    if not podman_mod._NAME.match(name):
        raise ContainerError(
            f"{name!r} is not a podman container name (letters, digits, _ . -); choose "
            "another (name=... / --name)"
        )
    try:
        spec = json.loads(ckpt.read_member(config_member))
    except ValueError as exc:
        raise _refused("config.json", f"is not JSON ({exc})") from None
    if not isinstance(spec, dict):
        raise _refused("config.json", "is not an OCI spec")
    flags = create_flags(spec, pod)
    image_id = str(config.get("rootfsImageID") or "")
    image_ref = str(config.get("rootfsImageName") or image_id)
    if not image_id:
        raise _refused("manifest field podman.config.rootfsImageID", "is missing")
    if api.image(image_id) is None:
        raise ImageNotFound(
            f"image {image_ref!r} (id {image_id}) is not in podman's store; the "
            "checkpoint's root filesystem changes apply on top of it: load or import it "
            "first (podman load / podman import)"
        )
    # By its name where the name still means that image (podman ps shows it so).
    named = api.image(image_ref) if image_ref != image_id else None
    image = image_ref if named is not None and named.get("Id") == image_id else image_id
    if api.container(name) is not None:
        raise ContainerExists(
            f"a podman container named {name!r} exists; choose another name (name=... / "
            "--name) or remove it first (podman rm)"
        )

    started = time.monotonic()
    logger.debug("fresh podman %s from %s: start", name, ckpt.path)
    with scratch_dir(".cedana-fresh-", parent=work_dir, fills="the rootfs changes") as work:
        wanted = f"{diff_dir}/{DIFF_NAME}"
        ckpt.extract(work / "members", only=lambda member: member == wanted)
        check_upper(work / "members" / wanted)  # before anything is made for it
        api.run("create", "--name", name, *flags, image)
        try:
            record = api.container(name) or {}
            layer = ContainersStorageSnapshotter.from_graph_driver(
                record.get("GraphDriver") or {}, what=name
            )
            layer.prepare()
            applied = layer.apply(work / "members" / diff_dir)
            logger.debug("podman %s: rootfs changes applied: %s", name, applied.describe())
            done = api.run("start", name, check=False)
            if done.returncode != 0:
                raise RestoreFailed(
                    f"podman could not start {name!r}: {podman_mod._last_error(done.stderr)}"
                )
            status = ((api.container(name) or {}).get("State") or {}).get("Status")
            if status not in podman_mod._LIVE:
                raise RestoreFailed(f"podman started {name!r} but it is {status}")
        except BaseException:
            try:
                api.remove(name)
            except CedanaError as exc:
                logger.warning("cleanup after a failed start of %s: %s", name, exc)
            raise
    logger.debug("fresh podman %s: started in %.3fs", name, time.monotonic() - started)
    return cls(name, client=client)
