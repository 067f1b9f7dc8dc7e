"""containerd's API boundary and the pure parts of ContainerdContainer; no containerd, no root.

The gRPC error map, containerd's messages on the wire (hand-encoded samples) and the
methods the client calls, the runc shim's options codec, chain ids, platform selection,
the runc root and cgroup naming, what restore refuses, and that ``import cedana`` needs
no grpc.
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import attrs
import grpc
import pytest

import cedana
from cedana.artifact import HostInfo, Manifest, ProcessEntry, write_artifact
from cedana.artifact.signing import host_key
from cedana.errors import (
    CedanaError,
    ContainerError,
    ContainerExists,
    ContainerNotFound,
    NotPermitted,
    RuntimeUnavailable,
)
from cedana.rootfs.containerd import Mount
from cedana.runtimes import _containerd_api as api
from cedana.runtimes import containerd as ctd


class FakeRpcError(Exception):
    def __init__(self, code: Any, details: str):
        super().__init__(details)
        self._code, self._details = code, details

    def code(self) -> Any:
        return self._code

    def details(self) -> str:
        return self._details


# --- the gRPC error map ------------------------------------------------------------------


def test_every_grpc_status_code_is_mapped() -> None:
    """Every gRPC status code grpcio defines maps to a cedana error, and nothing else does."""
    names = {code.name for code in grpc.StatusCode}
    assert set(api.STATUS_ERRORS) == names
    assert all(issubclass(cls, CedanaError) for cls in api.STATUS_ERRORS.values())


@pytest.mark.parametrize(
    ("code", "expected"),
    [
        ("NOT_FOUND", ContainerNotFound),
        ("ALREADY_EXISTS", ContainerExists),
        ("UNAVAILABLE", RuntimeUnavailable),
        ("PERMISSION_DENIED", NotPermitted),
        ("UNKNOWN", ContainerError),
        ("SOMETHING_NEW", ContainerError),
    ],
)
def test_grpc_errors_become_cedana_errors(code: str, expected: type[CedanaError]) -> None:
    """A gRPC error becomes the matching cedana error, naming the call, the namespace (or
    the socket, when containerd is unreachable) and containerd's own words."""

    class Code:
        name = code

    err = api.grpc_error(
        FakeRpcError(Code(), "the details"), what="task t1", address="/x.sock", namespace="ns"
    )
    assert type(err) is expected
    assert "the details" in str(err)
    assert "task t1" in str(err)
    assert ("/x.sock" if expected is RuntimeUnavailable else "'ns'") in str(err)


# --- containerd's messages on the wire ----------------------------------------------------

# Written by hand from containerd 1.6's api/services/containers/v1/containers.proto
# (Container: id = 1, labels = 2, image = 3, runtime = 4, spec = 5, snapshotter = 6,
# snapshot_key = 7; Container.Runtime: name = 1, options = 2), google/protobuf/any.proto
# (type_url = 1, value = 2) and the runc shim's Options (root = 7). A tag byte is
# number << 3 | wire type (2: length-delimited, 0: varint), then the length.
RUNC_OPTIONS = b"\x3a\x02/r"  # root = "/r"
CONTAINER_WIRE = (
    b"\x0a\x03web"  # 1 id
    b"\x12\x06" b"\x0a\x01a" b"\x12\x01b"  # 2 labels: one map entry {key = 1, value = 2}
    b"\x1a\x07busybox"  # 3 image
    b"\x22\x3b"  # 4 runtime (59 bytes)
    b"\x0a\x15io.containerd.runc.v2"  # Runtime 1 name
    b"\x12\x22"  # Runtime 2 options: Any (34 bytes)
    b"\x0a\x1acontainerd.runc.v1.Options" b"\x12\x04" + RUNC_OPTIONS +
    b"\x2a\x3c"  # 5 spec: Any (60 bytes)
    b"\x0a\x36types.containerd.io/opencontainers/runtime-spec/1/Spec" b"\x12\x02{}"
    b"\x32\x09overlayfs"  # 6 snapshotter
    b"\x3a\x03web"  # 7 snapshot_key
)  # fmt: skip
# 161 bytes: the container as field 1 of CreateContainerRequest, a two-byte varint length.
CREATE_CONTAINER_WIRE = b"\x0a\xa1\x01" + CONTAINER_WIRE

