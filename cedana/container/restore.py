"""Restoring a runc container: :func:`plan_restore` decides and checks everything before
anything runs (the name, the bundle, the lower layers, the confined config), and
:meth:`RuncRestorePlan.execute` unpacks, makes the bundle and runs ``runc restore``,
undoing what it made on any failure."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from cedana import registry
from cedana.checkpoint import Checkpoint
from cedana.container import confine, namespaces, portable
from cedana.container.bundle import (
    DEFAULT_BUNDLES,
    bundle_config,
    check_new_bundle,
    make_overlay_bundle,
)
from cedana.container.command import RuncCommand, log_errors
from cedana.container.rootfs_only import refuse_rootfs
from cedana.container.runc import CONFIG_MEMBER, CONTAINER_DIR, RUNC
from cedana.container.state import DEFAULT_ROOT, LIVE, RuncState, check_id, read_state
from cedana.descriptors import StdioTarget, open_stdio
from cedana.errors import CedanaError, ContainerError, ContainerExists, ContainerNotFound
from cedana.process import restore_failed, restores_tcp
from cedana.rootfs import OVERLAY, diff_format
from cedana.rootfs.containers_storage import PODMAN_FORMAT, from_podman_diff
from cedana.rootfs.overlay import DIFF_NAME
from cedana.staging import scratch_dir

__all__ = ["RuncRestorePlan", "plan_restore"]

logger = logging.getLogger("cedana.runc")


def plan_restore(
    ckpt: Checkpoint,
    *,
    name: str | None = None,
    bundle: str | os.PathLike[str] | None = None,
    root: str | os.PathLike[str] | None = None,
    tcp_established: bool | None = None,
    console_socket: str | os.PathLike[str] | None = None,
    lower: Sequence[str | os.PathLike[str]] | None = None,
    hooks: Mapping[str, Any] | None = None,
    grants: confine.Grants | None = None,
) -> RuncRestorePlan:
    """What restoring ``ckpt`` into runc will do, decided and checked before anything runs.

    It reads the manifest and the config member and looks at the host (is the name
    free, the bundle empty, the lower layers the recorded ones), and confines the
    config (:mod:`cedana.container.confine`); it makes nothing. The keywords are
    those of :meth:`RuncContainer.restore`, and so are the errors it raises (all of
    them before anything is unpacked).
    """
    refuse_rootfs(ckpt)
    manifest = ckpt.manifest
    source = registry.lookup(manifest.runtime) if manifest.kind == "container" else None
    if source is None or RUNC not in source.restores_into:
        based = [r.name for r in registry.entries() if RUNC in r.restores_into]
        raise ContainerError(
            f"{ckpt.path} holds a {manifest.runtime or manifest.kind} checkpoint, "
            f"not one of a runc-based runtime ({', '.join(based)})"
        )
    info = manifest.workload["container"]
    rootfs_info = manifest.workload.get("rootfs") or {}
    name = check_id(name or str(info["id"]))
    # Another runtime's runc root (a shim's) is that runtime's, not runc's own.
    recorded_root = root is None and source.runc_root == DEFAULT_ROOT
    if root is None:
        root = str(info["root"]) if recorded_root else DEFAULT_ROOT
    root_dir = Path(os.path.abspath(root))
    if recorded_root and root_dir != DEFAULT_ROOT:
        confine.check_runc_root(root_dir, recorded=True)
    if (root_dir / name).exists():
        raise ContainerExists(
            f"a runc container named {name!r} exists under {root_dir}; choose another name "
            "(name=... / --name) or delete it first"
        )
    terminal = bool(info.get("terminal"))
    if terminal and console_socket is None:
        raise ContainerError(
            f"{ckpt.path} holds a container with a terminal; pass console_socket= (the "
            "socket that receives the new pty master, as for runc restore --console-socket; "
            "Python API only, the command line has no such option)"
        )
    captured = bool(rootfs_info.get("captured"))
    form = diff_format(rootfs_info)
    if captured and form not in (OVERLAY, PODMAN_FORMAT):
        what = repr(rootfs_info.get("format") or rootfs_info.get("snapshotter"))
        raise ContainerError(
            f"{ckpt.path} holds rootfs changes in a {what} format, which this cedana "
            "cannot apply; upgrade"
        )
    members = [m.name for m in manifest.members]
    config_member = confine.check_member(
        info.get("config"), members, what="container.config", default=CONFIG_MEMBER
    )
    new_config: dict[str, Any] | None = None
    runtime_files: tuple[portable.RuntimeMount, ...] = ()
    layers: tuple[str, ...] = ()
    diff_dir: str | None = None
    if captured:
        bundle_dir = Path(os.path.abspath(bundle)) if bundle is not None else DEFAULT_BUNDLES / name
        check_new_bundle(bundle_dir)
        diff_dir = confine.check_member(
            rootfs_info.get("dir"), members, what="rootfs.dir", default=CONTAINER_DIR
        )
        if form == OVERLAY:
            confine.check_member(f"{diff_dir}/{DIFF_NAME}", members, what="rootfs.dir", default="")
        layers = confine.check_lower(
            list(rootfs_info.get("lower") or ()),
            rootfs_info.get("lower_identity"),
            given=lower,
        )
        raw = ckpt.read_member(config_member)
        if source.name != RUNC:  # another runtime's mounts and hooks: runc's own instead
            raw, runtime_files = portable.for_bundle(raw, bundle_dir)
            if source.describe is not None:
                grants = portable.with_defaults(grants, source.describe(ckpt))
        new_config = confine.check_config(
            bundle_config(
                raw,
                original_bundle=str(info["bundle"]),
                old_id=str(info["id"]),
                name=name,
            ),
            name=name,
            bundle=bundle_dir,
            grants=grants,
            hooks=hooks,
        )
    else:
        if bundle is None:
            raise ContainerError(
                f"{ckpt.path} did not capture the root filesystem (it was not an overlay), "
                f"so it restores on a bundle of yours: pass bundle= (--bundle); it records "
                f"{info.get('bundle')} (a checkpoint cannot choose a host directory)"
            )
        if lower is not None or hooks is not None:
            raise ContainerError(
                f"{ckpt.path} restores on your bundle {bundle}, with its config.json: "
                "lower= and hooks= do not apply"
            )
        bundle_dir = Path(os.path.abspath(bundle))
        if not (bundle_dir / "config.json").is_file():
            raise ContainerError(
                f"{ckpt.path} did not capture the root filesystem (it was not an overlay), "
                f"so it restores on its bundle, but {bundle_dir}/config.json is gone"
            )
    flags = []
    if restores_tcp(tcp_established, manifest):
        flags.append("--tcp-established")
    if manifest.options.get("file_locks"):
        flags.append("--file-locks")
    if info.get("ext_unix_sk"):
        flags.append("--ext-unix-sk")
    if console_socket is not None:
        flags += ["--console-socket", os.fspath(console_socket)]
    return RuncRestorePlan(
        source=ckpt.path,
        name=name,
        root=root_dir,
        bundle=bundle_dir,
        config_member=config_member,
        new_config=new_config,
        layers=layers,
        diff_dir=diff_dir,
        diff_format=form or OVERLAY,
        userxattr=bool(rootfs_info.get("userxattr")),
        flags=tuple(flags),
        runtime_files=runtime_files,
        grants=grants,
    )


@attrs.frozen(kw_only=True)
class RuncRestorePlan:
    """A runc restore, decided (:func:`plan_restore`), to be executed.

    Attributes:
        source: The artifact.
        name: The container id to restore as.
        root: runc's state root.
        bundle: The bundle: made (for captured rootfs changes) or the caller's.
        config_member: The artifact's member holding the container's config.
        new_config: The confined config of a bundle to make; None to use the caller's.
        layers: The lower layers to mount the changes on (uppermost first).
        diff_dir: The member directory of the rootfs changes; None when not captured.
        diff_format: Their format: overlay's, or podman's (converted to overlay's first).
        userxattr: Overlay keeps its attributes as ``user.*``.
        flags: runc restore's flags beyond the paths (``--tcp-established``...).
        runtime_files: The mounts another runtime made, for which the bundle gets files
            of its own (:func:`cedana.container.portable.make_files`).
        grants: The caller's grants, with what another runtime's defaults left open
            (what the images are checked against); None for the caller's as given.
    """

    source: Path
    name: str
    root: Path
    bundle: Path
    config_member: str
    new_config: Mapping[str, Any] | None
    layers: tuple[str, ...] = ()
    diff_dir: str | None = None
    diff_format: str = OVERLAY
    userxattr: bool = False
    flags: tuple[str, ...] = ()
    runtime_files: tuple[portable.RuntimeMount, ...] = ()
    grants: confine.Grants | None = None

    def runc_args(self, images: Path, work: Path) -> list[str]:
        """``runc restore``'s arguments for images unpacked at ``images``."""
        return [
            "restore",
            "--detach",
            "--image-path",
            os.fspath(images),
            "--work-path",
            os.fspath(work / "criu"),
            "--bundle",
            os.fspath(self.bundle),
            *self.flags,
            self.name,
        ]

    def execute(
        self,
        ckpt: Checkpoint,
        command: RuncCommand,
        *,
        stdin: StdioTarget = None,
        stdout: StdioTarget = None,
        stderr: StdioTarget = None,
        work_dir: str | os.PathLike[str] | None = None,
        grants: confine.Grants | None = None,
    ) -> RuncState:
        """Unpack the images (checked against ``grants``), make the bundle, run ``runc
        restore`` and bring the loopback up; on any failure undo what was made, newest
        first (the container runc made, the bundle). Returns runc's state of it."""
        name = self.name
        grants = self.grants if self.grants is not None else grants
        started = time.monotonic()
        logger.debug("restore runc %s from %s: start", name, self.source)
        with (
            scratch_dir(".cedana-restore-", parent=work_dir, fills="CRIU's images") as work,
            contextlib.ExitStack() as undo,
        ):
            images = work / "images"
            confine.unpack_images(ckpt, images, grants=grants)
            if self.new_config is not None and self.diff_dir is not None:
                diff = images / self.diff_dir
                if self.diff_format == PODMAN_FORMAT:
                    diff = from_podman_diff(diff, work / "overlay-diff", lower=self.layers)
                made = make_overlay_bundle(
                    self.bundle,
                    diff,
                    self.new_config,
                    self.layers,
                    name=name,
                    userxattr=self.userxattr,
                )
                undo.callback(made.remove)
                if self.runtime_files:
                    hostname = str(self.new_config.get("hostname") or name)
                    portable.make_files(
                        self.bundle / portable.BUNDLE_FILES, self.runtime_files, hostname=hostname
                    )
            undo.callback(_delete_if_restored_here, command, self.root, name, self.bundle)
            with open_stdio(stdin, stdout, stderr) as (fd0, fd1, fd2):
                done = command.run(
                    *self.runc_args(images, work),
                    log=work / "runc.log",
                    stdin=fd0,
                    stdout=fd1,
                    stderr=fd2,
                )
            criu_log = work / "criu" / "restore.log"  # scratch_dir keeps it on failure
            if done.returncode != 0:
                raise restore_failed(
                    f"runc restore of {name!r} failed: "
                    f"{log_errors(work / 'runc.log') or 'see the CRIU log'}",
                    criu_log,
                )
            state = read_state(self.root, name)
            if state.status not in LIVE:
                raise restore_failed(f"runc restored {name!r} but it is {state.status}", criu_log)
            config = self.new_config or json.loads((images / self.config_member).read_bytes())
            namespaces.restore_loopback(config, state.pid)
            undo.pop_all()  # restored: nothing of it is undone
        logger.debug(
            "restore runc %s: pid %d in %.3fs", name, state.pid, time.monotonic() - started
        )
        return state


def _delete_if_restored_here(command: RuncCommand, root: Path, name: str, bundle: Path) -> None:
    """A failed restore's cleanup: ``runc delete --force`` the container it made, if any."""
    logger.debug("restore runc %s: failed, cleaning up", name)
    if _restored_here(root, name, bundle):
        with contextlib.suppress(CedanaError, OSError):
            command.delete(name, force=True)


def _restored_here(root: Path, name: str, bundle: Path) -> bool:
    """True when runc's state for ``name`` is the one this restore made (on ``bundle``).

    The name was free when restore began; a container of that name on another
    bundle was made by someone else meanwhile and is left alone.
    """
    try:
        return os.path.realpath(read_state(root, name).bundle) == os.path.realpath(bundle)
    except ContainerNotFound:
        return False
    except CedanaError:
        return (root / name).exists()
