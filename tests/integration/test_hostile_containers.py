"""Crafted container artifacts get no more from the host than an untrusted image would.

One real runc overlay checkpoint (a busybox counter whose rootfs changes hold a
setuid-root file) is taken per module. Each test crafts a variant of it as an
attacker would: unpack, edit the manifest, ``config.json``, the rootfs diff or
CRIU's own images (namespaces, credentials, mount table, re-encoded with pycriu),
and write it again with write_artifact, so the manifest's digests are
self-consistent and the artifact opens and verifies. Restoring it must be
refused **before anything runs**: the runc binary handed to restore is a spy
that records every call (so neither runc nor, through it, CRIU ran), no bundle
or runc state is made, and the hooks' marker file does not exist. The tests
that restore for real check the result is confined: root-only directories, a
setuid file no other user can reach, hooks of the caller's only.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import subprocess
import tarfile
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pycriu
import pytest

import cedana
from tests.capabilities import integration, requires_busybox, requires_runtime
from tests.helpers import COUNTER, assert_counts_on, count, craft, wait_count
from tests.integration.test_runc import Containers, busybox_rootfs, runc_root

pytestmark = [*integration, requires_runtime("runc"), requires_busybox]

__all__ = ["busybox_rootfs", "runc_root"]  # fixtures shared with test_runc

#: The container makes a setuid-root copy of busybox in its writable layer first.
SETUID_SCRIPT = "cp /bin/busybox /suid && chmod 4755 /suid; " + COUNTER
Edit = Callable[[dict[str, Any], Path], None]


@pytest.fixture(scope="module")
def base(
    tmp_path_factory: pytest.TempPathFactory, busybox_rootfs: Path, runc_root: Path
) -> Iterator[tuple[Path, Containers]]:
    """A real runc overlay checkpoint of a counter with a setuid file in its upper dir."""
    tmp = tmp_path_factory.mktemp("hostile")
    containers = Containers(tmp, busybox_rootfs, runc_root)
    try:
        c = containers.run("hostile-base", SETUID_SCRIPT)
        wait_count(c, 3)
        art = tmp / "base.tar.zst"
        c.checkpoint(art)
        assert art.is_file()
        yield art, containers
    finally:
        containers.cleanup()


def edit_config(change: Callable[[dict[str, Any]], None]) -> Edit:
    def edit(workload: dict[str, Any], images: Path) -> None:
        path = images / "container" / "config.json"
        config = json.loads(path.read_text())
        change(config)
        path.write_text(json.dumps(config))

    return edit


def edit_diff(*entries: tarfile.TarInfo) -> Edit:
    """Append ``entries`` to the rootfs diff (after its real content)."""

    def edit(workload: dict[str, Any], images: Path) -> None:
        with tarfile.open(images / "container" / "rootfs-diff.tar", "a") as tar:
            for info in entries:
                tar.addfile(info)

    return edit


class Spy:
    """A runc that records each call before running the real one."""

    def __init__(self, tmp: Path):
        self.log = tmp / "runc-calls.log"
        self.path = tmp / "runc-spy"
        real = shutil.which("runc")
        self.path.write_text(f'#!/bin/sh\necho "$@" >> {self.log}\nexec {real} "$@"\n')
        self.path.chmod(0o755)

    @property
    def calls(self) -> list[str]:
        return self.log.read_text().splitlines() if self.log.exists() else []


@pytest.fixture
def spy(tmp_path: Path) -> Spy:
    return Spy(tmp_path)


def marker(tmp_path: Path) -> Path:
    return tmp_path / "pwned"


def evil_hook(tmp_path: Path) -> dict[str, Any]:
    return {"path": "/bin/sh", "args": ["sh", "-c", f"echo pwned > {marker(tmp_path)}"]}


def _with_hooks(tmp_path: Path) -> Edit:
    def change(config: dict[str, Any]) -> None:
        config["hooks"] = {
            "prestart": [evil_hook(tmp_path)],
            "createRuntime": [evil_hook(tmp_path)],
        }

    return edit_config(change)


def _set(path: str, value: Any) -> Edit:
    """Set ``workload[a][b]`` for ``path`` ``a.b``."""

    def edit(workload: dict[str, Any], images: Path) -> None:
        *keys, last = path.split(".")
        target = workload
        for key in keys:
            target = target[key]
        target[last] = value

    return edit


def _linux(**fields: Any) -> Edit:
    def change(config: dict[str, Any]) -> None:
        config["linux"].update(fields)

    return edit_config(change)


def _drop_network(config: dict[str, Any]) -> None:
    config["linux"]["namespaces"] = [
        ns for ns in config["linux"]["namespaces"] if ns["type"] != "network"
    ]


def _join_host_net(config: dict[str, Any]) -> None:
    for ns in config["linux"]["namespaces"]:
        if ns["type"] == "network":
            ns["path"] = "/proc/1/ns/net"


def _all_caps(config: dict[str, Any]) -> None:
    caps = ["CAP_SYS_ADMIN", "CAP_SYS_MODULE", "CAP_SYS_PTRACE", "CAP_KILL"]
    config["process"]["capabilities"] = {k: caps for k in ("bounding", "effective", "permitted")}


def _bind_host_root(config: dict[str, Any]) -> None:
    config["mounts"].append(
        {"destination": "/host", "type": "bind", "source": "/", "options": ["rbind", "rw"]}
    )


def _relative_bind(config: dict[str, Any]) -> None:
    config["mounts"].append(
        {"destination": "/host", "type": "bind", "source": "../../../etc", "options": ["bind"]}
    )


def _host_disk(config: dict[str, Any]) -> None:
    config["mounts"].append({"destination": "/mnt", "type": "ext4", "source": "/dev/sda1"})


def _writable_sys(config: dict[str, Any]) -> None:
    for m in config["mounts"]:
        if m["type"] == "sysfs":
            m["options"] = ["nosuid", "rw"]


def _unmask(config: dict[str, Any]) -> None:
    config["linux"]["maskedPaths"] = []
    config["linux"]["readonlyPaths"] = []


def _device(kind: bytes, major: int, minor: int, name: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.devmajor, info.devminor, info.mode = kind, major, minor, 0o666
    return info


def _xattr_dir(name: str, key: str, value: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.mode = tarfile.DIRTYPE, 0o755
    info.pax_headers = {f"SCHILY.xattr.{key}": value}
    return info


def _hardlink(name: str, target: str) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname = tarfile.LNKTYPE, target
    return info


def edit_image(pattern: str, change: Callable[[dict[str, Any], dict[str, Any]], None]) -> Edit:
    """Re-encode the CRIU images matching ``pattern`` with ``change(entry, inventory)``
    applied to each entry (pycriu, as an attacker would)."""

    def edit(workload: dict[str, Any], images: Path) -> None:
        with open(images / "inventory.img", "rb") as f:
            inventory = pycriu.images.load(f)["entries"][0]
        for path in sorted(images.glob(pattern)):
            with open(path, "rb") as f:
                image = pycriu.images.load(f)
            for entry in image["entries"]:
                change(entry, inventory)
            with open(path, "wb") as f:
                pycriu.images.dump(image, f)

    return edit


def _host_netns_ids(entry: dict[str, Any], inventory: dict[str, Any]) -> None:
    entry["net_ns_id"] = inventory["root_ids"]["net_ns_id"]


def _sys_admin_creds(entry: dict[str, Any], inventory: dict[str, Any]) -> None:
    creds = entry["thread_core"]["creds"]
    for key in ("cap_bnd", "cap_prm", "cap_eff"):
        creds[key] = [creds[key][0] | 1 << 21, creds[key][1]]  # CAP_SYS_ADMIN


def _mount_tables(change: Callable[[list[dict[str, Any]]], None]) -> Edit:
    def edit(workload: dict[str, Any], images: Path) -> None:
        for path in sorted(images.glob("mountpoints-*.img")):
            with open(path, "rb") as f:
                image = pycriu.images.load(f)
            change(image["entries"])
            with open(path, "wb") as f:
                pycriu.images.dump(image, f)

    return edit


def _overlay_of_host_root(entries: list[dict[str, Any]]) -> None:
    root = next(e for e in entries if e["mountpoint"] == "/")
    extra = dict(root, mnt_id=root["mnt_id"] + 1000, parent_mnt_id=root["mnt_id"])
    extra.update(mountpoint="/mnt", options="lowerdir=/,upperdir=/tmp/u,workdir=/tmp/w")
    entries.append(extra)


def _unprotect_proc_sys(entries: list[dict[str, Any]]) -> None:
    entries[:] = [e for e in entries if e["mountpoint"] != "/proc/sys"]


def _writable_sysfs_mount(entries: list[dict[str, Any]]) -> None:
    for e in entries:
        if e["mountpoint"] == "/sys":
            e["flags"] &= ~1
            e["sb_flags"] &= ~1


def _bind_through_diff_symlink(tmp_path: Path) -> Edit:
    """A bind source inside the new bundle (so confinement lets its name through) that the
    diff makes a symlink to the host's /etc."""
    link = tarfile.TarInfo("hostetc")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc"
    in_diff = edit_diff(link)

    def bind(config: dict[str, Any]) -> None:
        source = str(tmp_path / "bundle" / "upper" / "hostetc")
        config["mounts"].append(
            {"destination": "/hostetc", "type": "bind", "source": source, "options": ["rbind"]}
        )

    in_config = edit_config(bind)

    def edit(workload: dict[str, Any], images: Path) -> None:
        in_diff(workload, images)
        in_config(workload, images)

    return edit