WEB = api.ContainerRecord(
    id="web", image="busybox", snapshotter="overlayfs", snapshot_key="web",
    runtime="io.containerd.runc.v2", runtime_options_type=api.RUNC_OPTIONS_TYPE,
    runtime_options=RUNC_OPTIONS, spec=b"{}", labels={"a": "b"},
)  # fmt: skip


def test_container_message_has_containerds_field_numbers() -> None:
    """A Container with labels, runc options and a spec encodes to exactly the bytes
    containerd's field numbers give, and those bytes decode back to the same fields."""
    schema = api.load_api().schema
    container = schema.message("containerd.services.containers.v1.Container")
    message = container(
        id="web", labels={"a": "b"}, image="busybox",
        runtime={"name": "io.containerd.runc.v2",
                 "options": {"type_url": api.RUNC_OPTIONS_TYPE, "value": RUNC_OPTIONS}},
        spec={"type_url": api.SPEC_TYPE, "value": b"{}"},
        snapshotter="overlayfs", snapshot_key="web",
    )  # fmt: skip
    assert message.SerializeToString() == CONTAINER_WIRE
    decoded = container.FromString(CONTAINER_WIRE)
    assert dict(decoded.labels) == {"a": "b"}
    assert decoded.runtime.options.type_url == api.RUNC_OPTIONS_TYPE
    assert api.decode_runc_options(decoded.runtime.options.value) == {"root": "/r"}
    assert (decoded.spec.type_url, decoded.spec.value) == (api.SPEC_TYPE, b"{}")
    assert (decoded.snapshotter, decoded.snapshot_key) == ("overlayfs", "web")


class FakeChannel:
    """A gRPC channel that records each call's request bytes and answers from ``replies``
    (method path -> serialized reply, or a list of them for a streaming method)."""

    def __init__(self, replies: dict[str, Any]):
        self.replies = replies
        self.calls: list[tuple[str, bytes, dict[str, str]]] = []

    def _callable(self, path: str, request_serializer: Any, response_deserializer: Any) -> Any:
        def call(request: Any, *, metadata: Any, timeout: float) -> Any:
            self.calls.append((path, request_serializer(request), dict(metadata)))
            reply = self.replies[path]
            if isinstance(reply, list):
                return (response_deserializer(r) for r in reply)
            return response_deserializer(reply)

        return call

    def unary_unary(self, path: str, **kw: Any) -> Any:
        return self._callable(path, **kw)

    def unary_stream(self, path: str, **kw: Any) -> Any:
        return self._callable(path, **kw)

    def close(self) -> None:
        pass


def _client(tmp_path: Path, replies: dict[str, Any]) -> tuple[api.ContainerdClient, FakeChannel]:
    (tmp_path / "c.sock").touch()
    client = api.ContainerdClient(str(tmp_path / "c.sock"), "ns")
    client.close()
    channel = FakeChannel(replies)
    client._channel = channel
    return client, channel


def test_client_calls_containerds_methods_by_their_paths(tmp_path: Path) -> None:
    """The client names containerd's methods as gRPC paths, sends requests in containerd's
    field numbers with the namespace as metadata, and reads replies, skipping the fields
    it does not know (created_at = 8, a timestamp; a task's exited_at = 10)."""
    containers = "/containerd.services.containers.v1.Containers/"
    timestamp = b"\x08\x01"  # Timestamp seconds = 1
    replies = {
        # GetContainerResponse{container = 1: the container, then created_at = 8 (165 bytes)}
        containers + "Get": b"\x0a\xa5\x01" + CONTAINER_WIRE + b"\x42\x02" + timestamp,
        containers + "Create": CREATE_CONTAINER_WIRE,
        # GetResponse{process = 1: Process{pid = 3: 4242, status = 4: 2 (running),
        # exited_at = 10}}; 4242 is the varint 0x92 0x21.
        "/containerd.services.tasks.v1.Tasks/Get": b"\x0a\x09\x18\x92\x21\x20\x02\x52\x02"
        + timestamp,
        # ReadContentResponse{offset = 1, data = 2}, streamed in two chunks.
        "/containerd.services.content.v1.Content/Read": [b"\x12\x02ab", b"\x08\x02\x12\x01c"],
    }
    client, channel = _client(tmp_path, replies)
    assert client.container("web") == WEB
    client.create_container(WEB)
    assert client.task("web") == api.TaskRecord(id="web", pid=4242, status="running")
    assert client.read_content("sha256:00") == b"abc"
    assert channel.calls == [
        (containers + "Get", b"\x0a\x03web", {"containerd-namespace": "ns"}),
        (containers + "Create", CREATE_CONTAINER_WIRE, {"containerd-namespace": "ns"}),
        ("/containerd.services.tasks.v1.Tasks/Get", b"\x0a\x03web", {"containerd-namespace": "ns"}),
        ("/containerd.services.content.v1.Content/Read", b"\x0a\x09sha256:00", {"containerd-namespace": "ns"}),
    ]  # fmt: skip


