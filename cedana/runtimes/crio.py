"""CrioContainer: a CRI-O container (runc, containers/storage), checkpointed through runc.

CRI-O runs each container of a Kubernetes pod through conmon and an OCI runtime. Its
containers live in containers/storage, the store and library podman uses too
(``/var/lib/containers/storage``, overlay driver): the container's record in
``overlay-containers/containers.json``, its layer in ``overlay/<layer>``, and the OCI
spec CRI-O wrote, annotated with CRI-O's own ``io.kubernetes.cri-o.*`` keys, in
``overlay-containers/<id>/userdata/config.json`` (that directory is the runtime's
bundle). :class:`CrioContainer` finds a container through both of CRI-O's sources:

- the CRI API (Kubernetes' ``runtime.v1`` ``RuntimeService`` on CRI-O's socket,
  ``/var/run/crio/crio.sock``; :mod:`cedana.runtimes._cri_api`): ``ContainerStatus``
  with ``verbose`` says whether it runs, and CRI-O's verbose info its pid and sandbox;
- the store (:func:`cedana.rootfs.containers_storage.find_container`): its layer,
  checked to be what its root is mounted from, and its ``config.json``.

A process checkpoint goes through runc, as for podman: CRI-O's runtime handler for runc
keeps runc's state under its ``runtime_root``, ``/run/runc`` by default up to CRI-O 1.30
(CRI-O 1.31 made crun its default runtime, with ``/run/crun``; a runc handler is
configured with ``runtime_path`` and ``runtime_root``), and the checkpoint holds the
layer's changes (the overlay format). It restores into plain runc
(:meth:`cedana.RuncContainer.restore`): a restore *into CRI-O* belongs to the kubelet
and CRI-O (a pod made from a checkpoint archive or image, KEP-2008), which cannot be
installed or tested here, so cedana does not offer it.

System containers (sysbox, or a systemd init) virtualise ``/proc`` in ways that make a
process checkpoint impractical; for them cedana saves the filesystem changes only: a
rootfs-only checkpoint (:mod:`cedana.container.rootfs_only`) is the default.
:func:`wants_rootfs_only` is that decision, from the container's ``config.json``.
cedana does not start a CRI-O container afresh from one (no ``restore_fresh``): that is
CRI-O's and the kubelet's.
"""

from __future__ import annotations

import json
import logging
import os
import posixpath
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal, Protocol

import attrs

from cedana import registry
from cedana.checkpoint import Checkpoint
from cedana.container import RuncContainer
from cedana.container.runc import DumpExtras
from cedana.container.state import RuncState
from cedana.criu import CriuBackend
from cedana.errors import (
    ContainerError,
    ContainerNotFound,
    ContainerNotRunning,
    InvalidOption,
    NotCheckpointable,
)
from cedana.process import CheckpointOptions
from cedana.progress import ProgressArg
from cedana.rootfs.containers_storage import StoredContainer, find_container
from cedana.runtimes._cri_api import DEFAULT_ADDRESS, CriClient, CriContainerStatus

__all__ = [
    "CRIO",
    "DEFAULT_ADDRESS",
    "DEFAULT_RUNC_ROOT",
    "DEFAULT_STORAGE_ROOT",
    "CriApi",
    "CrioConfig",
    "CrioContainer",
    "default_storage_root",
    "system_container",
    "wants_rootfs_only",
]

logger = logging.getLogger("cedana.crio")

#: This runtime's name in the registry (the manifest's ``runtime``).
CRIO = "crio"
#: The runc root of CRI-O's runc runtime handler (its ``runtime_root`` default up to 1.30).
DEFAULT_RUNC_ROOT = Path("/run/runc")
#: containers/storage's graphroot, which CRI-O and podman share, when storage.conf says none.
DEFAULT_STORAGE_ROOT = Path("/var/lib/containers/storage")
#: containers/storage's configuration, as CRI-O reads it (``CONTAINERS_STORAGE_CONF`` first).
STORAGE_CONF = Path("/etc/containers/storage.conf")
_WHERE_STORE = (
    "point CONTAINERS_STORAGE_CONF at CRI-O's storage.conf, or pass its graphroot as storage_root="
)

