"""The confinement checks a container checkpoint passes before its restore runs anything.

Each test hands :mod:`cedana.container.confine` (or the overlay diff applier) what
a crafted artifact could carry and checks it is refused with a message naming the
field, or accepted when the runtime's defaults or the caller's grants allow it.
"""

from __future__ import annotations

import copy
import io
import os
import stat
import tarfile
from pathlib import Path
from typing import Any

import pytest

import cedana
from cedana.container import confine
from cedana.container.confine import Grants, check_config
from cedana.errors import UnsafeArtifact
from cedana.rootfs.overlay import apply_upper, layer_identity
from tests.capabilities import requires_root

#: What ``runc spec`` (runc 1.1) writes, as far as confinement looks.
DEFAULT: dict[str, Any] = {
    "ociVersion": "1.0.2-dev",
    "process": {
        "args": ["sh"],
        "capabilities": {
            kind: ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
            for kind in ("bounding", "effective", "permitted", "ambient")
        },
    },
    "root": {"path": "rootfs"},
    "mounts": [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/dev", "type": "tmpfs", "source": "tmpfs", "options": ["nosuid"]},
        {"destination": "/dev/pts", "type": "devpts", "source": "devpts", "options": []},
        {"destination": "/dev/shm", "type": "tmpfs", "source": "shm", "options": ["nodev"]},
        {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue", "options": []},
        {"destination": "/sys", "type": "sysfs", "source": "sysfs", "options": ["nosuid", "ro"]},
        {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup", "options": ["ro"]},
    ],
    "linux": {
        "resources": {"devices": [{"allow": False, "access": "rwm"}]},
        "namespaces": [{"type": t} for t in ("pid", "network", "ipc", "uts", "mount")],
        "maskedPaths": list(confine.DEFAULT_MASKED_PATHS),
        "readonlyPaths": list(confine.DEFAULT_READONLY_PATHS),
    },
}


def config(**changes: Any) -> dict[str, Any]:
    """The default config with ``changes`` (dotted paths with ``__``) applied."""
    out = copy.deepcopy(DEFAULT)
    for key, value in changes.items():
        *path, last = key.split("__")
        target = out
        for part in path:
            target = target.setdefault(part, {})
        target[last] = value
    return out


def check(cfg: dict[str, Any], tmp_path: Path, **kw: Any) -> dict[str, Any]:
    return check_config(cfg, name="web2", bundle=tmp_path / "bundle", **kw)


def test_runtime_defaults_pass(tmp_path: Path) -> None:
    """runc's default config (and containerd's larger default capability set) restores
    without any grant, and the returned config is the same."""
    assert check(config(), tmp_path) == config()
    docker_caps = sorted(confine.DEFAULT_CAPABILITIES)
    cfg = config(process__capabilities={"bounding": docker_caps, "effective": docker_caps})
    check(cfg, tmp_path)


def test_hooks_are_refused_unless_the_caller_gives_them(tmp_path: Path) -> None:
    """An artifact's OCI hooks (which run on the host) are refused naming each kind;
    hooks={} restores without them; the caller's hooks replace them."""
    evil = {"path": "/bin/sh", "args": ["sh", "-c", "echo pwned > /tmp/x"]}
    cfg = config(hooks={"prestart": [evil], "createRuntime": [evil], "poststop": []})
    with pytest.raises(UnsafeArtifact, match=r"hooks\.prestart, hooks\.createRuntime") as e:
        check(cfg, tmp_path)
    assert "hooks=" in str(e.value) and "poststop" not in str(e.value)
    assert "hooks" not in check(cfg, tmp_path, hooks={})
    mine = {"path": "/usr/local/bin/net-setup"}
    out = check(cfg, tmp_path, hooks={"createRuntime": [mine]})
    assert out["hooks"] == {"createRuntime": [mine]}
    assert cfg["hooks"]["prestart"] == [evil]  # the input is left as it was
    with pytest.raises(ValueError, match="preStart"):
        check(config(), tmp_path, hooks={"preStart": [mine]})


@pytest.mark.parametrize(
    ("namespaces", "field", "grant"),
    [
        ([{"type": t} for t in ("pid", "ipc", "uts", "mount")], "network", {"network": "host"}),
        (
            [
                *DEFAULT["linux"]["namespaces"][:1],
                {"type": "network", "path": "/proc/1/ns/net"},
                *DEFAULT["linux"]["namespaces"][2:],
            ],
            "/proc/1/ns/net",
            {"network": "/proc/1/ns/net"},
        ),
        ([{"type": t} for t in ("network", "ipc", "uts", "mount")], "pid", {"pid": "host"}),
    ],
)
def test_host_namespaces_are_refused_unless_granted(
    tmp_path: Path, namespaces: list[dict[str, str]], field: str, grant: dict[str, str]
) -> None:
    """A namespace left out (shared with the host) or joined by path is refused, naming it;
    the same grant the message suggests lets it through."""
    cfg = config(linux__namespaces=namespaces)
    with pytest.raises(UnsafeArtifact, match=f"linux.namespaces.*{field}"):
        check(cfg, tmp_path)
    check(cfg, tmp_path, grants=Grants(namespaces=grant))


def test_capabilities_beyond_the_defaults_are_refused(tmp_path: Path) -> None:
    """CAP_SYS_ADMIN in any set is refused naming the set; granted, it passes."""
    cfg = config(process__capabilities={"bounding": ["CAP_KILL", "CAP_SYS_ADMIN"]})
    with pytest.raises(UnsafeArtifact, match=r"process\.capabilities\.bounding.*CAP_SYS_ADMIN"):
        check(cfg, tmp_path)
    check(cfg, tmp_path, grants=Grants(capabilities=["CAP_SYS_ADMIN"]))


def test_bind_mounts_come_from_the_bundle_or_the_caller(tmp_path: Path) -> None:
    """A bind of a host path (or a relative one, or one climbing out of the bundle) is
    refused; one from inside the new bundle passes; a granted source (or a path below
    it) passes."""
    for source in ("/etc", "etc", str(tmp_path / "bundle" / ".." / "other")):
        bind = {"destination": "/h", "type": "bind", "source": source, "options": ["rbind"]}
        with pytest.raises(UnsafeArtifact, match=r"mounts\[7\] \(/h\).*bind-mounts"):
            check(config(mounts=[*DEFAULT["mounts"], bind]), tmp_path)
    inside = {"destination": "/d", "source": str(tmp_path / "bundle" / "d"), "options": ["bind"]}
    check(config(mounts=[*DEFAULT["mounts"], inside]), tmp_path)
    shared = tmp_path / "shared"
    bind = {"destination": "/h", "type": "bind", "source": str(shared / "sub")}
    check(config(mounts=[*DEFAULT["mounts"], bind]), tmp_path, grants=Grants(binds=[shared]))


@pytest.mark.parametrize(
    ("mount", "why"),
    [
        ({"destination": "/mnt", "type": "ext4", "source": "/dev/sda1"}, "'ext4' filesystem"),
        ({"destination": "/sys", "type": "sysfs", "source": "sysfs"}, "sysfs read-write"),
        ({"destination": "/c", "type": "cgroup", "source": "c", "options": ["rw"]}, "cgroup read"),
        ({"destination": "/mnt/p", "type": "proc", "source": "proc"}, "proc outside /proc"),
    ],
)
def test_mounts_beyond_pseudo_filesystems_are_refused(
    tmp_path: Path, mount: dict[str, Any], why: str
) -> None:
    """A host filesystem, a writable sysfs or cgroup (uevent_helper, release_agent) and a
    second proc without its masked paths are refused."""
    with pytest.raises(UnsafeArtifact, match=why):
        check(config(mounts=[mount]), tmp_path)


def test_unmasked_proc_paths_are_refused(tmp_path: Path) -> None:
    """Leaving /proc/sysrq-trigger writable or /proc/kcore visible is refused; granted, passes."""
    cfg = config(linux__readonlyPaths=["/proc/sys"], linux__maskedPaths=[])
    with pytest.raises(UnsafeArtifact, match=r"linux\.maskedPaths.*/proc/kcore"):
        check(cfg, tmp_path)
    everything = [*confine.DEFAULT_MASKED_PATHS, *confine.DEFAULT_READONLY_PATHS]
    check(cfg, tmp_path, grants=Grants(unmasked=everything))


def test_devices_beyond_the_defaults_are_refused(tmp_path: Path) -> None:
    """A device node beyond runc's defaults, or a device-cgroup rule allowing reads and
    writes of any device, is refused; a default node, a mknod-only rule and a granted
    device (with its rule) pass."""
    disk = {"path": "/dev/sda", "type": "b", "major": 8, "minor": 0}
    with pytest.raises(UnsafeArtifact, match=r"linux\.devices\[0\].*/dev/sda"):
        check(config(linux__devices=[disk]), tmp_path)
    rules = [{"allow": True, "access": "rwm"}]
    with pytest.raises(UnsafeArtifact, match=r"resources\.devices\[0\].*rwm.*a \*:\*"):
        check(config(linux__resources={"devices": rules}), tmp_path)
    null = {"path": "/dev/null", "type": "c", "major": 1, "minor": 3}
    mknod = [{"allow": True, "type": "c", "access": "m"}]
    check(config(linux__devices=[null], linux__resources={"devices": mknod}), tmp_path)
    fuse = {"path": "/dev/fuse", "type": "c", "major": 10, "minor": 229}
    rule = {"allow": True, "type": "c", "major": 10, "minor": 229, "access": "rw"}
    cfg = config(linux__devices=[fuse], linux__resources={"devices": [rule]})
    with pytest.raises(UnsafeArtifact, match="/dev/fuse"):
        check(cfg, tmp_path)
    check(cfg, tmp_path, grants=Grants(devices=["/dev/fuse"]))


def test_a_criu_config_file_of_the_hosts_is_refused(tmp_path: Path) -> None:
    """The ``org.criu.config`` annotation makes runc hand CRIU a host config file (whose
    action scripts run as root): refused; an empty one (no config file) passes."""
    with pytest.raises(UnsafeArtifact, match="org.criu.config"):
        check(config(annotations={"org.criu.config": "/tmp/evil.conf"}), tmp_path)
    check(config(annotations={"org.criu.config": ""}), tmp_path)


def test_seccomp_listener_and_foreign_cgroups_are_refused(tmp_path: Path) -> None:
    """A seccomp notify socket on the host is refused; a cgroup that is not the new
    container's own (or climbs with ..) is refused unless granted; its own passes."""
    with pytest.raises(UnsafeArtifact, match="listenerPath"):
        check(config(linux__seccomp={"listenerPath": "/run/agent.sock"}), tmp_path)
    for path in ("/system.slice/sshd.service", "/", "/x/../web2", "system.slice:x:sshd"):
        with pytest.raises(UnsafeArtifact, match="cgroupsPath"):
            check(config(linux__cgroupsPath=path), tmp_path)
    check(config(linux__cgroupsPath="/default/web2"), tmp_path)
    check(config(linux__cgroupsPath="system.slice:cri:web2"), tmp_path)
    check(config(linux__cgroupsPath="/mine"), tmp_path, grants=Grants(cgroups_path="/mine"))


def test_malformed_configs_are_refused(tmp_path: Path) -> None:
    """A config whose fields have the wrong shapes is refused as such, not with a raw
    Python error."""
    for bad in (config(mounts={"a": 1}), config(linux__devices=[{"path": "/x", "major": "x"}])):
        with pytest.raises(UnsafeArtifact, match="not a well-formed OCI config"):
            check(bad, tmp_path)


def test_grants_is_public() -> None:
    """Grants is part of the public surface and converts what it is given."""
    g = cedana.Grants(binds=["rel"], capabilities=["CAP_SYS_ADMIN"])
    assert g.binds == (os.path.abspath("rel"),) and g.capabilities == {"CAP_SYS_ADMIN"}


# --- host paths in the manifest --------------------------------------------------------


def test_members_the_manifest_names_must_be_members() -> None:
    """container.config / rootfs.dir must name members: a host path, a '..' name or a
    name the artifact does not hold is refused; None means the default."""
    members = ["container/config.json", "container/rootfs-diff.tar", "core-1.img"]
    kw = {"what": "container.config", "default": "container/config.json"}
    assert confine.check_member(None, members, **kw) == "container/config.json"
    assert confine.check_member("container", members, what="rootfs.dir", default="") == "container"
    for bad in ("/etc/shadow", "../x", "container/../core-1.img", "container/other.json"):
        with pytest.raises(UnsafeArtifact, match="container.config"):
            confine.check_member(bad, members, **kw)


def test_recorded_runc_root_must_be_a_runc_root(tmp_path: Path) -> None:
    """A runc root from the manifest is used only if it is a private directory holding
    runc state only; /etc, a missing dir and a dir with other files are refused. The
    caller's root is never checked."""
    root = tmp_path / "runc"
    (root / "c1").mkdir(parents=True)
    (root / "c1" / "state.json").write_text("{}")
    os.chmod(root, 0o700)
    assert confine.check_runc_root(root, recorded=True) == root
    for bad in (Path("/etc"), tmp_path / "missing"):
        with pytest.raises(UnsafeArtifact, match="container.root"):
            confine.check_runc_root(bad, recorded=True)
    (root / "notes.txt").write_text("x")
    with pytest.raises(UnsafeArtifact, match="notes.txt"):
        confine.check_runc_root(root, recorded=True)
    assert confine.check_runc_root(Path("/etc"), recorded=False) == Path("/etc")


def _layer(tmp_path: Path) -> Path:
    layer = tmp_path / "layer"
    (layer / "etc").mkdir(parents=True)
    (layer / "etc" / "passwd").write_text("root:x:0:0::/root:/bin/sh\n")
    (layer / "etc" / "shadow").write_text("root:secret\n")
    os.chmod(layer / "etc" / "shadow", 0o600)
    (layer / "bin").mkdir()
    os.symlink("busybox", layer / "bin" / "sh")
    return layer


def test_layer_identity_follows_the_tree(tmp_path: Path) -> None:
    """The identity is stable for an unchanged tree and changes with a new file, a mode,
    a symlink target, or the content of a file others may not read (but not with the
    content of a world-readable file of the same size and mtime, which it never reads)."""
    layer = _layer(tmp_path)
    first = layer_identity(layer)
    assert first.startswith("sha256:") and layer_identity(layer) == first
    shadow = layer / "etc" / "shadow"
    st = shadow.stat()
    shadow.write_text("root:SECRET\n")
    os.utime(shadow, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert layer_identity(layer) != first
    second = layer_identity(layer)
    passwd = layer / "etc" / "passwd"
    st = passwd.stat()
    passwd.write_text("ROOT:x:0:0::/root:/bin/sh\n")
    os.utime(passwd, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert layer_identity(layer) == second
    os.chmod(passwd, 0o640)
    assert layer_identity(layer) != second
    with pytest.raises(NotADirectoryError):
        layer_identity(passwd)


def test_lower_layers_must_match_their_identity_or_be_given(tmp_path: Path) -> None:
    """A recorded layer whose identity matches is used; '/' (or any other directory) under
    a copied identity, a relative path, a changed layer, and a checkpoint without
    identities (older cedana) are refused, naming lower=; the caller's lower= is used
    as given."""
    layer = _layer(tmp_path)
    ident = layer_identity(layer)
    assert confine.check_lower([str(layer)], [ident], given=None) == (str(layer),)
    for recorded in (["/"], ["/etc"], ["layer"]):
        with pytest.raises(UnsafeArtifact, match="lower="):
            confine.check_lower(recorded, [ident], given=None)
    with pytest.raises(UnsafeArtifact, match="no identity"):
        confine.check_lower([str(layer)], None, given=None)
    (layer / "new").write_text("x")
    with pytest.raises(UnsafeArtifact, match="identity differs"):
        confine.check_lower([str(layer)], [ident], given=None)
    assert confine.check_lower(["/"], None, given=[layer]) == (str(layer),)
    with pytest.raises(UnsafeArtifact, match="not a directory"):
        confine.check_lower(["/"], None, given=[layer / "new"])


def test_containerd_runtime_options_are_checked() -> None:
    """Another runtime (a shim binary of the artifact's choosing), a runc binary, a CRIU
    path or a shim cgroup are refused; the safe options pass."""
    runtimes = ("io.containerd.runc.v2",)
    confine.check_runtime_options(
        "io.containerd.runc.v2", {"systemd_cgroup": True, "io_uid": 0}, runtimes=runtimes
    )
    with pytest.raises(UnsafeArtifact, match="runtime.name"):
        confine.check_runtime_options("io.containerd.evil.v1", {}, runtimes=runtimes)
    for key in ("binary_name", "criu_path", "shim_cgroup", "no_pivot_root"):
        with pytest.raises(UnsafeArtifact, match=key):
            confine.check_runtime_options(
                "io.containerd.runc.v2", {key: "/tmp/evil"}, runtimes=runtimes
            )


# --- the rootfs diff --------------------------------------------------------------------


def _diff(path: Path, *entries: tuple[tarfile.TarInfo, bytes]) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if data else None)
    return path


def _entry(name: str, kind: bytes = tarfile.REGTYPE, **attrs: Any) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    for key, value in attrs.items():
        setattr(info, key, value)
    return info


@pytest.mark.parametrize(
    ("entry", "why"),
    [
        (_entry("dev/sda", tarfile.BLKTYPE, devmajor=8, devminor=0), "device node 8:0"),
        (_entry("etc/passwd", tarfile.CHRTYPE, devmajor=1, devminor=1), "device node 1:1"),
        (
            _entry("d", tarfile.DIRTYPE, pax_headers={"SCHILY.xattr.trusted.overlay.origin": "x"}),
            "overlay.origin",
        ),
        (
            _entry("f", pax_headers={"SCHILY.xattr.trusted.overlay.metacopy": ""}),
            "overlay.metacopy",
        ),
        (
            _entry("f", pax_headers={"SCHILY.xattr.trusted.overlay.redirect": "/etc"}),
            "on a non-directory",
        ),
        (
            _entry(
                "d",
                tarfile.DIRTYPE,
                pax_headers={"SCHILY.xattr.trusted.overlay.redirect": "/a/../b"},
            ),
            "redirect to",
        ),
        (_entry("f", pax_headers={"SCHILY.xattr.trusted.ima": "x"}), "host-only attribute"),
        (_entry("h", tarfile.LNKTYPE, linkname="/etc/shadow"), "an absolute name"),
        (_entry("h", tarfile.LNKTYPE, linkname="etc/shadow"), "not a file of this diff"),
    ],
)
def test_unsafe_diff_entries_are_refused_before_anything_is_written(
    tmp_path: Path, entry: tarfile.TarInfo, why: str
) -> None:
    """Device nodes other than whiteouts, kernel-steering overlay attributes, host-only
    trusted.* attributes and hard links out of the diff are refused, and since the whole
    diff is checked first, the target stays empty (the harmless first entry included)."""
    diff = _diff(tmp_path / "d.tar", (_entry("ok.txt", size=2), b"ok"), (entry, b""))
    target = tmp_path / "t"
    target.mkdir()
    with pytest.raises(UnsafeArtifact, match=why):
        apply_upper(diff, target)
    assert os.listdir(target) == []


@requires_root
def test_whiteouts_setuid_files_and_file_capabilities_are_kept(tmp_path: Path) -> None:
    """What an image carries is applied as it is: a whiteout (0:0), a setuid-root file
    and a file capability (the directories restore puts them in are root-only)."""
    cap = "\x01\x00\x00\x02\x00\x20\x00\x00" + "\x00" * 12  # CAP_NET_RAW, effective
    diff = _diff(
        tmp_path / "d.tar",
        (_entry("gone", tarfile.CHRTYPE, devmajor=0, devminor=0), b""),
        (_entry("su", mode=0o4755, size=2), b"#!"),
        (
            _entry(
                "ping", mode=0o755, size=2, pax_headers={"SCHILY.xattr.security.capability": cap}
            ),
            b"#!",
        ),
    )
    target = tmp_path / "t"
    target.mkdir()
    apply_upper(diff, target)
    assert stat.S_ISCHR(os.lstat(target / "gone").st_mode)
    assert os.stat(target / "su").st_mode & 0o7777 == 0o4755
    assert os.getxattr(target / "ping", "security.capability")[:4] == b"\x01\x00\x00\x02"


# --- CRIU's images ----------------------------------------------------------------------

HOST_IDS = {"pid_ns_id": 1, "net_ns_id": 2, "ipc_ns_id": 3, "uts_ns_id": 4, "mnt_ns_id": 6}
OWN_IDS = {"pid_ns_id": 9, "net_ns_id": 10, "ipc_ns_id": 11, "uts_ns_id": 12, "mnt_ns_id": 13}
DEFAULT_CAPS = [0x20000420, 0]  # KILL, NET_BIND_SERVICE, AUDIT_WRITE


def _images(
    *,
    ids: dict[str, int] | None = None,
    caps: list[int] | None = None,
    user_ns: int = 7,
    mounts: list[dict[str, Any]] | None = None,
) -> dict[str, list[dict[str, Any]]]:
    """What pycriu decodes from a runc container's images (the parts confinement reads)."""
    creds = {k: caps or DEFAULT_CAPS for k in ("cap_bnd", "cap_prm", "cap_eff")}
    table = [
        {"mountpoint": "/", "fstype": 17, "options": "lowerdir=/x", "flags": 0},
        {"mountpoint": "/proc", "fstype": 1, "flags": 0},
        {"mountpoint": "/sys", "fstype": 2, "flags": 1},
        {"mountpoint": "/mnt/data", "fstype": 16, "ext_key": "/mnt/data"},  # a config bind
    ]
    for path in confine.DEFAULT_MASKED_PATHS:
        table.append({"mountpoint": path, "fstype": 5, "flags": 0, "root": "/null"})
    for path in confine.DEFAULT_READONLY_PATHS:
        table.append({"mountpoint": path, "fstype": 1, "flags": 1})
    return {
        "inventory.img": [{"root_ids": {**HOST_IDS, "user_ns_id": 7}}],
        "pstree.img": [{"pid": 1, "threads": [1, 2]}],
        "ids-1.img": [{**(ids or OWN_IDS), "user_ns_id": user_ns}],
        "core-1.img": [{"thread_core": {"creds": creds}}],
        "core-2.img": [{"thread_core": {"creds": {k: DEFAULT_CAPS for k in creds}}}],
        "mountpoints-13.img": (mounts if mounts is not None else table),
    }


def check_images(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    images: dict[str, list[dict[str, Any]]],
    **kw: Any,
) -> None:
    for name in images:
        (tmp_path / name).write_bytes(b"")
    monkeypatch.setattr(confine, "load_image", lambda path: {"entries": images[path.name]})
    confine.check_images(tmp_path, **kw)


def test_images_of_a_default_container_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Images of a container in namespaces of its own, with runc's default capabilities,
    pseudo filesystems, an external bind and the default masks pass."""
    check_images(tmp_path, monkeypatch, _images())


def test_images_in_host_namespaces_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A process whose namespace id is the dumping host's own is refused, naming the image
    and the namespace; granted "host", it passes."""
    images = _images(ids={**OWN_IDS, "net_ns_id": HOST_IDS["net_ns_id"]})
    with pytest.raises(UnsafeArtifact, match=r"ids-1\.img.*host's network namespace"):
        check_images(tmp_path, monkeypatch, images)
    check_images(tmp_path, monkeypatch, images, grants=Grants(namespaces={"network": "host"}))


def test_image_capabilities_beyond_the_defaults_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """CAP_SYS_ADMIN in a process's creds is refused (the config's capability list does not
    bind CRIU); granted it passes, and in a user namespace of its own it is that
    namespace's and passes too."""
    images = _images(caps=[DEFAULT_CAPS[0] | 1 << 21, 0])
    with pytest.raises(UnsafeArtifact, match=r"core-1\.img.*CAP_SYS_ADMIN \(cap_bnd\)"):
        check_images(tmp_path, monkeypatch, images)
    check_images(tmp_path, monkeypatch, images, grants=Grants(capabilities=["CAP_SYS_ADMIN"]))
    check_images(tmp_path, monkeypatch, _images(caps=[0xFFFFFFFF, 0x1FF], user_ns=20))


@pytest.mark.parametrize(
    ("change", "why"),
    [
        (lambda t: t.append({"mountpoint": "/mnt", "fstype": 17}), "filesystem type 17"),
        (lambda t: t.append({"mountpoint": "/dev", "fstype": 3}), "filesystem type 3"),
        (lambda t: t.append({"mountpoint": "/b", "fstype": 4}), "filesystem type 4"),
        (lambda t: t.__setitem__(2, {"mountpoint": "/sys", "fstype": 2}), "sysfs read-write"),
        (
            lambda t: t.__setitem__(slice(None), [m for m in t if m["mountpoint"] != "/proc/sys"]),
            "leaves /proc/sys writable",
        ),
    ],
)
def test_image_mounts_beyond_pseudo_filesystems_are_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, change: Any, why: str
) -> None:
    """An overlay (host paths in its options), devtmpfs, binfmt_misc or a writable sysfs in
    the mount table, or a default read-only path left writable, is refused."""
    images = _images()
    change(images["mountpoints-13.img"])
    with pytest.raises(UnsafeArtifact, match=why):
        check_images(tmp_path, monkeypatch, images)


def test_undecodable_images_are_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Images that do not have what the check reads are refused as such."""
    images = _images()
    del images["ids-1.img"]
    with pytest.raises(UnsafeArtifact, match="CRIU images cannot be checked"):
        check_images(tmp_path, monkeypatch, images)


def _mapped(uid_host: int, gid_host: int, size: int = 65536) -> dict[str, Any]:
    cfg = config(
        linux__uidMappings=[{"containerID": 0, "hostID": uid_host, "size": size}],
        linux__gidMappings=[{"containerID": 0, "hostID": gid_host, "size": size}],
    )
    cfg["linux"]["namespaces"].append({"type": "user"})
    return cfg


def test_user_namespace_mappings_onto_host_accounts_are_refused(tmp_path: Path) -> None:
    """The host ids a config's user namespace maps onto own the container's files (setuid
    ones too) and are let into its bundle: mapped onto root, or onto a host user's or
    group's id (here the ``users`` group, a member's group, ``nobody``), a crafted config
    would hand those accounts the container's files and setuid binaries; refused, naming
    the field, as are ranges past the last id (chown takes (uid_t)-1 as "leave it"). Ids
    no account has (a subordinate range) pass."""
    import grp
    import pwd

    check(_mapped(100000, 100000), tmp_path)
    account_gid = grp.getgrall()[-1].gr_gid or 100
    account_uid = pwd.getpwall()[-1].pw_uid or 65534
    for cfg, field in (
        (_mapped(0, 100000), "uidMappings"),
        (_mapped(100000, 0), "gidMappings"),
        (_mapped(100000, 0, size=1), "gidMappings"),
        (_mapped(100000, account_gid, size=1), "gidMappings"),
        (_mapped(account_uid, 100000, size=1), "uidMappings"),
        (_mapped(1, 100000, size=70000), "uidMappings"),
        (_mapped(100000, (1 << 32) - 1, size=1), "gidMappings"),
        (_mapped(1 << 40, 100000), "uidMappings"),
    ):
        with pytest.raises(UnsafeArtifact, match=rf"linux\.{field}\[0\].*host"):
            check(cfg, tmp_path)
