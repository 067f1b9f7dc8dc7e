"""podman's own checkpoint archives, read without podman or root: recognition (a cedana
artifact is never taken for one), the refusal of an unsigned archive, the verification
of its layout and inner tars before anything is presented, the manifest and members it is
presented as, and the conversion of podman's diff into overlay's. CRIU's images are fed
to the reader in pycriu's JSON form by a fake loader."""

from __future__ import annotations

import gzip
import io
import json
import os
import stat
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import zstandard

import cedana
from cedana.artifact import foreign
from cedana.container.namespaces import loopback_hook
from cedana.rootfs.containers_storage import from_podman_diff
from cedana.runtimes import _criu_archive, _podman_archive
from cedana.runtimes._criu_archive import ARCHIVE as FORMAT
from cedana.runtimes._criu_archive import open_archive
from cedana.runtimes.podman import PodmanCLI, _plan_import

IMAGE_ID = "4d" * 32
CONFIG = {
    "id": "ab" * 32,
    "name": "web",
    "rootfsImageID": IMAGE_ID,
    "rootfsImageName": "localhost/bb:t",
    "command": ["/bin/sh", "-c", "sleep 1000"],
    "stopSignal": 15,
    "logPath": "/var/lib/containers/x/ctr.log",
    "runtime": "runc",
}
SPEC = {"ociVersion": "1.0.2", "process": {"terminal": False}, "root": {"path": "/m"}}
IMAGES = {
    "pstree.img": [{"pid": 1, "ppid": 0}, {"pid": 7, "ppid": 1}],
    "core-1.img": [{"tc": {"comm": "sh"}}],
    "core-7.img": [{"tc": {"comm": "sleep"}}],
}


@pytest.fixture(autouse=True)
def fake_images(monkeypatch: pytest.MonkeyPatch) -> None:
    """CRIU's images as JSON, and no podman store to look the image up in."""

    def load(path: Path) -> dict[str, Any]:
        if path.name not in IMAGES:
            raise ValueError(f"{path.name}: not a CRIU image pycriu can decode (bad magic)")
        return {"entries": IMAGES[path.name]}

    monkeypatch.setattr(_criu_archive, "load_image", load)
    monkeypatch.setattr(_podman_archive, "_image_layers", lambda image_id: ([], []))


def _info(name: str, kind: bytes = tarfile.REGTYPE, **attrs: Any) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.mode = 0o755 if kind == tarfile.DIRTYPE else 0o644
    for key, value in attrs.items():
        setattr(info, key, value)
    return info


Entry = tuple[tarfile.TarInfo, bytes | None]


