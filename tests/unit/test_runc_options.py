"""A runc container's config -> CRIU options, runc state parsing, restore bundle configs.

No root, no runc, no CRIU: configs are written here, the live facts are given.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from cedana import procfs
from cedana.artifact.manifest import HostInfo, Manifest
from cedana.container import cgroups, mounts, namespaces
from cedana.container.bundle import bundle_config
from cedana.container.options import ContainerFacts, dump_options
from cedana.container.runc import container_lines, container_summary
from cedana.container.state import check_id, read_state
from cedana.criu import build_options
from cedana.errors import ContainerError, ContainerNotFound
from cedana.process import CheckpointOptions, checkpoint_tree, plan_dump
from tests.fakes import FakeCriu

V1 = (
    "/sys/fs/cgroup/cpu",
    "/sys/fs/cgroup/memory",
    "/sys/fs/cgroup/freezer",
    "/sys/fs/cgroup/systemd",
)
DEVICES = [(d, d) for d in mounts.DEFAULT_DEVICES]


def spec(**linux: Any) -> dict[str, Any]:
    """What ``runc spec`` writes (runc 1.1), trimmed to what the options read."""
    config: dict[str, Any] = {
        "process": {"terminal": False, "args": ["sh"]},
        "root": {"path": "rootfs", "readonly": True},
        "mounts": [
            {"destination": "/proc", "type": "proc", "source": "proc"},
            {"destination": "/dev", "type": "tmpfs", "source": "tmpfs"},
            {"destination": "/dev/pts", "type": "devpts", "source": "devpts"},
            {"destination": "/dev/shm", "type": "tmpfs", "source": "shm"},
            {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue"},
            {"destination": "/sys", "type": "sysfs", "source": "sysfs"},
            {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup"},
        ],
        "linux": {
            "namespaces": [
                {"type": "pid"},
                {"type": "network"},
                {"type": "ipc"},
                {"type": "uts"},
                {"type": "mount"},
            ],
            "maskedPaths": ["/proc/acpi", "/proc/kcore", "/proc/keys", "/sys/firmware"],
            **linux,
        },
    }
    return config


FACTS = ContainerFacts(
    rootfs="/nonexistent/rootfs",
    freezer="/sys/fs/cgroup/freezer/c1",
    cgroup_v1=V1,
    masked_files=("/proc/kcore", "/proc/keys"),
)


def options(config: dict[str, Any], facts: ContainerFacts = FACTS, **kw: Any) -> dict[str, Any]:
    kw.setdefault("inode_of", lambda p: {"/proc/1/ns/net": 4026531840}.get(p, 4026531836))
    return dump_options(config, facts, **kw)


def test_runc_spec_defaults_on_a_hybrid_cgroup_host() -> None:
    """The default spec on cgroup v1/hybrid gives exactly runc's checkpoint options:
    root, managed and frozen cgroups, orphan pty master, cgroup v1 bind mounts,
    masked files and device nodes as external mounts, in runc's order."""
    opts = options(spec())
    assert opts["root"] == "/nonexistent/rootfs"
    assert opts["manage_cgroups"] is True
    assert opts["manage_cgroups_mode"] == "default"
    assert opts["freeze_cgroup"] == "/sys/fs/cgroup/freezer/c1"
    assert opts["orphan_pts_master"] is True
    assert opts["shell_job"] is False
    assert opts["ext_unix_sk"] is False
    assert opts["empty_ns"] == 0x40000000
    assert opts["config_file"] == "/etc/criu/runc.conf"
    assert opts["external"] == []
    cgroup = [(f"/sys/fs/cgroup/{Path(h).name}",) * 2 for h in V1]
    masked = [("/proc/kcore", "/dev/null"), ("/proc/keys", "/dev/null")]
    assert opts["ext_mnt"] == cgroup + masked + DEVICES


def test_cgroup_namespace_or_pure_v2_makes_no_cgroup_bind_mounts() -> None:
    """With a cgroup namespace, or on a pure cgroup v2 host, /sys/fs/cgroup is a real
    mount inside the container: no cgroup keys, as in runc."""
    with_ns = spec()
    with_ns["linux"]["namespaces"].append({"type": "cgroup"})
    assert not any(k.startswith("/sys/fs/cgroup") for k, _ in options(with_ns)["ext_mnt"])
    v2 = ContainerFacts(rootfs="/r", freezer="/sys/fs/cgroup/c1", cgroup_unified=True)
    opts = options(spec(), v2)
    assert not any(k.startswith("/sys/fs/cgroup") for k, _ in opts["ext_mnt"])
    assert opts["freeze_cgroup"] == "/sys/fs/cgroup/c1"


