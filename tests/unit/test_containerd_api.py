"""containerd's API boundary and the pure parts of ContainerdContainer; no containerd, no root.

The gRPC error map, the runc shim's options codec, chain ids, platform selection, the
runc root and cgroup naming, what restore refuses, and that ``import cedana`` needs
neither grpc nor containerd's stubs.
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
from cedana.artifact.archive import write_artifact
from cedana.artifact.manifest import HostInfo, Manifest, ProcessEntry
from cedana.artifact.signing import host_key
from cedana.errors import (
    CedanaError,
    ContainerError,
    ContainerExists,
    ContainerNotFound,
    NotPermitted,
    RuntimeUnavailable,
)
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
    """A containerd checkpoint restores into containerd or runc, each with its own options;
    an option of the other, or a third runtime, is refused with a clear error."""
    ckpt = _checkpoint(tmp_path)
    with pytest.raises(ContainerError, match="bundle"):
        cedana.restore(ckpt, bundle="/b")
    with pytest.raises(ContainerError, match="namespace"):
        cedana.restore(ckpt, into="runc", namespace="x")
    with pytest.raises(ContainerError, match="podman"):
        cedana.restore(ckpt, into="podman")


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
    """Without grpcio / containerd's stubs, using containerd raises RuntimeUnavailable
    telling the user to install the extra."""
    monkeypatch.setattr(api, "_loaded", [])
    monkeypatch.setitem(sys.modules, "grpc", None)
    with pytest.raises(RuntimeUnavailable, match=r"pip install 'cedana\[containerd\]'"):
        cedana.ContainerdContainer("web", address="/nonexistent.sock").info()


def test_no_socket(tmp_path: Path) -> None:
    """With nothing listening at the address, the error says so and names the socket."""
    with pytest.raises(RuntimeUnavailable, match="not listening at .*nope.sock"):
        cedana.ContainerdContainer("web", address=str(tmp_path / "nope.sock")).info()
