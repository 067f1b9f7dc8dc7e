"""ContainerdContainer: a containerd container (runc shim, overlayfs snapshot), checkpointed
and restored as a containerd container.

containerd runs each task through a runc shim, so a containerd container is a
runc container plus what containerd keeps about it. :class:`ContainerdContainer`
holds the runc side privately (a :class:`~cedana.RuncContainer` under the
shim's runc root) and adds containerd's:

- lookup through containerd's gRPC API (never its databases, never ``ctr``):
  the container's image, snapshotter, snapshot key, runtime and spec, its
  task's pid and status;
- the root filesystem through containerd's Snapshots service
  (:class:`~cedana.rootfs.containerd.ContainerdSnapshotter`): the writable
  snapshot's upper directory, captured while the container is frozen;
- restore as a new containerd container from the same image: the image's
  layers (``Images.Get``, its manifest and config from the content store, the
  chain id of its ``diff_ids``) get a new snapshot (``Snapshots.Prepare``
  under a lease) whose upper directory receives the changes; the container is
  created with the checkpoint's spec and runtime; its task is created with the
  runc shim's ``criu_image_path`` option pointing at the unpacked CRIU images,
  so that ``Tasks.Start`` makes the shim run ``runc restore`` (containerd 1.6's
  tasks service and ``pkg/process``'s ``createdCheckpointState``), and
  containerd manages the restored task like any other (``ctr task ls`` /
  ``kill`` / ``delete``).

Checkpoint follows the Process layer's rule: without ``leave_running`` the
container is killed only once the artifact is written and verified; its task
is then deleted from containerd (the container and its snapshot stay, as
after ``ctr task checkpoint --exit``). If the dump fails, the container keeps
running. A restore that fails removes what it made: the task, the container,
the snapshot and the lease.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal as signal_mod
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import attrs

from cedana import registry
from cedana.artifact.signing import KeySource, Trust
from cedana.checkpoint import Checkpoint
from cedana.container import RuncContainer, cgroups, confine, namespaces, portable
from cedana.container.rootfs_only import refuse_rootfs
from cedana.container.runc import DumpExtras
from cedana.container.state import LIVE, RuncState
from cedana.criu import CriuBackend
from cedana.defaults import or_default
from cedana.errors import (
    CedanaError,
    ContainerError,
    ContainerExists,
    ContainerNotFound,
    ContainerNotRunning,
    ImageNotFound,
    NotCheckpointable,
    RestoreFailed,
)
from cedana.process import CheckpointOptions
from cedana.progress import ProgressArg
from cedana.rootfs import OVERLAY, Snapshotter, diff_format
from cedana.rootfs.containerd import ContainerdSnapshotter
from cedana.rootfs.oci_layer import OCI_LAYER_FORMAT, from_oci_layer
from cedana.runtimes import _cross
from cedana.runtimes._containerd_api import (
    DEFAULT_ADDRESS,
    RUNC_OPTIONS_TYPE,
    ContainerdClient,
    ContainerRecord,
    ImageRecord,
    TaskRecord,
)
from cedana.staging import scratch_dir

__all__ = [
    "DEFAULT_ADDRESS",
    "DEFAULT_RUNC_ROOT",
    "ContainerdContainer",
]

logger = logging.getLogger("cedana.containerd")

#: The runc shims' default runc root; each namespace has its own directory below it.
DEFAULT_RUNC_ROOT = Path("/run/containerd/runc")
#: The member holding containerd's spec of the container.
SPEC_MEMBER = RuncContainer.member("spec.json")
#: This runtime's name in the registry (the manifest's ``runtime``).
CONTAINERD = "containerd"
#: The label a restored container carries: ``NAMESPACE/ID`` of the checkpointed one.
RESTORED_FROM_LABEL = "io.cedana.restored-from"

_RUNC_RUNTIMES = ("io.containerd.runc.v1", "io.containerd.runc.v2")


def runc_root_for(record: ContainerRecord, namespace: str) -> Path:
    """Where the runc shim keeps runc's state for ``record``: its ``root`` option (or
    /run/containerd/runc), then the namespace, as the shim's ``NewRunc`` does."""
    return Path(record.runc_options().get("root") or DEFAULT_RUNC_ROOT) / namespace


