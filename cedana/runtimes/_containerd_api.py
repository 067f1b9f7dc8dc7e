"""containerd's gRPC API: the one place that imports ``grpc``.

containerd's messages and methods (API v1, as containerd 1.6 defines them) are
built at run time from the table in :mod:`cedana.runtimes._containerd_proto`,
so no generated stubs are needed and any protobuf from 3.20 on works. The one
optional dependency is ``grpcio`` (``pip install 'cedana[containerd]'``),
imported on first use, so ``import cedana`` works without it. Every call goes
through :meth:`ContainerdClient._call`, which calls the method through grpc's
generic API (``channel.unary_unary`` / ``unary_stream`` with the message
classes' serializers), sends the namespace (and the lease, inside
:meth:`ContainerdClient.lease`) as containerd's gRPC metadata and maps gRPC
errors to cedana's (:data:`STATUS_ERRORS`). Results come back as small attrs
records, so nothing above this module sees a protobuf message.

The runc shim's own options (``containerd.runc.v1.Options``) are in the same
table; :func:`encode_runc_options` and :func:`decode_runc_options` write and
read them.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import logging
import os
import platform
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import IO, Any

import attrs

from cedana.errors import (
    CedanaError,
    ContainerError,
    ContainerNotFound,
    RuntimeUnavailable,
)
from cedana.rootfs.containerd import Mount
from cedana.runtimes._containerd_proto import Schema, schema
from cedana.runtimes._grpc import STATUS_ERRORS, socket_path, status_error

__all__ = [
    "DEFAULT_ADDRESS",
    "RUNC_OPTIONS_TYPE",
    "STATUS_ERRORS",
    "ContainerRecord",
    "ContainerdClient",
    "ImageRecord",
    "TaskRecord",
    "chain_id",
    "decode_runc_options",
    "encode_runc_options",
    "grpc_error",
    "load_api",
]

logger = logging.getLogger("cedana.containerd")

#: containerd's default API socket.
DEFAULT_ADDRESS = "/run/containerd/containerd.sock"
#: The type URL of the runc shims' options (containerd.runc.v1.Options).
RUNC_OPTIONS_TYPE = "containerd.runc.v1.Options"
SPEC_TYPE = "types.containerd.io/opencontainers/runtime-spec/1/Spec"

#: How long one API call may take (seconds); a restore's Start runs runc restore.
CALL_TIMEOUT = 60.0
START_TIMEOUT = 900.0

_TASK_STATUS = {0: "unknown", 1: "created", 2: "running", 3: "stopped", 4: "paused", 5: "pausing"}
_MANIFEST_TYPES = (
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.v2+json",
)
_INDEX_TYPES = (
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
)
_ARCH = {"x86_64": "amd64", "aarch64": "arm64", "armv7l": "arm", "ppc64le": "ppc64le"}


# --------------------------------------------------------------------------- loading


@attrs.frozen
class _Api:
    """grpc and the message schema."""

    grpc: Any
    schema: Schema


_loaded: list[_Api] = []


def load_api() -> _Api:
    """Import grpc and build containerd's messages (once).

    Raises:
        RuntimeUnavailable: grpcio is not installed.
    """
    if _loaded:
        return _loaded[0]
    try:
        import grpc
    except ImportError as exc:
        raise RuntimeUnavailable(
            f"containerd support needs the grpcio package ({exc.msg}); "
            "install it with: pip install 'cedana[containerd]'"
        ) from exc
    api = _Api(grpc=grpc, schema=schema())
    _loaded.append(api)
    return api


# --------------------------------------------------------------------------- runc options


def _runc_options_message() -> Any:
    return schema().message(RUNC_OPTIONS_TYPE)


def decode_runc_options(value: bytes) -> dict[str, Any]:
    """The fields set in serialized ``containerd.runc.v1.Options``."""
    message = _runc_options_message()()
    message.ParseFromString(value)
    return {f.name: v for f, v in message.ListFields()}


def encode_runc_options(fields: Mapping[str, Any]) -> bytes:
    """Serialize ``containerd.runc.v1.Options`` with ``fields`` set.

    Raises:
        ValueError: A field the message does not have.
    """
    cls = _runc_options_message()
    unknown = sorted(set(fields) - set(cls.DESCRIPTOR.fields_by_name))
    if unknown:
        raise ValueError(f"containerd.runc.v1.Options has no field {', '.join(unknown)}")
    data: bytes = cls(**fields).SerializeToString()
    return data


# --------------------------------------------------------------------------- records


@attrs.frozen(kw_only=True)
class ContainerRecord:
    """A container as containerd's Containers service describes it.

    Attributes:
        id: The container id.
        image: The image reference it was made from.
        snapshotter: The snapshotter holding its root filesystem.
        snapshot_key: Its active snapshot's key.
        runtime: The runtime (``io.containerd.runc.v2``).
        runtime_options_type: The type URL of the runtime's options.
        runtime_options: The runtime's options, serialized.
        spec_type: The type URL of the spec.
        spec: The OCI runtime spec, as JSON bytes.
        labels: Its labels.
    """

    id: str
    image: str
    snapshotter: str
    snapshot_key: str
    runtime: str
    runtime_options_type: str = ""
    runtime_options: bytes = b""
    spec_type: str = SPEC_TYPE
    spec: bytes = b"{}"
    labels: Mapping[str, str] = attrs.field(factory=dict)

    def to_json(self) -> dict[str, Any]:
        """As the manifest records it (the spec travels as its own member)."""
        return {
            "id": self.id,
            "image": self.image,
            "snapshotter": self.snapshotter,
            "snapshot_key": self.snapshot_key,
            "runtime": {
                "name": self.runtime,
                "options_type": self.runtime_options_type,
                "options": base64.b64encode(self.runtime_options).decode(),
            },
            "spec_type": self.spec_type,
            "labels": dict(self.labels),
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any], **changes: Any) -> ContainerRecord:
        """The record :meth:`to_json` wrote, with ``changes`` (fields) applied; the spec,
        which travels as its own member, is the empty ``{}`` unless given."""
        runtime, image = data["runtime"], data["image"]
        record = cls(
            id=str(data["id"]),
            # A checkpoint's manifest widens the image to a mapping that has its name.
            image=str(image["name"] if isinstance(image, Mapping) else image),
            snapshotter=str(data["snapshotter"]),
            snapshot_key=str(data["snapshot_key"]),
            runtime=str(runtime["name"]),
            runtime_options_type=str(runtime.get("options_type") or ""),
            runtime_options=base64.b64decode(str(runtime.get("options") or "")),
            spec_type=str(data["spec_type"]),
            labels=dict(data.get("labels") or {}),
        )
        return attrs.evolve(record, **changes)

    def runc_options(self) -> dict[str, Any]:
        """The runc shim's options (``root``, ``systemd_cgroup``...); empty for others."""
        if self.runtime_options_type == RUNC_OPTIONS_TYPE and self.runtime_options:
            return decode_runc_options(self.runtime_options)
        return {}


