"""PodmanContainer: a podman container (runc, containers/storage), checkpointed and restored
as a podman container.

podman runs each container through conmon and an OCI runtime; with ``--runtime runc``
(the runtime cedana checkpoints) the container is a runc container under runc's own
root, ``/run/runc``, whose bundle is podman's ``userdata`` directory.
:class:`PodmanContainer` holds that runc side (a :class:`~cedana.RuncContainer`) and
adds podman's:

- lookup through ``podman container inspect --format json`` (never libpod's
  database): the container's id, name, state and pid, its OCI runtime, its image
  (name, id, digest), its mounts and its containers/storage layer. The command
  line is podman's stable interface and works without ``podman system service``
  running; a REST client would need the service and a Python dependency for the
  same JSON.
- the root filesystem through containers/storage
  (:class:`~cedana.rootfs.containers_storage.ContainersStorageSnapshotter`): the
  container's layer (``GraphDriver.Data.UpperDir``), checked to be what its root
  is mounted from, captured while the container is frozen;
- restore **through podman**: podman owns a container's life through conmon, so
  cedana writes podman's own checkpoint-import layout (libpod's
  ``exportCheckpoint``: ``config.dump``, ``spec.dump``, ``checkpoint/`` with CRIU's
  images, ``rootfs-diff.tar`` and ``deleted.files``) and runs ``podman container
  restore --import``. podman creates the container from the same image, applies the
  changes, and conmon runs ``runc restore``; podman then manages it like any other
  (``podman ps``, ``exec``, ``logs``, ``stop``, ``rm``).

The ``config.dump`` cedana writes is libpod's ContainerConfig reduced to the fields
a restore needs (id, name, image, command, stop signal and timeout...), taken from
what ``inspect`` says at checkpoint; host paths (log, cgroup parent, static dir)
are left for podman to choose on the restoring host. That layout is written by
:mod:`cedana.runtimes._podman_layout`; podman's own archives are read by
:mod:`cedana.runtimes._podman_archive`.

Checkpoint follows the Process layer's rule: without ``leave_running`` the
container is killed only once the artifact is written and verified; podman then
shows it exited (as after ``podman container checkpoint``). A restore that fails
removes the container podman made for it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import secrets
import shutil
import signal
import subprocess
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import attrs
import zstandard

from cedana import registry
from cedana.artifact.manifest import thaw
from cedana.artifact.signing import KeySource, Trust
from cedana.checkpoint import Checkpoint
from cedana.container import RuncContainer, confine, namespaces
from cedana.container.command import RuncCommand
from cedana.container.rootfs_only import refuse_rootfs
from cedana.container.runc import DumpExtras
from cedana.container.state import RuncState
from cedana.criu import CriuBackend
from cedana.errors import (
    ArtifactExists,
    CedanaError,
    ContainerError,
    ContainerExists,
    ContainerNotFound,
    ContainerNotRunning,
    ImageNotFound,
    NotCheckpointable,
    RestoreFailed,
    RuntimeTimeout,
    RuntimeUnavailable,
)
from cedana.process import CheckpointOptions
from cedana.progress import ProgressArg
from cedana.rootfs import OVERLAY, diff_format
from cedana.rootfs.containers_storage import (
    PODMAN_FORMAT,
    ContainersStorageSnapshotter,
    from_podman_diff,
)
from cedana.rootfs.mounts import mountinfo, umount
from cedana.rootfs.overlay import DIFF_NAME
from cedana.runtimes import _cross
from cedana.runtimes._podman_layout import (
    CEDANA_FILES,
    DEVSHM_MEMBER,
    DEVSHM_NAME,
    checked_config,
    checked_spec,
    image_layers,
    podman_config,
    write_import,
)
from cedana.staging import scratch_dir

__all__ = ["DEFAULT_RUNC_ROOT", "PODMAN", "PodmanCLI", "PodmanContainer"]

logger = logging.getLogger("cedana.podman")

#: This runtime's name in the registry (the manifest's ``runtime``).
PODMAN = "podman"
#: The runc root podman's containers run under (runc's own default, as root).
DEFAULT_RUNC_ROOT = Path("/run/runc")

_NAME = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.-]*\Z")
_LIVE = ("running", "paused")


@attrs.define(eq=False)
class PodmanCLI:
    """podman's command line, the interface cedana finds and restores containers through.

    podman reads its configuration as usual (``CONTAINERS_CONF``,
    ``CONTAINERS_STORAGE_CONF``, ``--root``/``--runroot`` given as ``options``).

    Args:
        binary: The podman binary.
        options: podman's global options, before the command (``--root``...).
        timeout: Seconds one podman command may take.
    """

    binary: str = "podman"
    options: tuple[str, ...] = attrs.field(default=(), converter=tuple)
    timeout: float = 120

    def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        """Run ``podman OPTIONS ARGS``; its stdout and stderr as text.

        Raises:
            RuntimeUnavailable: podman is not installed.
            RuntimeTimeout: It took longer than ``timeout``.
            ContainerError: It failed and ``check`` is set (its last error line said).
        """
        argv = [self.binary, *self.options, *args]
        try:
            done = subprocess.run(
                argv, capture_output=True, text=True, timeout=self.timeout, check=False
            )
        except FileNotFoundError:
            raise RuntimeUnavailable(
                f"podman is not installed ({self.binary} not found); install it "
                "(scripts/provision, or apt-get install podman)"
            ) from None
        except subprocess.TimeoutExpired:
            raise RuntimeTimeout(
                f"podman {' '.join(args[:2])} took longer than {self.timeout:.0f}s"
            ) from None
        if check and done.returncode != 0:
            raise ContainerError(f"podman {args[0]} failed: {_last_error(done.stderr)}")
        return done

    def container(self, name: str) -> dict[str, Any] | None:
        """``podman container inspect``'s record of ``name`` (or id); None if none has it."""
        done = self.run("container", "inspect", "--format", "json", "--", name, check=False)
        if done.returncode != 0:
            if "no such container" in done.stderr.lower():
                return None
            raise ContainerError(f"podman container inspect failed: {_last_error(done.stderr)}")
        records = json.loads(done.stdout or "[]")
        return dict(records[0]) if records else None

    def image(self, ref: str) -> dict[str, Any] | None:
        """``podman image inspect``'s record of ``ref``; None if the store has no such image."""
        # "--": a ref from an artifact ("--root=DIR") is an operand, never an option.
        done = self.run("image", "inspect", "--format", "json", "--", ref, check=False)
        if done.returncode != 0:
            if "not known" in done.stderr.lower() or "no such image" in done.stderr.lower():
                return None
            raise ContainerError(f"podman image inspect failed: {_last_error(done.stderr)}")
        records = json.loads(done.stdout or "[]")
        return dict(records[0]) if records else None

    def remove(self, name: str) -> None:
        """``podman rm --force`` without a grace period (what is already gone is skipped)."""
        self.run("rm", "--force", "--time", "0", "--ignore", "--", name, check=False)


