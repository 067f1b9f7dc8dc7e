"""Rootfs-only checkpoints without a runtime: the options, owners shifted out of a user
namespace, the freezer (on a fake cgroup directory), the checkpoint template's rootfs form
run for a fake runtime, podman's create flags, and restore's dispatch of kind ``rootfs``."""

from __future__ import annotations

import io
import json
import os
import shutil
import tarfile
from pathlib import Path
from typing import Any

import attrs
import pytest

import cedana
from cedana.artifact import HostInfo, Manifest, write_artifact
from cedana.artifact.signing import host_key
from cedana.container.freezer import frozen
from cedana.container.rootfs_only import checkpoint_rootfs
from cedana.container.runc import DumpExtras, container_lines, container_summary
from cedana.container.state import RuncState
from cedana.errors import ContainerError, InvalidOption, NotCheckpointable, UnsafeArtifact
from cedana.rootfs import RootfsDiff
from cedana.rootfs.idmap import OVERFLOW_ID, IdShift
from cedana.rootfs.overlay import DIFF_NAME, capture_upper
from cedana.runtimes._podman_fresh import create_flags

MAPPED = IdShift(uids=[(0, 100000, 65536)], gids=[{"containerID": 0, "hostID": 200000, "size": 10}])


# --- options ------------------------------------------------------------------------------


def test_options_refuse_what_steers_criu_with_rootfs_only() -> None:
    """rootfs_only takes none of CRIU's options, and shift_owners needs rootfs_only; the
    manifest records both only for a rootfs-only checkpoint."""
    for bad in ({"tcp_established": True}, {"file_locks": True}, {"criu": {"x": 1}}):
        with pytest.raises(InvalidOption, match="steer CRIU"):
            cedana.CheckpointOptions(rootfs_only=True, **bad)
    with pytest.raises(InvalidOption, match="rootfs_only"):
        cedana.CheckpointOptions(shift_owners=True)
    opts = cedana.CheckpointOptions(rootfs_only=True, shift_owners=True)
    assert opts.to_manifest()["rootfs_only"] is True
    assert "rootfs_only" not in cedana.CheckpointOptions().to_manifest()


# --- owners -------------------------------------------------------------------------------


def test_id_shift_both_ways() -> None:
    """Host ids map into the container and back; an id outside the mapping is the overflow
    id inside, and the overflow id's host owner outside."""
    assert MAPPED.inside(100000, 200003) == (0, 3)
    assert MAPPED.inside(100000 + 65535, 200009) == (65535, 9)
    assert MAPPED.inside(5, 200010) == (OVERFLOW_ID, OVERFLOW_ID)
    assert MAPPED.outside(0, 3) == (100000, 200003)
    assert MAPPED.outside(70000, 11) == (100000 + OVERFLOW_ID, OVERFLOW_ID)
    spelled = MAPPED.to_json()
    assert IdShift(uids=spelled["uidMappings"], gids=spelled["gidMappings"]) == MAPPED


def test_id_shift_of_a_config() -> None:
    """An OCI config without mappings has no shift; malformed mappings are refused."""
    assert IdShift.of_config({"linux": {}}, what="c") is None
    config = {"linux": MAPPED.to_json()}
    assert IdShift.of_config(config, what="c") == MAPPED
    with pytest.raises(InvalidOption, match="malformed"):
        IdShift.of_config({"linux": {"uidMappings": [{"containerID": -1}]}}, what="c")


def test_capture_shifts_owners_into_the_container(tmp_path: Path) -> None:
    """With a shift, the tar records owners as the container sees them (this user's files
    as the container's root here); without one, as the host stores them."""
    upper = tmp_path / "upper"
    (upper / "d").mkdir(parents=True)
    (upper / "d" / "f").write_text("x")
    uid, gid = os.getuid(), os.getgid()
    shift = IdShift(uids=[(0, uid, 1)], gids=[(0, gid, 1)])

    def owners(**kw: Any) -> dict[str, tuple[int, int]]:
        out = io.BytesIO()
        capture_upper(upper, out, **kw)
        out.seek(0)
        with tarfile.open(fileobj=out) as tar:
            return {m.name: (m.uid, m.gid) for m in tar}

    assert owners(shift=shift) == {".": (0, 0), "d": (0, 0), "d/f": (0, 0)}
    assert owners()["d/f"] == (uid, gid)
    other = IdShift(uids=[(0, uid + 1, 1)], gids=[(0, gid + 1, 1)])
    assert owners(shift=other)["d/f"] == (OVERFLOW_ID, OVERFLOW_ID)


