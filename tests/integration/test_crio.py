"""CRI-O containers, tested in the two halves this machine can run for real.

CRI-O is not packaged for this distribution, so:

- the CRI client (``runtime.v1`` over gRPC) is tested against a real CRI server:
  containerd's built-in CRI plugin (``io.containerd.grpc.v1.cri``), started by this
  module with its own config, root, state and socket, a loopback-only CNI network
  (Debian's containernetworking-plugins) and a pause image built here from
  busybox-static (a shell that sleeps until it is stopped), imported with ctr. A pod
  and a container are made through the CRI itself (RunPodSandbox, CreateContainer,
  StartContainer), then cedana's calls (Version, ListContainers, ContainerStatus with
  verbose) are checked against what containerd runs;
- the containers/storage side is tested on real containers/storage containers made by
  podman (the store and library CRI-O uses), run by runc: a CRI-O-style ``config.json``
  (CRI-O's annotations) is laid in the container's ``userdata``, and cedana finds its
  layer and config in the store, checkpoints it through runc and CRIU, and restores it
  into runc. There the CRI's answer is handed in at the client seam, shaped as CRI-O's
  ``ContainerStatus`` verbose info is (server/container_status.go in CRI-O's source).

Every pod, container, image, mount and daemon made here is removed at teardown.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import shutil
import tarfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import cedana
from cedana.rootfs.containers_storage import find_container
from cedana.rootfs.mounts import mountinfo, umount
from cedana.runtimes._cri_api import CriClient, CriContainerStatus
from cedana.runtimes.crio import CrioConfig
from tests.capabilities import integration, requires_busybox, requires_runtime, requires_tool
from tests.conftest import wait_for
from tests.helpers import (
    COUNTER,
    assert_counts_on,
    busybox_tree,
    count,
    name_for,
    remove_runc_container,
    run_cedana,
    wait_count,
)
from tests.integration.test_containerd import Containerd
from tests.integration.test_podman import CHANGES, CONTAINERS_CONF, IMAGE, STORAGE_CONF, Podman

CNI_BIN = Path("/usr/lib/cni")
#: Where libcni caches each attachment's result (not configurable in containerd 1.6);
#: emptied again when a pod is removed.
CNI_CACHE = Path("/var/lib/cni")
#: The CNI plugin the pods' network uses (Debian's containernetworking-plugins).
requires_cni = requires_tool(*(str(CNI_BIN / p) for p in ("ptp", "host-local", "loopback")))

pytestmark = [*integration, requires_runtime("runc"), requires_busybox]

#: The CRI plugin's own namespace in containerd.
K8S = "k8s.io"
PAUSE = "localhost/crio-test/pause:1"
BUSYBOX = "localhost/crio-test/busybox:1"
#: The pause process: a shell waiting on a sleep, ended by the signal that stops the pod.
PAUSE_SCRIPT = b"#!/bin/sh\ntrap 'exit 0' TERM INT\nwhile :; do sleep 3600 & wait $!; done\n"
LOOP = "while :; do sleep 1; done"

CONFIG = """\
version = 2
disabled_plugins = [
  "io.containerd.internal.v1.tracing",
  "io.containerd.snapshotter.v1.aufs",
  "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.zfs",
]

[plugins."io.containerd.internal.v1.opt"]
  path = "{tmp}/opt"