def test_task_create_sends_mounts_and_runc_options(tmp_path: Path) -> None:
    """Tasks.Create carries the rootfs as containerd.types.Mount (type = 1, source = 2,
    options = 4) in field 3 and the shim's options as an Any in field 9."""
    replies = {"/containerd.services.tasks.v1.Tasks/Create": b"\x10\x07"}  # pid = 2: 7
    client, channel = _client(tmp_path, replies)
    rootfs = [Mount(type="overlay", source="overlay", options=("ro", "lowerdir=/l"))]
    assert client.create_task("web", rootfs, options={"root": "/r"}, stdout="/o") == 7
    mount = b"\x0a\x07overlay\x12\x07overlay\x22\x02ro\x22\x0blowerdir=/l"
    options = b"\x0a\x1acontainerd.runc.v1.Options\x12\x04" + RUNC_OPTIONS
    expected = (
        b"\x0a\x03web"  # 1 container_id
        b"\x1a\x23" + mount +  # 3 rootfs (35 bytes)
        b"\x2a\x02/o"  # 5 stdout
        b"\x4a\x22" + options  # 9 options (34 bytes)
    )  # fmt: skip
    assert channel.calls == [
        ("/containerd.services.tasks.v1.Tasks/Create", expected, {"containerd-namespace": "ns"})
    ]


def test_table_mistakes_are_caught_when_it_is_built() -> None:
    """A field the table cannot read, or a type it does not define, fails loudly when the
    schema is built, naming the message, instead of becoming a wrong message."""
    from cedana.runtimes import _containerd_proto as proto

    with pytest.raises(ValueError, match=r"x\.M: unknown message type Nothing"):
        proto.build_schema({"x": {"M": "Nothing n = 1"}}, {})
    with pytest.raises(ValueError, match=r"x\.M: cannot read field 'string n'"):
        proto.build_schema({"x": {"M": "string n"}}, {})
    assert set(proto.schema().methods) >= {"Containers/Get", "Content/Read", "Tasks/Wait"}


# --- runc options ------------------------------------------------------------------------


def test_runc_options_round_trip_and_wire_format() -> None:
    """The shim's options encode with containerd's field numbers (root = 7,
    criu_image_path = 10) and decode back to the fields that were set."""
    data = api.encode_runc_options(
        {"root": "/r", "criu_image_path": "/img", "systemd_cgroup": True}
    )
    assert b"\x3a\x02/r" in data  # field 7, length-delimited
    assert b"\x52\x04/img" in data  # field 10
    assert b"\x48\x01" in data  # field 9, varint true
    assert api.decode_runc_options(data) == {
        "root": "/r",
        "systemd_cgroup": True,
        "criu_image_path": "/img",
    }
    assert api.decode_runc_options(b"") == {}
    with pytest.raises(ValueError, match="no field"):
        api.encode_runc_options({"nonsense": 1})


def test_runc_root_follows_the_runtime_options() -> None:
    """The shim's runc root is its ``root`` option (or /run/containerd/runc), then the
    namespace; options of another type are not read."""

    def record(**kw: Any) -> api.ContainerRecord:
        return api.ContainerRecord(
            id="c", image="i", snapshotter="overlayfs", snapshot_key="c",
            runtime="io.containerd.runc.v2", **kw,
        )  # fmt: skip

    assert ctd.runc_root_for(record(), "ns") == Path("/run/containerd/runc/ns")
    opts = api.encode_runc_options({"root": "/srv/runc"})
    custom = record(runtime_options_type=api.RUNC_OPTIONS_TYPE, runtime_options=opts)
    assert ctd.runc_root_for(custom, "k8s.io") == Path("/srv/runc/k8s.io")
    other = record(runtime_options_type="other.Options", runtime_options=opts)
    assert ctd.runc_root_for(other, "ns") == Path("/run/containerd/runc/ns")
    assert custom.to_json()["runtime"]["options"] == base64.b64encode(opts).decode()
    assert custom.runc_options() == {"root": "/srv/runc"} and other.runc_options() == {}


