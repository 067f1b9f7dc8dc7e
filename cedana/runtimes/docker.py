"""DockerContainer: a docker container checkpointed with its filesystem changes and
restored as a container docker manages.

Docker (20.10) runs each container through containerd (namespace ``moby``)
and its runc shim, so a docker container is a runc container plus what docker
keeps about it. :class:`DockerContainer` holds the runc side privately (a
:class:`~cedana.RuncContainer` under the shim's runc root, read from the
shim's ``options.json``: ``/run/docker/runtime-runc/moby`` for docker's
default exec root) and adds docker's:

- lookup through the Engine API (the docker SDK, :mod:`._docker_api`): the
  container's id, state, image, create config (``Config``, ``HostConfig``)
  and its overlay2 layers (``GraphDriver.Data``);
- the root filesystem through :class:`~cedana.rootfs.overlay2.Overlay2Snapshotter`:
  the container's upper directory captured while it is frozen, in the same
  ``"overlay"`` format as every other store (what ``docker checkpoint create``
  does not save at all);
- restore as a new docker container: created through the API from the same
  image and config, its new overlay2 layer filled with the changes before it
  starts, then started from the CRIU images the way ``docker start
  --checkpoint`` does: the images go to the new container's
  ``checkpoints/NAME`` directory under docker's data root (docker 20.10 takes
  no other), and ``POST /containers/{id}/start?checkpoint=NAME`` makes docker
  hand them to containerd, whose runc shim runs ``runc restore``; so docker
  manages it afterwards (``docker ps``,
  ``exec``, ``logs``, ``stop``, ``rm``). That start needs an experimental
  daemon (``dockerd --experimental``).

Without ``leave_running`` the container is killed once the artifact is written
and verified; docker then shows it exited (as after ``docker checkpoint
create``). A restore that fails removes the container it made (its layer goes
with it).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import attrs

from cedana import registry
from cedana.artifact.manifest import thaw
from cedana.artifact.signing import KeySource, Trust
from cedana.checkpoint import Checkpoint
from cedana.container import RuncContainer, confine, namespaces, portable
from cedana.container.rootfs_only import refuse_rootfs
from cedana.container.runc import DumpExtras
from cedana.container.state import RuncState
from cedana.criu import CriuBackend
from cedana.errors import (
    CedanaError,
    ContainerError,
    ContainerExists,
    ContainerNotFound,
    ContainerNotRunning,
    ImageNotFound,
    NotCheckpointable,
    RestoreFailed,
    SetupError,
)
from cedana.process import CheckpointOptions
from cedana.progress import ProgressArg
from cedana.rootfs import OVERLAY, diff_format
from cedana.rootfs.overlay2 import Overlay2Snapshotter
from cedana.runtimes import _cross
from cedana.runtimes._docker_api import DockerClient
from cedana.staging import scratch_dir

__all__ = ["DEFAULT_RUNC_ROOT", "DockerContainer"]

logger = logging.getLogger("cedana.docker")

#: This runtime's name in the registry (the manifest's ``runtime``).
DOCKER = "docker"
#: The runc root of docker's containers under its default exec root (``/var/run/docker``).
DEFAULT_RUNC_ROOT = Path("/run/docker/runtime-runc/moby")
#: The label a restored container carries: the name of the checkpointed one.
RESTORED_FROM_LABEL = "io.cedana.restored-from"
#: The checkpoint name docker is told to start from (in the new container's checkpoints).
_CHECKPOINT_NAME = "cedana"
_RUNC_RUNTIMES = ("runc", "io.containerd.runc.v2", "")

# HostConfig fields a checkpoint may carry into the new container as they are: limits,
# logging, DNS and the like, none of which opens the host to the container.
_KEPT_HOST_CONFIG = frozenset(
    {
        "AutoRemove",
        "BlkioWeight",
        "CapDrop",
        "CgroupnsMode",
        "ConsoleSize",
        "CpuCount",
        "CpuPercent",
        "CpuPeriod",
        "CpuQuota",
        "CpuShares",
        "CpusetCpus",
        "CpusetMems",
        "Dns",
        "DnsOptions",
        "DnsSearch",
        "ExtraHosts",
        "GroupAdd",
        "Init",
        "Memory",
        "MemoryReservation",
        "MemorySwap",
        "MemorySwappiness",
        "NanoCpus",
        "OomKillDisable",
        "OomScoreAdj",
        "PidsLimit",
        "ReadonlyRootfs",
        "RestartPolicy",
        "ShmSize",
        "Ulimits",
    }
)
# HostConfig fields that would hand the container host resources: refused when set (Binds
# only from granted sources: a restore from another runtime binds in files of cedana's).
_REFUSED_HOST_CONFIG = (
    "Binds",
    "Mounts",
    "VolumesFrom",
    "Devices",
    "DeviceRequests",
    "DeviceCgroupRules",
    "Links",
    "CgroupParent",
    "Cgroup",
)
_SAFE_LOG_DRIVERS = frozenset({"json-file", "local", "none"})


def _runc_root_of(pid: int) -> Path | None:
    """The runc root of the container whose init is ``pid``, from its shim.

    containerd's runc shim (the init's parent) runs in the task's bundle, where
    it keeps the runtime options docker gave it (``options.json``: ``root``);
    runc's state is below that root, in the containerd namespace (the bundle's
    parent directory's name: ``moby``). None when it cannot be read.
    """
    try:
        with open(f"/proc/{pid}/stat") as f:
            ppid = int(f.read().rpartition(")")[2].split()[1])
        bundle = Path(os.readlink(f"/proc/{ppid}/cwd"))
        options = json.loads((bundle / "options.json").read_text())
    except (OSError, ValueError, IndexError):
        return None
    root = options.get("root") if isinstance(options, dict) else None
    if not root:
        return None
    return Path(str(root)) / bundle.parent.name


@attrs.define(eq=False)
class DockerContainer:
    """A docker container, found through the daemon's Engine API.

    Args:
        name: The container's name or id (any prefix docker accepts).
        address: The daemon's API socket (``unix:///run/docker.sock`` or a path); None
            for ``DOCKER_HOST`` or docker's default.
        runc_root: The runc state root of docker's shim; read from the shim (its
            ``options.json``) when None.
        backend: The CRIU backend; the real one by default.
        client: The API client (a :class:`~cedana.runtimes._docker_api.DockerClient`);
            connected on first use by default.

    It holds its :class:`~cedana.RuncContainer` (made once, on first use) and a
    connection to the daemon: :meth:`close` it (or use it in a ``with`` block). Every
    property asks docker afresh.

    Raises:
        RuntimeUnavailable: The docker SDK is not installed
            (``pip install 'cedana[docker]'``), or the daemon does not answer at
            ``address`` (raised on first use).
    """

    name: str
    address: str | None = None
    runc_root: Path | None = attrs.field(
        default=None, converter=attrs.converters.optional(Path), kw_only=True
    )
    _backend: CriuBackend | None = attrs.field(
        default=None, alias="backend", repr=False, kw_only=True
    )
    _client: DockerClient | None = attrs.field(
        default=None, alias="client", repr=False, kw_only=True
    )
    _runc: RuncContainer | None = attrs.field(default=None, init=False, repr=False)

    # --- the connection ---------------------------------------------------------

    def _api(self) -> DockerClient:
        if self._client is None:
            self._client = DockerClient(self.address)
        return self._client

    def close(self) -> None:
        """Close the connection to the daemon (idempotent)."""
        if self._client is not None:
            self._client.close()
            self._client = None

    def __enter__(self) -> DockerContainer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- what docker knows ------------------------------------------------------

    def info(self) -> dict[str, Any]:
        """Docker's inspect record of the container.

        Raises:
            ContainerNotFound: No container has that name or id.
        """
        try:
            return self._api().inspect_container(self.name)
        except ContainerNotFound:
            raise ContainerNotFound(
                f"no docker container named {self.name!r} at {self._api().base_url} "
                "(docker ps -a lists them)"
            ) from None

    @property
    def id(self) -> str:
        """The container's full id."""
        return str(self.info()["Id"])

    @property
    def status(self) -> str:
        """Docker's status: ``running``, ``paused``, ``exited``, ``created``..."""
        return str(self.info()["State"]["Status"])

    @property
    def running(self) -> bool:
        """True while the container runs (paused included)."""
        return bool(self.info()["State"].get("Running"))

    @property
    def pid(self) -> int:
        """The container's init process (host pid).

        Raises:
            ContainerNotRunning: It is not running.
        """
        state = self.info()["State"]
        if not state.get("Running"):
            raise ContainerNotRunning(f"docker container {self.name!r} is {state.get('Status')}")
        return int(state["Pid"])

    @property
    def image(self) -> str:
        """The image the container was created from, as it was named (``Config.Image``)."""
        return str(self.info()["Config"]["Image"])

    @property
    def runc(self) -> RuncContainer:
        """The runc container under docker's shim, made once and held."""
        return self._runc_for(self.info())

    def _runc_for(self, record: Mapping[str, Any]) -> RuncContainer:
        if self._runc is None:
            root = self.runc_root
            if root is None:
                pid = int(record["State"].get("Pid") or 0)
                root = (_runc_root_of(pid) if pid else None) or DEFAULT_RUNC_ROOT
            self._runc = RuncContainer(str(record["Id"]), root=root, backend=self._backend)
        return self._runc

    # --- checkpoint -------------------------------------------------------------

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
        """Checkpoint the container, its overlay2 layer's changes included, to ``path``.

        Every keyword but ``options`` sets the :class:`~cedana.CheckpointOptions` field
        of the same name, over ``options`` (None keeps that field as it is).

        The manifest records the image (name and id) and the container's create
        config (``Config``, ``HostConfig``), so it can be created again. A paused
        container is checkpointed as it is (and restores running). Without
        ``leave_running`` the container is killed once the artifact is written and
        verified; docker then shows it exited.

        Raises:
            ContainerNotFound: No such container.
            ContainerNotRunning: It is not running.
            NotCheckpointable: It has volumes or bind mounts, another graph driver
                than overlay2, another runtime than runc, or established TCP without
                ``tcp_established``.
            DumpFailed: CRIU failed; the container keeps running, unfrozen.
            ArtifactExists: ``path`` exists and ``overwrite`` was not set.
            NoSpace: The artifact's or the work dir's filesystem filled up.
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
        run = _CheckpointRun(self, self.info())
        # The one template every runc-based runtime runs, held by the runc layer.
        return run.runc().checkpoint_as(run, path, opts)

    def _live(self, record: Mapping[str, Any]) -> RuncState:
        """runc's state of the container, checked against docker's record of it."""
        state = record.get("State") or {}
        what = f"docker container {self.name!r}"
        if not state.get("Running"):
            raise ContainerNotRunning(
                f"{what} is {state.get('Status')}, so there is nothing to checkpoint "
                f"(docker start {self.name} first)"
            )
        host = record.get("HostConfig") or {}
        if str(host.get("Runtime") or "") not in _RUNC_RUNTIMES:
            raise NotCheckpointable(
                f"{what} runs under runtime {host.get('Runtime')!r}; cedana checkpoints "
                "docker containers of the runc runtime"
            )
        mounts = record.get("Mounts") or []
        if mounts:
            kinds = ", ".join(
                f"{m.get('Type')} {m.get('Name') or m.get('Source')} on {m.get('Destination')}"
                for m in mounts
            )
            raise NotCheckpointable(
                f"{what} has volumes or bind mounts ({kinds}); cedana captures the "
                "container's own layer, not what is mounted into it, and would restore it "
                "without them: run the container without them (keep data in its filesystem) "
                "or checkpoint the volume's contents yourself"
            )
        runc = self._runc_for(record)
        try:
            live = runc.state()
        except ContainerNotFound:
            live = None
        if live is None or live.pid != int(state.get("Pid") or 0):
            raise ContainerError(
                f"{what} has pid {state.get('Pid')}, but runc's state under {runc.root} does "
                "not show it; pass docker's runc root as runc_root= (--root)"
            )
        return live

    # --- restore ----------------------------------------------------------------

    @classmethod
    def restore(
        cls,
        checkpoint: Checkpoint | str | os.PathLike[str],
        *,
        name: str | None = None,
        address: str | None = None,
        tcp_established: bool | None = None,
        work_dir: str | os.PathLike[str] | None = None,
        grants: confine.Grants | None = None,
        backend: CriuBackend | None = None,
        client: DockerClient | None = None,
        trust: Trust = "trusted",
        trusted_keys: Iterable[KeySource] | None = None,
    ) -> DockerContainer:
        """Restore a docker checkpoint as a new container that docker manages.

        The container is created through the API from the checkpoint's image (the
        same image id) and create config, its new overlay2 layer receives the
        rootfs changes, and docker starts it from the CRIU images
        (``start --checkpoint``). The checkpoint is untrusted input: its
        ``HostConfig`` may not ask for volumes, binds (but from ``grants.binds``),
        devices, host namespaces, privileges, capabilities beyond docker's defaults
        (unless granted), a cgroup parent or another runtime; its CRIU images are
        confined as for
        runc (:func:`cedana.container.confine.check_images`). Everything is checked
        before docker is asked to make anything.

        Args:
            checkpoint: The artifact (or an opened :class:`~cedana.Checkpoint`).
            name: The new container's name; the checkpointed one's by default.
            address: The daemon's API socket; ``DOCKER_HOST`` or docker's default
                (a checkpoint does not choose a host socket).
            tcp_established: Must not be True: docker's restore passes no TCP repair.
            work_dir: Where the images are unpacked (docker reads them from there);
                the system temp dir by default.
            grants: Capabilities and host namespaces the config may have beyond
                docker's defaults.
            backend: The CRIU backend (for the preflight check).
            client: The API client (tests hand in fakes); a connection to
                ``address`` by default. It is left open.
            trust: ``"any"`` accepts an artifact that no trusted key signed.
            trusted_keys: More public keys (PEM files) to trust.

        Raises:
            ContainerExists: ``name`` is taken.
            ImageNotFound: The checkpoint's image is not in this docker.
            SetupError: The daemon is not experimental.
            ContainerError: The checkpoint is not a docker one, or needs what docker's
                restore cannot do (a terminal, TCP connections, file locks).
            UnsafeArtifact: It asks for more than docker's defaults and ``grants``.
            RestoreFailed: docker (containerd, runc, CRIU) failed; no container is left.
        """
        ckpt = Checkpoint.of(checkpoint, trust=trust, trusted_keys=trusted_keys)
        refuse_rootfs(ckpt)
        manifest = ckpt.manifest
        if manifest.kind != "container" or manifest.runtime != DOCKER:
            raise ContainerError(
                f"{ckpt.path} holds a {manifest.runtime or manifest.kind} checkpoint, "
                "not a docker one"
            )
        info = manifest.workload["container"]
        recorded = thaw(manifest.workload["docker"])
        rootfs_info = manifest.workload.get("rootfs") or {}
        name = name or str(recorded.get("name") or "").lstrip("/") or str(info["id"])[:12]
        _check_restorable(ckpt, info, tcp_established)
        members = [m.name for m in manifest.members]
        diff_dir = confine.check_member(
            rootfs_info.get("dir"), members, what="rootfs.dir", default="container"
        )
        for member in Overlay2Snapshotter.diff_members:
            confine.check_member(f"{diff_dir}/{member}", members, what="rootfs.dir", default="")
        if diff_format(rootfs_info) != OVERLAY:
            raise ContainerError(
                f"{ckpt.path} holds rootfs changes in a {rootfs_info.get('format')!r} format, "
                "which docker's overlay2 layers cannot take; upgrade"
            )
        config_member = confine.check_member(
            info.get("config"), members, what="container.config", default=""
        )
        image_id = str((recorded.get("image") or {}).get("id") or "")
        create = _create_config(recorded, image_id, grants)
        RuncContainer.preflight(backend, ckpt)

        started = time.monotonic()
        logger.debug("restore docker %s from %s: start", name, ckpt.path)
        connection = contextlib.nullcontext(client) if client is not None else DockerClient(address)
        with connection as api:
            daemon = _check_daemon(api)
            if api.find_container(name) is not None:
                raise ContainerExists(
                    f"a docker container named {name!r} exists; choose another name "
                    f"(name=... / --name) or remove it first (docker rm -f {name})"
                )
            create["Image"] = _check_image(api, recorded, image_id)
            with (
                scratch_dir(".cedana-restore-", parent=work_dir, fills="CRIU's images") as work,
                contextlib.ExitStack() as undo,
            ):
                undo.callback(logger.debug, "restore docker %s: failed", name)
                images = work / "images"
                confine.unpack_images(ckpt, images, grants=grants)
                config = json.loads((images / config_member).read_bytes())
                # The checkpoint directory docker reads holds CRIU's images only.
                own = work / "container"
                os.rename(images / diff_dir, own)
                cid = api.create_container(create, name)
                undo.callback(_cleanup, name, api.remove_container, cid)
                layer = Overlay2Snapshotter.of(api.inspect_container(cid), what=name)
                layer.prepare()
                applied = layer.apply(own)
                logger.debug("docker %s: rootfs changes applied: %s", name, applied.describe())
                # Docker 20.10 takes checkpoints from the container's own directory only
                # ("custom checkpointdir is not supported"); it goes with the container.
                checkpoints = (
                    Path(str(daemon["DockerRootDir"])) / "containers" / cid / "checkpoints"
                )
                checkpoints.mkdir(mode=0o700, exist_ok=True)
                shutil.move(images, checkpoints / _CHECKPOINT_NAME)
                undo.callback(shutil.rmtree, checkpoints / _CHECKPOINT_NAME, ignore_errors=True)
                try:
                    api.start_from_checkpoint(cid, _CHECKPOINT_NAME)
                except CedanaError as exc:
                    raise RestoreFailed(
                        f"docker could not restore {name!r} from its checkpoint: {exc}"
                    ) from exc
                state = api.inspect_container(cid)["State"]
                if not state.get("Running"):
                    raise RestoreFailed(
                        f"docker restored {name!r} but it is {state.get('Status')} "
                        f"({state.get('Error') or 'see docker logs'})"
                    )
                namespaces.restore_loopback(config, int(state["Pid"]))
                undo.pop_all()  # restored: nothing of it is undone
                # containerd copied the images in at task create; docker needs them no more.
                shutil.rmtree(checkpoints / _CHECKPOINT_NAME, ignore_errors=True)
        logger.debug(
            "restore docker %s: pid %s in %.3fs", name, state["Pid"], time.monotonic() - started
        )
        return cls(name, address=address, backend=backend, client=client)

    @classmethod
    def restore_fresh(
        cls,
        checkpoint: Checkpoint | str | os.PathLike[str],
        *,
        name: str | None = None,
        address: str | None = None,
        work_dir: str | os.PathLike[str] | None = None,
        grants: confine.Grants | None = None,
        client: DockerClient | None = None,
        trust: Trust = "trusted",
        trusted_keys: Iterable[KeySource] | None = None,
    ) -> DockerContainer:
        """Start a new docker container from a rootfs-only checkpoint: created from the same
        image id and create config (``HostConfig`` confined as for :meth:`restore`), its
        new overlay2 layer filled with the changes, then started; no CRIU. The keywords are
        :meth:`restore`'s.

        Raises:
            ContainerExists: ``name`` is taken.
            ImageNotFound: The image is not in this docker.
            ContainerError: Not a rootfs-only docker checkpoint.
            UntrustedArtifact: No trusted key signed it, and ``trust`` is not ``"any"``.
            UnsafeArtifact: The config or the diff asks for what is refused.
            RestoreFailed: docker failed; no container is left.
        """
        from cedana.runtimes._docker_fresh import restore_fresh

        ckpt = Checkpoint.of(checkpoint, trust=trust, trusted_keys=trusted_keys)
        return restore_fresh(
            cls, ckpt, name=name, address=address, work_dir=work_dir, grants=grants, client=client
        )

    # --- managing it ------------------------------------------------------------

    def remove(self) -> None:
        """Remove the container from docker (killed first if it runs); gone is fine. The
        files a restore from another runtime made for it go with it."""
        record = self._api().find_container(self.name)
        with contextlib.suppress(ContainerNotFound):
            self._api().remove_container(self.name)
        if record is not None:
            portable.remove_labelled((record.get("Config") or {}).get("Labels") or {})


# --- restore helpers ----------------------------------------------------------------


def _cleanup(name: str, step: Any, *args: object) -> None:
    """One step of a failed restore's cleanup: what fails is logged, the others still run."""
    try:
        step(*args)
    except (CedanaError, OSError) as exc:
        logger.warning("cleanup after a failed restore of %s: %s", name, exc)