def rename_cgroups_path(path: str, old: tuple[str, str], new: tuple[str, str]) -> str:
    """Point a spec's ``cgroupsPath`` at the new container.

    containerd's default is ``/NAMESPACE/ID``; a path ending in the old id
    (``/any/ID``, or systemd's ``slice:prefix:ID``) gets the new id; others are
    kept, so two restores of one checkpoint may then share a cgroup.

    Args:
        path: The checkpointed spec's ``linux.cgroupsPath``.
        old: (namespace, id) of the checkpointed container.
        new: (namespace, id) of the restored one.
    """
    (old_ns, old_id), (new_ns, new_id) = old, new
    if path and path == f"/{old_ns}/{old_id}":
        return f"/{new_ns}/{new_id}"
    return cgroups.rename_path(path, old_id, new_id)


def new_spec(raw: bytes, *, old: tuple[str, str], new: tuple[str, str]) -> bytes:
    """The checkpointed spec for the restored container: its cgroup renamed."""
    spec: dict[str, Any] = json.loads(raw)
    linux = spec.get("linux")
    if isinstance(linux, dict) and linux.get("cgroupsPath"):
        linux["cgroupsPath"] = rename_cgroups_path(str(linux["cgroupsPath"]), old, new)
    return json.dumps(spec).encode()


def _cleanup(name: str, step: Callable[..., object], *args: object) -> None:
    """One step of a failed restore's cleanup: what fails is logged, the others still run."""
    try:
        step(*args)
    except (CedanaError, OSError) as exc:
        logger.warning("cleanup after a failed restore of %s: %s", name, exc)


def _remove_task(client: ContainerdClient, container_id: str, timeout: float = 10) -> None:
    """Kill (if it runs) and delete a container's task."""
    task = client.task(container_id)
    if task is None:
        return
    if task.status in ("running", "paused", "pausing"):
        with contextlib.suppress(CedanaError):
            client.kill_task(container_id, signal_mod.SIGKILL, all_processes=True)
        with contextlib.suppress(CedanaError):
            client.wait_task(container_id, timeout)
    client.delete_task(container_id)


def _namespace_or_default(namespace: str | None) -> str:
    """containerd's namespace; None (an option left unset) means ``default``."""
    return or_default(namespace, "default")


def _address_or_default(address: str | None) -> str:
    """containerd's socket; None (an option left unset) means the default one."""
    return or_default(address, DEFAULT_ADDRESS)


