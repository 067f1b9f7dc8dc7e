"""podman containers against a real podman (runc as its OCI runtime), conmon and CRIU.

The module keeps podman away from the machine's own podman state: its storage
(graphroot, runroot) and its containers.conf live in a temp dir, named through
``CONTAINERS_STORAGE_CONF`` and ``CONTAINERS_CONF``, which podman (and the conmon
exit commands it writes) read. containers.conf sets runc, cgroupfs and rlimits this
machine can grant (no CAP_SYS_RESOURCE). The test image is a busybox-static tree,
``podman import``-ed (no registry). ``podman`` is used to set up and to look at what
podman shows; cedana itself talks to podman through ``podman container inspect`` and
``podman container restore --import``. Every container and image a test makes is
removed at teardown, and the storage is unmounted and deleted at the end.
"""

from __future__ import annotations

import contextlib
import io
import itertools
import json
import os
import shutil
import signal
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import zstandard

import cedana
from cedana.rootfs.mounts import mountinfo, umount
from tests.capabilities import integration, requires_busybox, requires_runtime
from tests.conftest import wait_for
from tests.helpers import (
    COUNTER,
    assert_counts_on,
    busybox_tree,
    count,
    craft,
    name_for,
    remove_runc_container,
    run_cedana,
    wait_count,
)

pytestmark = [*integration, requires_runtime("podman"), requires_runtime("runc"), requires_busybox]

IMAGE = "localhost/cedana-busybox:test"
CONTAINERS_CONF = """\
[containers]
default_ulimits = ["nofile=1024:1024", "nproc=4096:4096"]
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
"""
STORAGE_CONF = """\
[storage]
driver = "overlay"
graphroot = "{root}/graph"
runroot = "{root}/run"
"""


def _image_tar(extra: dict[str, bytes] | None = None) -> bytes:
    """The busybox tree (plus ``extra`` files) as a tar podman import takes."""
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for kind, path, content, mode in busybox_tree():
            info = tarfile.TarInfo(path)
            info.mode = mode
            if kind == "dir":
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif kind == "link":
                info.type, info.linkname = tarfile.SYMTYPE, content
                tar.addfile(info)
            else:
                info.size = len(content)
                tar.addfile(info, io.BytesIO(content))
        for path, content in (extra or {}).items():
            info = tarfile.TarInfo(path)
            info.size, info.mode = len(content), 0o644
            tar.addfile(info, io.BytesIO(content))
    return out.getvalue()


class Podman:
    """podman with this module's storage and containers.conf (from the environment)."""

    def __init__(self, root: Path):
        self.root = root
        self.graph = root / "graph"
        self.run_dir = root / "run"
        self.made: list[str] = []

    def __call__(self, *args: str, check: bool = True) -> str:
        done = subprocess.run(
            ["podman", *args], capture_output=True, text=True, timeout=120, check=False
        )
        if check and done.returncode != 0:
            raise AssertionError(f"podman {' '.join(args)}: {done.stderr.strip()}")
        return done.stdout

    def import_image(self, ref: str, extra: dict[str, bytes] | None = None) -> None:
        tar = self.root / "image.tar"
        tar.write_bytes(_image_tar(extra))
        self("import", "--quiet", os.fspath(tar), ref)
        tar.unlink()

    def start(self, name: str, script: str = COUNTER, image: str = IMAGE) -> cedana.PodmanContainer:
        """A detached container running ``script`` under busybox sh, no network."""
        self.made.append(name)
        self("run", "-d", "--name", name, "--network", "none", image, "/bin/sh", "-c", script)
        return cedana.PodmanContainer(name)

    def status(self, name: str) -> str | None:
        out = self("container", "inspect", "--format", "{{.State.Status}}", name, check=False)
        return out.strip() or None

    def names(self) -> set[str]:
        return set(self("ps", "--all", "--format", "{{.Names}}").split())

    def running(self) -> set[str]:
        return set(self("ps", "--format", "{{.Names}}").split())

    def cat(self, name: str, *paths: str) -> str:
        return self("exec", name, "cat", *paths)

    def remove(self, name: str) -> None:
        self("rm", "--force", "--time", "0", "--ignore", name, check=False)


