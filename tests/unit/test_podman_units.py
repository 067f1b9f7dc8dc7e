"""podman's pieces that need no podman: the cgroup rename, the diff conversion into podman's
layout, the config fields a checkpoint may pass to podman, and the spec confinement."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path
from typing import Any

import pytest

import cedana
from cedana import registry
from cedana.container import cgroups
from cedana.rootfs.containers_storage import DELETED_FILES, to_podman_diff
from cedana.rootfs.overlay import DIFF_NAME
from cedana.runtimes._podman_layout import checked_config, checked_spec, podman_config
from cedana.runtimes.podman import PODMAN, PodmanCLI


def test_podman_cgroup_is_renamed_to_the_restored_container() -> None:
    """podman names a container's cgroup ``libpod-ID``: a restore under another name gets
    its own cgroup, not the original's (which still runs)."""
    assert cgroups.rename_path("/libpod_parent/libpod-abc", "abc", "w2") == "/libpod_parent/w2"
    assert cgroups.rename_path("/libpod_parent/other-x", "abc", "w2") == "/libpod_parent/other-x"


def _tar(entries: list[tarfile.TarInfo], path: Path) -> None:
    with tarfile.open(path / DIFF_NAME, "w:", format=tarfile.PAX_FORMAT) as tar:
        for info in entries:
            data = b"new\n" if info.isreg() else None
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)


def test_overlay_diff_becomes_podmans_tar_and_deleted_files(tmp_path: Path) -> None:
    """Whiteouts become deleted.files entries; an opaque directory keeps its new content and
    lists the image's old entries as deleted; overlay's own attributes are dropped."""
    diff, dest, lower = tmp_path / "diff", tmp_path / "dest", tmp_path / "lower"
    diff.mkdir()
    (lower / "etc" / "conf.d").mkdir(parents=True)
    for name in ("old.conf", "kept.conf"):
        (lower / "etc" / "conf.d" / name).write_text("image\n")
    whiteout = tarfile.TarInfo("etc/doomed.txt")
    whiteout.type, whiteout.devmajor, whiteout.devminor = tarfile.CHRTYPE, 0, 0
    opaque = tarfile.TarInfo("etc/conf.d")
    opaque.type = tarfile.DIRTYPE
    opaque.pax_headers = {"SCHILY.xattr.trusted.overlay.opaque": "y"}
    _tar(
        [whiteout, opaque, tarfile.TarInfo("etc/conf.d/kept.conf"), tarfile.TarInfo("new.txt")],
        diff,
    )

    deleted = to_podman_diff(diff, dest, lower=[str(lower)])

    assert deleted == ["/etc/doomed.txt", "/etc/conf.d/old.conf"]
    assert json.loads((dest / DELETED_FILES).read_text()) == deleted
    with tarfile.open(dest / DIFF_NAME) as tar:
        members = {m.name: m for m in tar}
    assert sorted(members) == ["etc/conf.d", "etc/conf.d/kept.conf", "new.txt"]
    assert not any("overlay" in key for key in members["etc/conf.d"].pax_headers)


def test_config_fields_are_typed_and_others_dropped() -> None:
    """Only the ContainerConfig fields a restore needs pass to podman, each of its type;
    a host path in the record is not among them, a wrong type is refused."""
    record = {
        "Id": "abc",
        "Name": "web",
        "Image": "img",
        "ImageName": "localhost/x:1",
        "Created": "now",
        "Config": {"Cmd": ["/bin/sh"], "StopSignal": 15, "StopTimeout": 10},
        "HostConfig": {"ShmSize": 65536000, "CgroupParent": "/host/place"},
    }
    config = podman_config(record)
    assert config["name"] == "web" and config["command"] == ["/bin/sh"]
    assert checked_config({**config, "logPath": "/etc/shadow"}) == config
    with pytest.raises(cedana.UnsafeArtifact, match="podman.config.stopSignal"):
        checked_config({**config, "stopSignal": "15"})


def test_spec_leaves_podmans_own_mounts_to_podman_and_refuses_host_binds() -> None:
    """The mounts podman makes for every container (hosts, hostname, shm...) are dropped
    from the spec, the rest is confined: another host bind is refused."""
    spec: dict[str, Any] = {
        "root": {"path": "/old/merged"},
        "mounts": [
            {"destination": "/etc/hosts", "type": "bind", "source": "/run/x/hosts"},
            {"destination": "/proc", "type": "proc", "source": "proc"},
        ],
        "linux": {
            "cgroupsPath": "/libpod_parent/libpod-abc",
            "namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount")],
            "maskedPaths": [
                "/proc/acpi",
                "/proc/kcore",
                "/proc/keys",
                "/proc/latency_stats",
                "/proc/timer_list",
                "/proc/timer_stats",
                "/proc/sched_debug",
                "/proc/scsi",
                "/sys/firmware",
            ],
            "readonlyPaths": [
                "/proc/bus",
                "/proc/fs",
                "/proc/irq",
                "/proc/sys",
                "/proc/sysrq-trigger",
            ],
        },
    }
    checked = checked_spec(json.dumps(spec).encode(), name="w2", hooks=None, grants=None)
    assert [m["destination"] for m in checked["mounts"]] == ["/proc"]
    assert checked["root"]["path"] == "rootfs" and "cgroupsPath" not in checked["linux"]
    spec["mounts"].append({"destination": "/data", "type": "bind", "source": "/srv"})
    with pytest.raises(cedana.UnsafeArtifact, match="/srv"):
        checked_spec(json.dumps(spec).encode(), name="w2", hooks=None, grants=None)


def test_podman_is_registered() -> None:
    """``podman:NAME`` names a PodmanContainer; its checkpoints restore into podman or runc."""
    runtime, keywords = registry.parse_target("podman:web")
    assert runtime.name == PODMAN and runtime.cls is cedana.PodmanContainer
    assert keywords == {"name": "web"}
    assert runtime.restores_into == ("podman", "runc")


def test_crun_container_is_refused(tmp_path: Path) -> None:
    """A container podman runs under another OCI runtime than runc is refused, naming it,
    before anything is frozen or written."""
    record = {"State": {"Status": "running", "Pid": 1}, "OCIRuntime": "crun", "Id": "x"}

    class FakeCLI(PodmanCLI):
        def container(self, name: str) -> dict[str, Any] | None:
            copied: dict[str, Any] = json.loads(json.dumps(record))
            return copied

    with pytest.raises(cedana.NotCheckpointable, match="runs under 'crun'.*--runtime runc"):
        cedana.PodmanContainer("web", client=FakeCLI()).checkpoint(tmp_path / "a.tar.zst")
    assert not list(tmp_path.iterdir())