@attrs.define(eq=False)
class ContainerdContainer:
    """A containerd container, found through containerd's API.

    Args:
        id: The container id.
        namespace: The containerd namespace; None for ``default``.
        address: containerd's API socket; None for the default one.
        runc_root: The runc state root of the container's shim; found from the
            container's runtime options (``/run/containerd/runc/NAMESPACE`` by
            default) when None.
        backend: The CRIU backend; the real one by default.
        client: containerd's API client (a
            :class:`~cedana.runtimes._containerd_api.ContainerdClient` for ``namespace``);
            connected on first use by default. Tests hand in fakes.

    It holds its :class:`~cedana.RuncContainer` (made once, on first use) and a connection
    to containerd: :meth:`close` it (or use it in a
    ``with`` block). Every property asks containerd afresh.

    Raises:
        RuntimeUnavailable: grpcio is not installed (the containerd extra)
            (``pip install 'cedana[containerd]'``), or containerd is not
            listening at ``address`` (raised on first use).
    """

    id: str
    namespace: str = attrs.field(default="default", converter=_namespace_or_default)
    address: str = attrs.field(default=DEFAULT_ADDRESS, converter=_address_or_default)
    runc_root: Path | None = attrs.field(
        default=None, converter=attrs.converters.optional(Path), kw_only=True
    )
    _backend: CriuBackend | None = attrs.field(
        default=None, alias="backend", repr=False, kw_only=True
    )
    _client: ContainerdClient | None = attrs.field(
        default=None, alias="client", repr=False, kw_only=True
    )
    _runc: RuncContainer | None = attrs.field(default=None, init=False, repr=False)

    # --- the connection ---------------------------------------------------------

    def _api(self) -> ContainerdClient:
        if self._client is None:
            self._client = ContainerdClient(self.address, self.namespace)
        return self._client

    def close(self) -> None:
        """Close the connection to containerd (idempotent)."""
        if self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self) -> ContainerdContainer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- what containerd knows --------------------------------------------------

    def info(self) -> ContainerRecord:
        """containerd's record of the container (image, snapshot, runtime, spec, labels).

        Raises:
            ContainerNotFound: No such container in the namespace.
        """
        return self._api().container(self.id)

    def task(self) -> TaskRecord | None:
        """The container's task (pid, status); None when it has none."""
        return self._api().task(self.id)

    @property
    def pid(self) -> int:
        """The task's init process (host pid).

        Raises:
            ContainerNotRunning: The container has no task.
        """
        task = self.task()
        if task is None:
            raise ContainerNotRunning(f"containerd container {self.id!r} has no task")
        return task.pid

    @property
    def status(self) -> str | None:
        """The task's status (``running``, ``paused``, ``created``, ``stopped``...);
        None when the container has no task."""
        task = self.task()
        return None if task is None else task.status

    @property
    def running(self) -> bool:
        """True while the container has a running or paused task."""
        return self.status in LIVE

    @property
    def image(self) -> str:
        """The image reference the container was made from."""
        return self.info().image

    @property
    def spec(self) -> dict[str, Any]:
        """Its OCI runtime spec."""
        spec: dict[str, Any] = json.loads(self.info().spec)
        return spec

    @property
    def runc(self) -> RuncContainer:
        """The runc container under the shim (its state root found from the runtime options),
        made once and held."""
        return self._runc_for(None)

    def _runc_for(self, record: ContainerRecord | None) -> RuncContainer:
        if self._runc is None:
            root = self.runc_root
            if root is None:
                root = runc_root_for(record or self.info(), self.namespace)
            self._runc = RuncContainer(self.id, root=root, backend=self._backend)
        return self._runc

    # --- checkpoint -------------------------------------------------------------

    def _live(self, client: ContainerdClient) -> tuple[ContainerRecord, TaskRecord, RuncState]:
        """The container, its running task and runc's state of it, checked to agree."""
        record = client.container(self.id)
        task = client.task(self.id)
        if task is None or task.status not in LIVE:
            what = "has no task" if task is None else f"has a {task.status} task"
            hint = (
                "start it first (ctr task start)"
                if task is None or task.status == "created"
                else "it has exited"
            )
            raise ContainerNotRunning(
                f"containerd container {self.id!r} (namespace {self.namespace!r}) {what}, so "
                f"there is nothing to checkpoint ({hint})"
            )
        if record.runtime not in _RUNC_RUNTIMES:
            raise NotCheckpointable(
                f"containerd container {self.id!r} runs under {record.runtime!r}; cedana "
                f"checkpoints containers of the runc shims ({', '.join(_RUNC_RUNTIMES)})"
            )
        runc = self._runc_for(record)
        try:
            state = runc.state()
        except ContainerNotFound:
            state = None
        if state is None or state.pid != task.pid:
            raise ContainerError(
                f"containerd's task {self.id!r} has pid {task.pid}, but runc's state under "
                f"{runc.root} does not show it; pass the shim's runc root as runc_root= "
                "(--root)"
            )
        return record, task, state

    def checkpoint(
        self,
        path: str | os.PathLike[str],
        *,
        leave_running: bool = False,
        tcp_established: bool = False,
        file_locks: bool = False,
        shell_job: bool | None = None,
        compress: Literal["zstd", "none"] | None = None,
        level: int | None = None,
        threads: int | None = None,
        directory: bool | None = None,
        overwrite: bool | None = None,
        work_dir: str | os.PathLike[str] | None = None,
        signing_key: str | os.PathLike[str] | None = None,
        criu: Mapping[str, Any] | None = None,
        progress: ProgressArg = None,
        rootfs_only: bool | None = None,
        shift_owners: bool | None = None,
        options: CheckpointOptions | None = None,
    ) -> Checkpoint:
        """Checkpoint the container, its writable snapshot included, to ``path``.

        Every keyword but ``options`` sets the :class:`~cedana.CheckpointOptions` field
        of the same name, over ``options`` (None keeps that field as it is).

        The manifest records the image (reference, digest, chain id), the
        snapshotter and key, the runtime and its options and (as a member)
        the spec. Without ``leave_running`` the container is killed once the
        artifact is written and verified and its task is deleted; the
        container and its snapshot stay in containerd.

        Raises:
            ContainerNotFound: No such container in the namespace.
            ContainerNotRunning: It has no task, or its task is not running.
            NotCheckpointable: Not a runc-shim container, not an overlayfs
                snapshot, or established TCP without ``tcp_established``.
            DumpFailed: CRIU failed; the container keeps running, unfrozen.
            ArtifactExists: ``path`` exists and ``overwrite`` was not set.
            NoSpace: The artifact's or the work dir's filesystem filled up; the container
                keeps running.
            OSError: Writing the artifact failed otherwise; the container keeps running.
        """
        opts = CheckpointOptions.merged(
            options,
            leave_running=leave_running,
            tcp_established=tcp_established,
            file_locks=file_locks,
            shell_job=shell_job,
            compress=compress,
            level=level,
            threads=threads,
            directory=directory,
            overwrite=overwrite,
            work_dir=work_dir,
            signing_key=signing_key,
            criu=criu,
            progress=progress,
            rootfs_only=rootfs_only,
            shift_owners=shift_owners,
        )
        run = _CheckpointRun(self, self._api())
        # The one template every runc-based runtime runs, held by the runc layer.
        return run.runc().checkpoint_as(run, path, opts)

    # --- restore ----------------------------------------------------------------

    @classmethod
    def restore(
        cls,
        checkpoint: Checkpoint | str | os.PathLike[str],
        *,
        name: str | None = None,
        namespace: str | None = None,
        address: str | None = None,
        log: str | os.PathLike[str] | None = None,
        tcp_established: bool | None = None,
        work_dir: str | os.PathLike[str] | None = None,
        hooks: Mapping[str, Any] | None = None,
        grants: confine.Grants | None = None,
        backend: CriuBackend | None = None,
        client: ContainerdClient | None = None,
        trust: Trust = "trusted",
        trusted_keys: Iterable[KeySource] | None = None,
    ) -> ContainerdContainer:
        """Restore a containerd checkpoint as a new containerd container.

        The checkpoint is untrusted input and is confined like an untrusted
        image (:mod:`cedana.container.confine`): the root filesystem is the
        image's layers in containerd plus the changes; the spec may ask for
        no OCI hooks, host namespaces, extra capabilities, bind mounts or
        devices beyond containerd's defaults and ``grants``, and the runtime
        must be a runc shim without options naming host binaries or paths.
        Everything is checked before containerd is asked to do anything.

        Args:
            checkpoint: The artifact (or an opened :class:`~cedana.Checkpoint`).
            name: The new container's id; the checkpointed one by default.
            namespace: The containerd namespace; the checkpointed one by default.
            address: containerd's socket; containerd's default one
                (a checkpoint does not choose a host socket).
            log: A file the restored task's stdout and stderr are appended to
                (containerd's ``file://`` log URI); /dev/null when None.
            tcp_established: Must not be True: the runc shim restores without
                TCP repair.
            work_dir: Where the images are unpacked (the shim reads them from
                there); the system temp dir by default.
            hooks: OCI hooks for the restored container, in place of the
                checkpoint's (which are refused: they would run on the host);
                ``{}`` restores without hooks.
            grants: Host namespaces, capabilities, bind sources and devices
                the spec may have beyond the runtime's defaults.
            backend: The CRIU backend (for the preflight check).
            client: containerd's API client for ``namespace`` (tests hand in fakes); a
                connection to ``address`` by default. It is left open.
            trust: ``"any"`` accepts an artifact that no trusted key signed (see
                :meth:`cedana.Checkpoint.open`); by default it is refused first.
            trusted_keys: More public keys (PEM files) to trust.

        Raises:
            ContainerExists: ``name`` (or its snapshot key) is taken.
            ContainerError: The checkpoint is not a containerd one, or its image
                is missing or now different, or it needs what the shim cannot
                restore (a terminal, TCP connections, file locks).
            UntrustedArtifact: No trusted key signed it, and ``trust`` is not ``"any"``.
            ArtifactCorrupt: The artifact is damaged.
            UnsafeArtifact: The artifact is unsafe, or asks for more than the
                runtime's defaults and ``grants`` allow (the message names the field).
            RestoreFailed: containerd (runc, CRIU) failed; nothing is left behind.
        """
        ckpt = Checkpoint.of(checkpoint, trust=trust, trusted_keys=trusted_keys)
        refuse_rootfs(ckpt)
        manifest = ckpt.manifest
        if manifest.kind != "container" or manifest.runtime != CONTAINERD:
            raise ContainerError(
                f"{ckpt.path} holds a {manifest.runtime or manifest.kind} checkpoint, "
                "not a containerd one"
            )
        info = manifest.workload["container"]
        ctd = manifest.workload["containerd"]
        rootfs_info = manifest.workload.get("rootfs") or {}
        old = (str(ctd["namespace"]), str(info["id"]))
        name = name or old[1]
        namespace = namespace or old[0]
        address = or_default(address, DEFAULT_ADDRESS)
        _check_restorable(ckpt, info, tcp_established)
        members = [m.name for m in manifest.members]
        spec_member = confine.check_member(
            ctd.get("spec"), members, what="containerd.spec", default=SPEC_MEMBER
        )
        diff_dir = confine.check_member(
            rootfs_info.get("dir"),
            members,
            what="rootfs.dir",
            default=RuncContainer.member("")[:-1],
        )
        for member in ContainerdSnapshotter.diff_members:
            confine.check_member(f"{diff_dir}/{member}", members, what="rootfs.dir", default="")
        form = diff_format(rootfs_info)
        if form not in (OVERLAY, OCI_LAYER_FORMAT):
            raise ContainerError(
                f"{ckpt.path} holds rootfs changes in a {rootfs_info.get('format')!r} format, "
                "which containerd's overlayfs snapshots cannot take; upgrade"
            )
        record = ContainerRecord.from_json(
            ctd,
            id=name,
            snapshot_key=name,
            labels={**dict(ctd.get("labels") or {}), RESTORED_FROM_LABEL: "/".join(old)},
        )
        task_options = _checked_runtime(record, namespace)
        spec = _checked_spec(
            ckpt.read_member(spec_member),
            old=old,
            new=(namespace, name),
            hooks=hooks,
            grants=grants,
        )
        RuncContainer.preflight(backend, ckpt)

        started = time.monotonic()
        logger.debug("restore containerd %s/%s from %s: start", namespace, name, ckpt.path)
        connection = (
            contextlib.nullcontext(client)
            if client is not None
            else ContainerdClient(address, namespace)
        )
        with connection as api:
            snapshotter = str(ctd["snapshotter"])
            _check_name_free(api, name, snapshotter)
            image = _image_for(api, ctd, namespace)
            if not api.snapshot_exists(snapshotter, image.chain_id):
                raise ContainerError(
                    f"image {image.name!r} is not unpacked for snapshotter {snapshotter!r} in "
                    f"namespace {namespace!r} (its layers, chain id {image.chain_id}, are "
                    f"missing); unpack it there first (ctr -n {namespace} images unpack "
                    f"--snapshotter {snapshotter} {image.name})"
                )
            record = attrs.evolve(record, image=image.name)
            uri = f"file://{os.path.abspath(log)}" if log is not None else ""

            with (
                scratch_dir(".cedana-restore-", parent=work_dir, fills="CRIU's images") as work,
                api.lease(),
            ):
                undo = contextlib.ExitStack()
                undo.callback(logger.debug, "restore containerd %s/%s: failed", namespace, name)
                with undo:
                    images = work / "images"
                    confine.unpack_images(ckpt, images, grants=grants)
                    store: Snapshotter = ContainerdSnapshotter(
                        api, snapshotter, name, parent=image.chain_id
                    )
                    mounts = store.prepare()
                    assert isinstance(mounts, list)
                    undo.callback(_cleanup, name, store.remove)
                    diff = images / diff_dir
                    if form == OCI_LAYER_FORMAT:  # containerd's own archive
                        diff = from_oci_layer(diff, work / "overlay-diff")
                    applied = store.apply(diff)
                    logger.debug("snapshot %s: changes applied: %s", name, applied.describe())
                    api.create_container(attrs.evolve(record, spec=spec))
                    undo.callback(_cleanup, name, api.delete_container, name)
                    criu_work = work / "criu"
                    criu_work.mkdir(mode=0o700)
                    undo.callback(_cleanup, name, _remove_task, api, name)
                    try:
                        api.create_task(
                            name,
                            mounts,
                            options={
                                **task_options,
                                "criu_image_path": os.fspath(images),
                                "criu_work_path": os.fspath(criu_work),
                            },
                            stdout=uri,
                            stderr=uri,
                        )
                    except CedanaError as exc:
                        raise RestoreFailed(
                            f"containerd could not create the task of {name!r}: {exc}"
                        ) from exc
                    pid = _start(api, name, criu_work / "restore.log")
                    namespaces.restore_loopback(json.loads(spec), pid)
                    undo.pop_all()  # restored: nothing of it is undone
        logger.debug(
            "restore containerd %s/%s: pid %d in %.3fs",
            namespace,
            name,
            pid,
            time.monotonic() - started,
        )
        return cls(name, namespace=namespace, address=address, backend=backend, client=client)

    @classmethod
    def restore_fresh(
        cls,
        checkpoint: Checkpoint | str | os.PathLike[str],
        *,
        name: str | None = None,
        namespace: str | None = None,
        address: str | None = None,
        log: str | os.PathLike[str] | None = None,
        work_dir: str | os.PathLike[str] | None = None,
        hooks: Mapping[str, Any] | None = None,
        grants: confine.Grants | None = None,
        client: ContainerdClient | None = None,
        trust: Trust = "trusted",
        trusted_keys: Iterable[KeySource] | None = None,
    ) -> ContainerdContainer:
        """Start a new containerd container from a rootfs-only checkpoint: the same image
        (by its chain id), a new snapshot holding the changes, the checkpoint's spec
        (confined as for :meth:`restore`), a task started fresh; no CRIU. The keywords
        are :meth:`restore`'s.

        Raises:
            ContainerExists: ``name`` (or its snapshot key) is taken.
            ImageNotFound: The image is not in the namespace.
            ContainerError: Not a rootfs-only containerd checkpoint, or the image now has
                other layers.
            UntrustedArtifact: No trusted key signed it, and ``trust`` is not ``"any"``.
            UnsafeArtifact: The spec or the diff asks for what is refused.
            RestoreFailed: containerd failed; nothing is left behind.
        """
        from cedana.runtimes._containerd_fresh import restore_fresh

        ckpt = Checkpoint.of(checkpoint, trust=trust, trusted_keys=trusted_keys)
        return restore_fresh(
            cls,
            ckpt,
            name=name,
            namespace=namespace,
            address=or_default(address, DEFAULT_ADDRESS),
            log=log,
            work_dir=work_dir,
            hooks=hooks,
            grants=grants,
            client=client,
        )

    # --- managing it ------------------------------------------------------------

    def kill(self, sig: int = signal_mod.SIGKILL, *, all_processes: bool = False) -> None:
        """Send ``sig`` to the task's init (every process with ``all_processes``)."""
        self._api().kill_task(self.id, int(sig), all_processes=all_processes)

    def delete(self) -> None:
        """Remove the container from containerd: its task (killed), itself and its snapshot.

        What is already gone is skipped, so this also cleans up after a checkpoint.
        """
        client = self._api()
        try:
            record = client.container(self.id)
        except ContainerNotFound:
            return
        _remove_task(client, self.id)
        client.delete_container(self.id)
        # containerd's garbage collector may remove the snapshot first, at any moment.
        with contextlib.suppress(ContainerNotFound):
            client.remove_snapshot(record.snapshotter, record.snapshot_key)
        portable.remove_labelled(record.labels)  # files a restore from elsewhere made