[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  disable_apparmor = true
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        Root = "{tmp}/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni_bin}"
    conf_dir = "{tmp}/cni"
"""
#: The pods' network: a veth pair per pod (``ptp``: no bridge, no masquerading, removed
#: with the pod), addresses from a private range kept in this module's temp dir.
CNI_CONF = """\
{{"cniVersion": "0.4.0", "name": "crio-test", "plugins": [
  {{"type": "ptp", "ipMasq": false, "ipam": {{"type": "host-local",
    "ranges": [[{{"subnet": "10.213.77.0/24"}}]], "dataDir": "{tmp}/cni-ipam"}}}},
  {{"type": "loopback"}}
]}}
"""


# --- images -----------------------------------------------------------------------------


def _layer(extra: dict[str, tuple[bytes, int]]) -> bytes:
    out = io.BytesIO()
    kinds = {"dir": tarfile.DIRTYPE, "file": tarfile.REGTYPE, "link": tarfile.SYMTYPE}
    entries = [*busybox_tree(), *(("file", p, d, m) for p, (d, m) in extra.items())]
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for kind, rel, content, mode in entries:
            info = tarfile.TarInfo(rel)
            info.type, info.mode, info.mtime = kinds[kind], mode, 1_700_000_000
            if kind == "link":
                info.linkname = content
            data = content if kind == "file" else b""
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if kind == "file" else None)
    return out.getvalue()


def oci_archive(path: Path, name: str, layer: bytes, argv: list[str]) -> None:
    """An OCI image layout tar of image ``name``: one layer, ``argv`` as its command."""

    def blob(data: bytes) -> dict[str, Any]:
        return {"digest": "sha256:" + hashlib.sha256(data).hexdigest(), "size": len(data)}

    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Entrypoint": argv, "Env": ["PATH=/bin"]},
            "rootfs": {"type": "layers", "diff_ids": [blob(layer)["digest"]]},
        }
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {"mediaType": "application/vnd.oci.image.config.v1+json", **blob(config)},
            "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", **blob(layer)}],
        }
    ).encode()
    index = json.dumps(
        {
            "schemaVersion": 2,
            "manifests": [
                {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    **blob(manifest),
                    "annotations": {"io.containerd.image.name": name},
                }
            ],
        }
    ).encode()
    members = {"oci-layout": b'{"imageLayoutVersion": "1.0.0"}', "index.json": index}
    for data in (layer, config, manifest):
        members[f"blobs/sha256/{blob(data)['digest'].split(':')[1]}"] = data
    with tarfile.open(path, "w") as tar:
        for member, data in members.items():
            info = tarfile.TarInfo(member)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


# --- containerd's CRI plugin --------------------------------------------------------------


class CriDaemon(Containerd):
    """containerd with its CRI plugin on (and a CNI network), in a temp dir of its own."""

    def __init__(self, tmp: Path):
        super().__init__(tmp)
        self.namespace = K8S  # where the CRI plugin keeps its containers and images
        self.made_cache = False

    def config(self) -> str:
        return CONFIG.format(tmp=self.tmp, pause=PAUSE, cni_bin=CNI_BIN)

    def start(self) -> None:
        self.made_cache = not CNI_CACHE.exists()
        (self.tmp / "cni").mkdir()
        (self.tmp / "cni" / "10-crio-test.conflist").write_text(CNI_CONF.format(tmp=self.tmp))
        super().start()

    def import_image(self, name: str, layer: bytes, argv: list[str]) -> None:
        archive = self.tmp / "image.tar"
        oci_archive(archive, name, layer, argv)
        self.ctr("images", "import", str(archive))
        archive.unlink()

    def stop(self) -> None:
        if self.process is not None:
            with contextlib.suppress(cedana.CedanaError), CriClient(self.address) as cri:
                for pod in cri.call("ListPodSandbox", {}).items:
                    cri.call("StopPodSandbox", {"pod_sandbox_id": pod.id})
                    cri.call("RemovePodSandbox", {"pod_sandbox_id": pod.id})
        super().stop()
        if self.made_cache:
            with contextlib.suppress(OSError):  # left if anything else uses it meanwhile
                (CNI_CACHE / "results").rmdir()
                CNI_CACHE.rmdir()


@pytest.fixture(scope="module")
def cri_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CriDaemon]:
    daemon = CriDaemon(tmp_path_factory.mktemp("cri"))
    try:
        daemon.start()
        daemon.import_image(PAUSE, _layer({"pause": (PAUSE_SCRIPT, 0o755)}), ["/pause"])
        daemon.import_image(BUSYBOX, _layer({}), ["/bin/sh"])
        yield daemon
    finally:
        daemon.stop()


class Pod:
    """A pod sandbox and one container in it, made through the CRI."""

    def __init__(self, cri: CriClient, name: str, tmp: Path):
        self.cri = cri
        metadata = {"name": name, "namespace": "crio-test", "uid": name, "attempt": 0}
        self.sandbox_config: dict[str, Any] = {
            "metadata": metadata,
            "hostname": "crio-test",
            "log_directory": str(tmp),
            "labels": {"crio-test": name},
            "linux": {},
        }
        self.pod_id = cri.call("RunPodSandbox", {"config": self.sandbox_config}).pod_sandbox_id
        self.container_id = cri.call(
            "CreateContainer",
            {
                "pod_sandbox_id": self.pod_id,
                "config": {
                    "metadata": {"name": "loop", "attempt": 0},
                    "image": {"image": BUSYBOX},
                    "command": ["/bin/sh", "-c", LOOP],
                    "log_path": "loop.log",
                    "labels": {"crio-test-container": name},
                    "linux": {},
                },
                "sandbox_config": self.sandbox_config,
            },
        ).container_id
        cri.call("StartContainer", {"container_id": self.container_id})

    def remove(self) -> None:
        with contextlib.suppress(cedana.CedanaError):
            self.cri.call("StopPodSandbox", {"pod_sandbox_id": self.pod_id})
            self.cri.call("RemovePodSandbox", {"pod_sandbox_id": self.pod_id})


@pytest.fixture
def pod(cri_daemon: CriDaemon, tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[Pod]:
    with CriClient(cri_daemon.address) as cri:
        made = Pod(cri, name_for(request), tmp_path)
        try:
            yield made
        finally:
            made.remove()


def _cmdline(pid: int) -> list[str]:
    return Path(f"/proc/{pid}/cmdline").read_bytes().decode().split("\0")[:-1]


@requires_cni
@requires_runtime("containerd")
@requires_runtime("ctr")
def test_version_names_the_runtime_and_cri_v1(cri_daemon: CriDaemon) -> None:
    """``Version`` reaches a real CRI server and reads its answer: the runtime's name and
    version, and CRI API v1 (the descriptor's field numbers match the server's)."""
    with CriClient(cri_daemon.address) as cri:
        version = cri.version()
    assert version.runtime_name == "containerd"
    assert version.runtime_api_version == "v1"
    assert version.runtime_version


@requires_cni
@requires_runtime("containerd")
@requires_runtime("ctr")
def test_list_and_verbose_status_of_a_container_made_through_cri(
    cri_daemon: CriDaemon, pod: Pod
) -> None:
    """A container made through the CRI (RunPodSandbox, CreateContainer, StartContainer) is
    in ``ListContainers`` (whole, and filtered by id prefix and by pod) with its name,
    image, state and labels; ``ContainerStatus`` (by a prefix of its id, verbose) says it
    runs, and its verbose info's pid is the live process running the command given, its
    sandbox the pod, its spec that command: what CrioContainer reads from CRI-O's."""
    with CriClient(cri_daemon.address) as cri:
        listed = {c.id: c for c in cri.containers()}
        assert pod.container_id in listed
        c = listed[pod.container_id]
        assert (c.name, c.pod_sandbox_id, c.state) == ("loop", pod.pod_id, "running")
        assert c.image == BUSYBOX or c.image.startswith("sha256:")
        assert c.labels["crio-test-container"] == pod.sandbox_config["metadata"]["name"]
        assert [x.id for x in cri.containers(id=pod.container_id[:12])] == [pod.container_id]
        assert [x.id for x in cri.containers(pod_sandbox_id=pod.pod_id)] == [pod.container_id]

        status = cri.container_status(pod.container_id[:12])
        assert (status.id, status.name, status.state) == (pod.container_id, "loop", "running")
        assert status.sandbox_id == pod.pod_id
        assert status.pid > 0
        # runc start returns once the init is told to exec: the command line follows.
        wait_for(lambda: _cmdline(status.pid) == ["/bin/sh", "-c", LOOP], 10, "the exec")
        assert status.runtime_spec["process"]["args"] == ["/bin/sh", "-c", LOOP]

        terse = cri.container_status(pod.container_id, verbose=False)
        assert terse.state == "running" and terse.info == {} and terse.pid == 0


@requires_cni
@requires_runtime("containerd")
@requires_runtime("ctr")
def test_unknown_container_and_a_container_missing_from_the_store(
    cri_daemon: CriDaemon, pod: Pod, tmp_path: Path
) -> None:
    """An id the CRI server does not know is ContainerNotFound naming the socket; a
    container the CRI knows but containers/storage has no entry for (this one lives in
    containerd's snapshotter) is a clear ContainerError naming ``storage_root=``, from
    the API and from the command line, and it keeps running."""
    with pytest.raises(cedana.ContainerNotFound, match=r"no container 'nope'.*--address"):
        cedana.CrioContainer("nope", address=cri_daemon.address).status()
    store = tmp_path / "storage"
    (store / "overlay-containers").mkdir(parents=True)
    container = cedana.CrioContainer(
        pod.container_id, address=cri_daemon.address, storage_root=store
    )
    with CriClient(cri_daemon.address) as cri:
        pid = cri.container_status(pod.container_id).pid
    assert container.running and container.pid == pid
    with (
        container,
        pytest.raises(
            cedana.ContainerError, match=r"no entry in containers/storage.*storage_root="
        ),
    ):
        container.checkpoint(tmp_path / "c.tar.zst")
    done = run_cedana(
        "checkpoint", f"crio:{pod.container_id}", "--address", cri_daemon.address,
        "-o", str(tmp_path / "d.tar.zst"),
    )  # fmt: skip
    assert done.returncode != 0
    assert "containers/storage" in done.stderr and "CONTAINERS_STORAGE_CONF" in done.stderr
    assert not (tmp_path / "c.tar.zst").exists() and not (tmp_path / "d.tar.zst").exists()
    with CriClient(cri_daemon.address) as cri:
        assert cri.container_status(pod.container_id).state == "running"


def test_missing_socket_names_address(tmp_path: Path) -> None:
    """Without CRI-O's socket the command line fails with one line naming --address."""
    done = run_cedana(
        "checkpoint", "crio:abc", "--address", str(tmp_path / "crio.sock"),
        "-o", str(tmp_path / "c.tar.zst"),
    )  # fmt: skip
    assert done.returncode != 0
    assert f"CRI-O is not listening at {tmp_path / 'crio.sock'}" in done.stderr
    assert "--address" in done.stderr


# --- the containers/storage side: podman's containers with CRI-O's config ----------------


def crio_spec(spec: dict[str, Any], cid: str, *, sandbox: str, image: str) -> dict[str, Any]:
    """``spec`` with the annotations CRI-O writes on a container's config.json
    (internal/factory/container/container.go in CRI-O's source)."""
    a = "io.kubernetes.cri-o."
    labels = {
        "io.kubernetes.container.name": "loop",
        "io.kubernetes.pod.name": "web-0",
        "io.kubernetes.pod.namespace": "default",
        "io.kubernetes.pod.uid": "4c9d2ad1-0d2f-4b8a-9a57-2f2f0e4d9c11",
    }
    spec = dict(spec)
    spec["annotations"] = {
        **(spec.get("annotations") or {}),
        a + "ContainerID": cid,
        a + "ContainerType": "container",
        a + "Name": "k8s_loop_web-0_default_4c9d2ad1-0d2f-4b8a-9a57-2f2f0e4d9c11_0",
        a + "SandboxID": sandbox,
        a + "SandboxName": "k8s_web-0_default_4c9d2ad1-0d2f-4b8a-9a57-2f2f0e4d9c11_0",
        a + "Image": image,
        a + "ImageName": image,
        a + "ImageRef": "0" * 64,
        a + "Metadata": json.dumps({"name": "loop", "attempt": 0}),
        a + "Labels": json.dumps(labels),
        a + "Annotations": json.dumps({"io.kubernetes.container.hash": "1f2e3d4c"}),
        a + "TTY": "false",
        a + "Stdin": "false",
        a + "StdinOnce": "false",
        "io.container.manager": "cri-o",
        **labels,
    }
    return spec


class RecordedCri:
    """CRI-O's answers for one container, handed in at CrioContainer's client seam: its
    ``ContainerStatus`` with verbose info as CRI-O builds it (``info`` = JSON of sandboxID,
    pid, runtimeSpec, privileged), from podman's record of the container it describes."""

    address = "/var/run/crio/crio.sock"

    def __init__(self, podman: Podman, name: str, spec: dict[str, Any], sandbox: str):
        self.podman, self.name, self.spec, self.sandbox = podman, name, spec, sandbox

    def container_status(self, container_id: str, *, verbose: bool = True) -> CriContainerStatus:
        record = json.loads(self.podman("container", "inspect", "--format", "json", self.name))[0]
        if not record["Id"].startswith(container_id):
            raise cedana.ContainerNotFound(container_id)
        running = record["State"]["Status"] == "running"
        info = {"sandboxID": self.sandbox, "pid": record["State"]["Pid"] if running else 0,
                "runtimeSpec": self.spec, "privileged": False}  # fmt: skip
        return CriContainerStatus(
            id=record["Id"],
            name="loop",
            state="running" if running else "exited",
            image=self.spec["annotations"]["io.kubernetes.cri-o.Image"],
            image_ref=self.spec["annotations"]["io.kubernetes.cri-o.ImageRef"],
            info={"info": info} if verbose else {},
        )

    def close(self) -> None:
        pass


@pytest.fixture(scope="module")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Podman]:
    """podman with a containers/storage store of this module's own (graphroot, runroot and
    containers.conf in a temp dir, as tests/integration/test_podman.py keeps them)."""
    root = tmp_path_factory.mktemp("podman")
    (root / "containers.conf").write_text(CONTAINERS_CONF)
    (root / "storage.conf").write_text(STORAGE_CONF.format(root=root))
    env = pytest.MonkeyPatch()
    env.setenv("CONTAINERS_CONF", os.fspath(root / "containers.conf"))
    env.setenv("CONTAINERS_STORAGE_CONF", os.fspath(root / "storage.conf"))
    p = Podman(root)
    try:
        p.import_image(IMAGE)
        yield p
    finally:
        p("rm", "--all", "--force", "--time", "0", check=False)
        p("rmi", "--all", "--force", check=False)
        env.undo()
        for mount in sorted(
            (m.mountpoint for m in mountinfo() if m.mountpoint.startswith(str(root))),
            key=lambda m: -len(str(m)),
        ):
            with contextlib.suppress(OSError, cedana.CedanaError):
                umount(Path(mount), detach=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def crio_like(
    podman: Podman, request: pytest.FixtureRequest
) -> Iterator[tuple[str, cedana.CrioContainer, dict[str, Any]]]:
    """A podman container run by runc with a CRI-O-style config.json in its userdata, and
    the CrioContainer that finds it in podman's store; removed at teardown."""
    name = name_for(request)
    podman.start(name, COUNTER)
    record = json.loads(podman("container", "inspect", "--format", "json", name))[0]
    cid = record["Id"]
    config_path = podman.graph / "overlay-containers" / cid / "userdata" / "config.json"
    sandbox = "f" * 64
    spec = crio_spec(
        json.loads(config_path.read_text()), cid, sandbox=sandbox, image=record["ImageName"]
    )
    config_path.write_text(json.dumps(spec))
    cri = RecordedCri(podman, name, spec, sandbox)
    container = cedana.CrioContainer(cid[:12], storage_root=podman.graph, client=cri)
    try:
        yield cid, container, record
    finally:
        podman.remove(name)


@requires_runtime("podman")
def test_store_lookup_of_a_podman_made_container(
    crio_like: tuple[str, cedana.CrioContainer, dict[str, Any]], podman: Podman
) -> None:
    """In a real containers/storage store, the container's record leads to its layer:
    ``diff`` is the upper dir podman mounted (GraphDriver's UpperDir), the ``lower`` links
    resolve to the image's layer dirs (LowerDir), userdata holds the config.json; a
    prefix of the id and a name find it too; CRI-O's annotations read back from it."""
    cid, container, record = crio_like
    entry = find_container(podman.graph, cid)
    assert entry is not None
    data = record["GraphDriver"]["Data"]
    assert str(entry.upper) == data["UpperDir"]
    assert list(entry.lower) == [os.path.realpath(p) for p in data["LowerDir"].split(":")]
    assert str(entry.work) == data["WorkDir"]
    assert entry.userdata == podman.graph / "overlay-containers" / cid / "userdata"
    assert find_container(podman.graph, cid[:10]) == entry
    assert find_container(podman.graph, record["Name"]) == entry
    assert find_container(podman.graph, "0" * 64) is None
    config = container.config()
    assert (config.container_id, config.sandbox_id) == (cid, "f" * 64)
    assert config.labels["io.kubernetes.pod.name"] == "web-0"
    assert config.args == ("/bin/sh", "-c", COUNTER)
    assert container.pid == record["State"]["Pid"]


@requires_runtime("podman")
def test_checkpoint_through_runc_and_restore_into_runc(
    crio_like: tuple[str, cedana.CrioContainer, dict[str, Any]],
    podman: Podman,
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    """A process checkpoint of the container found through the store goes through runc
    (its state under /run/runc) and CRIU with its layer's changes (files written,
    changed, deleted, a directory replaced, a hard link), records CRI-O's facts, and
    restores into runc beside the original, the counter going on from where it was."""
    cid, container, record = crio_like
    podman("exec", record["Name"], "sh", "-c", CHANGES)
    wait_count(container.runc, 3)
    ckpt = container.checkpoint(tmp_path / "c.tar.zst", leave_running=True)
    manifest = ckpt.manifest
    assert (manifest.kind, manifest.runtime) == ("container", "crio")
    crio = manifest.workload["crio"]
    assert crio["id"] == cid and crio["sandbox_id"] == "f" * 64
    assert crio["labels"]["io.kubernetes.pod.name"] == "web-0"
    assert manifest.workload["rootfs"]["store"] == "containers-storage"
    assert container.running
    with pytest.raises(cedana.ContainerError, match=r"restores into runc, not into 'crio'"):
        cedana.restore(ckpt.path, into="crio")
    shown = json.loads(run_cedana("inspect", str(ckpt.path), "--json").stdout)
    assert shown["container"]["restores_into"] == ["runc"]
    new = name_for(request, "-runc")
    grants = cedana.Grants(
        binds=[podman.graph / "overlay-containers", podman.run_dir / "overlay-containers"],
        unmasked=["/proc/asound"],
    )
    try:
        restored = cedana.restore(ckpt.path, name=new, grants=grants)
        assert isinstance(restored, cedana.RuncContainer)
        out = restored.exec(["cat", "/etc/new.txt", "/www/other.html", "/data/d/f"])
        assert out == b"new\nother\ndeep\n"
        assert restored.exec(["ls", "/www"]).split() == [b"other.html"]
        inodes = restored.exec(["stat", "-c", "%i", "/data/d/f", "/data/d/hard"]).split()
        assert inodes[0] == inodes[1]
        assert_counts_on(restored, count(restored)[:3])
    finally:
        remove_runc_container(new, Path("/run/runc"))


@requires_runtime("podman")
def test_system_container_gets_a_rootfs_only_checkpoint_and_bad_input(
    crio_like: tuple[str, cedana.CrioContainer, dict[str, Any]],
    podman: Podman,
    tmp_path: Path,
) -> None:
    """A container whose config shows a systemd init gets a rootfs-only checkpoint by
    default (no CRIU: the manifest's kind is rootfs, the reason is recorded, the changes
    are in the diff, the container runs on), and CRIU's options are refused for it
    naming why; a container whose store entry is gone is a clear error naming
    ``storage_root=``; one that is not under the runc root given (as a crun-run one would
    not be) names crun and ``--root``; nothing is written for those."""
    cid, container, record = crio_like
    podman("exec", record["Name"], "sh", "-c", "echo system > /etc/new.txt")
    config_path = podman.graph / "overlay-containers" / cid / "userdata" / "config.json"
    spec = json.loads(config_path.read_text())
    spec["process"]["args"] = ["/sbin/init"]
    config_path.write_text(json.dumps(spec))
    with pytest.raises(
        cedana.InvalidOption,
        match=r"system container \(its init is /sbin/init \(systemd\)\), so its checkpoint is rootfs-only by default",
    ):
        container.checkpoint(tmp_path / "t.tar.zst", tcp_established=True)
    ckpt = container.checkpoint(tmp_path / "r.tar.zst")
    assert (ckpt.manifest.kind, ckpt.manifest.runtime) == ("rootfs", "crio")
    assert ckpt.manifest.workload["crio"]["system_container"] == "its init is /sbin/init (systemd)"
    with tarfile.open(fileobj=io.BytesIO(ckpt.read_member("container/rootfs-diff.tar"))) as tar:
        names = {m.name.lstrip("./") for m in tar}
    assert "etc/new.txt" in names
    assert container.running
    assert podman("exec", record["Name"], "cat", "/etc/new.txt") == "system\n"
    with pytest.raises(
        cedana.ContainerError,
        match=r"crio container, which cedana does not start afresh .*cedana commit",
    ):
        cedana.restore(ckpt.path, name="never")
    assert not (tmp_path / "t.tar.zst").exists()
    elsewhere = tmp_path / "other-store"
    (elsewhere / "overlay-containers").mkdir(parents=True)
    (elsewhere / "overlay-containers" / "containers.json").write_text("[]")
    moved = cedana.CrioContainer(cid, storage_root=elsewhere, client=container._client)
    with pytest.raises(cedana.ContainerError, match=rf"{cid} has no entry .* storage_root="):
        moved.checkpoint(tmp_path / "c.tar.zst")
    elsewhere_runc = cedana.CrioContainer(
        cid, storage_root=podman.graph, runc_root=tmp_path / "runc", client=container._client
    )
    with pytest.raises(cedana.ContainerError, match=r"not in runc's state under .*crun.*--root"):
        elsewhere_runc.checkpoint(tmp_path / "c.tar.zst")
    assert not (tmp_path / "c.tar.zst").exists()
    assert container.running
    assert CrioConfig.from_spec(json.loads(config_path.read_text())).container_id == cid