@attrs.frozen(kw_only=True)
class TaskRecord:
    """A container's task (its init process) as the Tasks service describes it.

    Attributes:
        id: The container id.
        pid: The init's host pid (0 before it starts).
        status: ``created``, ``running``, ``paused``, ``pausing``, ``stopped`` or ``unknown``.
        exit_status: The exit status once stopped.
    """

    id: str
    pid: int
    status: str
    exit_status: int = 0


@attrs.frozen(kw_only=True)
class ImageRecord:
    """An image: its name, the descriptor it points at and its layers.

    Attributes:
        name: The reference.
        digest: The digest of the descriptor the name points at (manifest or index).
        media_type: That descriptor's media type.
        manifest_digest: The platform manifest used (the same as ``digest`` for a manifest).
        diff_ids: The uncompressed layer digests, bottom first (from the config).
    """

    name: str
    digest: str
    media_type: str
    manifest_digest: str
    diff_ids: tuple[str, ...]

    @property
    def chain_id(self) -> str:
        """The chain id of the top layer: the snapshot a container's snapshot sits on."""
        return chain_id(self.diff_ids)


def chain_id(diff_ids: Sequence[str]) -> str:
    """The OCI chain id of layers ``diff_ids`` (bottom first).

    ``ChainID(L0) = DiffID(L0)``; ``ChainID(L0..n) = sha256(ChainID(L0..n-1) + " " + DiffID(Ln))``.

    Raises:
        ValueError: No layers.
    """
    if not diff_ids:
        raise ValueError("an image without layers has no chain id")
    chain = diff_ids[0]
    for diff in diff_ids[1:]:
        chain = "sha256:" + hashlib.sha256(f"{chain} {diff}".encode()).hexdigest()
    return chain