# --- the freezer --------------------------------------------------------------------------


def _v1(tmp_path: Path, state: str = "THAWED") -> dict[str, str]:
    freezer = tmp_path / "freezer"
    freezer.mkdir(exist_ok=True)
    (freezer / "freezer.state").write_text(state)
    return {"freezer": str(freezer)}


def test_frozen_thaws_on_every_way_out(tmp_path: Path) -> None:
    """The v1 freezer says FROZEN inside the block and THAWED after it, an error included."""
    paths = _v1(tmp_path)
    state = Path(paths["freezer"], "freezer.state")
    with frozen(paths, what="c", unified=False) as froze:
        assert froze and state.read_text() == "FROZEN"
    assert state.read_text() == "THAWED"
    with pytest.raises(RuntimeError), frozen(paths, what="c", unified=False):
        raise RuntimeError("capture failed")
    assert state.read_text() == "THAWED"


def test_frozen_leaves_a_paused_container_paused(tmp_path: Path) -> None:
    """A container frozen already (runc pause) is read as it is and stays frozen."""
    paths = _v1(tmp_path, "FROZEN")
    with frozen(paths, what="c", unified=False) as froze:
        assert not froze
    assert Path(paths["freezer"], "freezer.state").read_text() == "FROZEN"


def test_frozen_v2_that_never_freezes_is_thawed_again(tmp_path: Path) -> None:
    """On cgroup v2, a cgroup whose events never say ``frozen 1`` times out: an error, and
    ``cgroup.freeze`` is 0 again."""
    (tmp_path / "cgroup.events").write_text("populated 1\nfrozen 0\n")
    (tmp_path / "cgroup.freeze").write_text("0")
    with (
        pytest.raises(ContainerError, match="did not freeze"),
        frozen({"": str(tmp_path)}, what="c", unified=True, timeout=0.05),
    ):
        pytest.fail("the block ran without the container frozen")
    assert (tmp_path / "cgroup.freeze").read_text() == "0"


def test_a_cgroup_gone_meanwhile_says_the_container_exited(tmp_path: Path) -> None:
    """A container that exited between its live check and the freeze (its cgroup gone)
    is ContainerNotRunning, not a bare OSError."""
    paths = _v1(tmp_path)
    Path(paths["freezer"], "freezer.state").unlink()
    with pytest.raises(cedana.ContainerNotRunning), frozen(paths, what="c", unified=False):
        pytest.fail("the block ran")


def test_no_freezer_is_refused(tmp_path: Path) -> None:
    """A container without a freezer cgroup cannot be captured consistently: refused."""
    with pytest.raises(NotCheckpointable, match="freeze"), frozen({}, what="c", unified=False):
        pass


# --- the template, for a fake runtime -----------------------------------------------------


@attrs.define
class FakeSnapshotter:
    """Writes a one-file diff, and says whether the cgroup was frozen while it did."""

    freezer: Path
    fail: bool = False
    seen: list[str] = attrs.field(factory=list)
    name: str = "overlay"
    format: str = "overlay"

    def layers_json(self) -> dict[str, Any]:
        return {"lower": ["/l"], "lower_identity": [None], "userxattr": False}

    def capture(self, rootfs: Path, dest: Path, *, shift: IdShift | None = None) -> RootfsDiff:
        self.seen.append(self.freezer.read_text())
        if self.fail:
            raise OSError(28, "No space left on device")
        with tarfile.open(dest / DIFF_NAME, "w") as tar:
            info = tarfile.TarInfo("f")
            tar.addfile(info, io.BytesIO(b""))
        return RootfsDiff(snapshotter=self.name, members=(DIFF_NAME,), files=1)

    def prepare(self) -> object:
        raise NotImplementedError

    def apply(self, diff: Path) -> RootfsDiff:
        raise NotImplementedError

    def remove(self) -> None:
        raise NotImplementedError


@attrs.define
class FakeRuntime:
    """A runtime layer whose container is a bundle and a fake freezer under ``tmp``."""

    tmp: Path
    snapshotter: FakeSnapshotter
    runtime_name: str = "runc"
    config: dict[str, Any] = attrs.field(factory=lambda: {"process": {"args": ["sh"]}})

    def live_state(self) -> RuncState:
        bundle = self.tmp / "bundle"
        bundle.mkdir(exist_ok=True)
        (bundle / "config.json").write_text(json.dumps(self.config))
        return RuncState(
            id="c1",
            root=self.tmp / "root",
            pid=1,
            status="running",
            bundle=bundle,
            rootfs=bundle / "rootfs",
            created="",
            cgroup_paths=_v1(self.tmp),
            namespace_paths={},
            external_descriptors=(),
        )

    def dump_extras(self, state: RuncState) -> DumpExtras:
        return DumpExtras(snapshotter=self.snapshotter, workload={"runc_facts": {"x": 1}})

    def after_dump(self) -> None:
        raise AssertionError("a rootfs-only checkpoint kills nothing")


