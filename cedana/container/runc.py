"""RuncContainer: checkpoint and restore a runc container, root filesystem changes included.

A runc container is a process tree plus what runc set up around it: its
bundle (``config.json``), namespaces, cgroups, mounts and root filesystem.
:class:`RuncContainer` holds the runc side and the :class:`~cedana.Process` of
the container's init, which plans and dumps the tree, so the artifact, its
integrity, the atomic write and "killed only once the artifact is verified"
are the Process layer's, unchanged. The checkpoint steps are one template,
:meth:`RuncContainer.checkpoint_as`, that every runc-based runtime runs with its
own part (:class:`RuntimeLayer`); plain runc is its first such runtime.

Checkpoint, in order:

1. Look the container up in runc's state (``ROOT/ID/state.json``); it must be
   running or paused. Read its ``config.json`` and derive CRIU's options the
   way runc's own checkpoint does (:mod:`cedana.container.options`).
2. Dump. From CRIU's post-dump callback, while the container is still frozen,
   add ``descriptors.json`` (runc's record of the init's stdio), the
   ``config.json`` and the root filesystem changes (an overlay upper directory
   as ``container/rootfs-diff.tar``; a plain directory rootfs is recorded as
   not captured).
3. Without ``leave_running``, CRIU kills the container once the artifact is
   verified, and ``runc delete`` frees its id, as ``runc checkpoint`` does.

Restore is a plan (:func:`plan_restore`: every check, nothing made) and its
execution (:meth:`RuncRestorePlan.execute`). It lays the artifact out so that
``runc restore --image-path`` can use it: CRIU's images and ``descriptors.json``
at the top. For an overlay rootfs it
makes a new bundle (``/var/lib/cedana/bundles/NAME`` unless told otherwise):
the checkpoint's ``config.json``, a fresh upper directory with the changes
applied, an overlay of the same lower directories mounted as ``rootfs``. Then
``runc restore --detach`` brings the container back and runc manages it from
then on. runc restores a private network namespace empty, so its loopback is
brought up again, as runc did when it created the container. Any failure
removes what was made: the half-restored container (``runc delete --force``),
the overlay mount and the bundle.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal as signal_mod
import time
from collections.abc import Iterable, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Literal, Protocol

import attrs

from cedana import registry
from cedana.artifact.manifest import Manifest, thaw
from cedana.artifact.signing import KeySource, Trust
from cedana.checkpoint import Checkpoint
from cedana.compat import check_host
from cedana.container import confine
from cedana.container.bundle import (
    BUNDLE_MARKER,
    DEFAULT_BUNDLES,
    MadeBundle,
    load_config,
    write_private,
)
from cedana.container.command import RuncCommand
from cedana.container.options import dump_options, gather_facts
from cedana.container.state import DEFAULT_ROOT, LIVE, RuncState, check_id, read_state
from cedana.criu import CriuBackend
from cedana.defaults import or_default
from cedana.descriptors import StdioTarget
from cedana.errors import (
    CedanaError,
    ContainerError,
    ContainerNotFound,
    ContainerNotRunning,
)
from cedana.process import (
    CheckpointOptions,
    DumpPlan,
    Process,
    preflight,
    restore_failed,
    restores_tcp,
)
from cedana.progress import ProgressArg
from cedana.rootfs import RootfsDiff, Snapshotter, snapshotter_for

__all__ = [
    "DEFAULT_BUNDLES",
    "ContainerDump",
    "DumpExtras",
    "RuncContainer",
    "RuntimeLayer",
    "container_lines",
    "container_summary",
]

logger = logging.getLogger("cedana.runc")

#: This runtime's name in the registry (the manifest's ``runtime``).
RUNC = "runc"

#: runc's record of the init's stdio, in the images directory (runc's name for it).
DESCRIPTORS = "descriptors.json"
#: The directory of the artifact holding the container's own members.
CONTAINER_DIR = "container"
CONFIG_MEMBER = f"{CONTAINER_DIR}/config.json"


@attrs.frozen(kw_only=True)
class ContainerDump:
    """What checkpointing a runc-based container needs, before CRIU runs.

    Attributes:
        state: runc's state of the container.
        config_bytes: Its ``config.json``, as the bundle has it.
        process: The container's init as the Process layer holds it (it dumps the tree).
        plan: CRIU's plan, with runc's options for the container.
        workload: The manifest's ``container`` facts.
    """

    state: RuncState
    config_bytes: bytes
    process: Process
    plan: DumpPlan
    workload: Mapping[str, Any]

    def checkpoint(
        self,
        path: str | os.PathLike[str],
        options: CheckpointOptions,
        *,
        snapshotter: Snapshotter | None,
        workload: Mapping[str, Any] | None = None,
        rootfs: Mapping[str, Any] | None = None,
        members: Mapping[str, bytes] | None = None,
    ) -> Checkpoint:
        """Checkpoint the container through the Process layer.

        Args:
            snapshotter: Captures the rootfs changes; None records them as not captured.
            workload: The runtime's own manifest facts, beside ``container``.
            rootfs: More facts for the manifest's ``rootfs`` entry.
            members: More files for the artifact (name -> content), written while frozen.
        """
        if snapshotter is not None:
            entry: dict[str, Any] = {
                "captured": True,
                "snapshotter": snapshotter.name,
                "format": snapshotter.format,
                "dir": CONTAINER_DIR,
                **snapshotter.layers_json(),
                **(rootfs or {}),
            }
        else:
            entry = {
                "captured": False,
                "path": str(self.state.rootfs),
                "reason": "the root filesystem is not an overlay with an upper directory; "
                "restore runs on the same bundle and sees its files as they are then",
            }
        container = self.workload["container"]
        return self.process.dump(
            self.plan,
            path,
            options,
            kind="container",
            runtime=str(container["runtime"]),
            workload={**self.workload, **(workload or {}), "rootfs": entry},
            add_members=partial(
                self._add_members, snapshotter=snapshotter, rootfs=entry, extra=members
            ),
        )

    def _add_members(
        self,
        images: Path,
        *,
        snapshotter: Snapshotter | None,
        rootfs: Mapping[str, Any],
        extra: Mapping[str, bytes] | None,
    ) -> Mapping[str, Any] | None:
        """Write runc's ``descriptors.json``, the config, ``extra`` members and the rootfs
        changes into ``images``; called while the container is frozen, so they match the
        memory images. Returns the manifest's ``rootfs`` entry with the diff's summary."""
        write_private(
            images / DESCRIPTORS, json.dumps(list(self.state.external_descriptors)).encode()
        )
        own = images / CONTAINER_DIR
        own.mkdir(mode=0o700, exist_ok=True)
        write_private(images / CONFIG_MEMBER, self.config_bytes)
        for name, data in (extra or {}).items():
            write_private(images / name, data)
        if snapshotter is None:
            return None
        diff = snapshotter.capture(self.state.rootfs, own)
        return {"rootfs": {**rootfs, "diff": diff.to_json()}}


@attrs.frozen(kw_only=True)
class DumpExtras:
    """What a runtime adds to the checkpoint template (:meth:`RuncContainer.checkpoint_as`).

    Attributes:
        snapshotter: Captures the rootfs changes; None records them as not captured.
        status: The status to record (the runtime's, e.g. its task's); runc's by default.
        workload: The runtime's own manifest facts, beside ``container``.
        rootfs: More facts for the manifest's ``rootfs`` entry.
        members: More files for the artifact (name -> content), written while frozen.
    """

    snapshotter: Snapshotter | None
    status: str | None = None
    workload: Mapping[str, Any] | None = None
    rootfs: Mapping[str, Any] | None = None
    members: Mapping[str, bytes] | None = None


class RuntimeLayer(Protocol):
    """A runtime as the checkpoint template asks it: plain runc, or one above it
    (:class:`~cedana.ContainerdContainer`) that holds its :class:`RuncContainer`."""

    @property
    def runtime_name(self) -> str:
        """The runtime's registry name, recorded as the manifest's ``runtime``."""
        ...

    def live_state(self) -> RuncState:
        """runc's state of the container, checked to be live by the runtime's own records.

        Raises:
            ContainerNotRunning: There is nothing running to checkpoint.
        """
        ...

    def dump_extras(self, state: RuncState) -> DumpExtras:
        """The runtime's snapshotter, facts and members for the artifact."""
        ...

    def after_dump(self) -> None:
        """After a checkpoint that killed the container: free what the runtime keeps of it
        (runc: its id; containerd: its task)."""
        ...


