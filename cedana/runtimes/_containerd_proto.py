"""containerd's API messages and methods, built at run time from one table.

cedana talks to a handful of containerd's gRPC methods and reads or sets a few
fields of their messages. Rather than depend on generated stubs (PyPI's
``containerd`` package is generated for protobuf < 4 and would pin every user's
protobuf), :data:`MESSAGES` lists those messages in proto3 syntax, with the
names, numbers and types of containerd 1.6's ``api/**/*.proto`` (and the runc
shim's ``runtime/v2/runc/options/oci.proto``), and :data:`METHODS` lists the
methods as their ``rpc`` lines read. :func:`schema` turns both into descriptors
(``descriptor_pb2`` + a private ``descriptor_pool``) and message classes, which
work with protobuf 3.20 up to the newest.

Only the fields cedana reads or sets are listed (a reply cedana does not read
has none): protobuf skips the fields it does not know when it parses a reply,
and a request carries only what is set, so a shorter message is
wire-compatible with containerd's. A field's number and type
must match containerd's exactly; a unit test checks a hand-encoded sample.
Enums are listed as ``int32`` (their wire form).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import attrs

__all__ = ["MESSAGES", "METHODS", "Method", "Schema", "build_schema", "schema"]

#: Package -> message (``Outer.Inner`` for a nested one) -> its fields, proto3 syntax.
MESSAGES: Mapping[str, Mapping[str, str]] = {
    # api/types/mount.proto, api/types/descriptor.proto
    "containerd.types": {
        "Mount": "string type = 1; string source = 2; repeated string options = 4",
        "Descriptor": "string media_type = 1; string digest = 2",
    },
    # api/types/task/task.proto (status is enum Status: 0 unknown ... 5 pausing)
    "containerd.v1.types": {
        "Process": "uint32 pid = 3; int32 status = 4; uint32 exit_status = 9",
    },
    # runtime/v2/runc/options/oci.proto (every field: a container's options are copied whole)
    "containerd.runc.v1": {
        "Options": (
            "bool no_pivot_root = 1; bool no_new_keyring = 2; string shim_cgroup = 3; "
            "uint32 io_uid = 4; uint32 io_gid = 5; string binary_name = 6; string root = 7; "
            "string criu_path = 8; bool systemd_cgroup = 9; string criu_image_path = 10; "
            "string criu_work_path = 11"
        ),
    },
    # api/services/containers/v1/containers.proto
    "containerd.services.containers.v1": {
        "Container": (
            "string id = 1; map<string, string> labels = 2; string image = 3; "
            "Runtime runtime = 4; google.protobuf.Any spec = 5; string snapshotter = 6; "
            "string snapshot_key = 7"
        ),
        "Container.Runtime": "string name = 1; google.protobuf.Any options = 2",
        "GetContainerRequest": "string id = 1",
        "GetContainerResponse": "Container container = 1",
        "CreateContainerRequest": "Container container = 1",
        "CreateContainerResponse": "",
        "DeleteContainerRequest": "string id = 1",
    },
    # api/services/content/v1/content.proto
    "containerd.services.content.v1": {
        "ReadContentRequest": "string digest = 1",
        "ReadContentResponse": "bytes data = 2",
    },
    # api/services/images/v1/images.proto
    "containerd.services.images.v1": {
        "Image": "containerd.types.Descriptor target = 3",
        "GetImageRequest": "string name = 1",
        "GetImageResponse": "Image image = 1",
    },
    # api/services/leases/v1/leases.proto
    "containerd.services.leases.v1": {
        "CreateRequest": "string id = 1; map<string, string> labels = 3",
        "CreateResponse": "",
        "DeleteRequest": "string id = 1",
    },
    # api/services/snapshots/v1/snapshots.proto
    "containerd.services.snapshots.v1": {
        "PrepareSnapshotRequest": (
            "string snapshotter = 1; string key = 2; string parent = 3; "
            "map<string, string> labels = 4"
        ),
        "PrepareSnapshotResponse": "repeated containerd.types.Mount mounts = 1",
        "MountsRequest": "string snapshotter = 1; string key = 2",
        "MountsResponse": "repeated containerd.types.Mount mounts = 1",
        "RemoveSnapshotRequest": "string snapshotter = 1; string key = 2",
        "StatSnapshotRequest": "string snapshotter = 1; string key = 2",
        "StatSnapshotResponse": "Info info = 1",
        "Info": "string parent = 2",
    },
    # api/services/tasks/v1/tasks.proto
    "containerd.services.tasks.v1": {
        "CreateTaskRequest": (
            "string container_id = 1; repeated containerd.types.Mount rootfs = 3; "
            "string stdout = 5; string stderr = 6; google.protobuf.Any options = 9"
        ),
        "CreateTaskResponse": "uint32 pid = 2",
        "StartRequest": "string container_id = 1",
        "StartResponse": "uint32 pid = 1",
        "DeleteTaskRequest": "string container_id = 1",
        "DeleteResponse": "",
        "GetRequest": "string container_id = 1",
        "GetResponse": "containerd.v1.types.Process process = 1",
        "KillRequest": "string container_id = 1; uint32 signal = 3; bool all = 4",
        "WaitRequest": "string container_id = 1",
        "WaitResponse": "uint32 exit_status = 1",
    },
}

#: Service -> its methods cedana calls, as the ``rpc`` lines of the service's proto read.
METHODS: Mapping[str, tuple[str, ...]] = {
    "containerd.services.containers.v1.Containers": (
        "Get(GetContainerRequest) returns (GetContainerResponse)",
        "Create(CreateContainerRequest) returns (CreateContainerResponse)",
        "Delete(DeleteContainerRequest) returns (google.protobuf.Empty)",
    ),
    "containerd.services.content.v1.Content": (
        "Read(ReadContentRequest) returns (stream ReadContentResponse)",
    ),
    "containerd.services.images.v1.Images": ("Get(GetImageRequest) returns (GetImageResponse)",),
    "containerd.services.leases.v1.Leases": (
        "Create(CreateRequest) returns (CreateResponse)",
        "Delete(DeleteRequest) returns (google.protobuf.Empty)",
    ),
    "containerd.services.snapshots.v1.Snapshots": (
        "Prepare(PrepareSnapshotRequest) returns (PrepareSnapshotResponse)",
        "Mounts(MountsRequest) returns (MountsResponse)",
        "Remove(RemoveSnapshotRequest) returns (google.protobuf.Empty)",
        "Stat(StatSnapshotRequest) returns (StatSnapshotResponse)",
    ),
    "containerd.services.tasks.v1.Tasks": (
        "Create(CreateTaskRequest) returns (CreateTaskResponse)",
        "Start(StartRequest) returns (StartResponse)",
        "Delete(DeleteTaskRequest) returns (DeleteResponse)",
        "Get(GetRequest) returns (GetResponse)",
        "Kill(KillRequest) returns (google.protobuf.Empty)",
        "Wait(WaitRequest) returns (WaitResponse)",
    ),
}

_FIELD = re.compile(
    r"(?P<repeated>repeated )?"
    r"(?:map<\s*(?P<key>\w+)\s*,\s*(?P<value>[\w.]+)\s*>|(?P<type>[\w.]+))"
    r" (?P<name>\w+) = (?P<number>\d+)"
)
_RPC = re.compile(
    r"(?P<name>\w+)\((?P<request>[\w.]+)\) returns \((?P<stream>stream )?(?P<response>[\w.]+)\)"
)


@attrs.frozen(kw_only=True)
class Method:
    """One gRPC method: its path and the classes of its messages.

    Attributes:
        path: ``/package.Service/Method``, as gRPC names it on the wire.
        request: The request's message class.
        response: The reply's message class.
        server_streaming: True when the reply is a stream of messages.
    """

    path: str
    request: Any
    response: Any
    server_streaming: bool


@attrs.frozen
class Schema:
    """The message classes (by full name) and methods (by ``Service/Method``) of the table."""

    messages: Mapping[str, Any]
    methods: Mapping[str, Method]

    def message(self, name: str) -> Any:
        """The class of message ``name`` (``containerd.types.Mount``)."""
        return self.messages[name]

    def method(self, name: str) -> Method:
        """Method ``name`` (``Containers/Get``: the service's last name, then the method's)."""
        return self.methods[name]


def _scalar_types() -> dict[str, int]:
    from google.protobuf import descriptor_pb2

    f = descriptor_pb2.FieldDescriptorProto
    return {
        "string": f.TYPE_STRING,
        "bytes": f.TYPE_BYTES,
        "bool": f.TYPE_BOOL,
        "int32": f.TYPE_INT32,
        "int64": f.TYPE_INT64,
        "uint32": f.TYPE_UINT32,
        "uint64": f.TYPE_UINT64,
    }


def _resolve(type_name: str, scope: str, known: Mapping[str, str]) -> str:
    """The full name ``type_name`` means inside ``scope`` (proto's rule: innermost first)."""
    parts = scope.split(".")
    for i in range(len(parts), -1, -1):
        candidate = ".".join([*parts[:i], type_name])
        if candidate in known:
            return candidate
    raise ValueError(f"{scope}: unknown message type {type_name}")


def _file_name(package: str) -> str:
    return f"cedana/containerd/{package.replace('.', '/')}.proto"


def _build_file(package: str, messages: Mapping[str, str], known: Mapping[str, str]) -> Any:
    """The FileDescriptorProto of one package of :data:`MESSAGES`."""
    from google.protobuf import descriptor_pb2

    f = descriptor_pb2.FieldDescriptorProto
    scalars = _scalar_types()
    proto = descriptor_pb2.FileDescriptorProto(
        name=_file_name(package), package=package, syntax="proto3"
    )
    made: dict[str, Any] = {}
    for name in sorted(messages, key=lambda n: n.count(".")):  # outer messages first
        outer, _, leaf = name.rpartition(".")
        made[name] = (made[outer].nested_type if outer else proto.message_type).add(name=leaf)

    def set_type(field: Any, type_name: str, scope: str) -> None:
        if type_name in scalars:
            field.type = scalars[type_name]
            return
        full = _resolve(type_name, scope, known)
        field.type, field.type_name = f.TYPE_MESSAGE, f".{full}"
        if known[full] != proto.name and known[full] not in proto.dependency:
            proto.dependency.append(known[full])

    for name, body in messages.items():
        message, scope = made[name], f"{package}.{name}"
        for declaration in filter(None, (d.strip() for d in body.split(";"))):
            match = _FIELD.fullmatch(declaration)
            if match is None:
                raise ValueError(f"{scope}: cannot read field {declaration!r}")
            field = message.field.add(name=match["name"], number=int(match["number"]))
            field.label = (
                f.LABEL_REPEATED if match["repeated"] or match["key"] else f.LABEL_OPTIONAL
            )
            if match["type"]:
                set_type(field, match["type"], scope)
                continue
            # map<K, V> name = N is a repeated NameEntry {K key = 1; V value = 2} (protoc's form).
            entry_name = "".join(p.capitalize() for p in match["name"].split("_")) + "Entry"
            entry = message.nested_type.add(name=entry_name)
            entry.options.map_entry = True
            for number, (part, type_name) in enumerate(
                (("key", match["key"]), ("value", match["value"])), start=1
            ):
                set_type(
                    entry.field.add(name=part, number=number, label=f.LABEL_OPTIONAL),
                    type_name,
                    scope,
                )
            field.type, field.type_name = f.TYPE_MESSAGE, f".{scope}.{entry_name}"
    return proto


def _message_class(factory: Any, descriptor: Any) -> Any:
    from google.protobuf import message_factory

    # Newer protobufs have GetMessageClass; 3.20 and 4.21 have only GetPrototype.
    get_class = getattr(message_factory, "GetMessageClass", None)
    if get_class is not None:
        return get_class(descriptor)
    return factory.GetPrototype(descriptor)


def build_schema(
    messages: Mapping[str, Mapping[str, str]] = MESSAGES,
    methods: Mapping[str, tuple[str, ...]] = METHODS,
) -> Schema:
    """Descriptors, message classes and methods from the two tables, in a private pool.

    The pool is cedana's own, so nothing clashes with other modules that register
    containerd's (or anyone's) messages in protobuf's default pool.

    Raises:
        ValueError: A table line that does not parse or names an unknown type.
    """
    from google.protobuf import any_pb2, descriptor_pb2, descriptor_pool, empty_pb2, message_factory

    pool = descriptor_pool.DescriptorPool()
    known: dict[str, str] = {}  # message full name -> its file
    for module in (any_pb2, empty_pb2):
        well_known = descriptor_pb2.FileDescriptorProto()
        module.DESCRIPTOR.CopyToProto(well_known)
        pool.Add(well_known)
        known.update(
            {f"{well_known.package}.{m.name}": well_known.name for m in well_known.message_type}
        )
    added = set(known.values())  # the well-known files, already in the pool
    for package, table in messages.items():
        known.update({f"{package}.{name}": _file_name(package) for name in table})
    files = {_file_name(p): _build_file(p, table, known) for p, table in messages.items()}

    def add(name: str) -> None:  # dependencies first, as the pool requires
        if name in added:
            return
        for dependency in files[name].dependency:
            add(dependency)
        pool.Add(files[name])
        added.add(name)

    for name in files:
        add(name)
    factory = message_factory.MessageFactory(pool)
    classes = {name: _message_class(factory, pool.FindMessageTypeByName(name)) for name in known}
    found: dict[str, Method] = {}
    for service, lines in methods.items():
        package = service.rpartition(".")[0]
        for line in lines:
            rpc = _RPC.fullmatch(line)
            if rpc is None:
                raise ValueError(f"{service}: cannot read method {line!r}")
            found[f"{service.rpartition('.')[2]}/{rpc['name']}"] = Method(
                path=f"/{service}/{rpc['name']}",
                request=classes[_resolve(rpc["request"], package, known)],
                response=classes[_resolve(rpc["response"], package, known)],
                server_streaming=bool(rpc["stream"]),
            )
    return Schema(classes, found)


_built: list[Schema] = []


def schema() -> Schema:
    """The schema of :data:`MESSAGES` and :data:`METHODS`, built once."""
    if not _built:
        _built.append(build_schema())
    return _built[0]
