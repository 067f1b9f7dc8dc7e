"""CRI-O's side, without CRI-O: its config.json, the decision for system containers, the
containers/storage store read from files, the CRI descriptor and the CRI client's errors.

The two config.json examples in tests/fixtures/crio/ are written as CRI-O 1.36 writes a
container's and a pod sandbox's (the keys internal/annotations/annotations.go defines,
set as internal/factory/container/container.go and server/sandbox_run_linux.go set
them). Sysbox installs into CRI-O as a runtime handler named ``sysbox-runc``
(``runtime_path = "/usr/bin/sysbox-runc"``) that pods choose by RuntimeClass; CRI-O
records a pod's handler as ``io.kubernetes.cri-o.RuntimeHandler`` on its sandbox.
"""

from __future__ import annotations

import base64
import json
import re
import sys
from pathlib import Path
from typing import Any

import grpc
import pytest

import cedana
from cedana.errors import (
    CedanaError,
    ContainerError,
    ContainerNotFound,
    ContainerNotRunning,
    InvalidOption,
    NotCheckpointable,
    RuntimeUnavailable,
)
from cedana.rootfs.containers_storage import find_container
from cedana.runtimes import _cri_api, _cri_descriptor, crio
from cedana.runtimes._cri_api import CriClient, CriContainerStatus, cri_error, cri_schema
from cedana.runtimes.crio import CrioConfig, system_container, wants_rootfs_only
from tests.fakes import FakeCriu

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "crio"
CID = "8c8a7f7b0b5d2f4e3c6a1d9e0f1a2b3c4d5e6f708192a3b4c5d6e7f8091a2b3c"
SANDBOX = "1f0e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0"