def _root_or_default(root: str | os.PathLike[str] | None) -> Path:
    """runc's state root; None (an option left unset) means runc's default."""
    return or_default(None if root is None else Path(root), DEFAULT_ROOT)


@attrs.define(eq=False)
class RuncContainer:
    """A runc container, found through runc's own state.

    Args:
        id: The container id.
        root: runc's state root (``runc --root``); None for runc's default.
        backend: The CRIU backend; the real one by default.
        runc: The runc binary; found on PATH by default.
        command: The runc command to run (a :class:`~cedana.container.command.RuncCommand`
            under ``root``); made from ``root`` and ``runc`` by default. Tests hand in fakes.

    Every property reads runc's state afresh, so it follows the container. It holds
    the :class:`~cedana.Process` of the container's init, and plans and dumps through it.

    Raises:
        ContainerError: ``id`` is not a valid runc id.
    """

    id: str
    root: Path = attrs.field(default=DEFAULT_ROOT, converter=_root_or_default)
    _backend: CriuBackend | None = attrs.field(default=None, alias="backend", repr=False)
    _runc: str | None = attrs.field(default=None, alias="runc", repr=False)
    _command: RuncCommand = attrs.field(
        default=attrs.Factory(lambda self: RuncCommand(self.root, self._runc), takes_self=True),
        alias="command",
        repr=False,
    )
    _process: Process | None = attrs.field(default=None, init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        check_id(self.id)

    # --- what runc knows --------------------------------------------------------

    def process(self, state: RuncState | None = None) -> Process:
        """The container's init as a :class:`~cedana.Process` (held while its pid stays)."""
        pid = (state or self.state()).pid
        if self._process is None or self._process.pid != pid:
            self._process = Process(pid, backend=self._backend)
        return self._process

    def state(self) -> RuncState:
        """runc's state of the container.

        Raises:
            ContainerNotFound: No such container under ``root``.
        """
        return read_state(self.root, self.id)

    @property
    def pid(self) -> int:
        """The init process (host pid)."""
        return self.state().pid

    @property
    def status(self) -> str:
        """``"running"``, ``"paused"``, ``"created"`` or ``"stopped"``."""
        return self.state().status

    @property
    def running(self) -> bool:
        """True while the container exists and is running or paused."""
        try:
            return self.state().status in LIVE
        except ContainerNotFound:
            return False

    @property
    def bundle(self) -> Path:
        """The bundle directory."""
        return self.state().bundle

    @property
    def rootfs(self) -> Path:
        """The root filesystem on the host."""
        return self.state().rootfs

    @property
    def cgroup_paths(self) -> Mapping[str, str]:
        """Controller (``""`` for the unified hierarchy) -> cgroup directory."""
        return self.state().cgroup_paths

    def _live_state(self) -> RuncState:
        state = self.state()
        if state.status not in LIVE:
            hint = "start it with runc start" if state.status == "created" else "it has exited"
            raise ContainerNotRunning(
                f"runc container {self.id!r} is {state.status}, so there is nothing to "
                f"checkpoint ({hint})"
            )
        return state

    # --- checkpoint -------------------------------------------------------------

    def prepare_dump(
        self,
        options: CheckpointOptions,
        state: RuncState,
        *,
        runtime: str = "runc",
        status: str | None = None,
    ) -> ContainerDump:
        """CRIU's plan and the manifest's container facts for checkpointing ``state``.

        The part of a checkpoint every runc-based runtime shares; the runtime
        adds its own facts, its snapshotter and what follows the dump.
        """
        config_bytes, config = load_config(state.bundle)
        init = self.process(state)
        plan = init.plan(options, layer=dump_options(config, gather_facts(state, config)))
        process = config.get("process") or {}
        container = {
            "id": self.id,
            "runtime": runtime,
            "root": str(state.root),
            "bundle": str(state.bundle),
            "rootfs": str(state.rootfs),
            "status": status or state.status,
            "config": CONFIG_MEMBER,
            "descriptors": list(state.external_descriptors),
            "terminal": bool(process.get("terminal")),
            "cgroup_paths": dict(state.cgroup_paths),
            "ext_unix_sk": bool(plan.criu.get("ext_unix_sk")),
        }
        return ContainerDump(
            state=state,
            config_bytes=config_bytes,
            process=init,
            plan=plan,
            workload={"container": container},
        )

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
        """Checkpoint the container, its root filesystem changes included, to ``path``.

        Every keyword but ``options`` sets the :class:`~cedana.CheckpointOptions` field
        of the same name, over ``options`` (None keeps that field as it is).

        Without ``leave_running`` the container is killed once the artifact is
        written and verified, then deleted from runc (its id is free again).

        Raises:
            ContainerNotFound: No such container.
            ContainerNotRunning: It is created but not started, or stopped.
            NotCheckpointable: Established TCP connections without ``tcp_established``.
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
        return self.checkpoint_as(self, path, opts)

    def checkpoint_as(
        self, runtime: RuntimeLayer, path: str | os.PathLike[str], options: CheckpointOptions
    ) -> Checkpoint:
        """The checkpoint template of every runc-based runtime, run for ``runtime``.

        In order: CRIU's preflight (once), the runtime's live check, runc's plan through
        the container's :class:`~cedana.Process` (:meth:`prepare_dump`), the runtime's
        extras (snapshotter, facts, members), the dump, and without ``leave_running``
        the runtime's cleanup of the killed container (a failure there is a warning: the
        artifact is written).

        With ``rootfs_only`` it runs the template's other form instead
        (:func:`cedana.container.rootfs_only.checkpoint_rootfs`): the same live check and
        extras, the changes captured with the cgroup frozen, no CRIU, nothing killed.
        """
        if options.rootfs_only:
            from cedana.container.rootfs_only import checkpoint_rootfs

            return checkpoint_rootfs(self.id, runtime, path, options)
        preflight(self._backend)
        state = runtime.live_state()
        extras = runtime.dump_extras(state)
        dump = self.prepare_dump(options, state, runtime=runtime.runtime_name, status=extras.status)
        started = time.monotonic()
        logger.debug(
            "checkpoint %s %s (pid %d) -> %s: start",
            runtime.runtime_name,
            self.id,
            state.pid,
            path,
        )
        ckpt = dump.checkpoint(
            path,
            options,
            snapshotter=extras.snapshotter,
            workload=extras.workload,
            rootfs=extras.rootfs,
            members=extras.members,
        )
        if not options.leave_running:
            try:
                runtime.after_dump()
            except CedanaError as exc:
                logger.warning(
                    "checkpoint of %s written, but freeing the killed container failed: %s",
                    self.id,
                    exc,
                )
        logger.debug(
            "checkpoint %s %s: complete in %.3fs",
            runtime.runtime_name,
            self.id,
            time.monotonic() - started,
        )
        return ckpt

    # --- plain runc as the template's runtime -------------------------------------

    @property
    def runtime_name(self) -> str:
        """``"runc"``: the runtime a plain runc checkpoint records."""
        return RUNC

    def live_state(self) -> RuncState:
        """runc's state of the container, which must be running or paused."""
        return self._live_state()

    def dump_extras(self, state: RuncState) -> DumpExtras:
        """The overlay snapshotter of the container's rootfs, if it has a writable layer."""
        return DumpExtras(snapshotter=snapshotter_for(state.rootfs))

    def after_dump(self) -> None:
        """As runc checkpoint does: the dumped container is gone, free its id."""
        self._command.delete(self.id, force=True)

    # --- for the runtimes above ---------------------------------------------------

    @staticmethod
    def member(name: str) -> str:
        """The artifact member ``name`` among the container's own (``container/NAME``)."""
        return f"{CONTAINER_DIR}/{name}"

    @staticmethod
    def preflight(backend: CriuBackend | None = None, checkpoint: Checkpoint | None = None) -> None:
        """CRIU's preflight check, run once per operation (the Process layer's); for a
        restore, also whether this host can run ``checkpoint`` (:func:`cedana.compat.check_host`:
        its CRIU version, architecture and CPU features), before anything runs."""
        checked = preflight(backend)
        if checkpoint is not None:
            check_host(checkpoint, checked)

    restores_tcp = staticmethod(restores_tcp)
    restore_failed = staticmethod(restore_failed)

    # --- restore ----------------------------------------------------------------

    @classmethod
    def restore(
        cls,
        checkpoint: Checkpoint | str | os.PathLike[str],
        *,
        name: str | None = None,
        bundle: str | os.PathLike[str] | None = None,
        root: str | os.PathLike[str] | None = None,
        stdin: StdioTarget = None,
        stdout: StdioTarget = None,
        stderr: StdioTarget = None,
        tcp_established: bool | None = None,
        console_socket: str | os.PathLike[str] | None = None,
        work_dir: str | os.PathLike[str] | None = None,
        lower: Sequence[str | os.PathLike[str]] | None = None,
        hooks: Mapping[str, Any] | None = None,
        grants: confine.Grants | None = None,
        backend: CriuBackend | None = None,
        runc: str | None = None,
        command: RuncCommand | None = None,
        trust: Trust = "trusted",
        trusted_keys: Iterable[KeySource] | None = None,
    ) -> RuncContainer:
        """Restore a runc checkpoint; the container runs again under runc.

        The checkpoint is untrusted input and is confined like an untrusted
        image (:mod:`cedana.container.confine`): its OCI hooks, host paths,
        host namespaces, extra capabilities, bind mounts and devices are
        refused, before anything runs, unless granted here.

        Args:
            checkpoint: The artifact (or an opened :class:`~cedana.Checkpoint`).
            name: The container id; the checkpointed one by default.
            bundle: Where to make the bundle (must not exist or be empty) for
                a checkpoint with its rootfs changes; the original bundle to
                restore on for one without. Defaults:
                ``/var/lib/cedana/bundles/NAME`` and the original bundle.
            root: runc's state root; by default the checkpointed container's,
                if it is a runc state root on this host.
            stdin: What becomes the container's stdin when it was a pipe
                (runc reattaches pipes listed in ``descriptors.json``): a
                descriptor, a path, a file object; /dev/null when None.
            stdout: Likewise for stdout (a path is opened for appending).
            stderr: Likewise for stderr.
            tcp_established: Restore established TCP connections; None follows
                the checkpoint.
            console_socket: For a container with a terminal: the socket that
                receives the new pty master (``runc restore --console-socket``).
            work_dir: Where the images are unpacked; the system temp dir by default.
            lower: The image layers (uppermost first) to apply the rootfs changes
                on. By default those the checkpoint records, each only if it is
                still the same directory (its recorded identity matches).
            hooks: OCI hooks for the restored container, in place of the
                checkpoint's (which are refused: they would run on the host);
                ``{}`` restores without hooks.
            grants: Host namespaces, capabilities, bind sources and devices
                the config may have beyond the runtime's defaults.
            backend: The CRIU backend (for the preflight check).
            trust: ``"any"`` accepts an artifact that no trusted key signed (see
                :meth:`cedana.Checkpoint.open`); by default it is refused first.
            trusted_keys: More public keys (PEM files) to trust.
            runc: The runc binary.
            command: The runc command to run (a
                :class:`~cedana.container.command.RuncCommand` under ``root``);
                made from ``root`` and ``runc`` by default.

        Raises:
            ContainerExists: ``name`` is taken, or the bundle directory is not empty.
            ContainerError: The checkpoint is not a runc one, or what it needs
                (lower layers, the original bundle) is gone.
            UntrustedArtifact: No trusted key signed it, and ``trust`` is not ``"any"``.
            ArtifactCorrupt: The artifact is damaged.
            UnsafeArtifact: The artifact is unsafe, or asks for more than the
                runtime's defaults and ``grants`` allow (the message names the field).
            RestoreFailed: runc (or CRIU) failed; nothing is left behind.
        """
        ckpt = Checkpoint.of(checkpoint, trust=trust, trusted_keys=trusted_keys)
        from cedana.container.restore import plan_restore  # it imports this module

        plan = plan_restore(
            ckpt,
            name=name,
            bundle=bundle,
            root=root,
            tcp_established=tcp_established,
            console_socket=console_socket,
            lower=lower,
            hooks=hooks,
            grants=grants,
        )
        RuncContainer.preflight(backend, ckpt)
        runc_command = or_default(command, RuncCommand(plan.root, runc))
        plan.execute(
            ckpt,
            runc_command,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            work_dir=work_dir,
            grants=grants,
        )
        return cls(plan.name, root=plan.root, backend=backend, runc=runc, command=runc_command)

    @classmethod
    def restore_fresh(
        cls,
        checkpoint: Checkpoint | str | os.PathLike[str],
        *,
        name: str | None = None,
        bundle: str | os.PathLike[str] | None = None,
        root: str | os.PathLike[str] | None = None,
        stdin: StdioTarget = None,
        stdout: StdioTarget = None,
        stderr: StdioTarget = None,
        work_dir: str | os.PathLike[str] | None = None,
        lower: Sequence[str | os.PathLike[str]] | None = None,
        hooks: Mapping[str, Any] | None = None,
        grants: confine.Grants | None = None,
        runc: str | None = None,
        command: RuncCommand | None = None,
        trust: Trust = "trusted",
        trusted_keys: Iterable[KeySource] | None = None,
    ) -> RuncContainer:
        """Start a new runc container from a rootfs-only checkpoint: the recorded image
        layers plus the changes, its config, ``runc run --detach``; no CRIU.

        Confined as :meth:`restore` is (hooks, host paths, namespaces, capabilities,
        devices refused unless granted; lower layers only if still the recorded ones;
        the diff checked entry by entry). The keywords are :meth:`restore`'s.

        Raises:
            ContainerExists: ``name`` is taken, or the bundle directory is not empty.
            ContainerError: Not a rootfs-only runc checkpoint, or its layers are gone.
            UntrustedArtifact: No trusted key signed it, and ``trust`` is not ``"any"``.
            UnsafeArtifact: The config or the diff asks for what is refused.
            RestoreFailed: runc failed; nothing is left behind.
        """
        ckpt = Checkpoint.of(checkpoint, trust=trust, trusted_keys=trusted_keys)
        from cedana.container.fresh import plan_fresh  # it imports this module's neighbours

        plan = plan_fresh(
            ckpt, name=name, bundle=bundle, root=root, lower=lower, hooks=hooks, grants=grants
        )
        runc_command = or_default(command, RuncCommand(plan.root, runc))
        plan.execute(
            ckpt, runc_command, stdin=stdin, stdout=stdout, stderr=stderr, work_dir=work_dir
        )
        return cls(plan.name, root=plan.root, runc=runc, command=runc_command)

    # --- managing it ------------------------------------------------------------

    def exec(self, argv: Sequence[str], *, timeout: float = 60) -> bytes:
        """Run ``argv`` inside the container (``runc exec``); return its stdout."""
        return self._command.exec(self.id, argv, timeout=timeout)

    def kill(self, sig: int | str = signal_mod.SIGKILL) -> None:
        """Send ``sig`` to the container's init (``runc kill``)."""
        name = sig if isinstance(sig, str) else signal_mod.Signals(sig).name
        done = self._command.run("kill", self.id, name)
        if done.returncode != 0:
            raise ContainerError(f"runc kill {self.id} {name} failed")

    def delete(self, *, force: bool = True) -> None:
        """Delete the container (``runc delete``) and the bundle restore made for it, if any.

        A bundle made by :meth:`restore` has its overlay unmounted and is
        removed; a bundle of your own is left alone.
        """
        bundle: Path | None = None
        with contextlib.suppress(ContainerNotFound):
            bundle = self.state().bundle
            self._command.delete(self.id, force=force)
        if bundle is not None and (bundle / BUNDLE_MARKER).is_file():
            MadeBundle(bundle, created=True).remove()


