"""A rootfs-only docker checkpoint started afresh: a new container created through the Engine
API from the same image id and create config, its new overlay2 layer filled with the changes
before it starts, then ``docker start`` (no CRIU, no experimental daemon needed), so docker
manages it like any other.

Confined as a process restore into docker is: the ``HostConfig`` may ask for no volumes,
binds, devices, host namespaces, privileges or capabilities beyond docker's defaults
(unless granted); the diff is checked entry by entry. Everything is checked before docker
is asked to make anything; a failure removes the container made (its layer goes with it).
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from typing import TYPE_CHECKING

from cedana.artifact.manifest import thaw
from cedana.checkpoint import Checkpoint
from cedana.container import confine
from cedana.container.fresh import check_rootfs_checkpoint
from cedana.errors import CedanaError, ContainerExists, RestoreFailed
from cedana.rootfs.overlay import DIFF_NAME, check_upper
from cedana.rootfs.overlay2 import Overlay2Snapshotter
from cedana.runtimes._docker_api import DockerClient
from cedana.staging import scratch_dir

if TYPE_CHECKING:
    from cedana.runtimes.docker import DockerContainer

__all__ = ["restore_fresh"]

logger = logging.getLogger("cedana.docker")


def restore_fresh(
    cls: type[DockerContainer],
    ckpt: Checkpoint,
    *,
    name: str | None,
    address: str | None,
    work_dir: str | os.PathLike[str] | None,
    grants: confine.Grants | None,
    client: DockerClient | None,
) -> DockerContainer:
    """:meth:`cedana.DockerContainer.restore_fresh`, done."""
    from cedana.runtimes import docker as docker_mod  # it holds the helpers and imports us

    _, diff_dir = check_rootfs_checkpoint(ckpt, docker_mod.DOCKER)
    manifest = ckpt.manifest
    info = manifest.workload["container"]
    recorded = thaw(manifest.workload["docker"])
    name = name or str(recorded.get("name") or "").lstrip("/") or str(info["id"])[:12]
    image_id = str((recorded.get("image") or {}).get("id") or "")
    create = docker_mod._create_config(recorded, image_id, grants)

    started = time.monotonic()
    logger.debug("fresh docker %s from %s: start", name, ckpt.path)
    connection = contextlib.nullcontext(client) if client is not None else DockerClient(address)
    with connection as api:
        if api.find_container(name) is not None:
            raise ContainerExists(
                f"a docker container named {name!r} exists; choose another name "
                f"(name=... / --name) or remove it first (docker rm -f {name})"
            )
        create["Image"] = docker_mod._check_image(api, recorded, image_id)
        with (
            scratch_dir(".cedana-fresh-", parent=work_dir, fills="the rootfs changes") as work,
            contextlib.ExitStack() as undo,
        ):
            undo.callback(logger.debug, "fresh docker %s: failed", name)
            wanted = f"{diff_dir}/{DIFF_NAME}"
            ckpt.extract(work / "members", only=lambda member: member == wanted)
            check_upper(work / "members" / wanted)  # before anything is made for it
            cid = api.create_container(create, name)
            undo.callback(docker_mod._cleanup, name, api.remove_container, cid)
            layer = Overlay2Snapshotter.of(api.inspect_container(cid), what=name)
            layer.prepare()
            applied = layer.apply(work / "members" / diff_dir)
            logger.debug("docker %s: rootfs changes applied: %s", name, applied.describe())
            try:
                api.start_container(cid)
            except CedanaError as exc:
                raise RestoreFailed(f"docker could not start {name!r}: {exc}") from exc
            state = api.inspect_container(cid)["State"]
            if not state.get("Running"):
                raise RestoreFailed(
                    f"docker started {name!r} but it is {state.get('Status')} "
                    f"({state.get('Error') or 'see docker logs'})"
                )
            undo.pop_all()
    logger.debug(
        "fresh docker %s: pid %s in %.3fs", name, state.get("Pid"), time.monotonic() - started
    )
    return cls(name, address=address, client=client)
