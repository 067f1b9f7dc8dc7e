"""The runtime-neutral description of a container checkpoint, and moving its image."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from cedana.container import portable
from cedana.container.portable import ImageFacts
from cedana.errors import ContainerError, ImageNotFound, RuntimeUnavailable, UnsafeArtifact
from cedana.runtimes._images import Found, bring, candidates

DOCKER_CONFIG = {
    "root": {"path": "/var/lib/docker/overlay2/x/merged"},
    "hooks": {"prestart": [{"path": "/proc/1/exe", "args": ["libnetwork-setkey", "-exec-root=/x"]}]},
    "mounts": [
        {"destination": "/proc", "type": "proc", "source": "proc"},
        {"destination": "/etc/hosts", "type": "bind", "source": "/var/lib/docker/c/hosts",
         "options": ["rbind", "rprivate"]},
        {"destination": "/dev/shm", "type": "bind", "source": "/x/shm", "options": ["bind"]},
        {"destination": "/data", "type": "bind", "source": "/srv/data", "options": ["rbind"]},
    ],
    "linux": {"cgroupsPath": "/docker/abc", "namespaces": [{"type": "network"}]},
}  # fmt: skip


def test_neutral_config_takes_out_what_the_runtime_made() -> None:
    """The runtime's own bind mounts (/etc/hosts, /dev/shm) become RuntimeMounts, its
    networking hook and cgroup path are dropped, the root is ``rootfs``; a bind of the
    user's (/data) stays, for the target's confinement to refuse unless granted."""
    config, made = portable.neutral_config(json.dumps(DOCKER_CONFIG).encode())
    assert [(m.destination, m.kind) for m in made] == [
        ("/etc/hosts", "hosts"),
        ("/dev/shm", "tmpfs"),
    ]
    assert [m["destination"] for m in config["mounts"]] == ["/proc", "/data"]
    assert "hooks" not in config and "cgroupsPath" not in config["linux"]
    assert config["root"]["path"] == "rootfs"


def test_a_hook_of_the_users_is_kept() -> None:
    """Only the runtime's networking hook is dropped: another hook stays in the config,
    where confinement refuses it unless the caller passes hooks=."""
    raw = {**DOCKER_CONFIG, "hooks": {"poststart": [{"path": "/bin/evil"}]}}
    config, _ = portable.neutral_config(json.dumps(raw).encode())
    assert config["hooks"] == {"poststart": [{"path": "/bin/evil"}]}


def test_bundle_binds_come_from_the_bundles_own_files(tmp_path: Path) -> None:
    """Into runc, the runtime's mounts are bound from files in the new bundle."""
    raw, made = portable.for_bundle(json.dumps(DOCKER_CONFIG).encode(), tmp_path)
    binds = {
        m["destination"]: m["source"] for m in json.loads(raw)["mounts"] if m.get("type") == "bind"
    }
    assert binds["/etc/hosts"] == str(tmp_path / "runtime-files" / "etc-hosts")
    assert binds["/dev/shm"] == str(tmp_path / "runtime-files" / "dev-shm")
    assert binds["/data"] == "/srv/data"
    assert len(made) == 2


def test_remove_labelled_touches_only_cedanas_files(tmp_path: Path) -> None:
    """A label naming a directory outside /var/lib/cedana/files (or one without the
    marker) removes nothing: labels are anyone's to set."""
    victim = tmp_path / "keep"
    victim.mkdir()
    portable.remove_labelled({portable.FILES_LABEL: str(victim)})
    portable.remove_files(victim)
    assert victim.is_dir()


def test_candidates_complete_names_as_docker_does() -> None:
    """A short name may come back from a load as docker.io/..., with :latest."""
    assert candidates("busybox") == [
        "busybox",
        "docker.io/library/busybox:latest",
        "localhost/busybox",
    ]
    assert candidates("localhost/x/y:1")[0] == "localhost/x/y:1"
    assert "docker.io/cedana/b:1" in candidates("cedana/b:1")