def example(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((FIXTURES / f"{name}-config.json").read_text())
    return data


# --- config.json ------------------------------------------------------------------------


def test_container_config_reads_crios_annotations() -> None:
    """A container's config.json gives its id, CRI-O's name, pod, image, CRI metadata,
    labels and the pod spec's annotations (the JSON-valued annotations decoded), its
    command; it is no sandbox and names no runtime handler (its sandbox does)."""
    config = CrioConfig.from_spec(example("container"))
    assert config.container_id == CID
    assert config.name == "k8s_nginx_web-0_default_4c9d2ad1-0d2f-4b8a-9a57-2f2f0e4d9c11_0"
    assert (config.container_type, config.is_sandbox) == ("container", False)
    assert (config.sandbox_id, config.sandbox_name) == (
        SANDBOX,
        "k8s_web-0_default_4c9d2ad1-0d2f-4b8a-9a57-2f2f0e4d9c11_0",
    )
    assert config.image == config.image_name == "docker.io/library/nginx:1.25"
    assert config.image_ref.startswith("a8758716")
    assert config.metadata == {"name": "nginx"}
    assert config.labels["io.kubernetes.pod.namespace"] == "default"
    assert config.kube_annotations["io.kubernetes.pod.terminationGracePeriod"] == "30"
    assert config.args == ("nginx", "-g", "daemon off;")
    assert (config.runtime_handler, config.runtime_path, config.tty) == ("", "", False)
    facts = config.to_json()
    assert facts["image"] == {
        "requested": "docker.io/library/nginx:1.25",
        "name": "docker.io/library/nginx:1.25",
        "ref": config.image_ref,
    }
    assert "kube_annotations" not in facts


def test_sandbox_config_is_a_sandbox_with_its_handler() -> None:
    """A pod sandbox's config.json reads as a sandbox, with its (default: empty) handler."""
    config = CrioConfig.from_spec(example("sandbox"))
    assert config.is_sandbox and config.container_id == SANDBOX
    assert config.runtime_handler == ""
    assert config.args == ("/pause",)


@pytest.mark.parametrize(
    "spec",
    [
        {},
        {"annotations": None, "process": None},
        {"annotations": ["not", "a", "map"], "process": {"args": "sh"}},
        {
            "annotations": {
                "io.kubernetes.cri-o.Labels": "{not json",
                "io.kubernetes.cri-o.Metadata": "[1]",
            }
        },
    ],
)
def test_a_spec_without_crios_facts_reads_empty(spec: dict[str, Any]) -> None:
    """A spec another runtime wrote (or a damaged one) reads as one without CRI-O's facts,
    never as an exception, and is no system container."""
    config = CrioConfig.from_spec(spec)
    assert (config.container_id, config.labels, config.metadata, config.args) == ("", {}, {}, ())
    assert not wants_rootfs_only(spec)


# --- system containers: rootfs-only by default -----------------------------------------


def _with(
    spec: dict[str, Any],
    annotations: dict[str, str] | None = None,
    *,
    args: list[str] | None = None,
) -> dict[str, Any]:
    spec = json.loads(json.dumps(spec))
    spec["annotations"].update(annotations or {})
    if args is not None:
        spec["process"]["args"] = args
    return spec


@pytest.mark.parametrize(
    ("spec", "handler", "why"),
    [
        (example("container"), None, None),
        (example("container"), "", None),
        (example("container"), "runc", None),
        (example("container"), "crun", None),
        (example("container"), "sysbox-runc", "its runtime handler is 'sysbox-runc' (sysbox)"),
        (example("container"), "Sysbox", "its runtime handler is 'Sysbox' (sysbox)"),
        (
            _with(example("sandbox"), {"io.kubernetes.cri-o.RuntimeHandler": "sysbox-runc"}),
            None,
            "its runtime handler is 'sysbox-runc' (sysbox)",
        ),
        (
            _with(
                example("container"),
                {"io.kubernetes.cri-o.PlatformRuntimePath": "/usr/bin/sysbox-runc"},
            ),
            None,
            "its runtime is /usr/bin/sysbox-runc (sysbox)",
        ),
        (
            _with(
                example("container"),
                {"platform-runtime-path.crio.io": "/usr/local/sbin/sysbox-runc"},
            ),
            None,
            "its runtime is /usr/local/sbin/sysbox-runc (sysbox)",
        ),
        (
            _with(
                example("container"), {"io.kubernetes.cri-o.PlatformRuntimePath": "/usr/bin/runc"}
            ),
            None,
            None,
        ),
        (
            _with(example("container"), args=["/sbin/init"]),
            None,
            "its init is /sbin/init (systemd)",
        ),
        (
            _with(example("container"), args=["/usr/sbin/init"]),
            None,
            "its init is /usr/sbin/init (systemd)",
        ),
        (
            _with(example("container"), args=["/lib/systemd/systemd", "--system"]),
            None,
            "its init is /lib/systemd/systemd (systemd)",
        ),
        (_with(example("container"), args=["systemd"]), None, "its init is systemd (systemd)"),
        (_with(example("container"), args=["/bin/systemd-free-app"]), None, None),
        (_with(example("container"), args=["/bin/sh", "-c", "/sbin/init"]), None, None),
        (_with(example("container"), args=[]), None, None),
    ],
)
def test_wants_rootfs_only_for_sysbox_and_systemd(
    spec: dict[str, Any], handler: str | None, why: str | None
) -> None:
    """Rootfs-only is the default for a system container: a sysbox runtime handler (given,
    or on a sandbox's config), a sysbox runtime binary (platform-runtime-path, either
    key), or a systemd init (its name, or /sbin/init, /usr/sbin/init as the first
    argument); an ordinary container, runc or crun, or a shell that merely mentions
    /sbin/init, is not one."""
    assert system_container(spec, runtime_handler=handler) == why
    assert wants_rootfs_only(spec, runtime_handler=handler) is (why is not None)
    assert wants_rootfs_only(CrioConfig.from_spec(spec), runtime_handler=handler) is (
        why is not None
    )


# --- containers/storage, read from its files -------------------------------------------


def make_store(
    root: Path, records: list[dict[str, Any]], *, volatile: list[dict[str, Any]] | None = None
) -> Path:
    """A containers/storage overlay store: records, each one's layer with diff/work/lower,
    and the image layers its ``lower`` links name (``l/<short>`` -> ``../<layer>/diff``)."""
    (root / "overlay-containers").mkdir(parents=True)
    (root / "overlay-containers" / "containers.json").write_text(json.dumps(records))
    if volatile is not None:
        (root / "overlay-containers" / "volatile-containers.json").write_text(json.dumps(volatile))
    (root / "overlay" / "l").mkdir(parents=True)
    for short, layer in (("AAAA", "img1"), ("BBBB", "img0")):
        (root / "overlay" / layer / "diff").mkdir(parents=True)
        (root / "overlay" / "l" / short).symlink_to(f"../{layer}/diff")
    for record in [*records, *(volatile or [])]:
        layer = root / "overlay" / record["layer"]
        (layer / "diff").mkdir(parents=True, exist_ok=True)
        (layer / "work").mkdir(exist_ok=True)
        (layer / "lower").write_text("l/AAAA:l/BBBB")
    return root


def record(cid: str, layer: str, *names: str) -> dict[str, Any]:
    return {"id": cid, "names": list(names), "image": "i" * 64, "layer": layer}


def test_store_finds_a_container_by_id_prefix_and_name(tmp_path: Path) -> None:
    """The store's record gives the layer's diff (upper), work, the image's layers from the
    ``lower`` links (uppermost first, resolved) and the userdata dir; a unique prefix and
    a name find the same entry, volatile records included; an unknown id is None."""
    store = make_store(
        tmp_path / "s",
        [record(CID, "L1", "k8s_nginx_web-0"), record("9" * 64, "L2", "other")],
        volatile=[record("7" * 64, "L3", "vol")],
    )
    entry = find_container(store, CID)
    assert entry is not None
    assert entry.upper == store / "overlay" / "L1" / "diff"
    assert entry.work == store / "overlay" / "L1" / "work"
    assert entry.lower == (str(store / "overlay/img1/diff"), str(store / "overlay/img0/diff"))
    assert entry.config_path == store / "overlay-containers" / CID / "userdata" / "config.json"
    assert entry.names == ("k8s_nginx_web-0",)
    assert find_container(store, CID[:8]) == entry
    assert find_container(store, "k8s_nginx_web-0") == entry
    vol = find_container(store, "vol")
    assert vol is not None and vol.id == "7" * 64
    assert find_container(store, "0" * 64) is None
    snap = entry.snapshotter()
    assert (snap.upper, snap.lower, snap.work) == (entry.upper, entry.lower, str(entry.work))


def test_store_bad_input_is_a_clear_error(tmp_path: Path) -> None:
    """No store at the root, another driver's store, an ambiguous prefix, a record whose
    layer is gone and an unreadable containers.json are each a clear error."""
    with pytest.raises(
        ContainerError,
        match=r"no containers/storage store at .*CONTAINERS_STORAGE_CONF.*storage_root=",
    ):
        find_container(tmp_path / "none", CID)
    (tmp_path / "vfs" / "vfs-containers").mkdir(parents=True)
    with pytest.raises(NotCheckpointable, match=r"uses the 'vfs' driver"):
        find_container(tmp_path / "vfs", CID)
    store = make_store(
        tmp_path / "s", [record("ab" + "1" * 62, "L1"), record("ab" + "2" * 62, "L2")]
    )
    with pytest.raises(ContainerError, match=r"'ab' names 2 containers"):
        find_container(store, "ab")
    (store / "overlay" / "L1" / "diff").rmdir()
    with pytest.raises(ContainerError, match=r"layer 'L1', but .*/diff is missing"):
        find_container(store, "ab" + "1" * 62)
    (store / "overlay-containers" / "containers.json").write_text("{not json")
    with pytest.raises(ContainerError, match=r"containers.json is unreadable"):
        find_container(store, "ab")


def test_storage_root_follows_storage_conf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The store is storage.conf's graphroot (CONTAINERS_STORAGE_CONF first, as CRI-O reads
    it), containers/storage's default without one; an unreadable one is a clear error."""
    conf = tmp_path / "storage.conf"
    monkeypatch.setenv("CONTAINERS_STORAGE_CONF", str(conf))
    assert crio.default_storage_root() == Path("/var/lib/containers/storage")
    conf.write_text('[storage]\ndriver = "overlay"\ngraphroot = "/srv/store"\n')
    assert crio.default_storage_root() == Path("/srv/store")
    assert cedana.CrioContainer("x", client=FakeCri({})).storage_root == Path("/srv/store")
    assert cedana.CrioContainer("x", storage_root="/o", client=FakeCri({})).storage_root == Path(
        "/o"
    )
    conf.write_text('[storage\ngraphroot = "/srv/store"\n')
    with pytest.raises(ContainerError, match=r"storage.conf is unreadable"):
        crio.default_storage_root()