def _runtime(tmp_path: Path, *, fail: bool = False) -> FakeRuntime:
    freezer = tmp_path / "freezer" / "freezer.state"
    return FakeRuntime(tmp_path, FakeSnapshotter(freezer, fail=fail))


def test_template_captures_frozen_and_writes_kind_rootfs(tmp_path: Path) -> None:
    """The diff is written while the cgroup is FROZEN, and it is THAWED after; the
    manifest says kind rootfs with no processes, the container config and the diff
    members are there, and the runtime's facts are kept."""
    runtime = _runtime(tmp_path)
    opts = cedana.CheckpointOptions(rootfs_only=True)
    ckpt = checkpoint_rootfs("c1", runtime, tmp_path / "c.tar.zst", opts)
    assert runtime.snapshotter.seen == ["FROZEN"]
    assert (tmp_path / "freezer" / "freezer.state").read_text() == "THAWED"
    m = ckpt.manifest
    assert (m.kind, m.runtime, m.tree) == ("rootfs", "runc", ())
    assert {x.name for x in m.members} == {"container/config.json", "container/rootfs-diff.tar"}
    assert m.workload["runc_facts"]["x"] == 1
    assert m.workload["rootfs"]["owners"] == "host"
    assert m.workload["rootfs"]["diff"]["files"] == 1
    lines = dict(container_lines(container_summary(m) or {}))
    assert "rootfs only" in lines["kind"]


def test_template_failure_thaws_and_writes_nothing(tmp_path: Path) -> None:
    """A capture that fails leaves the cgroup thawed and no artifact."""
    runtime = _runtime(tmp_path, fail=True)
    opts = cedana.CheckpointOptions(rootfs_only=True)
    with pytest.raises(OSError, match="(?i)no space"):
        checkpoint_rootfs("c1", runtime, tmp_path / "c.tar.zst", opts)
    assert (tmp_path / "freezer" / "freezer.state").read_text() == "THAWED"
    assert not (tmp_path / "c.tar.zst").exists()


def test_template_refuses_shift_owners_without_a_user_namespace(tmp_path: Path) -> None:
    """shift_owners on a container without uid/gid mappings is refused before freezing."""
    runtime = _runtime(tmp_path)
    opts = cedana.CheckpointOptions(rootfs_only=True, shift_owners=True)
    with pytest.raises(InvalidOption, match="no user namespace"):
        checkpoint_rootfs("c1", runtime, tmp_path / "c.tar.zst", opts)
    assert runtime.snapshotter.seen == []
    runtime.config["linux"] = MAPPED.to_json()
    ckpt = checkpoint_rootfs("c1", runtime, tmp_path / "c.tar.zst", opts)
    assert ckpt.manifest.workload["rootfs"]["owners"] == "container"
    assert ckpt.manifest.workload["rootfs"]["mappings"]["uidMappings"][0]["hostID"] == 100000


# --- podman's create flags ----------------------------------------------------------------


def test_podman_create_flags_take_the_process_only() -> None:
    """The spec's command, environment (not podman's own variables), cwd and user become
    flags; a network mode of another namespace, or fields of the wrong type, are refused."""
    spec = {
        "process": {
            "args": ["/bin/sh", "-c", "x"],
            "env": ["PATH=/bin", "HOSTNAME=old", "container=podman", "A=b"],
            "cwd": "/work",
            "user": {"uid": 7, "gid": 8},
        }
    }
    flags = create_flags(spec, {"network_mode": "none"})
    assert flags == [
        "--entrypoint", '["/bin/sh", "-c", "x"]', "--env", "PATH=/bin", "--env", "A=b",
        "--workdir", "/work", "--user", "7:8", "--network", "none",
    ]  # fmt: skip
    for mode in ("host", "container:web", "ns:/proc/1/ns/net"):
        with pytest.raises(UnsafeArtifact, match="network_mode"):
            create_flags(spec, {"network_mode": mode})
    with pytest.raises(UnsafeArtifact, match="args"):
        create_flags({"process": {"args": "sh"}}, {})
    with pytest.raises(UnsafeArtifact, match="cwd"):
        create_flags({"process": {"args": ["sh"], "cwd": "rel"}}, {})