class _Store:
    def __init__(self, what: str, has: Found | None = None, fails: bool = False):
        self.what, self.has, self.fails, self.loaded = what, has, fails, False

    def find(self, image: ImageFacts) -> Found | None:
        if self.fails:
            raise RuntimeUnavailable("not answering")
        return self.has

    def save(self, ref: str, archive: Path) -> None:
        archive.write_bytes(b"tar")

    def load(self, archive: Path) -> None:
        self.loaded = archive.read_bytes() == b"tar"
        self.has = Found("b:1", "id", "sha256:c")

    def save_command(self, ref: str, archive: str) -> str:
        return f"src save {ref} {archive}"

    def load_command(self, archive: str) -> str:
        return f"dst load {archive}"


IMAGE = ImageFacts(name="b:1", chain_id="sha256:c", source="docker")


def test_bring_moves_the_image_from_the_source(tmp_path: Path) -> None:
    """An image missing from the target is saved from the source and loaded into it."""
    target = _Store("target")
    found = bring(IMAGE, target, _Store("source", Found("b:1", "x", "sha256:c")), work_dir=tmp_path)
    assert target.loaded and found.ref == "b:1"


@pytest.mark.parametrize("fails", [False, True])
def test_bring_names_the_image_and_the_commands(tmp_path: Path, fails: bool) -> None:
    """When the source has no such image, or cannot be reached, the error names the image,
    its layers, and the exact commands that bring it."""
    with pytest.raises(ImageNotFound) as exc:
        bring(IMAGE, _Store("target"), _Store("source", fails=fails), work_dir=tmp_path)
    message = str(exc.value)
    assert "'b:1' (layers sha256:c)" in message
    assert "src save b:1 image.tar && dst load image.tar" in message
    assert ("cannot be reached" in message) == fails


# --- CRIU's images adapted to the target -------------------------------------------------


def _write(path: Path, magic: str, entries: list[dict[str, Any]]) -> None:
    import pycriu

    with open(path, "wb") as f:
        pycriu.images.dump({"magic": magic, "entries": entries}, f)


def _images(tmp_path: Path) -> Path:
    """A container's images: pid 1, its root and cwd on mount 10 (``/``, a slave of the
    source host's group 4), /etc/resolv.conf bound in (mount 11)."""
    images = tmp_path / "images"
    images.mkdir()
    _write(images / "pstree.img", "PSTREE", [{"pid": 1, "ppid": 0, "pgid": 1, "sid": 1}])
    _write(images / "fs-1.img", "FS", [{"cwd_id": 3, "root_id": 4, "umask": 18}])
    _write(
        images / "ids-1.img",
        "IDS",
        [{"vm_id": 1, "files_id": 1, "fs_id": 1, "sighand_id": 1, "mnt_ns_id": 13}],
    )
    reg = {
        "flags": 0,
        "pos": 0,
        "fown": {"uid": 0, "euid": 0, "signum": 0, "pid_type": 0, "pid": 0},
    }
    _write(
        images / "files.img",
        "FILES",
        [
            {
                "type": "REG",
                "id": n,
                "reg": {**reg, "id": n, "name": "/", "mnt_id": 10, "mode": 0o40755},
            }
            for n in (3, 4)
        ],
    )
    mnt = {"fstype": 0, "root_dev": 1, "flags": 0, "root": "/", "source": "x", "options": ""}
    _write(
        images / "mountpoints-13.img",
        "MNTS",
        [
            {**mnt, "mnt_id": 10, "parent_mnt_id": 1, "mountpoint": "/", "master_id": 4},
            {
                **mnt,
                "mnt_id": 11,
                "parent_mnt_id": 10,
                "mountpoint": "/etc/resolv.conf",
                "ext_key": "/etc/resolv.conf",
            },
        ],
    )
    return images


def _load(path: Path) -> list[dict[str, Any]]:
    from cedana.criu import load_image

    entries: list[dict[str, Any]] = load_image(path)["entries"]
    return entries


def test_the_root_is_no_slave_of_the_source_hosts_mounts(tmp_path: Path) -> None:
    """The root's slavery to a peer group outside the container is dropped (CRIU could
    not copy it where the target's root is not shared); nothing else changes."""
    images = _images(tmp_path)
    portable.drop_root_slavery(images)
    root, bound = _load(images / "mountpoints-13.img")
    assert "master_id" not in root and bound["ext_key"] == "/etc/resolv.conf"