def test_record_comes_back_from_its_json() -> None:
    """from_json reads what to_json wrote (runtime options included), also with the image
    widened to a mapping as a checkpoint's manifest has it, and applies changes."""
    record = api.ContainerRecord(
        id="c", image="docker.io/library/busybox:latest", snapshotter="overlayfs",
        snapshot_key="c", runtime="io.containerd.runc.v2",
        runtime_options_type=api.RUNC_OPTIONS_TYPE,
        runtime_options=api.encode_runc_options({"root": "/srv/runc"}), labels={"a": "b"},
    )  # fmt: skip
    data = record.to_json()
    assert api.ContainerRecord.from_json(data) == attrs.evolve(record, spec=b"{}")
    data["image"] = {"name": record.image, "digest": "sha256:00"}
    moved = api.ContainerRecord.from_json(data, id="d", snapshot_key="d")
    assert moved == attrs.evolve(record, id="d", snapshot_key="d")


# --- images ------------------------------------------------------------------------------


def test_chain_id() -> None:
    """The chain id is the first diff id, then sha256 of "parent child" for each layer."""
    a, b, c = (f"sha256:{x * 64}" for x in "abc")
    ab = "sha256:" + hashlib.sha256(f"{a} {b}".encode()).hexdigest()
    abc = "sha256:" + hashlib.sha256(f"{ab} {c}".encode()).hexdigest()
    assert api.chain_id([a]) == a
    assert api.chain_id([a, b]) == ab
    assert api.chain_id([a, b, c]) == abc
    with pytest.raises(ValueError, match="without layers"):
        api.chain_id([])


def test_index_manifest_for_this_machine(monkeypatch: pytest.MonkeyPatch) -> None:
    """From an image index, the linux manifest of this machine's architecture is used."""
    monkeypatch.setattr("cedana.runtimes._containerd_api.platform.machine", lambda: "x86_64")
    index = {
        "manifests": [
            {"digest": "sha256:arm", "platform": {"os": "linux", "architecture": "arm64"}},
            {"digest": "sha256:win", "platform": {"os": "windows", "architecture": "amd64"}},
            {"digest": "sha256:amd", "platform": {"os": "linux", "architecture": "amd64"}},
        ]
    }
    assert api._select_manifest(index) == "sha256:amd"
    with pytest.raises(ContainerError, match="linux/amd64"):
        api._select_manifest({"manifests": index["manifests"][:2]})


# --- naming the restored container -------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/default/web", "/ns2/web2"),  # containerd's own /NAMESPACE/ID
        ("/kubepods/pod1/web", "/kubepods/pod1/web2"),
        ("system.slice:cri:web", "system.slice:cri:web2"),
        ("/fixed/place", "/fixed/place"),
        ("", ""),
    ],
)
def test_cgroups_path_follows_the_new_name(path: str, expected: str) -> None:
    """A restored container gets its own cgroup: a path ending in the old id ends in the
    new one (containerd's /NAMESPACE/ID takes the new namespace too); others are kept."""
    assert ctd.rename_cgroups_path(path, ("default", "web"), ("ns2", "web2")) == expected


def test_new_spec_renames_only_the_cgroup() -> None:
    """The restored container's spec is the checkpointed one with its cgroup renamed."""
    spec = {"process": {"args": ["sh"]}, "linux": {"cgroupsPath": "/a/b", "namespaces": []}}
    out = json.loads(ctd.new_spec(json.dumps(spec).encode(), old=("a", "b"), new=("a", "c")))
    assert out == {"process": {"args": ["sh"]}, "linux": {"cgroupsPath": "/a/c", "namespaces": []}}


# --- what a containerd checkpoint looks like to restore ----------------------------------