def test_no_freezer_means_no_freeze_cgroup() -> None:
    """Without a freezer cgroup CRIU is left to stop the tree with ptrace."""
    facts = ContainerFacts(rootfs="/r", cgroup_v1=V1)
    assert "freeze_cgroup" not in options(spec(), facts)


def test_bind_mounts_are_external_under_their_destination() -> None:
    """A bind (by type, or by the bind/rbind option) is external with key = destination;
    tmpfs and other mounts CRIU dumps itself are not."""
    config = spec()
    config["mounts"] += [
        {"destination": "/data", "type": "bind", "source": "/srv/data", "options": ["rbind"]},
        {"destination": "/cfg", "type": "none", "source": "cfg", "options": ["bind", "ro"]},
        {"destination": "/work/", "type": "bind", "source": "/w"},
        {"destination": "/scratch", "type": "tmpfs", "source": "tmpfs"},
    ]
    keys = [k for k, _ in options(config)["ext_mnt"]]
    assert keys[len(V1) : len(V1) + 3] == ["/data", "/cfg", "/work"]
    assert "/scratch" not in keys


def test_destinations_resolve_through_rootfs_symlinks(tmp_path: Path) -> None:
    """Like runc's SecureJoin, a destination under a symlink of the rootfs gets the
    resolved key (/var/run -> /run), and an absolute link cannot leave the rootfs."""
    rootfs = tmp_path / "rootfs"
    (rootfs / "var").mkdir(parents=True)
    (rootfs / "run").mkdir()
    (rootfs / "var" / "run").symlink_to("../run")
    (rootfs / "escape").symlink_to("/etc")
    config = spec()
    config["mounts"] += [
        {"destination": "/var/run/sock", "type": "bind", "source": "/x"},
        {"destination": "/escape/y", "type": "bind", "source": "/y"},
    ]
    facts = ContainerFacts(rootfs=str(rootfs), cgroup_v1=())
    keys = [k for k, _ in options(config, facts)["ext_mnt"]]
    assert keys[:2] == ["/run/sock", "/etc/y"]
    assert [k for k, _ in options(config, facts, resolve_in_rootfs=False)["ext_mnt"]][:2] == [
        "/var/run/sock",
        "/escape/y",
    ]


def test_secure_join_clamps_dotdot_and_stops_loops(tmp_path: Path) -> None:
    """'..' never climbs above the root, and a symlink loop is an error, not a hang."""
    assert mounts.secure_join(tmp_path, "/../../a/./b/../c") == "/a/c"
    assert mounts.secure_join(None, "x//y/") == "/x/y"
    (tmp_path / "loop").symlink_to("loop")
    with pytest.raises(OSError) as err:
        mounts.secure_join(tmp_path, "/loop/x")
    assert err.value.errno == errno.ELOOP


def test_config_devices_follow_the_defaults_and_replace_them() -> None:
    """runc's default device nodes come first; a config device with the same path
    takes the default's place (runc dedups), others are appended."""
    config = spec(devices=[{"path": "/dev/fuse"}, {"path": "/dev/null"}])
    keys = [k for k, _ in options(config)["ext_mnt"]]
    defaults = [d for d in mounts.DEFAULT_DEVICES if d != "/dev/null"]
    assert keys[-len(defaults) - 2 :] == [*defaults, "/dev/fuse", "/dev/null"]


def test_namespaces_with_a_path_are_external_with_runc_keys() -> None:
    """A network or pid namespace given by path is external (net[INODE]:extRootNetNS);
    private ones and other kinds are not."""
    config = spec(
        namespaces=[
            {"type": "pid", "path": "/proc/7/ns/pid"},
            {"type": "network", "path": "/proc/1/ns/net"},
            {"type": "ipc", "path": "/proc/1/ns/ipc"},
            {"type": "mount"},
        ]
    )
    assert options(config)["external"] == [
        "pid[4026531836]:extRootPidNS",
        "net[4026531840]:extRootNetNS",
    ]
    assert namespaces.external_key("net") == "extRootNetNS"


def test_real_namespace_inode_is_read() -> None:
    """By default the inode comes from stat() of the namespace path."""
    path = "/proc/self/ns/net"
    entries = namespaces.external_namespaces([{"type": "network", "path": path}])
    assert entries == [f"net[{os.stat(path).st_ino}]:extRootNetNS"]


def test_criu_config_annotation() -> None:
    """org.criu.config names another CRIU config file, or none when empty (runc's rule)."""
    config = spec()
    config["annotations"] = {"org.criu.config": "/etc/criu/mine.conf"}
    assert options(config)["config_file"] == "/etc/criu/mine.conf"
    config["annotations"] = {"org.criu.config": ""}
    assert "config_file" not in options(config)