def test_the_roots_mode_becomes_the_targets(tmp_path: Path) -> None:
    """Every process's root and cwd at ``/`` of the root mount get the target's mode."""
    images = _images(tmp_path)
    portable.set_root_mode(images, 0o555)
    assert [e["reg"]["mode"] for e in _load(images / "files.img")] == [0o40555, 0o40555]


def test_a_mount_the_target_does_not_make_is_left_to_the_image(tmp_path: Path) -> None:
    """An external mount the target runtime does not make leaves the mount table; one
    that a process holds a file of is refused, naming it."""
    images = _images(tmp_path)
    portable.drop_mounts(images, ["/etc/resolv.conf"])
    assert [e["mountpoint"] for e in _load(images / "mountpoints-13.img")] == ["/"]
    (tmp_path / "held").mkdir()
    images = _images(tmp_path / "held")
    reg = {
        "flags": 0,
        "pos": 0,
        "fown": {"uid": 0, "euid": 0, "signum": 0, "pid_type": 0, "pid": 0},
    }
    held = {
        "type": "REG",
        "id": 9,
        "reg": {**reg, "id": 9, "name": "/etc/resolv.conf", "mnt_id": 11},
    }
    _write(images / "files.img", "FILES", [*_load(images / "files.img"), held])
    with pytest.raises(ContainerError, match="holds /etc/resolv.conf open"):
        portable.drop_mounts(images, ["/etc/resolv.conf"])


@pytest.mark.parametrize("name", ["--output=/etc/x", "a b", "", "x\n"])
def test_an_image_name_that_is_no_reference_is_refused(tmp_path: Path, name: str) -> None:
    """The artifact's image name goes to the stores' command lines: one that is not an
    image reference (an option, spaces) is refused before any store is asked."""
    target = _Store("target")
    with pytest.raises(UnsafeArtifact, match="not an image reference"):
        bring(ImageFacts(name=name, chain_id=None), target, None, work_dir=tmp_path)


@pytest.mark.parametrize("name", ["../../../escaped", "a/../../b", "/abs/x", "..", "-x\n"])
def test_a_files_dir_stays_under_files_root_whatever_the_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str
) -> None:
    """The files a restore into containerd or docker makes go in a new directory of
    FILES_ROOT, whatever the container's name (an artifact's, when the caller gives
    none): a name with '/' or '..' does not put it, or any directory, elsewhere. Fails
    while the name is joined into the path as it is."""
    root = tmp_path / "lib" / "cedana" / "files"
    monkeypatch.setattr(portable, "FILES_ROOT", root)
    files = portable.new_files_dir("containerd", name)
    assert files.parent == root and "/" not in files.name and not files.name.startswith(".")
    made = portable.make_files(
        files, [portable.RuntimeMount(destination="/etc/hosts", kind="hosts")], hostname="h"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["lib"]
    assert [p for p in root.iterdir()] == [made]
    portable.remove_files(made)


@pytest.mark.parametrize(
    ("ids", "name"),
    [
        ({"podman": "--root=/tmp/x"}, "b:1"),
        ({"docker": "../containers/web/json"}, "b:1"),
        ({"docker": "sha256:ab cd"}, "b:1"),
        ({}, "a/../../containers/web"),
    ],
)
def test_an_image_id_that_is_no_id_is_refused(
    tmp_path: Path, ids: dict[str, str], name: str
) -> None:
    """The artifact's image ids are looked up in the stores too (podman's command line,
    docker's API path): an id that is not a hex digest, or a name with a '..' component,
    is refused before any store is asked. Fails while only the name is checked."""
    target = _Store("target", fails=True)  # asked: RuntimeUnavailable, not UnsafeArtifact
    with pytest.raises(UnsafeArtifact, match="not an image"):
        bring(ImageFacts(name=name, chain_id=None, ids=ids), target, None, work_dir=tmp_path)