# CRI-O's annotations on a container's config.json (internal/annotations in CRI-O's source).
_A = "io.kubernetes.cri-o."
CONTAINER_ID = _A + "ContainerID"
CONTAINER_NAME = _A + "Name"
CONTAINER_TYPE = _A + "ContainerType"
SANDBOX_ID = _A + "SandboxID"
SANDBOX_NAME = _A + "SandboxName"
IMAGE = _A + "Image"
IMAGE_NAME = _A + "ImageName"
IMAGE_REF = _A + "ImageRef"
METADATA = _A + "Metadata"
LABELS = _A + "Labels"
KUBE_ANNOTATIONS = _A + "Annotations"
RUNTIME_HANDLER = _A + "RuntimeHandler"
TTY = _A + "TTY"
#: The runtime binary of a platform (``platform_runtime_paths``): v2 key, then v1.
PLATFORM_RUNTIME_PATH = ("platform-runtime-path.crio.io", _A + "PlatformRuntimePath")
#: The runtime handler names and binaries that are sysbox's.
_SYSBOX = "sysbox"
#: The init binaries that are systemd (its own name, and the usual /sbin/init link to it).
_SYSTEMD_INITS = ("/sbin/init", "/usr/sbin/init")

_LIVE = ("running",)


def _json_field(annotations: Mapping[str, str], key: str) -> Any:
    value = annotations.get(key)
    if not value:
        return None
    try:
        return json.loads(value)
    except ValueError:
        return None


@attrs.frozen(kw_only=True)
class CrioConfig:
    """What CRI-O wrote about a container in its ``config.json`` (its annotations and
    process), read by :meth:`from_spec`.

    Attributes:
        container_id: ``io.kubernetes.cri-o.ContainerID``.
        name: CRI-O's name of it (``k8s_<container>_<pod>_<namespace>_<uid>_<attempt>``).
        container_type: ``container``, or ``sandbox`` for a pod's infra container.
        sandbox_id: Its pod's sandbox id.
        sandbox_name: Its pod's sandbox name.
        image: The image as the pod asked for it.
        image_name: A name of that image in the store.
        image_ref: The image's id in the store.
        metadata: The CRI metadata (``name``, ``attempt``).
        labels: Its labels (the kubelet's ``io.kubernetes.*`` ones among them).
        kube_annotations: The pod spec's annotations for it.
        runtime_handler: The runtime handler (set on a sandbox's config; "" on a
            container's, whose handler is its sandbox's).
        runtime_path: The runtime binary CRI-O was told to use for the platform, if any.
        tty: It has a terminal.
        args: The init process's command line.
    """

    container_id: str = ""
    name: str = ""
    container_type: str = ""
    sandbox_id: str = ""
    sandbox_name: str = ""
    image: str = ""
    image_name: str = ""
    image_ref: str = ""
    metadata: Mapping[str, Any] = attrs.field(factory=dict)
    labels: Mapping[str, str] = attrs.field(factory=dict)
    kube_annotations: Mapping[str, str] = attrs.field(factory=dict)
    runtime_handler: str = ""
    runtime_path: str = ""
    tty: bool = False
    args: tuple[str, ...] = ()

    @classmethod
    def from_spec(cls, spec: Mapping[str, Any]) -> CrioConfig:
        """The CRI-O facts of the OCI spec ``spec`` (a ``config.json``); what it lacks is
        left empty, so a spec another runtime wrote reads as one without them."""
        annotations = spec.get("annotations") or {}
        if not isinstance(annotations, Mapping):
            annotations = {}
        annotations = {str(k): str(v) for k, v in annotations.items()}
        process = spec.get("process") or {}
        args = process.get("args") if isinstance(process, Mapping) else None

        def mapping(key: str) -> dict[str, Any]:
            value = _json_field(annotations, key)
            return dict(value) if isinstance(value, Mapping) else {}

        return cls(
            container_id=annotations.get(CONTAINER_ID, ""),
            name=annotations.get(CONTAINER_NAME, ""),
            container_type=annotations.get(CONTAINER_TYPE, ""),
            sandbox_id=annotations.get(SANDBOX_ID, ""),
            sandbox_name=annotations.get(SANDBOX_NAME, ""),
            image=annotations.get(IMAGE, ""),
            image_name=annotations.get(IMAGE_NAME, ""),
            image_ref=annotations.get(IMAGE_REF, ""),
            metadata=mapping(METADATA),
            labels={str(k): str(v) for k, v in mapping(LABELS).items()},
            kube_annotations={str(k): str(v) for k, v in mapping(KUBE_ANNOTATIONS).items()},
            runtime_handler=annotations.get(RUNTIME_HANDLER, ""),
            runtime_path=next(
                (annotations[k] for k in PLATFORM_RUNTIME_PATH if annotations.get(k)), ""
            ),
            tty=annotations.get(TTY, "").lower() == "true",
            args=tuple(str(a) for a in args) if isinstance(args, list) else (),
        )

    @property
    def is_sandbox(self) -> bool:
        """True for a pod's infra (pause) container."""
        return self.container_type == "sandbox"

    def to_json(self) -> dict[str, Any]:
        """The facts a manifest records (the pod's labels, not its annotations)."""
        return {
            "id": self.container_id,
            "name": self.name,
            "sandbox_id": self.sandbox_id,
            "sandbox_name": self.sandbox_name,
            "metadata": dict(self.metadata),
            "image": {"requested": self.image, "name": self.image_name, "ref": self.image_ref},
            "labels": dict(self.labels),
            "runtime_handler": self.runtime_handler,
        }