def _check_restorable(
    ckpt: Checkpoint, info: Mapping[str, Any], tcp_established: bool | None
) -> None:
    """Refuse what docker's restore cannot do (containerd's shim passes runc no CRIU flags)."""
    needs = []
    if info.get("terminal"):
        needs.append("a terminal (the container was started with -t)")
    if RuncContainer.restores_tcp(tcp_established, ckpt.manifest):
        needs.append("TCP repair (tcp_established, --tcp-established)")
    if ckpt.manifest.options.get("file_locks"):
        needs.append("file locks")
    if info.get("ext_unix_sk"):
        needs.append("external unix sockets")
    if needs:
        raise ContainerError(
            f"{ckpt.path} needs {' and '.join(needs)} at restore, which docker's restore "
            "(containerd's runc shim) does not pass to runc; restore it into runc instead "
            "(into='runc', --into runc)"
        )


def _check_daemon(api: DockerClient) -> dict[str, Any]:
    """The daemon's info; a daemon whose checkpoint routes are off is refused."""
    daemon = api.info()
    if not daemon.get("ExperimentalBuild"):
        raise SetupError(
            f"the docker daemon at {api.base_url} is not experimental, and only an "
            "experimental daemon starts a container from a checkpoint; enable it "
            '("experimental": true in /etc/docker/daemon.json, or dockerd --experimental) '
            "and restart dockerd, or restore into runc (into='runc', --into runc)"
        )
    return daemon