def _select_manifest(index: Mapping[str, Any]) -> str:
    """The digest of the index's manifest for this machine (linux, its architecture)."""
    arch = _ARCH.get(platform.machine(), platform.machine())
    candidates = index.get("manifests") or []
    for entry in candidates:
        plat = entry.get("platform") or {}
        if plat.get("os", "linux") == "linux" and plat.get("architecture", arch) == arch:
            return str(entry["digest"])
    raise ContainerError(f"the image index has no manifest for linux/{arch}")


# --------------------------------------------------------------------------- the client


def grpc_error(exc: Any, *, what: str, address: str, namespace: str) -> CedanaError:
    """The cedana error for a gRPC error ``exc`` (``code()``, ``details()``) raised by ``what``."""
    cls, details = status_error(exc)
    if cls is RuntimeUnavailable:
        return cls(f"containerd at {address} is unavailable ({what}): {details}")
    return cls(f"containerd {what} (namespace {namespace!r}): {details}")


@attrs.define(eq=False)
class ContainerdClient:
    """A connection to containerd's API for one namespace.

    Args:
        address: containerd's socket (``/run/containerd/containerd.sock``).
        namespace: The containerd namespace every call works in.

    Closes its channel on :meth:`close` (or leaving a ``with`` block).

    Raises:
        RuntimeUnavailable: grpcio is not installed, or there is
            no socket at ``address``.
    """

    address: str
    namespace: str
    _api: _Api = attrs.field(init=False, repr=False)
    _channel: Any = attrs.field(default=None, init=False, repr=False)
    _lease: str | None = attrs.field(default=None, init=False)

    def __attrs_post_init__(self) -> None:
        self._api = load_api()
        path = socket_path(self.address)
        if not os.path.exists(path):
            raise RuntimeUnavailable(
                f"containerd is not listening at {path} (no such socket); start containerd "
                "or pass its socket as address= (--address)"
            )
        self._channel = self._api.grpc.insecure_channel(f"unix://{os.path.abspath(path)}")

    def close(self) -> None:
        """Close the channel (idempotent)."""
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    def __enter__(self) -> ContainerdClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- plumbing ------------------------------------------------------------

    def _call(
        self,
        method: str,
        request: Mapping[str, Any],
        *,
        what: str,
        timeout: float = CALL_TIMEOUT,
    ) -> Any:
        """Call ``method`` (``Containers/Get``) with a request of the fields ``request`` in
        this namespace (and lease); gRPC errors become cedana's.

        Returns the reply, or for a streaming method an iterator of replies (which
        raises gRPC's errors while it is read).
        """
        if self._channel is None:
            raise ContainerError("the containerd client is closed")
        rpc = self._api.schema.method(method)
        kind = self._channel.unary_stream if rpc.server_streaming else self._channel.unary_unary
        call = kind(
            rpc.path,
            request_serializer=rpc.request.SerializeToString,
            response_deserializer=rpc.response.FromString,
        )
        metadata = [("containerd-namespace", self.namespace)]
        if self._lease is not None:
            metadata.append(("containerd-lease", self._lease))
        started = time.monotonic()
        try:
            result = call(rpc.request(**request), metadata=metadata, timeout=timeout)
        except self._api.grpc.RpcError as exc:
            logger.debug("containerd %s: failed in %.3fs", what, time.monotonic() - started)
            raise self.error(exc, what) from exc
        logger.debug("containerd %s: done in %.3fs", what, time.monotonic() - started)
        return result

    def error(self, exc: Any, what: str) -> CedanaError:
        """The cedana error for gRPC error ``exc`` raised by ``what``."""
        return grpc_error(exc, what=what, address=self.address, namespace=self.namespace)

    @contextlib.contextmanager
    def lease(self, expire: timedelta = timedelta(hours=1)) -> Iterator[str]:
        """A lease held for the block: what is made meanwhile is safe from containerd's GC.

        The lease is deleted on leaving; what it protected must be referenced
        by then (a container references its snapshot) or removed.
        """
        until = (datetime.now(UTC) + expire).strftime("%Y-%m-%dT%H:%M:%SZ")
        lease_id = f"cedana-{uuid.uuid4().hex}"
        request = {"id": lease_id, "labels": {"containerd.io/gc.expire": until}}
        self._call("Leases/Create", request, what=f"lease create {lease_id}")
        self._lease = lease_id
        try:
            yield lease_id
        finally:
            self._lease = None
            try:
                self._call("Leases/Delete", {"id": lease_id}, what=f"lease delete {lease_id}")
            except CedanaError as exc:
                logger.warning("containerd lease %s was not deleted: %s", lease_id, exc)

    # --- containers ----------------------------------------------------------

    def container(self, container_id: str) -> ContainerRecord:
        """``Containers.Get``.

        Raises:
            ContainerNotFound: No such container in the namespace.
        """
        try:
            c = self._call(
                "Containers/Get", {"id": container_id}, what=f"container {container_id}"
            ).container
        except ContainerNotFound:
            raise ContainerNotFound(
                f"no containerd container {container_id!r} in namespace {self.namespace!r} at "
                f"{self.address} (ctr -n {self.namespace} containers ls shows the ones there)"
            ) from None
        return ContainerRecord(
            id=c.id,
            image=c.image,
            snapshotter=c.snapshotter,
            snapshot_key=c.snapshot_key,
            runtime=c.runtime.name,
            runtime_options_type=c.runtime.options.type_url,
            runtime_options=bytes(c.runtime.options.value),
            spec_type=c.spec.type_url,
            spec=bytes(c.spec.value),
            labels=dict(c.labels),
        )

    def create_container(self, record: ContainerRecord) -> None:
        """``Containers.Create``.

        Raises:
            ContainerExists: The id is taken.
        """
        runtime: dict[str, Any] = {"name": record.runtime}
        if record.runtime_options_type:
            runtime["options"] = {
                "type_url": record.runtime_options_type,
                "value": record.runtime_options,
            }
        container = {
            "id": record.id,
            "image": record.image,
            "snapshotter": record.snapshotter,
            "snapshot_key": record.snapshot_key,
            "labels": dict(record.labels),
            "runtime": runtime,
            "spec": {"type_url": record.spec_type, "value": record.spec},
        }
        self._call(
            "Containers/Create", {"container": container}, what=f"container create {record.id}"
        )

    def delete_container(self, container_id: str) -> None:
        """``Containers.Delete`` (the snapshot stays)."""
        self._call(
            "Containers/Delete", {"id": container_id}, what=f"container delete {container_id}"
        )

    # --- tasks ---------------------------------------------------------------

    def task(self, container_id: str) -> TaskRecord | None:
        """``Tasks.Get``; None when the container has no task."""
        request = {"container_id": container_id}
        try:
            p = self._call("Tasks/Get", request, what=f"task {container_id}").process
        except ContainerNotFound:
            return None
        return TaskRecord(
            id=container_id,
            pid=int(p.pid),
            status=_TASK_STATUS.get(int(p.status), "unknown"),
            exit_status=int(p.exit_status),
        )

    def create_task(
        self,
        container_id: str,
        rootfs: Sequence[Mount],
        *,
        options: Mapping[str, Any] | None = None,
        stdout: str = "",
        stderr: str = "",
    ) -> int:
        """``Tasks.Create``: the task on ``rootfs``, with the runc shim's ``options``; its pid."""
        request: dict[str, Any] = {
            "container_id": container_id,
            "rootfs": [
                {"type": m.type, "source": m.source, "options": list(m.options)} for m in rootfs
            ],
            "stdout": stdout,
            "stderr": stderr,
        }
        if options is not None:
            request["options"] = {
                "type_url": RUNC_OPTIONS_TYPE,
                "value": encode_runc_options(options),
            }
        reply = self._call(
            "Tasks/Create", request, what=f"task create {container_id}", timeout=START_TIMEOUT
        )
        return int(reply.pid)

    def start_task(self, container_id: str) -> int:
        """``Tasks.Start``; the init's pid."""
        reply = self._call(
            "Tasks/Start",
            {"container_id": container_id},
            what=f"task start {container_id}",
            timeout=START_TIMEOUT,
        )
        return int(reply.pid)

    def kill_task(self, container_id: str, signal: int, *, all_processes: bool = False) -> None:
        """``Tasks.Kill``."""
        request = {"container_id": container_id, "signal": signal, "all": all_processes}
        self._call("Tasks/Kill", request, what=f"task kill {container_id}")

    def wait_task(self, container_id: str, timeout: float) -> int:
        """``Tasks.Wait``: until the task's init exits; its exit status."""
        request = {"container_id": container_id}
        reply = self._call("Tasks/Wait", request, what=f"task wait {container_id}", timeout=timeout)
        return int(reply.exit_status)

    def delete_task(self, container_id: str) -> None:
        """``Tasks.Delete`` (the task must have stopped, or never started)."""
        request = {"container_id": container_id}
        self._call("Tasks/Delete", request, what=f"task delete {container_id}")

    # --- images and content --------------------------------------------------

    def read_content(self, digest: str) -> bytes:
        """``Content.Read``: a blob's bytes."""
        what = f"content read {digest}"
        chunks = self._call("Content/Read", {"digest": digest}, what=what)
        try:
            return b"".join(bytes(chunk.data) for chunk in chunks)
        except self._api.grpc.RpcError as exc:
            raise self.error(exc, what) from exc

    def copy_content(self, digest: str, out: IO[bytes]) -> int:
        """``Content.Read`` streamed into ``out`` chunk by chunk (a layer can be large);
        the bytes written."""
        what = f"content read {digest}"
        chunks = self._call("Content/Read", {"digest": digest}, what=what)
        size = 0
        try:
            for chunk in chunks:
                data = bytes(chunk.data)
                out.write(data)
                size += len(data)
        except self._api.grpc.RpcError as exc:
            raise self.error(exc, what) from exc
        return size

    def _json(self, digest: str) -> dict[str, Any]:
        try:
            data: dict[str, Any] = json.loads(self.read_content(digest))
        except ValueError as exc:
            raise ContainerError(f"containerd content {digest} is not JSON: {exc}") from exc
        return data

    def image(self, name: str) -> ImageRecord:
        """``Images.Get``, then its manifest and config from the content store.

        Raises:
            ContainerNotFound: No image of that name in the namespace.
        """
        target = self._call("Images/Get", {"name": name}, what=f"image {name}").image.target
        digest, media_type = str(target.digest), str(target.media_type)
        manifest_digest = digest
        document = self._json(digest)
        if media_type in _INDEX_TYPES or "manifests" in document:
            manifest_digest = _select_manifest(document)
            document = self._json(manifest_digest)
        config = self._json(str(document["config"]["digest"]))
        diff_ids = tuple(str(d) for d in (config.get("rootfs") or {}).get("diff_ids") or ())
        return ImageRecord(
            name=name,
            digest=digest,
            media_type=media_type,
            manifest_digest=manifest_digest,
            diff_ids=diff_ids,
        )

    # --- snapshots (the cedana.rootfs.containerd.SnapshotStore protocol) -----

    def _mounts(self, reply_mounts: Any) -> list[Mount]:
        return [
            Mount(type=str(m.type), source=str(m.source), options=tuple(str(o) for o in m.options))
            for m in reply_mounts
        ]

    def snapshot_mounts(self, snapshotter: str, key: str) -> list[Mount]:
        """``Snapshots.Mounts``."""
        request = {"snapshotter": snapshotter, "key": key}
        reply = self._call("Snapshots/Mounts", request, what=f"snapshot mounts {snapshotter}/{key}")
        return self._mounts(reply.mounts)

    def snapshot_parent(self, snapshotter: str, key: str) -> str:
        """``Snapshots.Stat``: the snapshot's parent ("" for none)."""
        request = {"snapshotter": snapshotter, "key": key}
        reply = self._call("Snapshots/Stat", request, what=f"snapshot stat {snapshotter}/{key}")
        return str(reply.info.parent)

    def snapshot_exists(self, snapshotter: str, key: str) -> bool:
        """True when the snapshotter has a snapshot ``key``."""
        try:
            self.snapshot_parent(snapshotter, key)
        except ContainerNotFound:
            return False
        return True

    def prepare_snapshot(
        self, snapshotter: str, key: str, parent: str, labels: Mapping[str, str] | None = None
    ) -> list[Mount]:
        """``Snapshots.Prepare`` (within the current lease, if any)."""
        request = {
            "snapshotter": snapshotter,
            "key": key,
            "parent": parent,
            "labels": dict(labels or {}),
        }
        what = f"snapshot prepare {snapshotter}/{key}"
        reply = self._call("Snapshots/Prepare", request, what=what)
        return self._mounts(reply.mounts)

    def remove_snapshot(self, snapshotter: str, key: str) -> None:
        """``Snapshots.Remove``."""
        request = {"snapshotter": snapshotter, "key": key}
        self._call("Snapshots/Remove", request, what=f"snapshot remove {snapshotter}/{key}")