def system_container(
    config: Mapping[str, Any] | CrioConfig, *, runtime_handler: str | None = None
) -> str | None:
    """Why the container of ``config`` (its ``config.json``) is a system container, or
    None when it is not one.

    A system container is one run by sysbox (the runtime handler, or the platform's
    runtime binary, is sysbox's: ``sysbox-runc``) or one whose init is systemd (the
    process's first argument is ``systemd`` or ``/sbin/init``, ``/usr/sbin/init``).
    A container's own ``config.json`` does not carry its handler (CRI-O sets
    ``io.kubernetes.cri-o.RuntimeHandler`` on its sandbox's): pass it as
    ``runtime_handler``.
    """
    crio = config if isinstance(config, CrioConfig) else CrioConfig.from_spec(config)
    handler = runtime_handler if runtime_handler is not None else crio.runtime_handler
    if _SYSBOX in handler.lower():
        return f"its runtime handler is {handler!r} (sysbox)"
    if crio.runtime_path and _SYSBOX in posixpath.basename(crio.runtime_path).lower():
        return f"its runtime is {crio.runtime_path} (sysbox)"
    init = crio.args[0] if crio.args else ""
    if posixpath.basename(init) == "systemd" or posixpath.normpath(init) in _SYSTEMD_INITS:
        return f"its init is {init} (systemd)"
    return None


def wants_rootfs_only(
    config: Mapping[str, Any] | CrioConfig, *, runtime_handler: str | None = None
) -> bool:
    """True when a checkpoint of this container should save its filesystem changes only
    (rootfs-only): it is a system container (:func:`system_container`), whose
    virtualised ``/proc`` makes a process checkpoint impractical.

    This is what ``rootfs_only=None`` (auto) means for a CRI-O container.
    """
    return system_container(config, runtime_handler=runtime_handler) is not None


class CriApi(Protocol):
    """What :class:`CrioContainer` asks of the CRI
    (:class:`~cedana.runtimes._cri_api.CriClient`)."""

    @property
    def address(self) -> str: ...

    def container_status(self, container_id: str, *, verbose: bool = True) -> CriContainerStatus:
        """``ContainerStatus``; raises ContainerNotFound for an unknown container."""
        ...

    def close(self) -> None: ...