# --- restore's dispatch -------------------------------------------------------------------


def _rootfs_artifact(tmp_path: Path, runtime: str) -> Path:
    images = tmp_path / f"{runtime}-members"
    (images / "container").mkdir(parents=True)
    (images / "container" / "config.json").write_text("{}")
    manifest = Manifest(
        host=HostInfo.current(criu_version="none"),
        kind="rootfs",
        runtime=runtime,
        options={},
        tree=(),
        workload={"container": {"id": "c1"}, "rootfs": {"captured": True, "format": "overlay"}},
    )
    dest = tmp_path / f"{runtime}.tar.zst"
    write_artifact(images, dest, manifest, signer=host_key())
    return dest


def test_restore_of_a_rootfs_checkpoint_stays_in_its_runtime(tmp_path: Path) -> None:
    """A rootfs checkpoint restores only as a new container of its own runtime, with that
    runtime's fresh-start keywords; another ``into``, a keyword it does not take, or a
    runtime this cedana does not know is a clear error before anything runs."""
    artifact = _rootfs_artifact(tmp_path, "runc")
    inspection = cedana.open(artifact).inspect()  # no CRIU images: nothing of processes
    assert inspection.processes == () and inspection.memory_bytes == 0
    with pytest.raises(ContainerError, match="not into 'containerd'"):
        cedana.restore(artifact, into="containerd")
    with pytest.raises(ContainerError, match="namespace="):
        cedana.restore(artifact, namespace="x")
    with pytest.raises(ContainerError, match="a runtime this cedana does not know"):
        cedana.restore(_rootfs_artifact(tmp_path, "zone"))
    with pytest.raises(UnsafeArtifact, match="not one of its members"):  # no diff member
        cedana.RuncContainer.restore_fresh(artifact, name="n", bundle=tmp_path / "b")
    assert not (tmp_path / "b").exists()


def test_the_criu_restores_refuse_a_rootfs_checkpoint(tmp_path: Path) -> None:
    """Handed to a restore that runs CRIU (a process's, runc's, a runtime's), a rootfs-only
    checkpoint is refused, saying what starts it instead; nothing runs."""
    artifact = _rootfs_artifact(tmp_path, "runc")
    with pytest.raises(cedana.RestoreFailed, match="rootfs-only checkpoint"):
        cedana.Process.restore(artifact)
    for cls in (cedana.RuncContainer, cedana.PodmanContainer, cedana.DockerContainer):
        with pytest.raises(ContainerError, match="restore_fresh"):
            cls.restore(artifact)
    with pytest.raises(ContainerError, match="restore_fresh"):
        cedana.ContainerdContainer.restore(artifact, client=None)


def test_check_upper_refuses_before_anything_is_written(tmp_path: Path) -> None:
    """check_upper refuses the entries apply_upper would (an escaping symlink, a device
    node), and a file that is no tar, by reading headers only."""
    from cedana.errors import ArtifactCorrupt
    from cedana.rootfs.overlay import check_upper

    for name, info in (
        ("link", tarfile.TarInfo("etc/x")),
        ("dev", tarfile.TarInfo("dev/sda")),
    ):
        if name == "link":
            info.type, info.linkname = tarfile.SYMTYPE, "../../../../etc/passwd"
        else:
            info.type, info.devmajor = tarfile.BLKTYPE, 8
        diff = tmp_path / f"{name}.tar"
        with tarfile.open(diff, "w") as tar:
            tar.addfile(info)
        with pytest.raises(UnsafeArtifact):
            check_upper(diff)
    (tmp_path / "junk.tar").write_bytes(b"junk" * 200)
    with pytest.raises(ArtifactCorrupt):
        check_upper(tmp_path / "junk.tar")


# --- the runc fresh plan ------------------------------------------------------------------