@pytest.fixture(scope="module")
def podman(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Podman]:
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
        p("volume", "rm", "--all", "--force", check=False)
        env.undo()
        for mount in sorted(
            (m.mountpoint for m in mountinfo() if m.mountpoint.startswith(str(root))),
            key=lambda m: -len(str(m)),
        ):
            with contextlib.suppress(OSError, cedana.CedanaError):
                umount(Path(mount), detach=True)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def made(podman: Podman) -> Iterator[list[str]]:
    """Names this test's containers get; each is removed from podman at teardown."""
    names: list[str] = []
    yield names
    for name in names + podman.made:
        podman.remove(name)
    podman.made.clear()


#: The counter, also saying each count on its stdout (podman's log).
TICKING = COUNTER.replace("sleep", "echo tick $i; sleep")
CHANGES = (
    "echo new > /etc/new.txt; echo changed > /etc/image.txt; rm /etc/doomed.txt; "
    "rm -r /www; mkdir /www; echo other > /www/other.html; mkdir -p /data/d; "
    "echo deep > /data/d/f; ln /data/d/f /data/d/hard"
)


def assert_changes_there(podman: Podman, name: str) -> None:
    """The files written, changed, deleted and the directory replaced before the
    checkpoint are as they were (hard link included)."""
    assert podman.cat(name, "/etc/new.txt", "/etc/image.txt") == "new\nchanged\n"
    assert podman.cat(name, "/www/other.html", "/data/d/f") == "other\ndeep\n"
    assert podman("exec", name, "ls", "/www").split() == ["other.html"]
    assert "doomed.txt" not in podman("exec", name, "ls", "/etc").split()
    inodes = podman("exec", name, "stat", "-c", "%i", "/data/d/f", "/data/d/hard").split()
    assert inodes[0] == inodes[1]