HOSTILE: dict[str, tuple[Callable[[Path], Edit], str]] = {
    "images-host-netns": (lambda _: edit_image("ids-*.img", _host_netns_ids), "host's network"),
    "images-capabilities": (
        lambda _: edit_image("core-*.img", _sys_admin_creds),
        r"core-\d+\.img.*CAP_SYS_ADMIN",
    ),
    "images-host-overlay": (
        lambda _: _mount_tables(_overlay_of_host_root),
        "filesystem type 17",
    ),
    "images-proc-sys-writable": (
        lambda _: _mount_tables(_unprotect_proc_sys),
        "leaves /proc/sys writable",
    ),
    "images-sysfs-rw": (lambda _: _mount_tables(_writable_sysfs_mount), "sysfs read-write"),
    "hooks": (_with_hooks, r"hooks\.prestart, hooks\.createRuntime"),
    "lower-root": (lambda _: _set("rootfs.lower", ["/"]), "identity differs"),
    "lower-etc": (lambda _: _set("rootfs.lower", ["/etc"]), "identity differs"),
    "lower-relative": (lambda _: _set("rootfs.lower", ["etc"]), "not an absolute path"),
    "lower-no-identity": (lambda _: _set("rootfs.lower_identity", None), "no identity"),
    "dir-climbs": (lambda _: _set("rootfs.dir", "../.."), "rootfs.dir"),
    "dir-host": (lambda _: _set("rootfs.dir", "/etc"), "rootfs.dir"),
    "config-host": (lambda _: _set("container.config", "/etc/passwd"), "container.config"),
    "runc-root": (lambda _: _set("container.root", "/etc"), "container.root.*/etc"),
    "host-network": (lambda _: edit_config(_drop_network), "leaves out the network namespace"),
    "netns-path": (lambda _: edit_config(_join_host_net), "joins the network namespace"),
    "capabilities": (lambda _: edit_config(_all_caps), "CAP_SYS_ADMIN"),
    "bind-root": (lambda _: edit_config(_bind_host_root), r"bind-mounts '/'"),
    "bind-relative": (lambda _: edit_config(_relative_bind), "bind-mounts"),
    "host-disk": (lambda _: edit_config(_host_disk), "'ext4' filesystem"),
    "rw-sysfs": (lambda _: edit_config(_writable_sys), "sysfs read-write"),
    "unmasked": (lambda _: edit_config(_unmask), "maskedPaths"),
    "device": (
        lambda _: _linux(devices=[{"path": "/dev/sda", "type": "b", "major": 8, "minor": 0}]),
        r"linux\.devices\[0\]",
    ),
    "device-rule": (
        lambda _: _linux(resources={"devices": [{"allow": True, "access": "rwm"}]}),
        r"linux\.resources\.devices",
    ),
    "cgroup": (lambda _: _linux(cgroupsPath="/system.slice"), "cgroupsPath"),
    "seccomp-listener": (
        lambda _: _linux(seccomp={"defaultAction": "SCMP_ACT_ALLOW", "listenerPath": "/run/x"}),
        "listenerPath",
    ),
    "diff-block-device": (
        lambda _: edit_diff(_device(tarfile.BLKTYPE, 8, 0, "disk")),
        "device node 8:0",
    ),
    "diff-char-device-named-like-a-file": (
        lambda _: edit_diff(_device(tarfile.CHRTYPE, 1, 1, "etc/passwd")),
        "device node 1:1",
    ),
    "diff-origin": (
        lambda _: edit_diff(_xattr_dir("var", "trusted.overlay.origin", "\x00\xfb\x21")),
        "overlay.origin",
    ),
    "diff-redirect": (
        lambda _: edit_diff(_xattr_dir("opt", "trusted.overlay.redirect", "/../../etc")),
        "redirect",
    ),
    "diff-hardlink": (lambda _: edit_diff(_hardlink("shadow", "/etc/shadow")), "absolute name"),
    "bind-through-diff-symlink": (_bind_through_diff_symlink, r"bind-mounts .*leads to /etc"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_crafted_artifact_is_refused_before_anything_runs(
    base: tuple[Path, Containers], tmp_path: Path, spy: Spy, case: str
) -> None:
    """A self-consistent artifact asking for a host command, a host path, a host
    namespace, more capabilities, a host mount or a device is refused with a message
    naming what it asked for, before runc (and so CRIU) runs: no runc call, no bundle,
    no runc state, no hook marker."""
    art, containers = base
    make, match = HOSTILE[case]
    crafted = craft(art, tmp_path / f"{case}.tar.zst", make(tmp_path))
    bundle, name = tmp_path / "bundle", f"hostile-{os.getpid()}"
    root = None if case == "runc-root" else containers.root
    with pytest.raises(cedana.UnsafeArtifact, match=match):
        cedana.restore(crafted, name=name, root=root, bundle=bundle, runc=str(spy.path))
    assert spy.calls == []
    assert not bundle.exists()
    assert not (containers.root / name).exists()
    assert not marker(tmp_path).exists()
    assert not Path("/etc", name).exists()


def test_hooks_of_the_caller_replace_the_artifacts(
    base: tuple[Path, Containers], tmp_path: Path, spy: Spy
) -> None:
    """With hooks={} the artifact's hooks are dropped: the container restores and
    counts on, runc ran, and the artifact's hook never ran on the host."""
    art, containers = base
    crafted = craft(art, tmp_path / "hooks.tar.zst", _with_hooks(tmp_path))
    name = f"hostile-hooks-{os.getpid()}"
    containers.track(name)
    r = cedana.restore(
        crafted,
        name=name,
        root=containers.root,
        bundle=tmp_path / "bundle",
        runc=str(spy.path),
        hooks={},
    )
    assert any("restore" in call.split() for call in spy.calls), spy.calls
    assert "hooks" not in json.loads((tmp_path / "bundle" / "config.json").read_text())
    assert_counts_on(r, count(r))
    assert not marker(tmp_path).exists()


def _reachable_by_nobody(path: Path) -> bool:
    """Whether user nobody (65534) can stat ``path``."""
    done = subprocess.run(
        ["stat", "--", str(path)], user=65534, group=65534, capture_output=True, check=False
    )
    return done.returncode == 0


def test_restored_bundle_is_root_only(
    base: tuple[Path, Containers], tmp_path: Path, busybox_rootfs: Path
) -> None:
    """An artifact without lower-layer identities (as older cedana wrote) restores with
    the caller's lower=; the bundle (with the directories above it that restore made) and
    its work directory are 0700, its config.json 0600, so the setuid-root file of the diff (kept, as an image keeps it) is out of reach of
    other host users although they may reach the bundle's parent (moby's CVE-2021-41091)."""
    art, containers = base
    old = craft(art, tmp_path / "old.tar.zst", _set("rootfs.lower_identity", None))
    with pytest.raises(cedana.UnsafeArtifact, match="lower="):
        cedana.restore(old, root=containers.root, bundle=tmp_path / "refused")
    name = f"hostile-modes-{os.getpid()}"
    open_parent = Path(tempfile.mkdtemp(prefix="cedana-test-modes-", dir="/var/tmp"))
    try:
        open_parent.chmod(0o711)
        bundle = open_parent / "bundles" / "b"
        containers.track(name)
        r = cedana.restore(
            old, name=name, root=containers.root, bundle=bundle, lower=[busybox_rootfs]
        )
        wait_count(r, 1)
        for d in (bundle.parent, bundle, bundle / "work"):
            assert stat.S_IMODE(os.stat(d).st_mode) == 0o700, d
        assert stat.S_IMODE(os.stat(bundle / "config.json").st_mode) == 0o600
        suid = bundle / "upper" / "suid"
        assert os.stat(suid).st_mode & 0o7777 == 0o4755 and os.stat(suid).st_uid == 0
        assert _reachable_by_nobody(open_parent)
        assert not _reachable_by_nobody(bundle.parent / "b")
        assert not _reachable_by_nobody(suid)
        assert_counts_on(r, count(r))
    finally:
        with contextlib.suppress(cedana.CedanaError):
            cedana.RuncContainer(name, root=containers.root).delete()
        shutil.rmtree(open_parent, ignore_errors=True)


def _old_record(store: str) -> Edit:
    """The ``rootfs`` entry as a cedana before the diff format was recorded wrote it: the
    store's name in ``snapshotter``, no ``format`` (in the entry or in the diff's record)."""

    def edit(workload: dict[str, Any], images: Path) -> None:
        rootfs = workload["rootfs"]
        rootfs.pop("format", None)
        rootfs["snapshotter"] = store
        rootfs["diff"].pop("format", None)
        rootfs["diff"]["snapshotter"] = store

    return edit


@pytest.mark.parametrize("store", ["overlay", "containerd"])
def test_old_rootfs_records_still_restore(
    base: tuple[Path, Containers], tmp_path: Path, store: str
) -> None:
    """An artifact whose rootfs entry names only the store it came from (the form before the
    diff format was recorded apart), a plain overlay's or a containerd snapshot's, restores
    into runc: the runc layer reads the overlay format from the old store name."""
    art, containers = base
    assert cedana.open(art).manifest.workload["rootfs"]["format"] == "overlay"
    old = craft(art, tmp_path / f"old-{store}.tar.zst", _old_record(store))
    name = f"hostile-old-{store}-{os.getpid()}"
    containers.track(name)
    r = cedana.restore(old, name=name, root=containers.root, bundle=tmp_path / "bundle")
    assert_counts_on(r, count(r))


def test_unknown_diff_format_is_refused_before_runc_runs(
    base: tuple[Path, Containers], tmp_path: Path, spy: Spy
) -> None:
    """A diff in a format this cedana cannot apply is refused by its format, naming it,
    before runc runs or a bundle is made."""
    art, containers = base
    crafted = craft(art, tmp_path / "zfs.tar.zst", _set("rootfs.format", "zfs-send"))
    bundle = tmp_path / "bundle"
    with pytest.raises(cedana.ContainerError, match="in a 'zfs-send' format"):
        cedana.restore(crafted, root=containers.root, bundle=bundle, runc=str(spy.path))
    assert spy.calls == []
    assert not bundle.exists()