def container_summary(manifest: Manifest) -> dict[str, Any] | None:
    """What a container checkpoint's manifest says about the container (None for a process).

    Returns:
        ``id``, ``runtime``, ``status`` (when checkpointed), ``bundle``,
        ``rootfs`` (``captured``, and the snapshotter, lower layers and diff
        counts, or why it was not captured) and ``restores_into`` (the runtimes
        this cedana restores it into, the default first; empty for one it cannot);
        for a rootfs-only checkpoint also ``rootfs_only`` (True), and its own runtime as
        the one it starts afresh in.
    """
    if manifest.kind not in ("container", "rootfs"):
        return None
    info = manifest.workload.get("container") or {}
    rootfs = thaw(manifest.workload.get("rootfs") or {})
    source = registry.lookup(manifest.runtime)
    if manifest.kind == "rootfs":  # started afresh, by its own runtime only
        fresh = source is not None and source.restore_fresh is not None
        into = [str(manifest.runtime)] if fresh else []
    else:
        into = list(registry.restore_targets(source)) if source is not None else []
    return {
        "id": info.get("id"),
        "runtime": manifest.runtime,
        "status": info.get("status"),
        "bundle": info.get("bundle"),
        "rootfs": rootfs,
        "restores_into": into,
        **({"rootfs_only": True} if manifest.kind == "rootfs" else {}),
    }