# --- restore helpers ----------------------------------------------------------------


def _check_restorable(
    ckpt: Checkpoint, info: Mapping[str, Any], tcp_established: bool | None
) -> None:
    """Refuse what the runc shim's restore cannot do (it passes runc no CRIU flags)."""
    needs = []
    if info.get("terminal"):
        needs.append("a terminal (the container was started with a tty)")
    if RuncContainer.restores_tcp(tcp_established, ckpt.manifest):
        needs.append("TCP repair (tcp_established, --tcp-established)")
    if ckpt.manifest.options.get("file_locks"):
        needs.append("file locks")
    if info.get("ext_unix_sk"):
        needs.append("external unix sockets")
    if needs:
        raise ContainerError(
            f"{ckpt.path} needs {' and '.join(needs)} at restore, which containerd's runc shim "
            "does not pass to runc restore; restore it into runc instead (into='runc', --into runc)"
        )


def _checked_runtime(record: ContainerRecord, namespace: str) -> dict[str, Any]:
    """The runc shim options of ``record``, checked: a checkpoint may not choose the
    runtime binary, CRIU, a cgroup for the shim, or a runc root runc does not keep."""
    if record.runtime_options and record.runtime_options_type != RUNC_OPTIONS_TYPE:
        raise confine.refused(
            "manifest field containerd.runtime.options_type",
            f"is {record.runtime_options_type!r}, not the runc shim's options",
            "do not use this checkpoint",
        )
    options = record.runc_options()
    root = options.get("root")
    if root:
        confine.check_runc_root(Path(str(root)) / namespace, recorded=True)
    confine.check_runtime_options(
        record.runtime, {k: v for k, v in options.items() if k != "root"}, runtimes=_RUNC_RUNTIMES
    )
    return options