# --- CrioContainer's checks, with the CRI answer handed in ---------------------------------


class FakeCri:
    """CRI-O's ContainerStatus answers (verbose info as CRI-O builds it), by full id."""

    address = "/var/run/crio/crio.sock"

    def __init__(self, answers: dict[str, CriContainerStatus]):
        self.answers = answers
        self.closed = False

    def container_status(self, container_id: str, *, verbose: bool = True) -> CriContainerStatus:
        found = [s for cid, s in self.answers.items() if cid.startswith(container_id)]
        if len(found) != 1:
            raise ContainerNotFound(container_id)
        return found[0]

    def close(self) -> None:
        self.closed = True


def status(cid: str, state: str = "running", pid: int = 4242) -> CriContainerStatus:
    info = {"sandboxID": SANDBOX, "pid": pid, "runtimeSpec": {}, "privileged": False}
    return CriContainerStatus(
        id=cid, name="nginx", state=state, image="nginx", image_ref="sha256:0", info={"info": info}
    )


def crio_store(
    tmp_path: Path, container: dict[str, Any], sandbox: dict[str, Any] | None = None
) -> Path:
    store = make_store(tmp_path / "store", [record(CID, "L1"), record(SANDBOX, "L0")])
    for cid, spec in ((CID, container), (SANDBOX, sandbox or example("sandbox"))):
        userdata = store / "overlay-containers" / cid / "userdata"
        userdata.mkdir(parents=True)
        (userdata / "config.json").write_text(json.dumps(spec))
    return store


