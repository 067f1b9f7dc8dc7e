"""The CRI's ``runtime.v1`` gRPC API (Kubernetes' Container Runtime Interface), as CRI-O serves it.

The messages and the ``RuntimeService`` methods come from cri-api's own ``api.proto``,
compiled by protoc at development time into a serialized descriptor
(:mod:`cedana.runtimes._cri_descriptor`, made by ``scripts/cri-descriptor``) that is
loaded here into a private descriptor pool: every field is upstream's, nothing is typed
by hand, and any protobuf from 3.20 on works (protoc's generated ``_pb2`` modules would
pin the protobuf runtime to the protoc that made them). The one optional dependency is
``grpcio`` (``pip install 'cedana[crio]'``), imported on first use.

:class:`CriClient` makes the calls cedana needs (``Version``, ``ListContainers``,
``ContainerStatus`` with ``verbose``) and hands back small attrs records, so nothing
above this module sees a protobuf message; :meth:`CriClient.call` makes any other
``RuntimeService`` call from a mapping of fields (the tests create pods and containers
with it). gRPC errors are mapped to cedana's in :func:`cri_error`.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import time
from collections.abc import Mapping
from typing import Any

import attrs

from cedana.errors import (
    CedanaError,
    ContainerError,
    ContainerNotFound,
    RuntimeUnavailable,
)
from cedana.runtimes._containerd_proto import Method, Schema, _message_class
from cedana.runtimes._grpc import STATUS_ERRORS, socket_path, status_error

__all__ = [
    "CRI_SERVICE",
    "DEFAULT_ADDRESS",
    "STATUS_ERRORS",
    "CriClient",
    "CriContainer",
    "CriContainerStatus",
    "CriVersion",
    "cri_error",
    "cri_schema",
    "load_cri",
]

logger = logging.getLogger("cedana.crio")

#: CRI-O's socket (its ``listen`` default, pkg/config in CRI-O's source).
DEFAULT_ADDRESS = "/var/run/crio/crio.sock"
#: The service cedana calls.
CRI_SERVICE = "runtime.v1.RuntimeService"
#: How long one call may take (seconds).
CALL_TIMEOUT = 30.0
#: The largest reply taken (the kubelet's limit: a node's container list can outgrow
#: gRPC's default 4 MiB).
MAX_MESSAGE = 16 * 1024 * 1024

#: ContainerState (api.proto) -> cedana's word for it.
_STATES = {0: "created", 1: "running", 2: "exited", 3: "unknown"}


# --------------------------------------------------------------------------- loading


def build_cri_schema() -> Schema:
    """The CRI's messages (by full name) and ``RuntimeService``'s methods
    (``RuntimeService/Version``), from the committed descriptor, in a private pool."""
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    from cedana.runtimes import _cri_descriptor

    proto = descriptor_pb2.FileDescriptorProto.FromString(
        base64.b64decode(_cri_descriptor.FILE_DESCRIPTOR_B64)
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    factory = message_factory.MessageFactory(pool)
    package = proto.package
    classes: dict[str, Any] = {}

    def add(prefix: str, messages: Any) -> None:
        for message in messages:
            name = f"{prefix}.{message.name}"
            if not message.options.map_entry:
                classes[name] = _message_class(factory, pool.FindMessageTypeByName(name))
            add(name, message.nested_type)

    add(package, proto.message_type)
    methods: dict[str, Method] = {}
    for service in proto.service:
        for method in service.method:
            methods[f"{service.name}/{method.name}"] = Method(
                path=f"/{package}.{service.name}/{method.name}",
                request=classes[method.input_type.lstrip(".")],
                response=classes[method.output_type.lstrip(".")],
                server_streaming=method.server_streaming,
            )
    return Schema(classes, methods)


_schema: list[Schema] = []


def cri_schema() -> Schema:
    """The CRI schema, built once."""
    if not _schema:
        _schema.append(build_cri_schema())
    return _schema[0]


def load_cri() -> tuple[Any, Schema]:
    """grpc and the CRI schema.

    Raises:
        RuntimeUnavailable: grpcio is not installed.
    """
    try:
        import grpc
    except ImportError as exc:
        raise RuntimeUnavailable(
            f"CRI-O support needs the grpcio package ({exc.msg}); "
            "install it with: pip install 'cedana[crio]'"
        ) from exc
    return grpc, cri_schema()


# --------------------------------------------------------------------------- records


@attrs.frozen(kw_only=True)
class CriVersion:
    """``Version``'s answer: the runtime's name and version, and the CRI version it speaks."""

    runtime_name: str
    runtime_version: str
    runtime_api_version: str
    version: str


@attrs.frozen(kw_only=True)
class CriContainer:
    """A container as ``ListContainers`` describes it.

    Attributes:
        id: The full container id.
        pod_sandbox_id: Its pod's sandbox id.
        name: Its name in the pod (``metadata.name``).
        attempt: How many times the kubelet made it (``metadata.attempt``).
        image: The image as the pod asked for it (``image.image``).
        image_ref: The image the runtime resolved it to (an id or a digest).
        state: ``created``, ``running``, ``exited`` or ``unknown``.
        labels: Its labels.
        annotations: Its annotations (the pod spec's, not the runtime's own).
    """

    id: str
    pod_sandbox_id: str
    name: str
    attempt: int
    image: str
    image_ref: str
    state: str
    labels: Mapping[str, str] = attrs.field(factory=dict)
    annotations: Mapping[str, str] = attrs.field(factory=dict)


@attrs.frozen(kw_only=True)
class CriContainerStatus:
    """``ContainerStatus``'s answer, with the runtime's verbose ``info``.

    Attributes:
        id: The full container id.
        name: Its name in the pod.
        state: ``created``, ``running``, ``exited`` or ``unknown``.
        image: The image as asked for.
        image_ref: The image as resolved.
        exit_code: Its exit code once exited.
        labels: Its labels.
        annotations: Its annotations.
        info: The verbose info map, each value parsed as JSON where it is JSON (CRI-O
            puts one key ``info``: ``{"sandboxID", "pid", "runtimeSpec", "privileged"}``;
            containerd's CRI plugin the same keys and more).
    """

    id: str
    name: str
    state: str
    image: str
    image_ref: str
    exit_code: int = 0
    labels: Mapping[str, str] = attrs.field(factory=dict)
    annotations: Mapping[str, str] = attrs.field(factory=dict)
    info: Mapping[str, Any] = attrs.field(factory=dict)

    @property
    def details(self) -> Mapping[str, Any]:
        """The runtime's own JSON facts (the ``info`` key of ``info``); empty without."""
        details = self.info.get("info")
        return details if isinstance(details, Mapping) else {}

    @property
    def pid(self) -> int:
        """The container's init (host pid) as the runtime's verbose info says; 0 if none."""
        try:
            return int(self.details.get("pid") or 0)
        except (TypeError, ValueError):
            return 0

    @property
    def sandbox_id(self) -> str:
        """Its pod's sandbox id, from the verbose info."""
        return str(self.details.get("sandboxID") or "")

    @property
    def runtime_spec(self) -> Mapping[str, Any]:
        """The OCI spec the runtime gave the container, from the verbose info."""
        spec = self.details.get("runtimeSpec")
        return spec if isinstance(spec, Mapping) else {}


def _parse_info(info: Mapping[str, str]) -> dict[str, Any]:
    parsed: dict[str, Any] = {}
    for key, value in info.items():
        try:
            parsed[key] = json.loads(value)
        except ValueError:
            parsed[key] = value
    return parsed


# --------------------------------------------------------------------------- the client


def cri_error(exc: Any, *, what: str, address: str) -> CedanaError:
    """The cedana error for gRPC error ``exc`` (``code()``, ``details()``) raised by ``what``."""
    cls, details = status_error(exc)
    if cls is RuntimeUnavailable:
        return cls(
            f"the CRI runtime at {address} is unavailable ({what}): {details}; start CRI-O "
            "or pass its socket as address= (--address)"
        )
    return cls(f"CRI {what} at {address}: {details}")


@attrs.define(eq=False)
class CriClient:
    """A connection to a CRI runtime's ``RuntimeService`` (CRI-O's, by default).

    Args:
        address: The runtime's socket (``/var/run/crio/crio.sock``; ``unix://`` optional).
        timeout: Seconds one call may take.

    Closes its channel on :meth:`close` (or leaving a ``with`` block).

    Raises:
        RuntimeUnavailable: grpcio is not installed, or there is no socket at ``address``.
    """

    address: str = DEFAULT_ADDRESS
    timeout: float = CALL_TIMEOUT
    _grpc: Any = attrs.field(init=False, repr=False)
    _schema: Schema = attrs.field(init=False, repr=False)
    _channel: Any = attrs.field(default=None, init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        self._grpc, self._schema = load_cri()
        path = socket_path(self.address)
        if not os.path.exists(path):
            raise RuntimeUnavailable(
                f"CRI-O is not listening at {path} (no such socket); start CRI-O, or pass "
                "the socket it listens on as address= (--address)"
            )
        self._channel = self._grpc.insecure_channel(
            f"unix://{os.path.abspath(path)}",
            options=[("grpc.max_receive_message_length", MAX_MESSAGE)],
        )

    def close(self) -> None:
        """Close the channel (idempotent)."""
        if self._channel is not None:
            self._channel.close()
            self._channel = None

    def __enter__(self) -> CriClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def message(self, name: str) -> Any:
        """The class of CRI message ``name`` (``runtime.v1.ContainerConfig`` or
        ``ContainerConfig``)."""
        full = name if name.startswith("runtime.") else f"runtime.v1.{name}"
        return self._schema.message(full)

    def call(self, method: str, request: Mapping[str, Any], *, what: str = "") -> Any:
        """Call ``RuntimeService`` method ``method`` (``Version``) with a request of the
        fields ``request``; its reply message. gRPC errors become cedana's.

        Raises:
            ContainerError: The client is closed, or the method is not one of the CRI's.
        """
        if self._channel is None:
            raise ContainerError("the CRI client is closed")
        try:
            rpc = self._schema.method(f"RuntimeService/{method}")
        except KeyError:
            raise ContainerError(f"the CRI's RuntimeService has no method {method!r}") from None
        call = self._channel.unary_unary(
            rpc.path,
            request_serializer=rpc.request.SerializeToString,
            response_deserializer=rpc.response.FromString,
        )
        what = what or method
        started = time.monotonic()
        try:
            reply = call(rpc.request(**request), timeout=self.timeout)
        except self._grpc.RpcError as exc:
            logger.debug("CRI %s: failed in %.3fs", what, time.monotonic() - started)
            raise cri_error(exc, what=what, address=self.address) from exc
        logger.debug("CRI %s: done in %.3fs", what, time.monotonic() - started)
        return reply

    # --- what cedana asks ---------------------------------------------------------

    def version(self) -> CriVersion:
        """``Version``: which runtime answers, and which CRI version it speaks."""
        reply = self.call("Version", {"version": "v1"})
        return CriVersion(
            runtime_name=str(reply.runtime_name),
            runtime_version=str(reply.runtime_version),
            runtime_api_version=str(reply.runtime_api_version),
            version=str(reply.version),
        )

    def containers(
        self, *, id: str = "", pod_sandbox_id: str = "", labels: Mapping[str, str] | None = None
    ) -> list[CriContainer]:
        """``ListContainers``, filtered by id (a prefix is resolved by the runtime), pod or
        labels; every container without a filter."""
        filter_: dict[str, Any] = {}
        if id:
            filter_["id"] = id
        if pod_sandbox_id:
            filter_["pod_sandbox_id"] = pod_sandbox_id
        if labels:
            filter_["label_selector"] = dict(labels)
        reply = self.call("ListContainers", {"filter": filter_} if filter_ else {})
        return [
            CriContainer(
                id=str(c.id),
                pod_sandbox_id=str(c.pod_sandbox_id),
                name=str(c.metadata.name),
                attempt=int(c.metadata.attempt),
                image=str(c.image.image),
                image_ref=str(c.image_ref),
                state=_STATES.get(int(c.state), "unknown"),
                labels=dict(c.labels),
                annotations=dict(c.annotations),
            )
            for c in reply.containers
        ]

    def container_status(self, container_id: str, *, verbose: bool = True) -> CriContainerStatus:
        """``ContainerStatus`` (with the runtime's verbose info unless ``verbose`` is off).

        Raises:
            ContainerNotFound: The runtime has no such container.
        """
        what = f"container status {container_id}"
        try:
            reply = self.call(
                "ContainerStatus", {"container_id": container_id, "verbose": verbose}, what=what
            )
        except ContainerNotFound:
            raise ContainerNotFound(
                f"the CRI runtime at {self.address} has no container {container_id!r} "
                "(crictl ps --all lists the ones there)"
            ) from None
        s = reply.status
        return CriContainerStatus(
            id=str(s.id),
            name=str(s.metadata.name),
            state=_STATES.get(int(s.state), "unknown"),
            image=str(s.image.image),
            image_ref=str(s.image_ref),
            exit_code=int(s.exit_code),
            labels=dict(s.labels),
            annotations=dict(s.annotations),
            info=_parse_info(dict(reply.info)),
        )