def _checked_spec(
    raw: bytes,
    *,
    old: tuple[str, str],
    new: tuple[str, str],
    hooks: Mapping[str, Any] | None,
    grants: confine.Grants | None,
) -> bytes:
    """The checkpointed spec for the restored container, confined: its cgroup renamed,
    its root the shim's ``rootfs`` (the snapshot), hooks and host-facing fields checked."""
    try:
        spec = json.loads(new_spec(raw, old=old, new=new))
        spec["root"] = {**(spec.get("root") or {}), "path": "rootfs"}
    except (AttributeError, TypeError, ValueError) as exc:
        raise confine.refused(
            "spec", f"is not an OCI spec ({exc})", "do not use this checkpoint"
        ) from None
    checked = confine.check_config(
        spec, name=new[1], bundle=None, grants=grants, hooks=hooks, what="spec"
    )
    return json.dumps(checked).encode()


def _check_name_free(client: ContainerdClient, name: str, snapshotter: str) -> None:
    try:
        client.container(name)
    except ContainerNotFound:
        pass
    else:
        raise ContainerExists(
            f"a containerd container named {name!r} exists in namespace {client.namespace!r}; "
            "choose another name (name=... / --name) or delete it first"
        )
    if client.snapshot_exists(snapshotter, name):
        raise ContainerExists(
            f"snapshot {name!r} of {snapshotter!r} exists in namespace {client.namespace!r} "
            f"(left by a removed container?); remove it (ctr -n {client.namespace} snapshots "
            f"--snapshotter {snapshotter} rm {name}) or choose another name"
        )