def test_status_and_pid_come_from_crios_verbose_info(tmp_path: Path) -> None:
    """CRI-O's verbose info gives the pid and the sandbox; a prefix resolves to the full id;
    an exited container has no pid; an unknown one is ContainerNotFound naming crictl
    and --address."""
    cri = FakeCri({CID: status(CID)})
    c = cedana.CrioContainer(
        CID[:6], client=cri, storage_root=crio_store(tmp_path, example("container"))
    )
    assert c.pid == 4242 and c.running
    assert c.status().sandbox_id == SANDBOX
    assert c.stored().id == CID
    assert c.config().container_id == CID
    cri.answers[CID] = status(CID, "exited", 0)
    with pytest.raises(ContainerNotRunning, match="is exited"):
        _ = c.pid
    with pytest.raises(
        ContainerNotFound, match=r"no container 'nope' .*crictl ps --all.*--address"
    ):
        cedana.CrioContainer("nope", client=cri, storage_root=tmp_path).status()
    c.close()
    assert not cri.closed  # a client handed in is the caller's to close


@pytest.mark.parametrize(
    ("container", "sandbox", "state", "error", "match"),
    [
        (
            example("container"),
            None,
            "exited",
            ContainerNotRunning,
            r"is exited, so there is nothing",
        ),
        (
            _with(example("sandbox"), {"io.kubernetes.cri-o.ContainerID": CID}),
            None,
            "running",
            NotCheckpointable,
            r"is a pod's sandbox \(infra\) container",
        ),
        (
            example("container"),
            _with(example("sandbox"), {"io.kubernetes.cri-o.RuntimeHandler": "sysbox-runc"}),
            "running",
            InvalidOption,
            r"is a system container \(its runtime handler is 'sysbox-runc' \(sysbox\)\), so "
            r"its checkpoint is rootfs-only by default .*tcp_established",
        ),
        (
            _with(example("container"), args=["/sbin/init"]),
            None,
            "running",
            InvalidOption,
            r"is a system container \(its init is /sbin/init \(systemd\)\), so its checkpoint "
            r"is rootfs-only by default \(rootfs_only=False forces a process checkpoint\)",
        ),
        (
            example("container"),
            None,
            "running",
            ContainerError,
            r"not in runc's state under .*no-runc: .*crun.*--root",
        ),
    ],
)
def test_checkpoint_refuses_before_anything_is_frozen(
    tmp_path: Path,
    container: dict[str, Any],
    sandbox: dict[str, Any] | None,
    state: str,
    error: type[CedanaError],
    match: str,
) -> None:
    """What a checkpoint cannot take is refused from CRI-O's answer and the store before
    anything is frozen: an exited container, a pod's sandbox, CRIU's options for a system
    container (sysbox by its sandbox's handler, systemd by its init), whose checkpoint is
    rootfs-only by default, and a container not in runc's state under the root given."""
    store = crio_store(tmp_path, container, sandbox)
    cri = FakeCri({CID: status(CID, state)})
    c = cedana.CrioContainer(
        CID, client=cri, storage_root=store, runc_root=tmp_path / "no-runc", backend=FakeCriu()
    )
    with pytest.raises(error, match=match):
        c.checkpoint(tmp_path / "c.tar.zst", tcp_established=True)
    assert not (tmp_path / "c.tar.zst").exists()