def default_storage_root() -> Path:
    """containers/storage's graphroot as CRI-O finds it: ``[storage] graphroot`` of
    ``$CONTAINERS_STORAGE_CONF`` or ``/etc/containers/storage.conf``, else
    ``/var/lib/containers/storage`` (a ``root`` in crio.conf overrides both: pass it as
    ``storage_root=``).

    Raises:
        ContainerError: The storage.conf named is unreadable.
    """
    import tomllib

    conf = Path(os.environ.get("CONTAINERS_STORAGE_CONF") or STORAGE_CONF)
    try:
        data = tomllib.loads(conf.read_text())
    except FileNotFoundError:
        return DEFAULT_STORAGE_ROOT
    except (OSError, ValueError) as exc:
        raise ContainerError(
            f"containers/storage's configuration {conf} is unreadable: {exc}"
        ) from exc
    graphroot = (data.get("storage") or {}).get("graphroot")
    return Path(graphroot) if isinstance(graphroot, str) and graphroot else DEFAULT_STORAGE_ROOT


def _address(value: str | None) -> str:
    return value or DEFAULT_ADDRESS


def _runc_root(value: str | os.PathLike[str] | None) -> Path:
    return DEFAULT_RUNC_ROOT if value is None else Path(value)


def _storage_root(value: str | os.PathLike[str] | None) -> Path:
    return default_storage_root() if value is None else Path(value)