def _check_image(api: DockerClient, recorded: Mapping[str, Any], image_id: str) -> str:
    """The checkpoint's image (by id: the layers the changes apply on) must be here; how
    the new container names it."""
    image = recorded.get("image") or {}
    if not image_id:
        raise confine.refused(
            "manifest field docker.image.id", "is missing", "do not use this checkpoint"
        )
    try:
        api.inspect_image(image_id)
    except ImageNotFound:
        raise ImageNotFound(
            f"image {image.get('name')!r} ({image_id}) is not in docker at {api.base_url}; "
            "the checkpoint's root filesystem changes apply on top of it: load or pull it "
            "there first (docker load / docker pull)"
        ) from None
    # By its name where the name still means that image (docker ps shows it so).
    named = str(image.get("name") or "")
    if named and not named.startswith("sha256:"):
        with contextlib.suppress(ImageNotFound):
            if api.inspect_image(named).get("Id") == image_id:
                return named
    return image_id


#: The fields of docker's create request beside the container config's own.
_CREATE_BODY = ("HostConfig", "NetworkingConfig")


def _create_config(
    recorded: Mapping[str, Any], image_id: str, grants: confine.Grants | None
) -> dict[str, Any]:
    """The create config of the restored container: the checkpoint's ``Config`` on the
    same image id, and its ``HostConfig`` confined (:func:`_checked_host_config`)."""
    config = recorded.get("config")
    if not isinstance(config, Mapping):
        raise confine.refused(
            "manifest field docker.config", "is not a create config", "do not use this checkpoint"
        )
    for field in _CREATE_BODY:
        # The config is spread into the create body: the body's own fields are no
        # container setting (NetworkingConfig joins networks past NetworkMode's check).
        if field in config:
            raise confine.refused(
                f"manifest field docker.config.{field}",
                "is a field of docker's create request, not of a container's config",
                "do not use this checkpoint",
            )
    labels = {**dict(config.get("Labels") or {}), RESTORED_FROM_LABEL: str(recorded.get("name"))}
    return {
        **{k: v for k, v in config.items() if k not in ("Image", "Labels", "Volumes")},
        "Image": image_id,
        "Labels": labels,
        "HostConfig": _checked_host_config(recorded.get("host_config") or {}, grants),
    }