def container_lines(summary: Mapping[str, Any]) -> list[tuple[str, str]]:
    """:func:`container_summary` as (label, text) lines for people."""
    rootfs = summary.get("rootfs") or {}
    if rootfs.get("captured") and rootfs.get("diff"):
        diff = RootfsDiff.from_json(rootfs["diff"])
        what = f"{diff.snapshotter} changes: {diff.describe()}"
    elif rootfs.get("captured"):
        what = f"{rootfs.get('snapshotter')} changes"
    else:
        what = f"not captured ({rootfs.get('reason', 'no writable layer')})"
    into = summary.get("restores_into")
    restores = " or ".join(into) if into else "not by this cedana (upgrade)"
    lines = [
        ("container", f"{summary.get('id')} ({summary.get('runtime')}, {summary.get('status')})"),
        ("bundle", str(summary.get("bundle"))),
        ("rootfs", what),
    ]
    if summary.get("rootfs_only"):
        owners = "as the container saw them" if rootfs.get("owners") == "container" else "host's"
        lines += [
            ("kind", "rootfs only: the root filesystem changes, no processes (no CRIU)"),
            ("owners", owners),
            ("restores", f"as a new container started fresh: {restores}" if into else restores),
        ]
    else:
        lines.append(("restores", restores))
    return lines


registry.register(
    registry.Runtime(
        name=RUNC,
        target="runc:ID",
        help="a runc container (--root: runc's state root)",
        cls=RuncContainer,
        parse=registry.one_name("id"),
        restores_into=(RUNC,),
        flags={"root": "root"},
        runc_root=DEFAULT_ROOT,
        summary=lambda c: {"name": c.id},
    )
)