def test_counter_and_files_come_back_in_podman(
    podman: Podman, made: list[str], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A checkpoint kills the container (podman shows it exited); restored into podman
    under its own name, podman runs it as its own: ``podman ps`` lists it, exec and logs
    work, its counter goes on where it stopped and its rootfs changes are there; then
    podman stops and removes it."""
    name = name_for(request)
    c = podman.start(name, TICKING)
    podman("exec", name, "sh", "-c", CHANGES)
    before = wait_count(c, 5)
    ckpt = c.checkpoint(tmp_path / "c.tar.zst")
    assert podman.status(name) in ("exited", "stopped")
    assert ckpt.manifest.runtime == "podman"
    assert ckpt.manifest.workload["podman"]["image"]["name"] == IMAGE
    podman("rm", name)

    restored = cedana.restore(ckpt.path)
    assert isinstance(restored, cedana.PodmanContainer) and restored.name == name
    assert name in podman.running()
    assert_changes_there(podman, name)
    assert_counts_on(restored, before)
    # Its output goes to a log of its own: podman's, which podman logs reads.
    wait_for(lambda: "tick" in podman("logs", name), 10, f"{name} writing to its podman log")
    podman("stop", "--time", "1", name)
    assert podman.status(name) in ("exited", "stopped")
    podman("rm", name)
    assert name not in podman.names()


def test_leave_running_and_restore_beside_the_original(
    podman: Podman, made: list[str], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """``cedana checkpoint podman:NAME --leave-running`` leaves the original running
    (its counter goes on, unfrozen); ``cedana restore --name`` brings a second container
    beside it, whose counter goes on from the checkpoint."""
    name, new = name_for(request), name_for(request, "-2")
    made.append(new)
    c = podman.start(name)
    wait_count(c, 3)
    out = tmp_path / "c.tar.zst"
    done = run_cedana("checkpoint", f"podman:{name}", "-o", os.fspath(out), "--leave-running")
    assert done.returncode == 0, done.stderr
    before = count(c)
    wait_count(c, len(before) + 3)  # the original runs on
    assert podman.status(name) == "running"

    done = run_cedana("restore", os.fspath(out), "--name", new)
    assert done.returncode == 0, done.stderr
    assert {name, new} <= podman.running()
    assert_counts_on(cedana.PodmanContainer(new), before[:3])


def test_multi_process_container(
    podman: Podman, made: list[str], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A container with a shell, two background sleepers and the counter comes back with
    all of them, in one process tree."""
    name, new = name_for(request), name_for(request, "-2")
    made.append(new)
    c = podman.start(name, "sleep 1000 & sleep 1001 & " + COUNTER)
    wait_count(c, 3)
    ckpt = c.checkpoint(tmp_path / "c.tar.zst", leave_running=True)
    restored = cedana.PodmanContainer.restore(ckpt.path, name=new)
    procs = podman("exec", new, "ps", "-o", "args")
    assert "sleep 1000" in procs and "sleep 1001" in procs
    assert_counts_on(restored, count(restored)[:3])


def test_paused_container(
    podman: Podman, made: list[str], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A paused container is checkpointed paused: with leave_running it stays paused (its
    counter does not move); the restored one runs and counts on."""
    name, new = name_for(request), name_for(request, "-2")
    made.append(new)
    c = podman.start(name)
    wait_count(c, 3)
    podman("pause", name)
    frozen = count(c)
    ckpt = c.checkpoint(tmp_path / "c.tar.zst", leave_running=True)
    assert ckpt.manifest.workload["container"]["status"] == "paused"
    assert podman.status(name) == "paused"
    assert count(c) == frozen
    restored = cedana.restore(ckpt.path, name=new)
    assert podman.status(new) == "running"
    assert_counts_on(restored, frozen)


def test_restore_into_runc(
    podman: Podman, made: list[str], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """The same podman artifact restores as a plain runc container (``into="runc"``) beside
    the original, with its rootfs changes; podman's per-container files (hosts, hostname)
    and its defaults are granted, as a checkpoint may not choose host paths."""
    name, new = name_for(request), name_for(request, "-runc")
    c = podman.start(name)
    podman("exec", name, "sh", "-c", CHANGES)
    wait_count(c, 3)
    ckpt = c.checkpoint(tmp_path / "c.tar.zst", leave_running=True)
    grants = cedana.Grants(
        binds=[podman.graph / "overlay-containers", podman.run_dir / "overlay-containers"],
        unmasked=["/proc/asound"],
    )
    try:
        restored = cedana.restore(ckpt.path, into="runc", name=new, grants=grants)
        assert isinstance(restored, cedana.RuncContainer)
        assert restored.exec(["cat", "/etc/new.txt", "/www/other.html"]) == b"new\nother\n"
        assert_counts_on(restored, count(restored)[:3])
        assert new not in podman.names()
    finally:
        remove_runc_container(new, Path("/run/runc"))


def test_podman_restores_cedanas_export_itself(
    podman: Podman, made: list[str], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """``PodmanContainer.export`` writes podman's import format (zstd) from a cedana
    checkpoint, and ``podman container restore --import`` alone restores it: counter and
    rootfs changes as they were."""
    name, new = name_for(request), name_for(request, "-2")
    made.append(new)
    c = podman.start(name)
    podman("exec", name, "sh", "-c", CHANGES)
    wait_count(c, 3)
    ckpt = c.checkpoint(tmp_path / "c.tar.zst", leave_running=True)
    exported = cedana.PodmanContainer.export(ckpt.path, tmp_path / "web.podman.tar.zst")
    with pytest.raises(cedana.ArtifactExists):
        cedana.PodmanContainer.export(ckpt.path, exported)
    podman("container", "restore", "--import", os.fspath(exported), "--name", new)
    assert new in podman.running()
    assert_changes_there(podman, new)
    restored = cedana.PodmanContainer(new)
    assert_counts_on(restored, count(restored)[:3])


# --- bad input ------------------------------------------------------------------------


def test_no_such_container_and_not_running(
    podman: Podman, made: list[str], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A container podman does not have, and one that is not running (created, never
    started), are refused with clear errors, before anything is written."""
    with pytest.raises(cedana.ContainerNotFound, match="podman has no container 'nope-x'"):
        cedana.PodmanContainer("nope-x").checkpoint(tmp_path / "a.tar.zst")
    name = name_for(request)
    podman.made.append(name)
    podman("create", "--name", name, "--network", "none", IMAGE, "/bin/sh", "-c", COUNTER)
    with pytest.raises(cedana.ContainerNotRunning, match="is created.*podman start"):
        cedana.PodmanContainer(name).checkpoint(tmp_path / "b.tar.zst")
    assert not list(tmp_path.iterdir())
    done = run_cedana("checkpoint", "podman:nope-x", "-o", os.fspath(tmp_path / "c.tar.zst"))
    assert done.returncode != 0 and "podman has no container 'nope-x'" in done.stderr


def test_name_taken_and_failed_restore_leave_nothing(
    podman: Podman, made: list[str], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A restore under a name podman has is refused before podman runs anything; a
    restore that podman starts and CRIU fails (a crafted artifact without CRIU's fs
    images) removes the container podman made; the original keeps running."""
    name, new = name_for(request), name_for(request, "-2")
    made.append(new)
    c = podman.start(name)
    wait_count(c, 3)
    ckpt = c.checkpoint(tmp_path / "c.tar.zst", leave_running=True)
    with pytest.raises(cedana.ContainerExists, match=f"podman container named '{name}' exists"):
        cedana.restore(ckpt.path, name=name)
    before = podman.names()

    def drop_fs_images(_workload: dict[str, Any], images: Path) -> None:
        for image in images.glob("fs-*.img"):
            image.unlink()

    crafted = craft(ckpt.path, tmp_path / "crafted.tar.zst", drop_fs_images)
    with pytest.raises(cedana.RestoreFailed, match=f"podman could not restore '{new}'") as e:
        cedana.restore(crafted, name=new)
    assert e.value.log_tail  # CRIU's log, kept although the container is gone
    assert podman.names() == before
    assert podman.status(name) == "running"


def test_named_volume_is_refused(
    podman: Podman, made: list[str], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A container with a named volume is refused naming the volume (cedana does not
    capture volumes yet), before anything is frozen: it keeps running, its counter on."""
    name = name_for(request)
    podman.made.append(name)
    volume = f"{name}-vol"
    podman("run", "-d", "--name", name, "--network", "none", "-v", f"{volume}:/vol", IMAGE,
           "/bin/sh", "-c", COUNTER)  # fmt: skip
    c = cedana.PodmanContainer(name)
    before = wait_count(c, 3)
    with pytest.raises(cedana.NotCheckpointable, match=f"named volume '{volume}'.*/vol"):
        c.checkpoint(tmp_path / "c.tar.zst")
    assert not list(tmp_path.iterdir())
    wait_count(c, len(before) + 3)
    assert podman.status(name) == "running"


def test_image_missing_on_restore(
    podman: Podman, made: list[str], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A checkpoint whose image is no longer in podman's store is refused naming the image,
    and no container is made."""
    other = "localhost/cedana-busybox-other:test"
    podman.import_image(other, {"etc/other.txt": b"other image\n"})
    name = name_for(request)
    c = podman.start(name, image=other)
    wait_count(c, 3)
    ckpt = c.checkpoint(tmp_path / "c.tar.zst")
    podman("rm", name)
    podman("rmi", other)
    before = podman.names()
    with pytest.raises(cedana.ImageNotFound, match="cedana-busybox-other.*podman load"):
        cedana.restore(ckpt.path)
    assert podman.names() == before


# --- podman's own archives, both ways ------------------------------------------------------

#: What podman 4.3's export carries of a container's changes: new files and directories,
#: deleted files, a directory removed and made again, a hard link and a symlink (a changed
#: image file whose path is missing on the host it leaves out: libpod stats the host path).
PODMAN_CHANGES = (
    "echo new > /etc/new.txt; rm /etc/doomed.txt; rm -r /www; mkdir /www; "
    "echo other > /www/other.html; mkdir -p /data/d; echo deep > /data/d/f; "
    "ln /data/d/f /data/d/hard; ln -s /etc/new.txt /etc/link"
)


def assert_podman_changes_there(read: Any, ls: Any) -> None:
    """``read(*paths)`` and ``ls(dir)`` in the restored container show PODMAN_CHANGES."""
    assert read("/etc/new.txt", "/www/other.html", "/data/d/f", "/etc/link") == (
        "new\nother\ndeep\nnew\n"
    )
    assert ls("/www") == ["other.html"]  # the new content of the replaced directory
    assert "doomed.txt" not in ls("/etc")


def podman_export(podman: Podman, name: str, dest: Path, *flags: str) -> Path:
    podman("container", "checkpoint", "--export", os.fspath(dest), *flags, name)
    return dest


def test_podmans_own_export_restores_into_podman(
    podman: Podman, made: list[str], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """An archive ``podman container checkpoint --export`` wrote (zstd) is refused while
    unsigned artifacts are not accepted; ``cedana inspect`` shows it as a podman container
    checkpoint; ``cedana restore --insecure-accept-unsigned`` brings it back into podman,
    which runs it as its own: counter on from the checkpoint, the changes there."""
    name = name_for(request)
    c = podman.start(name)
    podman("exec", name, "sh", "-c", PODMAN_CHANGES)
    before = wait_count(c, 5)
    archive = podman_export(podman, name, tmp_path / "web.tar.zst", "--compress", "zstd")
    podman("rm", name)

    with pytest.raises(cedana.UntrustedArtifact, match="podman checkpoint archive.*--insecure"):
        cedana.restore(archive)
    assert name not in podman.names()
    done = run_cedana("inspect", os.fspath(archive), "--json")
    assert done.returncode == 0, done.stderr
    shown = json.loads(done.stdout)
    assert shown["checkpoint"]["runtime"] == "podman"
    assert shown["container"]["rootfs"]["format"] == "podman"
    assert {p["command"] for p in shown["images"]["processes"]} >= {"sh"}

    done = run_cedana("restore", os.fspath(archive), "--insecure-accept-unsigned", "--json")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["name"] == name
    assert name in podman.running()
    restored = cedana.PodmanContainer(name)
    assert_podman_changes_there(
        lambda *p: podman.cat(name, *p), lambda d: podman("exec", name, "ls", d).split()
    )
    assert_counts_on(restored, before)
    podman("stop", "--time", "1", name)
    podman("rm", name)


def test_podmans_own_export_restores_into_runc(
    podman: Podman, made: list[str], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A gzip export podman wrote with ``--leave-running`` restores as a plain runc
    container beside the original (the image's layers found in podman's store by the
    archive's image id), with podman's per-container files granted: counter on, the
    changes there, the root's mode as podman's."""
    name, new = name_for(request), name_for(request, "-runc")
    c = podman.start(name)
    podman("exec", name, "sh", "-c", PODMAN_CHANGES)
    before = wait_count(c, 5)
    archive = podman_export(
        podman, name, tmp_path / "web.tar.gz", "--compress", "gzip", "--leave-running"
    )
    grants = cedana.Grants(
        binds=[podman.graph / "overlay-containers", podman.run_dir / "overlay-containers"],
        unmasked=["/proc/asound"],
    )
    ckpt = cedana.open(archive, trust="any")
    assert ckpt.manifest.workload["rootfs"]["lower"]  # found in this podman's store
    try:
        restored = cedana.restore(ckpt, into="runc", name=new, grants=grants, trust="any")
        assert isinstance(restored, cedana.RuncContainer)

        def read(*paths: str) -> str:
            return restored.exec(["cat", *paths]).decode()

        assert_podman_changes_there(read, lambda d: restored.exec(["ls", d]).decode().split())
        assert restored.exec(["stat", "-c", "%a", "/"]).decode().strip() == (
            podman("exec", name, "stat", "-c", "%a", "/").strip()
        )
        # podman's --leave-running export takes the rootfs after the container runs on, so
        # its log may hold a few counts more than its memory: the counter goes on from its
        # memory (those counts written again, one rewind), it never starts over.
        after = wait_count(restored, len(before) + 10)
        assert after[: len(before)] == before
        rewinds = [(a, b) for a, b in itertools.pairwise(after) if b != a + 1]
        assert len(rewinds) <= 1 and all(1 < b <= a for a, b in rewinds), after
        assert podman.status(name) == "running"
    finally:
        remove_runc_container(new, Path("/run/runc"))


def test_cli_export_restored_by_podman_itself(
    podman: Podman, made: list[str], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """``cedana export FILE --format podman -o OUT`` writes what ``podman container restore
    --import`` alone restores (counter and changes as they were); an existing OUT, and a
    checkpoint that is not of a podman container, are clear errors that write nothing."""
    name, new = name_for(request), name_for(request, "-2")
    made.append(new)
    c = podman.start(name)
    podman("exec", name, "sh", "-c", CHANGES)
    wait_count(c, 3)
    ckpt = c.checkpoint(tmp_path / "c.tar.zst", leave_running=True)
    out = tmp_path / "web.podman.tar.zst"
    done = run_cedana("export", os.fspath(ckpt.path), "--format", "podman", "-o", os.fspath(out))
    assert done.returncode == 0, done.stderr
    assert "podman container restore --import" in done.stdout
    again = run_cedana("export", os.fspath(ckpt.path), "--format", "podman", "-o", os.fspath(out))
    assert again.returncode == 1 and "already exists" in again.stderr
    podman("container", "restore", "--import", os.fspath(out), "--name", new)
    assert new in podman.running()
    assert_changes_there(podman, new)
    restored = cedana.PodmanContainer(new)
    assert_counts_on(restored, count(restored)[:3])

    proc = cedana.spawn(["sleep", "1000"])
    plain = proc.checkpoint(tmp_path / "p.tar.zst")
    done = run_cedana(
        "export", os.fspath(plain.path), "--format", "podman", "-o", os.fspath(tmp_path / "x")
    )
    assert done.returncode == 1
    assert "holds a process checkpoint, not one of a podman container" in done.stderr
    assert not (tmp_path / "x").exists()


def _rewrite(src: Path, dest: Path, edit: Any) -> Path:
    """podman's archive ``src`` rewritten as ``dest`` (zstd): ``edit(entries)`` changes the
    list of (TarInfo, bytes or None) in place."""
    raw = zstandard.ZstdDecompressor().stream_reader(src.open("rb"), read_across_frames=True)
    entries: list[tuple[tarfile.TarInfo, bytes | None]] = []
    with tarfile.open(fileobj=raw, mode="r|") as tar:
        for info in tar:
            stream = tar.extractfile(info)
            entries.append((info, stream.read() if stream is not None else None))
    edit(entries)
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    dest.write_bytes(zstandard.ZstdCompressor().compress(out.getvalue()))
    return dest


def _diff_with(entries: list[tuple[tarfile.TarInfo, bytes | None]], bad: tarfile.TarInfo) -> None:
    """Put ``bad`` into the archive's rootfs-diff.tar."""
    for i, (info, data) in enumerate(entries):
        if info.name == "rootfs-diff.tar":
            out = io.BytesIO()
            with (
                tarfile.open(fileobj=io.BytesIO(data or b""), mode="r:") as old,
                tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as new,
            ):
                for member in old:
                    new.addfile(member, old.extractfile(member) if member.isreg() else None)
                new.addfile(bad)
            entries[i] = (info, out.getvalue())


def _own_scratch() -> set[Path]:
    """This process's scratch directories (others' tests make and remove theirs meanwhile;
    cedana names each with its owner's pid)."""
    return {
        p for p in Path(tempfile.gettempdir()).glob(".cedana-*") if f"-{os.getpid()}-" in p.name
    }


def _hostile_edits() -> dict[str, tuple[Any, type[Exception], str]]:
    def entry(name: str, **attrs: Any) -> tarfile.TarInfo:
        info = tarfile.TarInfo(name)
        for key, value in attrs.items():
            setattr(info, key, value)
        return info

    return {
        "path escape": (
            lambda e: e.append((entry("checkpoint/../../../etc/cron.d/cedana"), b"* * * * *\n")),
            cedana.UnsafeArtifact,
            "unsafe name",
        ),
        "symlink escape": (
            lambda e: _diff_with(e, entry("etc/up", type=tarfile.SYMTYPE, linkname="../../..")),
            cedana.UnsafeArtifact,
            "links outside",
        ),
        "device node": (
            lambda e: _diff_with(
                e, entry("dev/kmem", type=tarfile.CHRTYPE, devmajor=1, devminor=2)
            ),
            cedana.UnsafeArtifact,
            "device node 1:2",
        ),
        "missing spec.dump": (
            lambda e: e.__setitem__(slice(None), [x for x in e if x[0].name != "spec.dump"]),
            cedana.ArtifactCorrupt,
            "no spec.dump",
        ),
    }


@pytest.mark.parametrize(
    "case", ["path escape", "symlink escape", "device node", "missing spec.dump"]
)
def test_hostile_podman_archive_is_refused_before_anything_runs(
    podman: Podman, made: list[str], tmp_path: Path, request: pytest.FixtureRequest, case: str
) -> None:
    """A podman archive made hostile (a member escaping the extraction directory, a symlink
    in the rootfs changes climbing out, a device node among them, spec.dump missing) is
    refused, with what is wrong named, even with unsigned archives accepted: no podman
    container is made, nothing is written outside the test's directory and no scratch
    directory is left."""
    edit, error, message = _hostile_edits()[case]
    name = name_for(request, "-" + case.replace(" ", "-").replace(".", "-"))
    c = podman.start(name)
    podman("exec", name, "sh", "-c", PODMAN_CHANGES)
    wait_count(c, 3)
    good = podman_export(podman, name, tmp_path / "good.tar.zst", "--leave-running")
    bad = _rewrite(good, tmp_path / "bad.tar.zst", edit)
    names, scratch = podman.names(), _own_scratch()
    with pytest.raises(error, match=message):
        cedana.restore(bad, name=name_for(request, "-r"), trust="any")
    with pytest.raises(error, match=message):
        cedana.restore(bad, into="runc", name=name_for(request, "-r"), trust="any")
    assert podman.names() == names
    assert _own_scratch() == scratch
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.tar.zst", "good.tar.zst"]
    assert not Path("/etc/cron.d/cedana").exists()
    assert not (Path("/run/runc") / name_for(request, "-r")).exists()
    assert podman.status(name) == "running"


# --- what a workload holds -----------------------------------------------------------------


def _read(podman: Podman, name: str, path: str) -> str:
    return podman("exec", name, "cat", path, check=False).strip()


def test_a_64_mib_buffer_holds(
    podman: Podman, made: list[str], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A shell holding 64 MiB (48 MiB of random bytes as base64) in a variable has the
    same checksum of it after a restore into podman as before: the memory came back."""
    script = (
        "a=$(head -c 50331648 /dev/urandom | base64 -w0); "
        'echo -n "$a" | md5sum > /tmp/before; '
        'while true; do if [ -e /tmp/check ]; then echo -n "$a" | md5sum > /tmp/after.new; '
        "mv /tmp/after.new /tmp/after; rm /tmp/check; fi; sleep 0.05; done"
    )
    name, new = name_for(request), name_for(request, "-2")
    made.append(new)
    podman.start(name, script)
    wait_for(lambda: _read(podman, name, "/tmp/before"), 60, "the buffer")
    before = _read(podman, name, "/tmp/before")
    ckpt = cedana.PodmanContainer(name).checkpoint(tmp_path / "c.tar.zst")
    assert sum(m.size for m in ckpt.manifest.members if m.name.startswith("pages-")) > 64 << 20
    cedana.restore(ckpt, name=new)
    podman("exec", new, "touch", "/tmp/check")
    wait_for(lambda: _read(podman, new, "/tmp/after"), 60, "the checksum after restore")
    assert _read(podman, new, "/tmp/after") == before


def test_loopback_tcp_connection_continues(
    podman: Podman, made: list[str], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A server and a client in one container, talking over one TCP connection on its
    loopback, checkpointed with ``tcp_established``: restored into podman (podman's restore
    gets --tcp-established from the checkpoint), the same connection goes on, with
    every line echoed once and in order, no reconnect."""
    script = (
        "nc -l -p 7000 -e cat & sleep 0.5; "
        "(i=0; while true; do i=$((i+1)); echo $i; sleep 0.05; done) "
        "| nc 127.0.0.1 7000 > /tmp/count.log"
    )
    name, new = name_for(request), name_for(request, "-2")
    made.append(new)
    c = podman.start(name, script)
    wait_count(c, 5)
    with pytest.raises(cedana.NotCheckpointable, match="tcp_established"):
        c.checkpoint(tmp_path / "refused.tar.zst")
    assert podman.status(name) == "running"
    before = wait_count(c, 10)
    ckpt = c.checkpoint(tmp_path / "c.tar.zst", tcp_established=True)
    assert any(s.state == "ESTABLISHED" for s in ckpt.inspect().sockets)
    restored = cedana.restore(ckpt, name=new)
    assert_counts_on(restored, before)


def _roots_under(graph: Path) -> dict[int, str]:
    """Every process whose root directory lies in podman's storage ``graph``: pid -> root."""
    out = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                root = os.readlink(f"/proc/{entry}/root")
                if root.startswith(str(graph)):
                    out[int(entry)] = root
    return out


def _descendants(pid: int) -> list[int]:
    """The processes below ``pid`` (children first found, then theirs)."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat_line = Path(f"/proc/{entry}/stat").read_bytes()
                parents[int(entry)] = int(stat_line.rsplit(b")", 1)[1].split()[1])
    found, frontier = [], [pid]
    while frontier:
        kids = [p for p, pp in parents.items() if pp in frontier]
        found += kids
        frontier = kids
    return found


def test_timed_out_restore_leaves_nothing_running(
    podman: Podman, made: list[str], tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """A restore into podman whose CRIU hangs (stopped here, once conmon's runc runs it:
    what a hostile image can make it do) runs out of time (a podman client that gives
    up then, as its 120 s timeout would) and leaves nothing behind: the hung CRIU gone,
    no process naming the container, no process in a root of podman's storage but the
    original's (which runs on), no podman container of that name, no runc state."""
    name, new = name_for(request), name_for(request, "-2")
    made.append(new)
    c = podman.start(name, "a=$(head -c 33554432 /dev/urandom | base64 -w0); " + COUNTER)
    wait_count(c, 3)
    ckpt = c.checkpoint(tmp_path / "c.tar.zst", leave_running=True)
    original = set(_roots_under(podman.graph).values())
    runc_before = _dead_runc_states(podman.graph)
    conmon_of_new = f"\0-n\0{new}\0".encode()
    hung: list[int] = []

    def criu_under_conmon() -> bool:
        for conmon in [p for p in os.listdir("/proc") if conmon_of_new in _cmdline(p)]:
            for pid in _descendants(int(conmon)):
                if _cmdline(str(pid)).split(b"\0")[0].endswith(b"criu"):
                    os.kill(pid, signal.SIGSTOP)
                    hung.append(pid)
                    return True
        return False

    class Impatient(cedana.runtimes.podman.PodmanCLI):
        def run(self, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
            if args[:2] != ("container", "restore"):
                return super().run(*args, check=check)
            restoring = subprocess.Popen(
                [self.binary, *args], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            try:
                wait_for(criu_under_conmon, 60, "CRIU restoring under conmon")
            finally:
                restoring.kill()
                restoring.wait()
            raise cedana.RuntimeTimeout("podman container restore took longer than 120s")

    with pytest.raises(cedana.RuntimeTimeout, match="took longer than"):
        cedana.PodmanContainer.restore(ckpt, name=new, client=Impatient())
    assert hung and _dead(hung[0])  # gone, or a zombie until pid 1 reaps it
    assert new not in podman.names()
    assert [p for p in os.listdir("/proc") if new.encode() in _cmdline(p)] == []
    assert set(_roots_under(podman.graph).values()) <= original
    # runc's state of a restore killed midway (its CRIU root mount) is gone too
    assert _dead_runc_states(podman.graph) - runc_before == set()
    assert podman.status(name) == "running"


def _dead_runc_states(graph: Path) -> set[str]:
    """runc's states under /run/runc of containers in podman's storage ``graph`` that run
    nothing (or whose state a killed restore left half made: a ``criu-root`` mount)."""
    out = set()
    for d in Path("/run/runc").iterdir():
        try:
            state = json.loads((d / "state.json").read_text())
        except (OSError, ValueError):
            out.add(d.name)
            continue
        pid = int(state.get("init_process_pid") or 0)
        in_graph = str(state.get("config", {}).get("rootfs", "")).startswith(str(graph))
        if in_graph and ((d / "criu-root").exists() or not Path(f"/proc/{pid}").exists()):
            out.add(d.name)
    return out


def _dead(pid: int) -> bool:
    """``pid`` runs no more: gone, or a zombie (dead, not reaped yet)."""
    try:
        return Path(f"/proc/{pid}/stat").read_bytes().rsplit(b")", 1)[1].split()[0] == b"Z"
    except OSError:
        return True


def _cmdline(pid: str) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""