def _layers_chain(api: DockerClient, image: str) -> str | None:
    """The chain id of ``image``'s layers (how another store recognises it); None when
    docker no longer has it."""
    from cedana.runtimes._containerd_api import chain_id

    try:
        layers = (api.inspect_image(image).get("RootFS") or {}).get("Layers") or []
    except ImageNotFound:
        return None
    return chain_id([str(d) for d in layers]) if layers else None


def _granted_binds(binds: Any, grants: confine.Grants) -> bool:
    """True when every ``SOURCE:DEST[:MODE]`` of ``binds`` has an absolute source inside
    one of the granted bind sources."""
    if not isinstance(binds, (list, tuple)) or not grants.binds:
        return False
    for bind in binds:
        source = str(bind).split(":", 1)[0]
        real = os.path.realpath(source)
        if not os.path.isabs(source) or not any(
            real == g or real.startswith(g.rstrip("/") + "/") for g in grants.binds
        ):
            return False
    return True


def _checked_host_config(host: Mapping[str, Any], grants: confine.Grants | None) -> dict[str, Any]:
    """A checkpoint's ``HostConfig``, confined to what docker gives a container by default.

    Raises:
        UnsafeArtifact: It asks for host resources (the message names the field).
    """
    g = grants or confine.Grants()
    fix = "if you trust the checkpoint, grant it at restore (grants=cedana.Grants(...))"

    def refuse(field: str, why: str, how: str = "do not use this checkpoint") -> Exception:
        return confine.refused(f"HostConfig.{field}", why, how)

    if host.get("Privileged"):
        raise refuse("Privileged", "asks for a privileged container")
    for field in _REFUSED_HOST_CONFIG:
        if field == "Binds" and host.get(field) and _granted_binds(host[field], g):
            continue
        if host.get(field):
            raise refuse(field, f"is {host[field]!r}, which reaches outside the container")
    if str(host.get("Runtime") or "runc") not in _RUNC_RUNTIMES:
        raise refuse("Runtime", f"is {host.get('Runtime')!r}, not runc")
    extra = sorted(
        {f"CAP_{c.upper().removeprefix('CAP_')}" for c in host.get("CapAdd") or []}
        - confine.DEFAULT_CAPABILITIES
        - g.capabilities
    )
    if extra:
        raise refuse("CapAdd", f"adds {', '.join(extra)}", f"{fix}: capabilities={extra!r}")
    modes = {
        "NetworkMode": "network",
        "PidMode": "pid",
        "IpcMode": "ipc",
        "UTSMode": "uts",
        "UsernsMode": "user",
    }
    for field, kind in modes.items():
        mode = str(host.get(field) or "")
        if (mode == "host" or mode.startswith("container:")) and g.namespaces.get(kind) != "host":
            raise refuse(
                field,
                f"is {mode!r}: the host's {kind} namespace",
                f"{fix}: namespaces={{{kind!r}: 'host'}}",
            )
    for opt in host.get("SecurityOpt") or []:
        if not str(opt).startswith("no-new-privileges"):
            raise refuse("SecurityOpt", f"has {opt!r}; only no-new-privileges is carried over")
    for field, defaults in (
        ("MaskedPaths", confine.DEFAULT_MASKED_PATHS),
        ("ReadonlyPaths", confine.DEFAULT_READONLY_PATHS),
    ):
        given = host.get(field)
        if given is None:
            continue  # docker's defaults
        opened = sorted(set(defaults) - set(given) - g.unmasked)
        if opened:
            raise refuse(field, f"leaves {', '.join(opened)} open", f"{fix}: unmasked={opened!r}")
    log = dict(host.get("LogConfig") or {})
    if log and str(log.get("Type")) not in _SAFE_LOG_DRIVERS:
        raise refuse("LogConfig", f"uses log driver {log.get('Type')!r}, which reaches the host")
    out = {k: v for k, v in host.items() if k in _KEPT_HOST_CONFIG and v is not None}
    for field in ("NetworkMode", "PidMode", "IpcMode", "UTSMode", "UsernsMode", "CapAdd"):
        if host.get(field):
            out[field] = host[field]
    for field in ("MaskedPaths", "ReadonlyPaths", "SecurityOpt"):
        if host.get(field) is not None:
            out[field] = host[field]
    if host.get("Binds"):
        out["Binds"] = list(host["Binds"])
    if log:
        out["LogConfig"] = log
    return out