def test_missing_store_entry_and_config(tmp_path: Path) -> None:
    """A container CRI-O knows but the store has no entry for names storage_root= and
    CONTAINERS_STORAGE_CONF; an entry without config.json says CRI-O did not make it."""
    store = make_store(tmp_path / "store", [record(CID, "L1")])
    cri = FakeCri({CID: status(CID), "5" * 64: status("5" * 64)})
    with pytest.raises(
        ContainerError,
        match=r"5{64} has no entry in containers/storage.*CONTAINERS_STORAGE_CONF.*storage_root=",
    ):
        cedana.CrioContainer("5" * 64, client=cri, storage_root=store).checkpoint(tmp_path / "x")
    with pytest.raises(
        ContainerError,
        match=r"has no .*userdata/config.json: the store entry is not one CRI-O made",
    ):
        cedana.CrioContainer(CID, client=cri, storage_root=store).checkpoint(tmp_path / "x")


# --- the CRI descriptor and client ------------------------------------------------------


def test_descriptor_is_cri_api_runtime_v1_in_a_private_pool() -> None:
    """The committed descriptor is cri-api's runtime.v1 api.proto: the messages cedana
    reads have upstream's field numbers (the wire format), the RuntimeService has the
    methods cedana and the tests call, and nothing lands in protobuf's default pool."""
    from google.protobuf import descriptor_pb2, descriptor_pool

    proto = descriptor_pb2.FileDescriptorProto.FromString(
        base64.b64decode(_cri_descriptor.FILE_DESCRIPTOR_B64)
    )
    assert (proto.name, proto.package) == (_cri_descriptor.PROTO, "runtime.v1")
    schema = cri_schema()

    def numbers(name: str) -> dict[str, int]:
        fields = schema.message(f"runtime.v1.{name}").DESCRIPTOR.fields
        return {f.name: f.number for f in fields}

    assert numbers("ContainerStatusRequest") == {"container_id": 1, "verbose": 2}
    assert numbers("ContainerStatusResponse") == {"status": 1, "info": 2}
    status_fields = numbers("ContainerStatus")
    assert {k: status_fields[k] for k in ("id", "metadata", "state", "exit_code", "image", "image_ref", "labels", "annotations")} == {
        "id": 1, "metadata": 2, "state": 3, "exit_code": 7, "image": 8, "image_ref": 9, "labels": 12, "annotations": 13,
    }  # fmt: skip
    assert {k: v for k, v in numbers("Container").items() if v <= 9} == {
        "id": 1, "pod_sandbox_id": 2, "metadata": 3, "image": 4, "image_ref": 5, "state": 6,
        "created_at": 7, "labels": 8, "annotations": 9,
    }  # fmt: skip
    assert numbers("VersionResponse") == {
        "version": 1, "runtime_name": 2, "runtime_version": 3, "runtime_api_version": 4,
    }  # fmt: skip
    for method in ("Version", "ListContainers", "ContainerStatus", "RunPodSandbox",
                   "CreateContainer", "StartContainer", "StopPodSandbox", "RemovePodSandbox"):  # fmt: skip
        rpc = schema.method(f"RuntimeService/{method}")
        assert rpc.path == f"/runtime.v1.RuntimeService/{method}" and not rpc.server_streaming
    with pytest.raises(KeyError):
        descriptor_pool.Default().FindFileByName(_cri_descriptor.PROTO)
    # A verbose reply, encoded by hand: field 2 is the info map, entry {1: key, 2: value}.
    reply = schema.method("RuntimeService/ContainerStatus").response.FromString(
        b"\x0a\x04\x0a\x02id" + b"\x12\x0b\x0a\x04info\x12\x03{1}"
    )
    assert reply.status.id == "id" and dict(reply.info) == {"info": "{1}"}