def _tar_bytes(entries: list[Entry]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return out.getvalue()


def diff_tar(*entries: Entry) -> bytes:
    """podman's rootfs-diff.tar: relative names, no root entry."""
    return _tar_bytes(list(entries))


def layout(
    *,
    drop: tuple[str, ...] = (),
    extra: list[Entry] = (),  # type: ignore[assignment]
    diff: bytes | None = None,
    deleted: list[str] | None = None,
    config: dict[str, Any] | None = None,
) -> list[Entry]:
    """podman's export layout (what exportCheckpoint writes), with changes."""
    files: dict[str, bytes | None] = {
        "artifacts/": None,
        "devshm-checkpoint.tar": _tar_bytes([(_info(".", tarfile.DIRTYPE), None)]),
        "config.dump": json.dumps({**CONFIG, **(config or {})}).encode(),
        "spec.dump": json.dumps(SPEC).encode(),
        "network.status": b"null",
        "stats-dump": b"\x00" * 46,
        "ctr.log": b"",
        "checkpoint/": None,
        "checkpoint/core-1.img": b"core1",
        "checkpoint/core-7.img": b"core7",
        "checkpoint/descriptors.json": json.dumps(["/dev/null", "pipe:[1]", "pipe:[2]"]).encode(),
        "checkpoint/inventory.img": b"inventory",
        "checkpoint/pages-1.img": os.urandom(8192),
        "checkpoint/pstree.img": b"pstree",
        "rootfs-diff.tar": diff
        if diff is not None
        else diff_tar((_info("etc/new.txt"), b"new\n"), (_info("www/other.html"), b"other\n")),
        "deleted.files": json.dumps(["/etc/doomed.txt"] if deleted is None else deleted).encode(),
    }
    out: list[Entry] = []
    for name, data in files.items():
        if name in drop:
            continue
        kind = tarfile.DIRTYPE if name.endswith("/") else tarfile.REGTYPE
        out.append((_info(name, kind), data))
    return out + list(extra)


def write(path: Path, entries: list[Entry], compression: str = "zstd") -> Path:
    raw = _tar_bytes(entries)
    if compression == "zstd":
        raw = zstandard.ZstdCompressor().compress(raw)
    elif compression == "gzip":
        raw = gzip.compress(raw)
    path.write_bytes(raw)
    return path


# --- recognition and trust ---------------------------------------------------------------


@pytest.mark.parametrize("compression", ["zstd", "gzip", "none"])
def test_podmans_archive_is_recognised_in_each_compression(
    tmp_path: Path, compression: str
) -> None:
    """podman's --compress zstd, gzip and none are each recognised as podman's layout."""
    archive = write(tmp_path / "a.tar", layout(), compression)
    assert foreign.recognise(archive) is FORMAT
    assert open_archive(archive).compression == compression


def test_a_cedana_artifact_is_never_taken_for_podmans(tmp_path: Path) -> None:
    """A tar whose first member is manifest.json is cedana's, whatever follows (even
    podman's names); files that are not tars, and directories, are no one's."""
    cedana_like = write(
        tmp_path / "c.tar.zst", [(_info("manifest.json"), b"{}"), *layout()], "zstd"
    )
    assert foreign.recognise(cedana_like) is None
    (tmp_path / "junk").write_bytes(b"not an archive at all" * 100)
    assert foreign.recognise(tmp_path / "junk") is None
    assert foreign.recognise(tmp_path) is None
    with pytest.raises(cedana.ArtifactCorrupt, match="not a cedana checkpoint"):
        cedana.open(tmp_path / "junk", trust="any")


def test_unsigned_archive_is_refused_before_it_is_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without trust='any' a podman archive is refused naming the flag that accepts it,
    and none of it is read (the reader is never called); with it, it opens as a podman
    container checkpoint, shown as unsigned."""
    archive = write(tmp_path / "a.tar.zst", layout())
    opened: list[Path] = []
    real = _criu_archive.open_archive

    def counted(path: Path) -> _criu_archive.CriuArchive:
        opened.append(path)
        return real(path)

    monkeypatch.setattr(_criu_archive, "open_archive", counted)
    with pytest.raises(cedana.UntrustedArtifact, match="podman checkpoint archive.*--insecure"):
        cedana.open(archive)
    with pytest.raises(cedana.UntrustedArtifact, match="podman checkpoint archive"):
        cedana.restore(archive)
    assert opened == []
    ckpt = cedana.open(archive, trust="any")
    assert (ckpt.kind, ckpt.runtime, ckpt.trusted) == ("container", "podman", False)
    assert ckpt.signer.describe().startswith("unsigned")
    with pytest.raises(cedana.UntrustedArtifact, match="podman checkpoint archive"):
        cedana.Checkpoint.of(ckpt)  # trusted restores refuse it opened, too


# --- what it is presented as ---------------------------------------------------------------


def test_archive_is_presented_as_a_podman_container_checkpoint(tmp_path: Path) -> None:
    """CRIU's images come out at the top, spec.dump as the container's config, the rootfs
    changes in podman's diff format; the manifest has the processes from pstree.img, the
    checked config fields (host paths such as logPath dropped); unused files (stats, the
    log) are not members; extraction writes exactly the members, checked."""
    ckpt = cedana.open(write(tmp_path / "a.tar.zst", layout()), trust="any")
    m = ckpt.manifest
    names = {x.name for x in m.members}
    assert {"inventory.img", "pstree.img", "pages-1.img", "descriptors.json"} <= names
    assert {"container/config.json", "container/rootfs-diff.tar", "container/deleted.files"} <= (
        names
    )
    assert not names & {"stats-dump", "ctr.log", "checkpoint/inventory.img", "config.dump"}
    assert [(p.pid, p.ppid, p.command) for p in m.tree] == [(1, 0, "sh"), (7, 1, "sleep")]
    pod = m.workload["podman"]
    assert pod["name"] == "web" and pod["image"]["id"] == IMAGE_ID
    assert "logPath" not in pod["config"]
    rootfs = m.workload["rootfs"]
    assert (rootfs["format"], rootfs["captured"], rootfs["dir"]) == ("podman", True, "container")
    assert rootfs["diff"]["files"] == 2 and rootfs["diff"]["whiteouts"] == 1
    assert m.workload["container"]["descriptors"] == ("/dev/null", "pipe:[1]", "pipe:[2]")
    assert json.loads(ckpt.read_member("container/config.json")) == SPEC
    out = tmp_path / "out"
    ckpt.extract(out)
    written = {str(p.relative_to(out)) for p in out.rglob("*") if p.is_file()}
    assert written == names
    assert stat.S_IMODE(os.stat(out / "pages-1.img").st_mode) == 0o600
    assert cedana.registry.lookup("podman") is not None


def test_archive_changed_after_opening_is_refused(tmp_path: Path) -> None:
    """The digests recorded at open hold the archive to what was verified: one rewritten
    afterwards (same layout, another page image) is refused on extract, and nothing
    extracted is left behind."""
    path = tmp_path / "a.tar.zst"
    ckpt = cedana.open(write(path, layout()), trust="any")
    write(path, layout())  # new random pages
    out = tmp_path / "out"
    with pytest.raises(cedana.ArtifactCorrupt, match="changed since the archive was opened"):
        ckpt.extract(out)
    assert not out.exists()


# --- hostile archives ----------------------------------------------------------------------


def _sym(name: str, target: str) -> tarfile.TarInfo:
    return _info(name, tarfile.SYMTYPE, linkname=target)


HOSTILE: dict[str, tuple[Callable[[], list[Entry]], type[Exception], str]] = {
    "path escape": (
        lambda: layout(extra=[(_info("checkpoint/../../etc/cron.d/x"), b"x")]),
        cedana.UnsafeArtifact,
        "unsafe name",
    ),
    "absolute name": (
        lambda: layout(extra=[(_info("/etc/passwd"), b"x")]),
        cedana.UnsafeArtifact,
        "unsafe name",
    ),
    "symlink entry": (
        lambda: layout(extra=[(_sym("checkpoint/core-9.img", "/etc/shadow"), None)]),
        cedana.UnsafeArtifact,
        "is a symbolic link",
    ),
    "hard link entry": (
        lambda: layout(
            extra=[(_info("checkpoint/x.img", tarfile.LNKTYPE, linkname="/etc/shadow"), None)]
        ),
        cedana.UnsafeArtifact,
        "is a hard link",
    ),
    "device node": (
        lambda: layout(extra=[(_info("checkpoint/mem.img", tarfile.CHRTYPE, devmajor=1), None)]),
        cedana.UnsafeArtifact,
        "is a device node",
    ),
    "unknown name": (
        lambda: layout(extra=[(_info("hooks.json"), b"{}")]),
        cedana.UnsafeArtifact,
        "not part of a container checkpoint's layout",
    ),
    "nested image dir": (
        lambda: layout(extra=[(_info("checkpoint/sub/x.img"), b"x")]),
        cedana.UnsafeArtifact,
        "not a CRIU image",
    ),
    "missing spec.dump": (
        lambda: layout(drop=("spec.dump",)),
        cedana.ArtifactCorrupt,
        "no spec.dump",
    ),
    "missing inventory": (
        lambda: layout(drop=("checkpoint/inventory.img",)),
        cedana.ArtifactCorrupt,
        "no checkpoint/inventory.img",
    ),
    "named volume": (
        lambda: layout(extra=[(_info("volumes/", tarfile.DIRTYPE), None)]),
        cedana.NotCheckpointable,
        "named volume",
    ),
    "crun": (
        lambda: layout(config={"runtime": "crun"}),
        cedana.NotCheckpointable,
        "'crun'",
    ),
    "twice": (
        lambda: layout(extra=[(_info("spec.dump"), b"{}")]),
        cedana.UnsafeArtifact,
        "twice",
    ),
    "diff escape": (
        lambda: layout(diff=diff_tar((_info("../../etc/cron.d/x"), b"x"))),
        cedana.UnsafeArtifact,
        "leaves the root",
    ),
    "diff symlink escape": (
        lambda: layout(diff=diff_tar((_sym("etc/up", "../../../.."), None))),
        cedana.UnsafeArtifact,
        "links outside",
    ),
    "diff through a symlink": (
        lambda: layout(
            diff=diff_tar((_sym("etc/host", "/"), None), (_info("etc/host/shadow"), b"x"))
        ),
        cedana.UnsafeArtifact,
        "goes through a symlink",
    ),
    "diff device node": (
        lambda: layout(diff=diff_tar((_info("dev/mem", tarfile.CHRTYPE, devmajor=1), None))),
        cedana.UnsafeArtifact,
        "device node 1:0",
    ),
    "diff hard link out": (
        lambda: layout(
            diff=diff_tar((_info("etc/pw", tarfile.LNKTYPE, linkname="/etc/shadow"), None))
        ),
        cedana.UnsafeArtifact,
        "not a file of the same tar",
    ),
    "deleted escape": (
        lambda: layout(deleted=["/../../etc"]),
        cedana.UnsafeArtifact,
        "outside the root",
    ),
    "config not json": (
        lambda: layout(drop=("config.dump",), extra=[(_info("config.dump"), b"{not json")]),
        cedana.ArtifactCorrupt,
        "config.dump is not JSON",
    ),
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_archive_is_refused_before_anything_is_presented(tmp_path: Path, case: str) -> None:
    """Each hostile or broken archive is refused while it is opened, with an error naming
    what is wrong, so nothing of it is extracted or run."""
    entries, error, message = HOSTILE[case]
    archive = write(tmp_path / "a.tar.zst", entries())
    assert foreign.recognise(archive) is FORMAT
    with pytest.raises(error, match=message):
        cedana.open(archive, trust="any")
    assert sorted(os.listdir(tmp_path)) == ["a.tar.zst"]


def test_truncated_archive_is_damaged(tmp_path: Path) -> None:
    """An archive cut short is reported damaged, not half read."""
    archive = write(tmp_path / "a.tar.zst", layout())
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(cedana.ArtifactCorrupt, match="damaged"):
        open_archive(archive)


# --- podman's diff as overlay's ---------------------------------------------------------------


def test_podman_diff_becomes_an_overlay_diff(tmp_path: Path) -> None:
    """Deleted paths become whiteouts; a deleted directory with new entries becomes opaque
    (its new content kept, as the container saw it); parents the tar leaves out, and the
    root, get the image's attributes (a sticky /tmp stays sticky); entries below a deleted
    directory are not listed twice."""
    lower = tmp_path / "lower"
    (lower / "tmp").mkdir(parents=True)
    os.chmod(lower / "tmp", 0o1777)
    os.chmod(lower, 0o555)
    (lower / "www").mkdir()
    src = tmp_path / "src"
    src.mkdir()
    (src / "rootfs-diff.tar").write_bytes(
        diff_tar((_info("tmp/count"), b"9\n"), (_info("www/other.html"), b"other\n"))
    )
    (src / "deleted.files").write_text(json.dumps(["/etc/doomed.txt", "/www", "/www/old"]))

    from_podman_diff(src, tmp_path / "out", lower=[str(lower)])

    with tarfile.open(tmp_path / "out" / "rootfs-diff.tar") as tar:
        entries = {i.name: i for i in tar}
    assert entries["."].mode == 0o555
    assert entries["tmp"].isdir() and entries["tmp"].mode == 0o1777
    assert entries["etc/doomed.txt"].ischr() and entries["etc/doomed.txt"].devmajor == 0
    assert entries["www"].pax_headers.get("SCHILY.xattr.trusted.overlay.opaque") == "y"
    assert "www/old" not in entries
    assert entries["www/other.html"].isreg() and entries["tmp/count"].isreg()


# --- planning a restore into podman of such an archive -----------------------------------

CONFINABLE_SPEC: dict[str, Any] = {
    "process": {"terminal": False},
    "root": {"path": "/old/merged"},
    "mounts": [{"destination": "/proc", "type": "proc", "source": "proc"}],
    "linux": {
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
        "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
    },
}


class FakeCLI(PodmanCLI):
    """A podman whose store has the archive's image (two layers)."""

    def image(self, ref: str) -> dict[str, Any] | None:
        data = {"UpperDir": "/store/top/diff", "LowerDir": "/store/base/diff"}
        return {"Id": IMAGE_ID, "GraphDriver": {"Name": "overlay", "Data": data}}


def test_import_plan_of_podmans_archive(tmp_path: Path) -> None:
    """A restore into podman of podman's archive keeps its diff in podman's format (to be
    converted), hands /dev/shm's tar back to podman, and takes the image's layers from
    podman's store; restored with TCP repair, the spec gets cedana's prestart hook that
    brings lo up (a Python program that compiles), before the caller's hooks; without it,
    no hook."""
    entries = [e for e in layout() if e[0].name != "spec.dump"]
    entries.append((_info("spec.dump"), json.dumps(CONFINABLE_SPEC).encode()))
    ckpt = cedana.open(write(tmp_path / "a.tar.zst", entries), trust="any")
    plan = _plan_import(
        ckpt, name="web2", tcp_established=None, hooks=None, grants=None, api=FakeCLI()
    )
    assert (plan.diff_format, plan.diff_dir, plan.name) == ("podman", "container", "web2")
    assert plan.devshm == "container/podman/devshm-checkpoint.tar"
    assert plan.lower == ("/store/top/diff", "/store/base/diff")
    assert "hooks" not in plan.spec and plan.flags == ()
    mine = {"path": "/bin/true", "args": ["true"]}
    plan = _plan_import(
        ckpt,
        name="web2",
        tcp_established=True,
        hooks={"prestart": [mine]},
        grants=None,
        api=FakeCLI(),
    )
    assert plan.flags == ("--tcp-established",)
    first, second = plan.spec["hooks"]["prestart"]
    assert first == loopback_hook() and second == mine
    compile(first["args"][2], "loopback-hook", "exec")


def test_archive_cut_inside_a_member_is_damaged(tmp_path: Path) -> None:
    """An uncompressed archive cut in the middle of a member's data (the tar reader fails
    while the member is read, not at a header) is reported damaged too."""
    archive = write(tmp_path / "a.tar", layout(), "none")
    raw = archive.read_bytes()
    cut = raw.index(b"pages-1.img") + 512 + 4096  # inside the page image's data
    archive.write_bytes(raw[:cut])
    with pytest.raises(cedana.ArtifactCorrupt, match="damaged"):
        open_archive(archive)


def test_sparse_member_is_refused(tmp_path: Path) -> None:
    """A sparse member (a CRIU pages image of 256 MiB that takes a few bytes in the tar)
    is refused while the archive is opened: no engine writes one, and extracting it
    would fill the disk with what the archive never carried. Fails while it is read
    (and would be extracted) as a regular file."""
    import shutil
    import subprocess

    assert shutil.which("tar"), "GNU tar (Debian's essential tar) writes the sparse member"
    tree = tmp_path / "tree"
    with tarfile.open(fileobj=io.BytesIO(_tar_bytes(layout()))) as tar:
        tar.extractall(tree, filter="data")
    with open(tree / "checkpoint" / "pages-1.img", "wb") as f:
        f.truncate(256 << 20)
    archive = tmp_path / "a.tar"
    subprocess.run(["tar", "--sparse", "-C", tree, "-cf", archive, "."], check=True)
    assert archive.stat().st_size < 1 << 20
    with pytest.raises(cedana.UnsafeArtifact, match="sparse"):
        cedana.open(archive, trust="any")


def test_a_failed_export_leaves_no_partial_archive(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When writing podman's import archive to its destination fails midway (a full
    disk), nothing is left at the destination. Fails while the partial file stays under
    the name asked for."""
    import errno

    from cedana.runtimes import podman as podman_mod

    entries = [e for e in layout() if e[0].name != "spec.dump"]
    entries.append((_info("spec.dump"), json.dumps(CONFINABLE_SPEC).encode()))
    ckpt = cedana.open(write(tmp_path / "a.tar.zst", entries), trust="any")

    def full(src: Any, dst: Any, length: int = 0) -> None:
        dst.write(src.read(100))
        raise OSError(errno.ENOSPC, "No space left on device")

    def written(self: Any, ckpt: Any, work: Path, *, grants: Any) -> Path:
        (work / "import.tar").write_bytes(b"x" * 4096)  # what plan.write would make
        return work / "import.tar"

    monkeypatch.setattr(podman_mod._ImportPlan, "write", written)
    monkeypatch.setattr(podman_mod.shutil, "copyfileobj", full)  # type: ignore[attr-defined]
    dest = tmp_path / "out.tar"
    with pytest.raises(OSError):
        podman_mod.PodmanContainer.export(
            ckpt, dest, compress="none", client=FakeCLI(), work_dir=tmp_path, trust="any"
        )
    assert not dest.exists()


@pytest.mark.parametrize(
    ("member", "size"),
    [("checkpoint/pstree.img", (4 << 20) + 1), ("checkpoint/descriptors.json", (16 << 20) + 1)],
)
def test_members_held_in_memory_are_bounded(tmp_path: Path, member: str, size: int) -> None:
    """pstree.img and descriptors.json are held in memory while the archive is read (to
    tell its processes and files): one past its bound is refused from its header, as
    the JSON files are, however well it compresses. Fails while they are held whole."""
    entries = [e for e in layout() if e[0].name != member]
    entries.append((_info(member), b"\x00" * size))
    with pytest.raises(cedana.UnsafeArtifact, match="claims"):
        cedana.open(write(tmp_path / "a.tar.zst", entries), trust="any")