registry.register(
    registry.Runtime(
        name=DOCKER,
        target="docker:NAME",
        help="a docker container, by name or id (--address: the daemon's socket, "
        "DOCKER_HOST by default; --root: docker's runc root)",
        cls=DockerContainer,
        parse=registry.one_name("name", forbidden="/"),
        restores_into=(DOCKER, "runc"),
        flags={"address": "address", "root": "runc_root"},
        runc_root=DEFAULT_RUNC_ROOT,
        summary=lambda c: {"name": c.name},
        adopt=_cross.into_docker,
        describe=_cross.describe_docker,
    )
)


@attrs.define(eq=False)
class _CheckpointRun:
    """Docker's part of one checkpoint (a :class:`~cedana.container.runc.RuntimeLayer`):
    the live check against docker's record, the overlay2 layer and facts, the wait for
    docker to see the killed container exit."""

    container: DockerContainer
    record: Mapping[str, Any]

    @property
    def runtime_name(self) -> str:
        return DOCKER

    def runc(self) -> RuncContainer:
        return self.container._runc_for(self.record)

    def live_state(self) -> RuncState:
        return self.container._live(self.record)

    def dump_extras(self, state: RuncState) -> DumpExtras:
        record, name = self.record, self.container.name
        layer = Overlay2Snapshotter.of(record, what=name)
        layer.check_mounted_at(state.rootfs, what=name)
        docker = {
            "id": record["Id"],
            "name": str(record.get("Name") or "").lstrip("/"),
            "image": {
                "name": (record.get("Config") or {}).get("Image"),
                "id": record["Image"],
                "chain_id": _layers_chain(self.container._api(), str(record["Image"])),
            },
            "config": record.get("Config") or {},
            "host_config": record.get("HostConfig") or {},
            "address": self.container._api().base_url,
        }
        return DumpExtras(
            snapshotter=layer,
            status=str(record["State"].get("Status")),
            workload={"docker": docker},
            rootfs={"store": "overlay2"},
        )

    def after_dump(self) -> None:
        # The dump killed it; docker marks it exited once containerd reports the exit.
        self.container._api().wait_container(str(self.record["Id"]), timeout=30)