def _last_error(stderr: str) -> str:
    """podman's error line (its last ``Error:`` line, else its last line)."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("Error:")]
    return (errors or lines or ["no message"])[-1]


def _root(root: str | os.PathLike[str] | None) -> Path:
    """podman's runc root; None (an option left unset) means ``/run/runc``."""
    return DEFAULT_RUNC_ROOT if root is None else Path(root)


@attrs.define(eq=False)
class PodmanContainer:
    """A podman container run by runc, found through ``podman container inspect``.

    Args:
        name: The container's name or id.
        runc_root: runc's state root of podman's containers (``/run/runc``).
        backend: The CRIU backend; the real one by default.
        client: podman's command line (a :class:`PodmanCLI`); the ``podman`` on PATH
            by default. Tests hand in one with their own storage.

    Every property asks podman afresh.
    """

    name: str
    runc_root: Path = attrs.field(default=DEFAULT_RUNC_ROOT, converter=_root, kw_only=True)
    _backend: CriuBackend | None = attrs.field(
        default=None, alias="backend", repr=False, kw_only=True
    )
    _client: PodmanCLI | None = attrs.field(default=None, alias="client", repr=False, kw_only=True)
    _runc: RuncContainer | None = attrs.field(default=None, init=False, repr=False)

    def _api(self) -> PodmanCLI:
        if self._client is None:
            self._client = PodmanCLI()
        return self._client

    # --- what podman knows ------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """podman's record of the container (``podman container inspect``).

        Raises:
            ContainerNotFound: podman has no such container.
        """
        record = self._api().container(self.name)
        if record is None:
            raise ContainerNotFound(f"podman has no container {self.name!r}; see podman ps --all")
        return record

    @property
    def id(self) -> str:
        """The container's full id."""
        return str(self.info()["Id"])

    @property
    def status(self) -> str:
        """podman's status of it (``running``, ``paused``, ``exited``, ``created``...)."""
        return str(self.info()["State"]["Status"])

    @property
    def running(self) -> bool:
        """True while it runs (or is paused)."""
        return self.status in _LIVE

    @property
    def pid(self) -> int:
        """Its init process (host pid).

        Raises:
            ContainerNotRunning: It does not run.
        """
        state = self.info()["State"]
        if state.get("Status") not in _LIVE:
            raise ContainerNotRunning(f"podman container {self.name!r} is {state.get('Status')}")
        return int(state["Pid"])

    @property
    def runc(self) -> RuncContainer:
        """The runc container under conmon, made once and held."""
        return self._runc_for(self.info())

    def _runc_for(self, record: Mapping[str, Any]) -> RuncContainer:
        if self._runc is None:
            self._runc = RuncContainer(
                str(record["Id"]), root=self.runc_root, backend=self._backend
            )
        return self._runc

    # --- checkpoint -------------------------------------------------------------

    def _live(self) -> tuple[dict[str, Any], RuncState]:
        """The container's record and runc's state of it, checked to be checkpointable."""
        record = self.info()
        state = record.get("State") or {}
        status = state.get("Status")
        if status not in _LIVE:
            raise ContainerNotRunning(
                f"podman container {self.name!r} is {status}, so there is nothing to "
                "checkpoint (start it first: podman start)"
            )
        runtime = record.get("OCIRuntime")
        if runtime != "runc":
            raise NotCheckpointable(
                f"podman container {self.name!r} runs under {runtime!r}; cedana checkpoints "
                "podman containers run by runc (podman run --runtime runc)"
            )
        for mount in record.get("Mounts") or ():
            if mount.get("Type") == "volume":
                raise NotCheckpointable(
                    f"podman container {self.name!r} uses named volume {mount.get('Name')!r} "
                    f"(at {mount.get('Destination')}); cedana does not capture volumes yet: "
                    "use a container without named volumes"
                )
        runc = self._runc_for(record)
        try:
            runc_state = runc.state()
        except ContainerNotFound:
            runc_state = None
        if runc_state is None or runc_state.pid != int(state.get("Pid") or 0):
            raise ContainerError(
                f"podman container {self.name!r} has pid {state.get('Pid')}, but runc's state "
                f"under {runc.root} does not show it; pass podman's runc root as runc_root= "
                "(--root)"
            )
        return record, runc_state

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
        """Checkpoint the container, its containers/storage layer included, to ``path``.

        Every keyword but ``options`` sets the :class:`~cedana.CheckpointOptions` field
        of the same name, over ``options`` (None keeps that field as it is).

        The manifest records the image (name, id, digest), podman's container
        config (the fields a restore needs) and, as a member, the OCI spec. A paused
        container is checkpointed paused and restored running. Without
        ``leave_running`` the container is killed once the artifact is written and
        verified; podman then shows it exited.

        Raises:
            ContainerNotFound: podman has no such container.
            ContainerNotRunning: It is not running (nor paused).
            NotCheckpointable: It runs under another runtime than runc, uses a named
                volume, is not on the overlay driver, or holds established TCP without
                ``tcp_established``.
            DumpFailed: CRIU failed; the container keeps running, unfrozen.
            ArtifactExists: ``path`` exists and ``overwrite`` was not set.
            NoSpace: A filesystem filled up; the container keeps running.
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
        run = _CheckpointRun(self)
        record, _ = self._live()  # finds the runc side (and refuses early)
        return self._runc_for(record).checkpoint_as(run, path, opts)

    # --- restore ----------------------------------------------------------------

    @classmethod
    def restore(
        cls,
        checkpoint: Checkpoint | str | os.PathLike[str],
        *,
        name: str | None = None,
        tcp_established: bool | None = None,
        work_dir: str | os.PathLike[str] | None = None,
        hooks: Mapping[str, Any] | None = None,
        grants: confine.Grants | None = None,
        backend: CriuBackend | None = None,
        client: PodmanCLI | None = None,
        trust: Trust = "trusted",
        trusted_keys: Iterable[KeySource] | None = None,
    ) -> PodmanContainer:
        """Restore a podman checkpoint as a new podman container (``podman container
        restore --import`` of the import layout cedana writes from it).

        The checkpoint is untrusted input and is confined like an untrusted image
        (:mod:`cedana.container.confine`): podman makes the root filesystem from the
        image in its store plus the changes, the spec may ask for no OCI hooks, host
        namespaces, extra capabilities, bind mounts or devices beyond the runtime's
        defaults and ``grants`` (the mounts podman makes for every container are left
        for podman to make), and only the recorded config fields a restore needs are
        passed to podman. Everything is checked before podman is asked to do anything.

        Args:
            checkpoint: The artifact (or an opened :class:`~cedana.Checkpoint`).
            name: The new container's name; the checkpointed one by default.
            tcp_established: Restore established TCP connections; None follows the
                checkpoint.
            work_dir: Where the import archive is staged; the system temp dir by default.
            hooks: OCI hooks for the restored container, in place of the checkpoint's
                (which are refused); ``{}`` restores without hooks.
            grants: Host namespaces, capabilities, bind sources and devices the spec may
                have beyond the runtime's defaults.
            backend: The CRIU backend (for the preflight check).
            client: podman's command line; the ``podman`` on PATH by default.
            trust: ``"any"`` accepts an artifact that no trusted key signed.
            trusted_keys: More public keys (PEM files) to trust.

        Raises:
            ContainerExists: ``name`` is taken.
            ImageNotFound: The image is not in podman's store.
            ContainerError: Not a podman checkpoint, or one podman cannot restore.
            UntrustedArtifact: No trusted key signed it, and ``trust`` is not ``"any"``.
            UnsafeArtifact: The artifact asks for more than the defaults and ``grants``.
            RestoreFailed: podman (conmon, runc, CRIU) failed; no container is left behind.
        """
        ckpt = Checkpoint.of(checkpoint, trust=trust, trusted_keys=trusted_keys)
        api = client if client is not None else PodmanCLI()
        plan = _plan_import(
            ckpt, name=name, tcp_established=tcp_established, hooks=hooks, grants=grants, api=api
        )
        name = plan.name
        if api.container(name) is not None:
            raise ContainerExists(
                f"a podman container named {name!r} exists; choose another name (name=... / "
                "--name) or remove it first (podman rm)"
            )
        RuncContainer.preflight(backend, ckpt)

        started = time.monotonic()
        with scratch_dir(".cedana-restore-", parent=work_dir, fills="CRIU's images") as work:
            archive = plan.write(ckpt, work, grants=grants)
            try:
                done = api.run(
                    "container", "restore", "--import", os.fspath(archive),
                    *plan.flags, check=False,
                )  # fmt: skip
            except CedanaError:  # a timeout: conmon, runc and CRIU may still run
                _remove_made(api, name, plan.cid)
                raise
            if done.returncode != 0:
                log = _keep_restore_log(done.stderr, work)
                _remove_made(api, name, plan.cid)
                message = f"podman could not restore {name!r}: {_last_error(done.stderr)}"
                if log is None:
                    raise RestoreFailed(message)
                raise RuncContainer.restore_failed(message, log)
        restored = cls(name, backend=backend, client=client)
        logger.debug(
            "restore podman %s: pid %d in %.3fs", name, restored.pid, time.monotonic() - started
        )
        return restored

    @classmethod
    def restore_fresh(
        cls,
        checkpoint: Checkpoint | str | os.PathLike[str],
        *,
        name: str | None = None,
        work_dir: str | os.PathLike[str] | None = None,
        client: PodmanCLI | None = None,
        trust: Trust = "trusted",
        trusted_keys: Iterable[KeySource] | None = None,
    ) -> PodmanContainer:
        """Start a new podman container from a rootfs-only checkpoint: ``podman create``
        from the same image id with the process it ran (command, environment, working
        directory, user) and a private network mode, the changes written into its new
        layer, ``podman start``; no CRIU. Nothing host-facing is taken from the artifact.

        Raises:
            ContainerExists: ``name`` is taken.
            ImageNotFound: The image is not in podman's store.
            ContainerError: Not a rootfs-only podman checkpoint.
            UntrustedArtifact: No trusted key signed it, and ``trust`` is not ``"any"``.
            UnsafeArtifact: A recorded field or the diff is refused.
            RestoreFailed: podman failed; no container is left behind.
        """
        from cedana.runtimes._podman_fresh import restore_fresh

        ckpt = Checkpoint.of(checkpoint, trust=trust, trusted_keys=trusted_keys)
        api = client if client is not None else PodmanCLI()
        return restore_fresh(cls, ckpt, name=name, work_dir=work_dir, api=api, client=client)

    @staticmethod
    def export(
        checkpoint: Checkpoint | str | os.PathLike[str],
        dest: str | os.PathLike[str],
        *,
        name: str | None = None,
        compress: Literal["zstd", "none"] = "zstd",
        hooks: Mapping[str, Any] | None = None,
        grants: confine.Grants | None = None,
        work_dir: str | os.PathLike[str] | None = None,
        client: PodmanCLI | None = None,
        trust: Trust = "trusted",
        trusted_keys: Iterable[KeySource] | None = None,
    ) -> Path:
        """Write a podman checkpoint as the archive ``podman container restore --import``
        takes (what :meth:`restore` hands podman), for podman to restore itself.

        The checkpoint is checked and confined as for :meth:`restore` (``name``,
        ``hooks`` and ``grants`` as there); its image must be in this podman's store,
        whose layers say which entries of a replaced directory are deleted.

        Returns:
            ``dest``: a tar, zstd-compressed unless ``compress="none"``.

        Raises:
            ArtifactExists: ``dest`` exists.
            ImageNotFound: The image is not in podman's store.
        """
        target = Path(dest)
        if target.exists():
            raise ArtifactExists(f"{target} already exists; choose another path or remove it")
        ckpt = Checkpoint.of(checkpoint, trust=trust, trusted_keys=trusted_keys)
        api = client if client is not None else PodmanCLI()
        plan = _plan_import(
            ckpt, name=name, tcp_established=None, hooks=hooks, grants=grants, api=api
        )
        with scratch_dir(".cedana-export-", parent=work_dir, fills="CRIU's images") as work:
            archive = plan.write(ckpt, work, grants=grants)
            fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
            try:
                with open(fd, "wb") as out, open(archive, "rb") as src:
                    if compress == "zstd":
                        zstandard.ZstdCompressor(level=3, threads=-1).copy_stream(src, out)
                    else:
                        shutil.copyfileobj(src, out, 1 << 20)
            except BaseException:
                target.unlink(missing_ok=True)  # no partial archive under the name
                raise
        return target

    # --- managing it ------------------------------------------------------------

    def exec(self, argv: Sequence[str]) -> str:
        """Run ``argv`` inside the container (``podman exec``); its stdout."""
        return self._api().run("exec", self.name, *argv).stdout

    def logs(self) -> str:
        """What the container wrote to its stdout and stderr (``podman logs``)."""
        done = self._api().run("logs", self.name)
        return done.stdout + done.stderr

    def stop(self, timeout: int = 10) -> None:
        """Stop it (``podman stop``)."""
        self._api().run("stop", "--time", str(timeout), self.name)

    def remove(self) -> None:
        """Remove it from podman, killed if it runs (``podman rm --force``)."""
        self._api().remove(self.name)


@attrs.frozen(kw_only=True)
class _ImportPlan:
    """A podman import, decided and checked (:func:`_plan_import`), to be written."""

    name: str
    config: Mapping[str, Any]
    spec: Mapping[str, Any]
    flags: tuple[str, ...]
    diff_dir: str
    diff_format: str
    lower: tuple[str, ...]
    devshm: str | None = None
    #: The new container's id, fresh (cleanup after a failure finds its processes by it).
    cid: str = attrs.field(factory=lambda: secrets.token_hex(32))

    def write(self, ckpt: Checkpoint, work: Path, *, grants: confine.Grants | None) -> Path:
        """Unpack the images into ``work`` (checked against ``grants``) and write the import
        archive there; its path."""
        images = work / "images"
        confine.unpack_images(ckpt, images, grants=grants)
        diff = images / self.diff_dir
        if self.diff_format == PODMAN_FORMAT:  # podman's own export: through overlay's form
            diff = from_podman_diff(diff, work / "overlay-diff", lower=self.lower)
        archive = work / "import.tar"
        write_import(
            images,
            archive,
            # A fresh id, and the name in the config rather than --name, which podman's
            # restore refuses beside --tcp-established.
            config={**self.config, "name": self.name, "id": self.cid},
            spec=self.spec,
            diff_dir=diff,
            lower=self.lower,
            exclude={self.diff_dir.split("/")[0], *CEDANA_FILES},
            extra={DEVSHM_NAME: images / self.devshm} if self.devshm else None,
        )
        return archive


def _plan_import(
    ckpt: Checkpoint,
    *,
    name: str | None,
    tcp_established: bool | None,
    hooks: Mapping[str, Any] | None,
    grants: confine.Grants | None,
    api: PodmanCLI,
) -> _ImportPlan:
    """What importing ``ckpt`` into podman will do, checked before anything is unpacked:
    a podman checkpoint, a podman name, the members, the confined spec, the image."""
    refuse_rootfs(ckpt)
    manifest = ckpt.manifest
    if manifest.kind != "container" or manifest.runtime != PODMAN:
        what = f"{manifest.runtime} container" if manifest.kind == "container" else manifest.kind
        raise ContainerError(
            f"{ckpt.path} holds a {what} checkpoint, not one of a podman container, which "
            "is what podman restores; checkpoint a podman container (cedana checkpoint "
            "podman:NAME), or restore this one with cedana restore"
        )
    info = manifest.workload["container"]
    pod = manifest.workload.get("podman") or {}
    rootfs_info = manifest.workload.get("rootfs") or {}
    config = checked_config(thaw(pod.get("config") or {}))
    name = name or str(config.get("name") or "")
    if not _NAME.match(name):
        raise ContainerError(
            f"{name!r} is not a podman container name (letters, digits, _ . -); choose "
            "another (name=... / --name)"
        )
    if info.get("terminal"):
        raise ContainerError(
            f"{ckpt.path} holds a container with a terminal, which cedana does not "
            "restore into podman yet; restore it into runc (into='runc', --into runc)"
        )
    form = diff_format(rootfs_info)
    if not rootfs_info.get("captured") or form not in (OVERLAY, PODMAN_FORMAT):
        raise ContainerError(
            f"{ckpt.path} holds no rootfs changes in the overlay format, which a restore "
            "into podman needs; restore it into runc (into='runc', --into runc)"
        )
    members = [m.name for m in manifest.members]
    spec_member = confine.check_member(
        info.get("config"),
        members,
        what="container.config",
        default=RuncContainer.member("config.json"),
    )
    diff_dir = confine.check_member(
        rootfs_info.get("dir"),
        members,
        what="rootfs.dir",
        default=RuncContainer.member("")[:-1],
    )
    if form == OVERLAY:
        confine.check_member(f"{diff_dir}/{DIFF_NAME}", members, what="rootfs.dir", default="")
    spec = checked_spec(ckpt.read_member(spec_member), name=name, hooks=hooks, grants=grants)
    flags = []
    if RuncContainer.restores_tcp(tcp_established, manifest):
        flags.append("--tcp-established")
        linux = spec.get("linux") or {}
        if namespaces.private_network(linux.get("namespaces") or []):
            # podman makes the namespace with lo down; CRIU repairs loopback TCP in it
            # before cedana could bring lo up afterwards, so a hook of cedana's does.
            hooks_of = spec.setdefault("hooks", {})
            hooks_of["prestart"] = [namespaces.loopback_hook(), *hooks_of.get("prestart", [])]
    if manifest.options.get("file_locks"):
        flags.append("--file-locks")
    image_ref = str(config.get("rootfsImageName") or config.get("rootfsImageID") or "")
    image = api.image(str(config.get("rootfsImageID") or image_ref)) or api.image(image_ref)
    if image is None:
        raise ImageNotFound(
            f"image {image_ref!r} (id {config.get('rootfsImageID')}) is not in podman's "
            "store; the checkpoint's root filesystem changes apply on top of it: load or "
            "import it first (podman load / podman import)"
        )
    if config.get("rootfsImageID") and image.get("Id") != config["rootfsImageID"]:
        raise ContainerError(
            f"image {image_ref!r} in podman's store is {image.get('Id')}, not the "
            f"checkpointed container's {config['rootfsImageID']}; the root filesystem "
            "changes apply only on the same layers: load the image it was checkpointed with"
        )
    return _ImportPlan(
        name=name,
        config=config,
        spec=spec,
        flags=tuple(flags),
        diff_dir=diff_dir,
        diff_format=form or OVERLAY,
        lower=tuple(image_layers(image)),
        devshm=DEVSHM_MEMBER if DEVSHM_MEMBER in members else None,
    )


_RESTORE_LOG = re.compile(r"log file: (/\S+/restore\.log)")


def _keep_restore_log(stderr: str, work: Path) -> Path | None:
    """A copy, in the scratch dir ``work``, of the CRIU restore log podman names in its
    error (it lies in the container's own directory, which the cleanup removes)."""
    found = _RESTORE_LOG.search(stderr)
    if found is None:
        return None
    copy = work / "restore.log"
    try:
        shutil.copyfile(found.group(1), copy)
    except OSError:
        return None
    return copy


def _remove_made(api: PodmanCLI, name: str, cid: str | None = None) -> None:
    """A failed restore's cleanup: what still runs for container ``cid`` killed
    (:func:`_kill_named`), then the container podman made for it removed (with its
    storage layer); a failure here is logged, the restore's error is raised."""
    if cid is not None:
        killed = _kill_named(cid)
        if killed:
            logger.warning("failed restore of %s: killed what still ran for it: %s", name, killed)
    try:
        api.remove(name)
    except CedanaError as exc:
        logger.warning("cleanup after a failed restore of %s: %s", name, exc)
    if cid is not None:
        _delete_runc_state(cid)


def _delete_runc_state(cid: str, root: Path = DEFAULT_RUNC_ROOT) -> None:
    """What a ``runc restore`` killed midway leaves under runc's root for container
    ``cid``: the root filesystem it mounted for CRIU (``criu-root``) unmounted, runc's
    state deleted (``runc delete --force``), the directory removed if runc left it."""
    state = root / cid
    if not state.is_dir():
        return
    for mount in sorted(
        (m.mountpoint for m in mountinfo() if str(m.mountpoint).startswith(f"{state}/")),
        key=lambda m: -len(str(m)),
    ):
        with contextlib.suppress(OSError):
            umount(Path(mount), detach=True)
    with contextlib.suppress(CedanaError, OSError):
        RuncCommand(root).delete(cid, force=True)
    if state.is_dir():
        shutil.rmtree(state, ignore_errors=True)
    logger.warning("failed restore: removed runc's state of %s left under %s", cid, root)


def _kill_named(cid: str, *, timeout: float = 10) -> list[int]:
    """SIGKILL every process whose command line names the container id ``cid`` (its
    conmon, ``runc restore``) and all their descendants (CRIU, the half-restored tree).

    ``podman rm --force`` stops a container through its runtime's state, which a restore
    still running under conmon has not written yet, so a CRIU spinning on a hostile image
    (or one a timeout left behind) would run on. The id is the fresh one this restore
    wrote into ``config.dump``, so nothing else names it. Repeated until none is left
    (a process may fork meanwhile). Returns the pids killed.
    """
    needle = cid.encode()
    killed: list[int] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        parents: dict[int, int] = {}
        named: set[int] = set()
        for entry in os.listdir("/proc"):
            if not entry.isdigit():
                continue
            try:
                stat_line = Path(f"/proc/{entry}/stat").read_bytes()
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            parents[int(entry)] = int(stat_line.rsplit(b")", 1)[1].split()[1])
            if needle in cmdline:
                named.add(int(entry))
        doomed = set(named)
        grew = True
        while grew:
            more = {pid for pid, ppid in parents.items() if ppid in doomed} - doomed
            doomed |= more
            grew = bool(more)
        doomed.discard(os.getpid())
        if not doomed:
            break
        for pid in doomed:
            try:
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
            except OSError:
                continue
        time.sleep(0.05)
    return sorted(set(killed))


#: podman's tar of the container's ``/dev/shm`` in its import layout, and the member an
#: archive podman exported keeps it as (podman restores it into the new container's).
registry.register(
    registry.Runtime(
        name=PODMAN,
        target="podman:NAME",
        help="a podman container run by runc (name or id; --root: podman's runc root)",
        cls=PodmanContainer,
        parse=registry.one_name("name"),
        restores_into=(PODMAN, "runc"),
        flags={"root": "runc_root"},
        runc_root=DEFAULT_RUNC_ROOT,
        summary=lambda c: {"name": c.name},
        adopt=_cross.into_podman,
        describe=_cross.describe_podman,
    )
)


def _layers_chain(api: PodmanCLI, image: str) -> str | None:
    """The chain id of ``image``'s layers (how another store recognises it); None when
    podman no longer has it."""
    from cedana.runtimes._containerd_api import chain_id

    record = api.image(image) or {}
    layers = (record.get("RootFS") or {}).get("Layers") or []
    return chain_id([str(d) for d in layers]) if layers else None


@attrs.define(eq=False)
class _CheckpointRun:
    """podman's part of one checkpoint (a :class:`~cedana.container.runc.RuntimeLayer`):
    the live check against podman's record, the layer and facts, podman's catching up."""

    container: PodmanContainer
    record: dict[str, Any] | None = None

    @property
    def runtime_name(self) -> str:
        return PODMAN

    def live_state(self) -> RuncState:
        self.record, state = self.container._live()
        return state

    def dump_extras(self, state: RuncState) -> DumpExtras:
        record = self.record
        assert record is not None  # live_state() ran first
        cid = self.container.name
        layer = ContainersStorageSnapshotter.from_graph_driver(
            record.get("GraphDriver") or {}, what=cid
        )
        layer.check_mounted_at(state.rootfs, what=cid)
        podman = {
            "id": record.get("Id"),
            "name": record.get("Name"),
            "image": {
                "name": record.get("ImageName"),
                "id": record.get("Image"),
                "digest": record.get("ImageDigest"),
                "chain_id": _layers_chain(self.container._api(), str(record.get("Image"))),
            },
            "config": podman_config(record),
            "network_mode": (record.get("HostConfig") or {}).get("NetworkMode"),
        }
        return DumpExtras(
            snapshotter=layer,
            status=str((record.get("State") or {}).get("Status")),
            workload={"podman": podman},
            rootfs={"store": layer.name},
        )

    def after_dump(self) -> None:
        # The dump killed it; podman learns it from conmon a moment later.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            record = self.container._api().container(self.container.name)
            if record is None or (record.get("State") or {}).get("Status") not in _LIVE:
                return
            time.sleep(0.05)