def test_missing_socket_and_missing_grpcio(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No socket at the address is RuntimeUnavailable naming the path and --address; without
    grpcio the error says to install cedana[crio]."""
    with pytest.raises(
        RuntimeUnavailable, match=rf"not listening at {tmp_path}/crio.sock .*--address"
    ):
        CriClient(str(tmp_path / "crio.sock"))
    with pytest.raises(RuntimeUnavailable, match=r"not listening .*--address"):
        cedana.CrioContainer("abc", address=f"unix://{tmp_path}/crio.sock").status()
    monkeypatch.setitem(sys.modules, "grpc", None)
    with pytest.raises(RuntimeUnavailable, match=r"pip install 'cedana\[crio\]'"):
        _cri_api.load_cri()


def test_every_grpc_status_code_is_mapped() -> None:
    """Every gRPC status code grpcio defines maps to a cedana error, and nothing else does."""
    assert set(_cri_api.STATUS_ERRORS) == {code.name for code in grpc.StatusCode}
    assert all(issubclass(cls, CedanaError) for cls in _cri_api.STATUS_ERRORS.values())


class _RpcError(Exception):
    def __init__(self, code: str, details: str):
        self._code, self._details = code, details

    def code(self) -> Any:
        return getattr(grpc.StatusCode, self._code, None) or type("C", (), {"name": self._code})()

    def details(self) -> str:
        return self._details


@pytest.mark.parametrize(
    ("code", "expected", "match"),
    [
        ("NOT_FOUND", ContainerNotFound, r"CRI container status x at /s: gone"),
        ("UNAVAILABLE", RuntimeUnavailable, r"at /s is unavailable .*--address"),
        ("UNKNOWN", ContainerError, r"CRI container status x at /s: gone"),
        ("SOMETHING_NEW", ContainerError, r"gone"),
    ],
)
def test_grpc_errors_become_cedana_errors(
    code: str, expected: type[CedanaError], match: str
) -> None:
    """A gRPC error becomes the matching cedana error, naming the call and the socket; an
    unavailable runtime says to start CRI-O or pass --address."""
    error = cri_error(_RpcError(code, "gone"), what="container status x", address="/s")
    assert type(error) is expected
    assert re.search(match, str(error))


def test_rootfs_only_false_forces_a_process_checkpoint(tmp_path: Path) -> None:
    """``rootfs_only=False`` overrides the default for a system container: CRIU's options are
    taken and the checkpoint goes on to runc's state (here: none under the root given)."""
    store = crio_store(tmp_path, _with(example("container"), args=["/sbin/init"]))
    c = cedana.CrioContainer(
        CID, client=FakeCri({CID: status(CID)}), storage_root=store, runc_root=tmp_path / "r"
    )
    with pytest.raises(ContainerError, match=r"not in runc's state"):
        c.checkpoint(tmp_path / "c.tar.zst", tcp_established=True, rootfs_only=False)
    assert not (tmp_path / "c.tar.zst").exists()