def _fresh_artifact(
    tmp_path: Path, config: dict[str, Any], *, owners: str = "host", **container: Any
) -> Path:
    """A rootfs-only runc artifact on a lower layer of ``tmp_path`` (its identity recorded),
    with ``config`` as its config.json and an empty diff."""
    from cedana.rootfs.overlay import layer_identity

    lower = (tmp_path / "lower").resolve()
    (lower / "bin").mkdir(parents=True, exist_ok=True)
    members = tmp_path / "fresh-members"
    shutil.rmtree(members, ignore_errors=True)
    (members / "container").mkdir(parents=True)
    (members / "container" / "config.json").write_text(json.dumps(config))
    with tarfile.open(members / "container" / DIFF_NAME, "w"):
        pass
    manifest = Manifest(
        host=HostInfo.current(criu_version="none"),
        kind="rootfs",
        runtime="runc",
        options={},
        tree=(),
        workload={
            "container": {
                "id": "web",
                "root": str(tmp_path / "root"),
                "bundle": str(tmp_path / "old-bundle"),
                "config": "container/config.json",
                **container,
            },
            "rootfs": {
                "captured": True,
                "format": "overlay",
                "snapshotter": "overlay",
                "dir": "container",
                "lower": [str(lower)],
                "lower_identity": [layer_identity(lower)],
                "owners": owners,
            },
        },
    )
    dest = tmp_path / "fresh.tar.zst"
    dest.unlink(missing_ok=True)
    write_artifact(members, dest, manifest, signer=host_key())
    return dest


def test_fresh_plan_checks_everything_and_makes_nothing(tmp_path: Path) -> None:
    """plan_fresh takes the name, the caller's root and bundle, the recorded lower layer
    (its identity matching) and the confined config, with the config's mappings as the
    shift when the diff records owners as the container saw them; it makes nothing. A
    hook, a taken name, a changed layer and a terminal are refused."""
    from cedana.container.fresh import plan_fresh
    from tests.unit.test_confine import config as oci_config

    root = tmp_path / "root"
    root.mkdir()
    mapped = oci_config(linux__uidMappings=MAPPED.to_json()["uidMappings"])
    mapped["linux"]["gidMappings"] = MAPPED.to_json()["gidMappings"]
    mapped["linux"]["namespaces"].append({"type": "user"})
    ckpt = cedana.open(_fresh_artifact(tmp_path, mapped, owners="container"))
    plan = plan_fresh(ckpt, name="web2", bundle=tmp_path / "b", root=root)
    assert (plan.name, plan.root, plan.bundle) == ("web2", root, tmp_path / "b")
    assert plan.layers == (str((tmp_path / "lower").resolve()),)
    assert plan.shift == MAPPED and plan.diff_dir == "container"
    assert plan.config["root"]["path"] == "rootfs"
    assert not (tmp_path / "b").exists()
    assert plan_fresh(ckpt, name="web3", bundle=tmp_path / "b", root=root).name == "web3"

    plain = cedana.open(_fresh_artifact(tmp_path, oci_config()))
    assert plan_fresh(plain, bundle=tmp_path / "b", root=root).shift is None  # owners: host
    (root / "web").mkdir()
    with pytest.raises(cedana.ContainerExists):
        plan_fresh(plain, bundle=tmp_path / "b", root=root)
    hooked = oci_config(hooks={"prestart": [{"path": "/bin/evil"}]})
    with pytest.raises(UnsafeArtifact, match="hooks"):
        plan_fresh(cedana.open(_fresh_artifact(tmp_path, hooked)), name="x", root=root)
    terminal = cedana.open(_fresh_artifact(tmp_path, oci_config(), terminal=True))
    with pytest.raises(ContainerError, match="terminal"):
        plan_fresh(terminal, name="x", root=root)
    ckpt = cedana.open(_fresh_artifact(tmp_path, oci_config()))
    (tmp_path / "lower" / "new-file").write_text("the layer changed")
    with pytest.raises(UnsafeArtifact, match="identity differs"):
        plan_fresh(ckpt, name="x", bundle=tmp_path / "b2", root=root)


def test_a_fresh_start_mapped_onto_host_root_is_refused(tmp_path: Path) -> None:
    """A re-signed rootfs-only checkpoint whose config maps the container's root onto the
    host's (uid 0) and its group onto the host's ``users`` would get setuid-root files in a
    bundle that group may enter: plan_fresh refuses it, and no bundle is made."""
    from cedana.container.fresh import plan_fresh
    from tests.unit.test_confine import config as oci_config

    root = tmp_path / "root"
    root.mkdir()
    crafted = oci_config(
        linux__uidMappings=[{"containerID": 0, "hostID": 0, "size": 1}],
        linux__gidMappings=[{"containerID": 0, "hostID": 100, "size": 1}],
    )
    crafted["linux"]["namespaces"].append({"type": "user"})
    ckpt = cedana.open(_fresh_artifact(tmp_path, crafted, owners="container"))
    with pytest.raises(UnsafeArtifact, match=r"uidMappings\[0\].*host id 0"):
        plan_fresh(ckpt, name="web2", bundle=tmp_path / "b", root=root)
    assert not (tmp_path / "b").exists()