def _checkpoint(tmp_path: Path, *, options: dict[str, Any] | None = None, **container: Any) -> Any:
    images = tmp_path / "images"
    (images / "container").mkdir(parents=True)
    (images / "core-1.img").write_bytes(b"core")
    (images / "container" / "rootfs-diff.tar").write_bytes(b"")
    manifest = Manifest(
        created="2026-11-28T23:59:59Z",
        host=HostInfo(kernel="6.18.0", arch="x86_64", criu_version="4.2.1", hostname="box"),
        kind="container",
        runtime="containerd",
        options=options or {"tcp_established": False, "file_locks": False},
        tree=[ProcessEntry(pid=42, ppid=1, command="sh")],
        workload={
            "root_pid": 42,
            "container": {
                "id": "web",
                "runtime": "containerd",
                "root": "/run/containerd/runc/default",
                "bundle": "/run/containerd/io.containerd.runtime.v2.task/default/web",
                "terminal": False,
                "ext_unix_sk": False,
                **container,
            },
            "containerd": {"namespace": "default", "address": "/x.sock", "snapshotter": "o"},
            "rootfs": {
                "captured": True,
                "snapshotter": "containerd",
                "lower": ["/l1"],
                "diff": {"snapshotter": "containerd", "files": 1},
            },
        },
    )
    write_artifact(images, tmp_path / "c.tar.zst", manifest, signer=host_key())
    return cedana.open(tmp_path / "c.tar.zst")


@pytest.mark.parametrize(
    ("options", "container", "why"),
    [
        ({"tcp_established": True}, {}, "TCP repair"),
        ({"file_locks": True}, {}, "file locks"),
        ({}, {"terminal": True}, "a terminal"),
        ({}, {"ext_unix_sk": True}, "external unix sockets"),
    ],
)
def test_restore_into_containerd_refuses_what_the_shim_cannot_pass(
    tmp_path: Path, options: dict[str, Any], container: dict[str, Any], why: str
) -> None:
    """The runc shim runs runc restore without CRIU flags; a checkpoint that needs them is
    refused up front, pointing at a restore into runc, before containerd is contacted."""
    ckpt = _checkpoint(tmp_path, options=options, **container)
    with pytest.raises(ContainerError, match=why) as failure:
        ctd.ContainerdContainer.restore(ckpt, address="/nonexistent.sock")
    assert "into='runc'" in str(failure.value)


def test_restore_dispatch_refuses_options_of_the_other_runtime(tmp_path: Path) -> None:
    """A containerd checkpoint restores into containerd, runc, docker or podman, each with
    its own options; an option of another, or a runtime that is none of them, is refused
    with a clear error."""
    ckpt = _checkpoint(tmp_path)
    with pytest.raises(ContainerError, match="bundle"):
        cedana.restore(ckpt, bundle="/b")
    with pytest.raises(ContainerError, match="namespace"):
        cedana.restore(ckpt, into="runc", namespace="x")
    with pytest.raises(ContainerError, match="into docker does not take bundle"):
        cedana.restore(ckpt, into="docker", bundle="/b")
    with pytest.raises(
        ContainerError, match="containerd or runc or docker or podman, not into 'crio'"
    ):
        cedana.restore(ckpt, into="crio")


# --- the optional dependency -------------------------------------------------------------


def test_import_cedana_needs_no_grpc() -> None:
    """``import cedana`` loads neither grpc nor containerd's stubs; only using a containerd
    container does."""
    code = (
        "import sys, cedana; print(sorted(m for m in ('grpc', 'containerd') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_missing_packages_say_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    """Without grpcio, using containerd raises RuntimeUnavailable telling the user to
    install the extra."""
    monkeypatch.setattr(api, "_loaded", [])
    monkeypatch.setitem(sys.modules, "grpc", None)
    with pytest.raises(RuntimeUnavailable, match=r"pip install 'cedana\[containerd\]'"):
        cedana.ContainerdContainer("web", address="/nonexistent.sock").info()


def test_no_socket(tmp_path: Path) -> None:
    """With nothing listening at the address, the error says so and names the socket."""
    with pytest.raises(RuntimeUnavailable, match="not listening at .*nope.sock"):
        cedana.ContainerdContainer("web", address=str(tmp_path / "nope.sock")).info()