@attrs.define(eq=False)
class CrioContainer:
    """A CRI-O container run by runc, found through the CRI API and containers/storage.

    Args:
        id: The container's id, or a prefix of it that CRI-O resolves.
        address: CRI-O's socket (``/var/run/crio/crio.sock``).
        runc_root: runc's state root of CRI-O's runc handler (``/run/runc``).
        storage_root: containers/storage's graphroot; storage.conf's by default
            (:func:`default_storage_root`: ``/var/lib/containers/storage`` unless it says
            otherwise).
        backend: The CRIU backend; the real one by default.
        client: The CRI client; one on ``address`` by default (made on first use).

    Every property asks CRI-O and reads the store afresh.
    """

    id: str
    address: str = attrs.field(default=DEFAULT_ADDRESS, converter=_address, kw_only=True)
    runc_root: Path = attrs.field(default=DEFAULT_RUNC_ROOT, converter=_runc_root, kw_only=True)
    storage_root: Path = attrs.field(default=None, converter=_storage_root, kw_only=True)
    _backend: CriuBackend | None = attrs.field(
        default=None, alias="backend", repr=False, kw_only=True
    )
    _client: CriApi | None = attrs.field(default=None, alias="client", repr=False, kw_only=True)
    _owns_client: bool = attrs.field(default=False, init=False, repr=False)
    _runc: RuncContainer | None = attrs.field(default=None, init=False, repr=False)

    def _cri(self) -> CriApi:
        if self._client is None:
            self._client = CriClient(self.address)
            self._owns_client = True
        return self._client

    def close(self) -> None:
        """Close the CRI connection this container made (idempotent)."""
        if self._owns_client and self._client is not None:
            self._client.close()
            self._client = None
            self._owns_client = False

    def __enter__(self) -> CrioContainer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- what CRI-O and the store know ---------------------------------------------

    def status(self) -> CriContainerStatus:
        """CRI-O's status of the container (``ContainerStatus``, verbose).

        Raises:
            ContainerNotFound: CRI-O has no such container.
            RuntimeUnavailable: CRI-O's socket is missing or does not answer.
        """
        cri = self._cri()
        try:
            return cri.container_status(self.id, verbose=True)
        except ContainerNotFound:
            raise ContainerNotFound(
                f"CRI-O at {cri.address} has no container {self.id!r} (crictl ps --all "
                "lists the ones there; --address names another socket)"
            ) from None

    def stored(self, container_id: str | None = None) -> StoredContainer:
        """The container's entry in containers/storage (its layer, its userdata).

        Raises:
            ContainerError: The store has no entry for it (or is not at ``storage_root``).
        """
        cid = container_id or self.status().id
        entry = find_container(self.storage_root, cid)
        if entry is None or entry.id != cid:
            raise ContainerError(
                f"CRI-O container {cid} has no entry in containers/storage at "
                f"{self.storage_root}; {_WHERE_STORE}"
            )
        return entry

    def spec(self, entry: StoredContainer | None = None) -> dict[str, Any]:
        """The OCI spec CRI-O wrote for it (``userdata/config.json`` in the store).

        Raises:
            ContainerError: It is missing or not JSON.
        """
        entry = entry or self.stored()
        try:
            spec = json.loads(entry.config_path.read_text())
        except FileNotFoundError:
            raise ContainerError(
                f"CRI-O container {entry.id} has no {entry.config_path}: the store entry is "
                "not one CRI-O made, or CRI-O is still creating it"
            ) from None
        except (OSError, ValueError) as exc:
            raise ContainerError(f"{entry.config_path} is unreadable: {exc}") from exc
        if not isinstance(spec, dict):
            raise ContainerError(f"{entry.config_path} is not an OCI spec")
        return spec

    def config(self) -> CrioConfig:
        """CRI-O's facts about the container, from its ``config.json``."""
        return CrioConfig.from_spec(self.spec())

    def runtime_handler(self, config: CrioConfig) -> str:
        """Its runtime handler: its own config's, else its sandbox's (``config.json`` of
        the sandbox in the store); "" when neither says."""
        if config.runtime_handler or not config.sandbox_id:
            return config.runtime_handler
        sandbox = find_container(self.storage_root, config.sandbox_id)
        if sandbox is None:
            return ""
        try:
            return CrioConfig.from_spec(self.spec(sandbox)).runtime_handler
        except ContainerError:
            return ""

    @property
    def running(self) -> bool:
        """True while it runs."""
        return self.status().state in _LIVE

    @property
    def pid(self) -> int:
        """Its init process (host pid), as CRI-O's verbose status says.

        Raises:
            ContainerNotRunning: It does not run.
        """
        status = self.status()
        if status.state not in _LIVE or not status.pid:
            raise ContainerNotRunning(f"CRI-O container {self.id!r} is {status.state}")
        return status.pid

    @property
    def runc(self) -> RuncContainer:
        """The runc container under conmon, made once and held."""
        return self._runc_for(self.status().id)

    def _runc_for(self, container_id: str) -> RuncContainer:
        if self._runc is None:
            self._runc = RuncContainer(container_id, root=self.runc_root, backend=self._backend)
        return self._runc

    # --- checkpoint -------------------------------------------------------------

    def _found(self) -> tuple[CriContainerStatus, StoredContainer, CrioConfig]:
        """CRI-O's status, the store entry and CRI-O's config, checked to be a running
        container of a pod (not its sandbox)."""
        status = self.status()
        if status.state not in _LIVE:
            raise ContainerNotRunning(
                f"CRI-O container {self.id!r} is {status.state}, so there is nothing to checkpoint"
            )
        entry = self.stored(status.id)
        config = CrioConfig.from_spec(self.spec(entry))
        if config.is_sandbox:
            raise NotCheckpointable(
                f"CRI-O container {status.id} is a pod's sandbox (infra) container; "
                "checkpoint the pod's containers (crictl ps lists them)"
            )
        return status, entry, config

    def _live(self) -> tuple[CriContainerStatus, StoredContainer, CrioConfig, RuncState]:
        """:meth:`_found`'s facts and runc's state, whose pid must be CRI-O's."""
        status, entry, config = self._found()
        runc = self._runc_for(status.id)
        try:
            state = runc.state()
        except ContainerNotFound:
            state = None
        if state is None or (status.pid and state.pid != status.pid):
            raise ContainerError(
                f"CRI-O container {status.id} (pid {status.pid}) is not in runc's state under "
                f"{runc.root}: CRI-O runs it with another OCI runtime (crun, CRI-O's default "
                "since 1.31, keeps its state in /run/crun) or under another runc root; "
                "cedana checkpoints CRI-O containers run by runc: pass the runc handler's "
                "runtime_root as runc_root= (--root)"
            )
        return status, entry, config, state

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
        of the same name, over ``options`` (None keeps that field as it is), but for
        ``rootfs_only``: None (and ``options`` not asking for it) means **auto**, a
        rootfs-only checkpoint for a system container (:func:`wants_rootfs_only`: sysbox,
        a systemd init) and a process checkpoint otherwise; ``False`` forces a process
        checkpoint of a system container too.

        The manifest records CRI-O's facts (:meth:`CrioConfig.to_json`, and why it is a
        system container) and, as a member, the OCI spec. Without ``leave_running`` a
        process checkpoint kills the container once the artifact is written and
        verified; CRI-O then shows it exited. A process checkpoint restores into runc;
        a rootfs-only one keeps the container running and holds its changes only.

        Raises:
            ContainerNotFound: CRI-O has no such container.
            ContainerNotRunning: It is not running.
            ContainerError: The store has no entry for it, or runc's state under
                ``runc_root`` does not show it (another OCI runtime or runc root).
            NotCheckpointable: A sandbox container, a system container (sysbox, systemd),
                a layer not on the overlay driver, or established TCP without
                ``tcp_established``.
            DumpFailed: CRIU failed; the container keeps running, unfrozen.
            ArtifactExists: ``path`` exists and ``overwrite`` was not set.
        """
        status, _, config = self._found()
        why = system_container(config, runtime_handler=self.runtime_handler(config))
        auto = rootfs_only is None and not (options is not None and options.rootfs_only)
        if auto and why is not None:
            rootfs_only = True
            logger.info(
                "CRI-O container %s is a system container (%s): rootfs only", status.id, why
            )
        elif why is not None and rootfs_only is False:
            logger.warning(
                "CRI-O container %s is a system container (%s): a process checkpoint was "
                "asked for (rootfs_only=False), which CRIU may not manage",
                status.id,
                why,
            )
        try:
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
        except InvalidOption as exc:
            if not (auto and why is not None):
                raise
            raise InvalidOption(
                f"CRI-O container {status.id} is a system container ({why}), so its "
                f"checkpoint is rootfs-only by default (rootfs_only=False forces a process "
                f"checkpoint): {exc}"
            ) from exc
        status, *_ = self._live()  # finds the runc side (and refuses early)
        return self._runc_for(status.id).checkpoint_as(_CheckpointRun(self), path, opts)


@attrs.define(eq=False)
class _CheckpointRun:
    """CRI-O's part of one checkpoint (a :class:`~cedana.container.runc.RuntimeLayer`):
    the live check against CRI-O and the store, the layer and facts, CRI-O catching up."""

    container: CrioContainer
    entry: StoredContainer | None = None
    config: CrioConfig | None = None

    @property
    def runtime_name(self) -> str:
        return CRIO

    def live_state(self) -> RuncState:
        _, self.entry, self.config, state = self.container._live()
        return state

    def dump_extras(self, state: RuncState) -> DumpExtras:
        entry, config = self.entry, self.config
        assert entry is not None  # live_state() ran first
        assert config is not None
        layer = entry.snapshotter()
        layer.check_mounted_at(state.rootfs, what=entry.id)
        return DumpExtras(
            snapshotter=layer,
            workload={
                "crio": {
                    **config.to_json(),
                    "id": entry.id,
                    "store_image": entry.image,
                    "system_container": system_container(
                        config, runtime_handler=self.container.runtime_handler(config)
                    ),
                }
            },
            rootfs={"store": layer.name},
        )

    def after_dump(self) -> None:
        # The dump killed it; CRI-O learns it from conmon a moment later.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if self.container.status().state not in _LIVE:
                    return
            except ContainerError:
                return
            time.sleep(0.05)


registry.register(
    registry.Runtime(
        name=CRIO,
        target="crio:ID",
        help="a CRI-O container run by runc (id or a unique prefix; --address: CRI-O's "
        "socket, --root: its runc handler's runtime_root); restores into runc",
        cls=CrioContainer,
        parse=registry.one_name("id"),
        restores_into=("runc",),
        flags={"root": "runc_root", "address": "address"},
        runc_root=DEFAULT_RUNC_ROOT,
        summary=lambda c: {"name": c.id},
    )
)