def _image_for(client: ContainerdClient, ctd: Mapping[str, Any], namespace: str) -> ImageRecord:
    """The checkpoint's image in the target containerd, checked to have the same layers."""
    recorded = ctd.get("image") or {}
    ref = str(recorded.get("name") or ctd.get("image") or "")
    try:
        image = client.image(ref)
    except ContainerNotFound:
        raise ImageNotFound(
            f"image {ref!r} is not in containerd namespace {namespace!r} at {client.address}; "
            "the checkpoint's root filesystem changes apply on top of it: import or pull it "
            f"there first (ctr -n {namespace} images import / pull)"
        ) from None
    chain = recorded.get("chain_id")
    if chain and image.chain_id != chain:
        raise ContainerError(
            f"image {ref!r} in namespace {namespace!r} now has other layers (chain id "
            f"{image.chain_id}) than the checkpointed container's ({chain}); the root "
            "filesystem changes apply only on the same layers: import the image it was "
            f"checkpointed with (digest {recorded.get('digest')})"
        )
    return image


def _start(client: ContainerdClient, name: str, criu_log: Path) -> int:
    """``Tasks.Start`` (the shim runs ``runc restore``); the restored init's pid.

    ``criu_log`` lies in the restore's scratch directory, which keeps a copy of it
    when a :class:`~cedana.errors.CriuError` naming it passes through.
    """
    try:
        client.start_task(name)
    except CedanaError as exc:
        raise RuncContainer.restore_failed(
            f"containerd could not restore task {name!r}: {exc}", criu_log
        ) from exc
    task = client.task(name)
    if task is None or task.status not in LIVE:
        raise RuncContainer.restore_failed(
            f"containerd restored task {name!r} but it is {task.status if task else 'gone'}",
            criu_log,
        )
    return task.pid