def test_options_are_valid_criu_rpc_options() -> None:
    """The derived options build a real criu_opts message, ext_mnt pairs included."""
    config = spec(namespaces=[{"type": "network", "path": "/proc/1/ns/net"}])
    opts = build_options({"pid": 42, **options(config)})
    assert [(m.key, m.val) for m in opts.ext_mnt][-len(DEVICES) :] == DEVICES
    assert list(opts.external) == ["net[4026531840]:extRootNetNS"]
    assert opts.freeze_cgroup == "/sys/fs/cgroup/freezer/c1"
    assert opts.orphan_pts_master and opts.manage_cgroups


# --- runc's state.json ----------------------------------------------------------------


def write_state(root: Path, cid: str, **extra: Any) -> Path:
    d = root / cid
    d.mkdir(parents=True)
    state = {
        "id": cid,
        "init_process_pid": os.getpid(),
        "init_process_start": procfs.proc_info(os.getpid()).start_time,
        "created": "2026-11-29T00:00:00Z",
        "config": {"rootfs": "/b/rootfs", "labels": ["bundle=/b"]},
        "cgroup_paths": {"freezer": str(root / "nofreezer")},
        "namespace_paths": {"NEWNET": "/proc/1/ns/net"},
        "external_descriptors": ["/dev/null", "pipe:[12]", "pipe:[13]"],
        **extra,
    }
    (d / "state.json").write_text(json.dumps(state))
    return d


def test_state_json_is_read_and_status_worked_out(tmp_path: Path) -> None:
    """state.json gives pid, bundle, rootfs and stdio; the status is worked out like runc:
    running while the init lives with its start time, created while exec.fifo exists,
    stopped once the pid is gone or reused."""
    d = write_state(tmp_path, "c1")
    s = read_state(tmp_path, "c1")
    assert (s.pid, s.status, s.bundle, s.rootfs) == (
        os.getpid(),
        "running",
        Path("/b"),
        Path("/b/rootfs"),
    )
    assert s.external_descriptors == ("/dev/null", "pipe:[12]", "pipe:[13]")
    (d / "exec.fifo").touch()
    assert read_state(tmp_path, "c1").status == "created"
    write_state(tmp_path, "c2", init_process_start=1)
    assert read_state(tmp_path, "c2").status == "stopped"
    gone = subprocess.Popen(["true"])
    gone.wait()
    write_state(tmp_path, "c3", init_process_pid=gone.pid)
    assert read_state(tmp_path, "c3").status == "stopped"


def test_paused_when_the_freezer_is_frozen(tmp_path: Path) -> None:
    """A frozen freezer cgroup makes a live container paused."""
    freezer = tmp_path / "freezer"
    freezer.mkdir()
    (freezer / "freezer.state").write_text("FROZEN\n")
    write_state(tmp_path / "root", "c1", cgroup_paths={"freezer": str(freezer)})
    assert read_state(tmp_path / "root", "c1").status == "paused"


def test_missing_container_and_bad_ids(tmp_path: Path) -> None:
    """No state.json is ContainerNotFound (a LookupError); ids runc refuses are refused."""
    with pytest.raises(ContainerNotFound) as err:
        read_state(tmp_path, "nope")
    assert isinstance(err.value, LookupError)
    for bad in ("../etc", "a/b", "", ".."):
        with pytest.raises(ContainerError):
            check_id(bad)
    assert check_id("web-1.v2_x+y") == "web-1.v2_x+y"


def test_malformed_state_is_a_container_error(tmp_path: Path) -> None:
    """A state.json that is not JSON gives a clear ContainerError, not a traceback."""
    (tmp_path / "c1").mkdir()
    (tmp_path / "c1" / "state.json").write_text("{not json")
    with pytest.raises(ContainerError, match="cannot read runc's state"):
        read_state(tmp_path, "c1")


# --- restore's bundle config and inspect's summary ------------------------------------


def test_new_bundle_config_points_at_the_new_rootfs() -> None:
    """The restored bundle's config uses its own rootfs, keeps absolute bind sources,
    makes relative ones absolute against the original bundle, and follows a renamed id
    in cgroupsPath."""
    config = spec(cgroupsPath="/cedana/c1")
    config["root"] = {"path": "/old/bundle/rootfs", "readonly": False}
    config["mounts"] += [
        {"destination": "/data", "type": "bind", "source": "data", "options": ["rbind"]},
        {"destination": "/abs", "type": "bind", "source": "/srv/abs"},
    ]
    new = bundle_config(
        json.dumps(config).encode(), original_bundle="/old/bundle", old_id="c1", name="c2"
    )
    assert new["root"] == {"path": "rootfs", "readonly": False}
    sources = {m["destination"]: m["source"] for m in new["mounts"]}
    assert sources["/data"] == "/old/bundle/data"
    assert sources["/abs"] == "/srv/abs"
    assert new["linux"]["cgroupsPath"] == "/cedana/c2"
    assert cgroups.rename_path("system.slice:runc:c1", "c1", "c2") == "system.slice:runc:c2"
    assert cgroups.rename_path("/shared/group", "c1", "c2") == "/shared/group"


def test_container_summary_for_inspect() -> None:
    """inspect's container lines: id, runtime, status, bundle and the rootfs diff counts,
    or why the rootfs was not captured; nothing for a process checkpoint."""
    host = HostInfo(kernel="6.18", arch="x86_64", criu_version="4.2.1", hostname="h")
    diff = {
        "snapshotter": "overlay",
        "members": ["rootfs-diff.tar"],
        "files": 2,
        "bytes": 2048,
        "whiteouts": 1,
        "directories": 1,
    }
    manifest = Manifest(
        host=host,
        kind="container",
        runtime="runc",
        options={},
        tree=(),
        workload={
            "container": {"id": "web", "status": "running", "bundle": "/b"},
            "rootfs": {"captured": True, "snapshotter": "overlay", "diff": diff},
        },
    )
    summary = container_summary(manifest)
    assert summary is not None
    assert summary["id"] == "web" and summary["rootfs"]["diff"]["files"] == 2
    json.dumps(summary)
    lines = dict(container_lines(summary))
    assert lines["container"] == "web (runc, running)"
    assert lines["rootfs"] == "overlay changes: 2 files (2.0 KiB), 1 deleted, 1 dirs"
    plain = Manifest(
        host=host,
        kind="container",
        runtime="runc",
        options={},
        tree=(),
        workload={"container": {"id": "x"}, "rootfs": {"captured": False, "reason": "plain dir"}},
    )
    assert (
        dict(container_lines(container_summary(plain) or {}))["rootfs"]
        == "not captured (plain dir)"
    )
    process = Manifest(host=host, kind="process", options={}, tree=(), workload={})
    assert container_summary(process) is None


# --- the Process hook the container layer relies on -------------------------------------


@pytest.mark.parametrize("leave_running", [False, True])
def test_add_members_runs_while_frozen_and_extends_the_manifest(
    tmp_path: Path, leave_running: bool, sleeper: subprocess.Popen[bytes]
) -> None:
    """checkpoint_tree calls add_members once, from post-dump (tree frozen) in both modes,
    so a container's rootfs capture matches its memory; what it returns lands in the
    manifest's workload and its files become members."""
    fake = FakeCriu(kill=True)
    seen_frozen: list[bool] = []

    def add_members(images: Path) -> dict[str, Any]:
        seen_frozen.append(fake.frozen)
        (images / "container").mkdir()
        (images / "container" / "rootfs-diff.tar").write_bytes(b"diff")
        return {"rootfs": {"captured": True}}

    opts = CheckpointOptions(leave_running=leave_running)
    ckpt = checkpoint_tree(
        plan_dump(sleeper.pid, opts),
        tmp_path / "a.tar.zst",
        opts,
        kind="container",
        runtime="runc",
        workload={"rootfs": {"captured": False}},
        add_members=add_members,
        backend=fake,
        popen=sleeper,
    )
    assert fake.calls == ["dumped", "thawed" if leave_running else "killed"]
    assert (sleeper.poll() is None) == leave_running
    assert seen_frozen == [True]
    assert ckpt.manifest.workload["rootfs"]["captured"] is True
    assert ckpt.read_member("container/rootfs-diff.tar") == b"diff"


def test_a_hung_runc_is_a_runtime_timeout(tmp_path: Path) -> None:
    """A runc that does not finish in time is killed and reported as RuntimeTimeout (a
    ContainerError and a TimeoutError) naming the command and the timeout, not as
    subprocess's own exception."""
    from cedana.container.command import RuncCommand
    from cedana.errors import ContainerError, RuntimeTimeout

    hung = tmp_path / "runc"
    hung.write_text("#!/bin/sh\nexec sleep 60\n")
    hung.chmod(0o755)
    command = RuncCommand(tmp_path / "root", str(hung))
    with pytest.raises(RuntimeTimeout, match=r"runc --root \S+ state c1 did not finish in 0.2s"):
        command.run("state", "c1", timeout=0.2)
    assert issubclass(RuntimeTimeout, ContainerError) and issubclass(RuntimeTimeout, TimeoutError)