def _parse_ident(ident: str) -> dict[str, Any]:
    namespace, _, cid = ident.rpartition("/")
    if not cid:
        raise ValueError(ident)
    return {"id": cid, "namespace": namespace or None}


registry.register(
    registry.Runtime(
        name=CONTAINERD,
        target="containerd:[NAMESPACE/]ID",
        help="a containerd container (--address: containerd's socket; --root: the shim's "
        "runc root)",
        cls=ContainerdContainer,
        parse=_parse_ident,
        restores_into=(CONTAINERD, "runc"),
        flags={"address": "address", "root": "runc_root"},
        runc_root=DEFAULT_RUNC_ROOT,
        summary=lambda c: {"namespace": c.namespace, "name": c.id},
        adopt=_cross.into_containerd,
        describe=_cross.describe_containerd,
    )
)


@attrs.define(eq=False)
class _CheckpointRun:
    """containerd's part of one checkpoint (a :class:`~cedana.container.runc.RuntimeLayer`):
    the live check against containerd's records, the snapshot and facts, the task's end."""

    container: ContainerdContainer
    client: ContainerdClient
    record: ContainerRecord | None = None
    task: TaskRecord | None = None

    @property
    def runtime_name(self) -> str:
        return CONTAINERD

    def runc(self) -> RuncContainer:
        return self.container._runc_for(self.record)

    def live_state(self) -> RuncState:
        self.record, self.task, state = self.container._live(self.client)
        return state

    def dump_extras(self, state: RuncState) -> DumpExtras:
        record, task, client, cid = self.record, self.task, self.client, self.container.id
        assert record is not None  # live_state() ran first
        assert task is not None
        snapshot = ContainerdSnapshotter(client, record.snapshotter, record.snapshot_key)
        snapshot.check_mounted_at(state.rootfs, what=cid)
        parent = client.snapshot_parent(record.snapshotter, record.snapshot_key)
        image: ImageRecord | None = None
        try:
            image = client.image(record.image)
        except ContainerNotFound:
            logger.warning("image %s of %s is gone; recording its name only", record.image, cid)
        containerd = {
            **record.to_json(),
            "address": self.container.address,
            "namespace": self.container.namespace,
            "image": {
                "name": record.image,
                "digest": image.digest if image else None,
                "media_type": image.media_type if image else None,
                "manifest_digest": image.manifest_digest if image else None,
                "chain_id": parent,
            },
            "spec": SPEC_MEMBER,
        }
        return DumpExtras(
            snapshotter=snapshot,
            status=task.status,
            workload={"containerd": containerd},
            rootfs={"store": record.snapshotter},
            members={SPEC_MEMBER: record.spec},
        )

    def after_dump(self) -> None:
        # The dump killed it; containerd keeps the task until it is deleted.
        _remove_task(self.client, self.container.id, timeout=30)
