"""The artifact archive: writing, opening, verifying and extracting, and refusing bad input.

Needs no root: tampered artifacts (links, devices, traversal) are built by hand with tarfile.
"""

from __future__ import annotations

import errno
import io
import json
import os
import re
import socket
import stat
import subprocess
import tarfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import blake3
import pytest
import zstandard

from cedana import procfs, staging
from cedana.artifact import (
    READABLE_FORMAT_VERSIONS,
    Artifact,
    ArtifactWriter,
    HostInfo,
    Manifest,
    Member,
    ProcessEntry,
    _members,
    _tar,
    open_artifact,
    write_artifact,
    writer,
)
from cedana.errors import (
    ArtifactCorrupt,
    ArtifactError,
    ArtifactExists,
    CedanaError,
    NoSpace,
    UnsafeArtifact,
    UnsupportedFormat,
)
from tests.capabilities import requires_tool
from tests.helpers import FORMS

FILE_FORMS = ["zstd", "tar"]
LONG_NAME = "deep/" + "n" * 150 + ".img"

IMAGES = {
    "core-1.img": b"core",
    "empty.img": b"",
    "inventory.img": bytes(range(256)) * 3,
    "pages-1.img": os.urandom(40_000) + bytes(70_000),
    "rootfs/diff.tar": b"rootfs changes",
    LONG_NAME: b"long name",
    "\u00fcnicode.img": b"non-ascii name",
}


@pytest.fixture
def images(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    for name, data in IMAGES.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_bytes(data)
    return root


@pytest.fixture
def manifest() -> Manifest:
    return Manifest(
        created="2026-11-28T23:59:59Z",
        host=HostInfo(kernel="6.18.0", arch="x86_64", criu_version="4.2.1", hostname="box"),
        kind="process",
        options={"leave_running": True},
        tree=[ProcessEntry(pid=42, ppid=1, command="sleep 100")],
        workload={"external": []},
    )


def dest_for(tmp_path: Path, form: str) -> Path:
    return tmp_path / ("ckpt" if form == "directory" else f"ckpt.{form}")


def write(images: Path, tmp_path: Path, manifest: Manifest, form: str) -> Path:
    dest = dest_for(tmp_path, form)
    write_artifact(images, dest, manifest, **FORMS[form])
    return dest


def tree_of(root: Path) -> dict[str, bytes]:
    return {
        path.relative_to(root).as_posix(): path.read_bytes()
        for path in root.rglob("*")
        if path.is_file()
    }


def leftovers(directory: Path) -> list[str]:
    """Names in ``directory`` that a failed write may have left (temporaries, half artifacts)."""
    return sorted(name for name in os.listdir(directory) if name != "images")


# --- building tampered artifacts by hand -------------------------------------------------


Entry = tuple[tarfile.TarInfo, bytes]


def read_entries(path: Path) -> list[Entry]:
    """Every tar entry of a file-form artifact, with its data."""
    raw = path.read_bytes()
    if raw[:4] == b"\x28\xb5\x2f\xfd":
        raw = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True).read()
    entries = []
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
        for info in tar:
            source = tar.extractfile(info)
            entries.append((info, source.read() if source else b""))
    return entries


def build(path: Path, entries: list[Entry], *, compress: bool) -> Path:
    """Write ``entries`` as a tar (zstd-compressed if asked) at ``path``, exactly as given."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for info, data in entries:
            tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
    raw = buffer.getvalue()
    if compress:
        raw = zstandard.ZstdCompressor(write_checksum=True).compress(raw)
    path.write_bytes(raw)
    return path


def regular(name: str, data: bytes) -> Entry:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    info.mode = 0o600
    return info, data


def special(name: str, kind: bytes, linkname: str = "") -> Entry:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    if kind in (tarfile.CHRTYPE, tarfile.BLKTYPE):
        info.devmajor, info.devminor = 1, 3
    return info, b""


def manifest_entry(manifest: Manifest, members: dict[str, bytes]) -> Entry:
    """A manifest.json entry listing ``members`` with their true sizes and digests."""
    listed = attrs.evolve(
        manifest,
        members=[
            Member(name=name, size=len(data), blake3=blake3.blake3(data).hexdigest())
            for name, data in sorted(members.items())
        ],
    )
    return regular("manifest.json", listed.to_json())


def tampered(
    tmp_path: Path,
    form: str,
    manifest: Manifest,
    listed: dict[str, bytes],
    entries: list[Entry],
) -> Path:
    """An artifact whose manifest lists ``listed`` and whose tar holds ``entries`` after it."""
    path = tmp_path / f"tampered.{form}"
    return build(path, [manifest_entry(manifest, listed), *entries], compress=form == "zstd")


#: The two members the tampering tests list in their manifest.
PAIR = {"core-1.img": b"core", "pages-1.img": b"pages"}


def stored_pair(tmp_path: Path, form: str, manifest: Manifest, stored: dict[str, bytes]) -> Path:
    """An artifact listing :data:`PAIR` whose tar holds its members, with ``stored``
    replacing some of their contents."""
    entries = [regular(name, stored.get(name, data)) for name, data in PAIR.items()]
    return tampered(tmp_path, form, manifest, PAIR, entries)


# --- round trips ----------------------------------------------------------------------------


@pytest.mark.parametrize("form", FORMS)
def test_round_trip(form: str, images: Path, tmp_path: Path, manifest: Manifest) -> None:
    """Every form writes, opens (verifying), and extracts back the exact images and manifest."""
    dest = dest_for(tmp_path, form)
    written = write_artifact(images, dest, manifest, **FORMS[form])
    assert [m.name for m in written.members] == sorted(IMAGES)
    for member in written.members:
        assert member.size == len(IMAGES[member.name])
        assert member.blake3 == blake3.blake3(IMAGES[member.name]).hexdigest()
    assert written.options == manifest.options
    assert written.tree == manifest.tree

    artifact = open_artifact(dest)
    assert isinstance(artifact, Artifact)
    assert artifact.form == form
    assert artifact.manifest == written
    artifact.extract(tmp_path / "out")
    assert tree_of(tmp_path / "out") == IMAGES


@pytest.mark.parametrize("form", FORMS)
def test_round_trip_spanning_many_buffers(form: str, tmp_path: Path, manifest: Manifest) -> None:
    """Files larger than the 1 MiB buffers, zero runs included, come back byte for byte."""
    images = tmp_path / "images"
    images.mkdir()
    data = os.urandom(1_500_000) + bytes(3 << 20) + os.urandom(1000)
    (images / "pages-1.img").write_bytes(data)
    dest = write(images, tmp_path, manifest, form)
    open_artifact(dest).extract(tmp_path / "out")
    assert (tmp_path / "out" / "pages-1.img").read_bytes() == data


@pytest.mark.parametrize(("level", "threads"), [(1, 1), (3, 2), (19, 0), (-5, 0), (22, 1)])
def test_levels_and_threads(
    level: int, threads: int, images: Path, tmp_path: Path, manifest: Manifest
) -> None:
    """Any valid zstd level and thread count yields an artifact that reads back the same."""
    dest = tmp_path / "ckpt.tar.zst"
    write_artifact(images, dest, manifest, level=level, threads=threads)
    open_artifact(dest).extract(tmp_path / "out")
    assert tree_of(tmp_path / "out") == IMAGES


@requires_tool("tar", "zstd")
@pytest.mark.parametrize(("form", "flags"), [("zstd", ["--zstd"]), ("tar", [])])
def test_standard_tar_lists_manifest_first(
    form: str, flags: list[str], images: Path, tmp_path: Path, manifest: Manifest
) -> None:
    """GNU tar lists the artifact: manifest.json first, then the members sorted, all 0600 files."""
    dest = write(images, tmp_path, manifest, form)
    names = subprocess.run(
        ["tar", *flags, "-tf", dest], check=True, capture_output=True, text=True
    ).stdout.splitlines()
    assert names == ["manifest.json", *sorted(IMAGES)]
    verbose = subprocess.run(
        ["tar", *flags, "-tvf", dest], check=True, capture_output=True, text=True
    )
    assert verbose.stderr == ""
    assert all(line.startswith("-rw------- ") for line in verbose.stdout.splitlines())


@requires_tool("tar", "zstd")
def test_standard_tools_extract_the_same(images: Path, tmp_path: Path, manifest: Manifest) -> None:
    """zstd and GNU tar unpack the artifact to the same images plus the manifest."""
    dest = write(images, tmp_path, manifest, "zstd")
    subprocess.run(["zstd", "-q", "-t", dest], check=True)
    out = tmp_path / "out"
    out.mkdir()
    subprocess.run(["tar", "--zstd", "-xf", dest, "-C", out], check=True)
    files = tree_of(out)
    assert Manifest.from_json(files.pop("manifest.json")) == open_artifact(dest).manifest
    assert files == IMAGES


@requires_tool("zstd")
def test_zstd_frames_carry_checksums(images: Path, tmp_path: Path, manifest: Manifest) -> None:
    """Every zstd frame of the artifact has a content checksum (XXH64)."""
    dest = write(images, tmp_path, manifest, "zstd")
    listing = subprocess.run(["zstd", "-lv", dest], check=True, capture_output=True, text=True)
    assert "Check: XXH64" in listing.stdout
    data = dest.read_bytes()
    for offset in (0, data.index(b"\x28\xb5\x2f\xfd", 4)):
        descriptor = data[offset + 4]
        assert descriptor & 0x04, f"frame at {offset} has no checksum"


# --- permissions ----------------------------------------------------------------------------


@pytest.fixture
def open_umask() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def modes(root: Path) -> set[tuple[str, int]]:
    found = {("dir", stat.S_IMODE(root.stat().st_mode))}
    for path in root.rglob("*"):
        kind = "dir" if path.is_dir() else "file"
        found.add((kind, stat.S_IMODE(path.lstat().st_mode)))
    return found


@pytest.mark.usefixtures("open_umask")
@pytest.mark.parametrize("form", FORMS)
def test_permissions(form: str, images: Path, tmp_path: Path, manifest: Manifest) -> None:
    """Artifacts and extracted images are 0600 files in 0700 directories, whatever the umask."""
    dest = write(images, tmp_path, manifest, form)
    if form == "directory":
        assert modes(dest) == {("dir", 0o700), ("file", 0o600)}
    else:
        assert stat.S_IMODE(dest.stat().st_mode) == 0o600
    open_artifact(dest).extract(tmp_path / "out")
    assert modes(tmp_path / "out") == {("dir", 0o700), ("file", 0o600)}


# --- writing: refusals and failures ---------------------------------------------------------


@pytest.mark.parametrize("form", FORMS)
def test_refuses_existing_destination(
    form: str, images: Path, tmp_path: Path, manifest: Manifest
) -> None:
    """An existing dest raises ArtifactExists (a FileExistsError) and is left untouched."""
    dest = dest_for(tmp_path, form)
    dest.write_bytes(b"precious")
    with pytest.raises(ArtifactExists, match="overwrite=True") as caught:
        write_artifact(images, dest, manifest, **FORMS[form])
    assert isinstance(caught.value, FileExistsError)
    assert dest.read_bytes() == b"precious"
    assert leftovers(tmp_path) == [dest.name]


def test_refuses_before_any_work(tmp_path: Path, manifest: Manifest) -> None:
    """The existence check comes first: it fires even when the images directory is missing."""
    dest = tmp_path / "ckpt.tar.zst"
    dest.touch()
    with pytest.raises(ArtifactExists):
        write_artifact(tmp_path / "no-such-images", dest, manifest)


@pytest.mark.parametrize("old", ["zstd", "directory"])
@pytest.mark.parametrize("new", ["zstd", "directory"])
def test_overwrite_replaces(
    old: str, new: str, images: Path, tmp_path: Path, manifest: Manifest
) -> None:
    """overwrite=True replaces an artifact of either form with one of either form."""
    dest = tmp_path / "ckpt"
    write_artifact(images, dest, manifest, **FORMS[old])
    (images / "core-1.img").write_bytes(b"newer")
    write_artifact(images, dest, manifest, overwrite=True, **FORMS[new])
    assert open_artifact(dest).form == new
    assert open_artifact(dest).read_member("core-1.img") == b"newer"
    assert leftovers(tmp_path) == ["ckpt"]


def test_overwrite_spares_a_directory_that_is_not_an_artifact(
    images: Path, tmp_path: Path, manifest: Manifest
) -> None:
    """overwrite=True never deletes a directory that is not a cedana checkpoint."""
    dest = tmp_path / "home"
    dest.mkdir()
    (dest / "notes.txt").write_text("keep me")
    with pytest.raises(ArtifactExists, match="not a cedana checkpoint"):
        write_artifact(images, dest, manifest, overwrite=True)
    assert (dest / "notes.txt").read_text() == "keep me"


@pytest.mark.parametrize("parent", ["nope", "a-file"])
def test_refuses_a_missing_directory_before_any_work(
    parent: str, tmp_path: Path, manifest: Manifest
) -> None:
    """A destination in a directory that does not exist (or is a file) is refused by
    naming that directory, up front."""
    (tmp_path / "a-file").write_bytes(b"")
    with pytest.raises(FileNotFoundError, match="create it first") as caught:
        write_artifact(tmp_path / "no-such-images", tmp_path / parent / "c.tar.zst", manifest)
    assert caught.value.filename == str(tmp_path / parent)


@pytest.mark.parametrize("form", ["zstd", "tar"])
def test_failed_check_keeps_the_artifact_it_would_replace(
    form: str, images: Path, tmp_path: Path, manifest: Manifest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The new artifact is checked before it is renamed over the old one: when the check
    fails, the old artifact is still there, whole, and no temporary is left."""
    dest = tmp_path / "ckpt"
    write_artifact(images, dest, manifest, **FORMS[form])
    before = dest.read_bytes()
    (images / "core-1.img").write_bytes(b"newer")

    def damaged(self: Artifact, *, digests: bool = True) -> None:
        raise ArtifactCorrupt(f"checkpoint {self.path} is damaged (a disk fault)")

    monkeypatch.setattr(Artifact, "verify", damaged)
    with pytest.raises(ArtifactCorrupt, match=f"{dest} was left as it was") as caught:
        write_artifact(images, dest, manifest, overwrite=True, **FORMS[form])
    assert "a disk fault" in str(caught.value.__cause__)
    assert dest.read_bytes() == before
    assert leftovers(tmp_path) == ["ckpt"]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"compress": "gzip"},
        {"level": 0},
        {"level": 23},
        {"level": True},
        {"level": 2.5},
        {"threads": -1},
    ],
)
def test_bad_arguments(
    kwargs: dict[str, Any], images: Path, tmp_path: Path, manifest: Manifest
) -> None:
    """A bad compress, level or threads raises ValueError before anything is written."""
    with pytest.raises(ValueError, match="must be"):
        write_artifact(images, tmp_path / "ckpt", manifest, **kwargs)
    assert leftovers(tmp_path) == []


def test_refuses_to_write_inside_the_images(images: Path, manifest: Manifest) -> None:
    """The artifact cannot be written inside the directory it is made from."""
    with pytest.raises(ValueError, match="inside the images"):
        write_artifact(images, images / "ckpt.tar.zst", manifest)


@pytest.mark.parametrize("kind", ["symlink", "fifo", "socket"])
@pytest.mark.parametrize("form", FORMS)
def test_images_must_be_regular_files(
    kind: str, form: str, images: Path, tmp_path: Path, manifest: Manifest
) -> None:
    """A symlink, FIFO or socket among the images raises ArtifactError naming it; no output."""
    odd = images / "rootfs" / "odd"
    if kind == "symlink":
        odd.symlink_to("/etc/passwd")
    elif kind == "fifo":
        os.mkfifo(odd)
    else:
        with socket.socket(socket.AF_UNIX) as sock:
            sock.bind(os.fspath(odd))
    with pytest.raises(ArtifactError, match="rootfs/odd"):
        write(images, tmp_path, manifest, form)
    assert leftovers(tmp_path) == []


def test_manifest_name_is_reserved(images: Path, tmp_path: Path, manifest: Manifest) -> None:
    """An images directory with its own top-level manifest.json is refused."""
    (images / "manifest.json").write_text("{}")
    with pytest.raises(ArtifactError, match="manifest.json"):
        write(images, tmp_path, manifest, "zstd")


@pytest.mark.parametrize("name", ["back\\slash.img", "tab\t.img"])
def test_unstorable_names_are_refused(
    name: str, images: Path, tmp_path: Path, manifest: Manifest
) -> None:
    """A name the reader would refuse is refused when writing, so no artifact is unreadable."""
    (images / name).write_bytes(b"x")
    with pytest.raises(ArtifactError, match="its name"):
        write(images, tmp_path, manifest, "zstd")


@pytest.mark.parametrize("form", FORMS)
def test_interrupted_write_leaves_nothing(
    form: str, images: Path, tmp_path: Path, manifest: Manifest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A KeyboardInterrupt at the last step (fsync) removes the temporary and propagates."""

    def interrupt(fd: int) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupt)
    with pytest.raises(KeyboardInterrupt):
        write(images, tmp_path, manifest, form)
    monkeypatch.undo()
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize("form", FORMS)
@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT, errno.EIO])
def test_failed_write_keeps_errno(
    form: str,
    code: int,
    images: Path,
    tmp_path: Path,
    manifest: Manifest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An OSError while writing keeps its errno and leaves nothing; a full filesystem (here
    a faked ENOSPC or EDQUOT) is a NoSpace (a CedanaError and an OSError) naming the artifact
    and what to do, any other error propagates as it was."""
    real_write, real_pwrite = os.write, os.pwrite
    calls = []

    def filling_up(fd: int, data: bytes) -> int:
        calls.append(fd)
        if len(calls) >= 2:
            raise OSError(code, os.strerror(code))
        return real_write(fd, data)

    def filling_up_at(fd: int, data: bytes, offset: int) -> int:
        calls.append(fd)
        if len(calls) >= 2:
            raise OSError(code, os.strerror(code))
        return real_pwrite(fd, data, offset)

    monkeypatch.setattr(os, "write", filling_up)
    monkeypatch.setattr(os, "pwrite", filling_up_at)
    with pytest.raises(OSError) as caught:
        write(images, tmp_path, manifest, form)
    monkeypatch.undo()
    assert caught.value.errno == code
    if code == errno.EIO:
        assert not isinstance(caught.value, CedanaError)
    else:
        assert isinstance(caught.value, NoSpace)
        message = str(caught.value)
        assert f"the artifact {dest_for(tmp_path, form)} filled" in message
        assert "free space there, or write the checkpoint to another destination" in message
        assert caught.value.filename == str(dest_for(tmp_path, form))
    assert leftovers(tmp_path) == []


def test_images_changing_during_write_are_refused(
    images: Path, tmp_path: Path, manifest: Manifest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An image that grows after it was listed makes the write fail instead of lying."""
    real_scan = _members._scan_tree

    def scan_then_grow(root: Path) -> tuple[list[Any], list[Any]]:
        listed = real_scan(root)
        with (root / "core-1.img").open("ab") as grow:
            grow.write(b"more")
        return listed

    monkeypatch.setattr(writer, "_scan_tree", scan_then_grow)
    with pytest.raises(ArtifactError, match="changed while"):
        write(images, tmp_path, manifest, "zstd")
    assert leftovers(tmp_path) == []


# --- opening: what is and is not an artifact -----------------------------------------------


def test_missing_path(tmp_path: Path) -> None:
    """A path with nothing there raises the builtin FileNotFoundError, naming the path."""
    with pytest.raises(FileNotFoundError, match="no checkpoint") as caught:
        open_artifact(tmp_path / "nope.tar.zst")
    assert caught.value.filename == os.fspath(tmp_path / "nope.tar.zst")
    assert not isinstance(caught.value, CedanaError)


def _generic_tar(path: Path) -> None:
    build(path, [regular("hello.txt", b"hi")], compress=False)


@pytest.mark.parametrize(
    "make",
    [
        pytest.param(lambda p: p.write_bytes(b""), id="empty"),
        pytest.param(lambda p: p.write_bytes(os.urandom(4096)), id="random"),
        pytest.param(lambda p: p.write_text("hello\n" * 100), id="text"),
        pytest.param(_generic_tar, id="tar-without-manifest"),
        pytest.param(
            lambda p: p.write_bytes(zstandard.ZstdCompressor().compress(b"hello" * 200)),
            id="zstd-of-text",
        ),
        pytest.param(lambda p: p.mkdir(), id="empty-directory"),
        pytest.param(os.mkfifo, id="fifo"),
    ],
)
def test_not_an_artifact(make: Callable[[Path], object], tmp_path: Path) -> None:
    """Anything but a cedana artifact raises ArtifactCorrupt, saying so when it can tell."""
    path = tmp_path / "thing"
    make(path)
    with pytest.raises(ArtifactCorrupt, match="not a cedana checkpoint|damaged"):
        open_artifact(path)


@pytest.mark.parametrize("form", FORMS)
def test_unknown_format_version(
    form: str, images: Path, tmp_path: Path, manifest: Manifest
) -> None:
    """An artifact of a newer format raises UnsupportedFormat telling the user to upgrade."""
    dest = write(images, tmp_path, manifest, form)
    if form == "directory":
        path = dest / "manifest.json"
        document = json.loads(path.read_bytes())
        document["format_version"] = max(READABLE_FORMAT_VERSIONS) + 1
        path.write_text(json.dumps(document))
    else:
        entries = read_entries(dest)
        document = json.loads(entries[0][1])
        document["format_version"] = max(READABLE_FORMAT_VERSIONS) + 1
        entries[0] = regular("manifest.json", json.dumps(document).encode())
        build(dest, entries, compress=form == "zstd")
    with pytest.raises(UnsupportedFormat, match="upgrade cedana"):
        open_artifact(dest, verify=False)


# --- damage: truncation and flipped bytes ---------------------------------------------------


def _end_of_tar_members(raw: bytes) -> int:
    with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tar:
        last = tar.getmembers()[-1]
    return last.offset_data + -(-last.size // 512) * 512


@pytest.mark.parametrize("form", FILE_FORMS)
def test_truncated(form: str, images: Path, tmp_path: Path, manifest: Manifest) -> None:
    """A file cut anywhere raises ArtifactCorrupt saying it is truncated (or not a checkpoint).

    In a plain tar, only the zero padding after the end-of-archive marker may go missing
    unnoticed; in the zstd form every cut is caught, down to the last checksum byte.
    """
    dest = write(images, tmp_path, manifest, form)
    data = dest.read_bytes()
    if form == "zstd":
        limit = len(data)
        offsets = {*range(0, limit, max(1, limit // 40)), *range(limit - 16, limit)}
    else:
        limit = _end_of_tar_members(data) + 1024  # through the end-of-archive marker
        offsets = {*range(0, limit, max(1, limit // 40)), 511, 512, *range(limit - 8, limit)}
    cut = tmp_path / "cut"
    for offset in sorted(offsets):
        cut.write_bytes(data[:offset])
        with pytest.raises(ArtifactCorrupt, match="truncated|not a cedana checkpoint") as caught:
            open_artifact(cut)
        if offset > 1024:
            assert "is truncated" in str(caught.value)
            assert "the checkpoint cannot be used" in str(caught.value)


@pytest.mark.parametrize("form", FILE_FORMS)
def test_flipped_bytes(form: str, images: Path, tmp_path: Path, manifest: Manifest) -> None:
    """A flipped bit anywhere either raises ArtifactError or changes nothing that is restored.

    zstd frame checksums cover the manifest and tar headers; sha256 covers every member; tar
    header checksums cover a plain tar's headers. (A few bits change no decoded byte, such as
    the padding inside the skippable frame; those read back identical.) A plain tar has no
    checksum over the manifest's own text, so its flips are left out there.
    """
    dest = write(images, tmp_path, manifest, form)
    original = open_artifact(dest).manifest
    data = dest.read_bytes()
    offsets = {*range(0, len(data), max(1, len(data) // 150)), *range(len(data) - 16, len(data))}
    if form == "tar":
        offsets -= set(range(512, 512 + len(original.to_json())))
    flipped = tmp_path / "flipped"
    caught = 0
    for offset in sorted(offsets):
        damaged = bytearray(data)
        damaged[offset] ^= 0x10
        flipped.write_bytes(damaged)
        out = tmp_path / f"out-{offset}"
        try:
            artifact = open_artifact(flipped)
            artifact.extract(out)
        except ArtifactError as exc:
            assert not out.exists()
            if form == "zstd":
                assert isinstance(exc, ArtifactCorrupt)
            caught += 1
            continue
        assert artifact.manifest == original, f"flip at {offset} changed the manifest"
        assert tree_of(out) == IMAGES, f"flip at {offset} changed a member"
    assert caught >= 0.9 * len(offsets)


@pytest.mark.parametrize("form", FILE_FORMS)
def test_damage_message(form: str, images: Path, tmp_path: Path, manifest: Manifest) -> None:
    """Damage inside a member's data is reported as damage to that member, saying the
    checkpoint cannot be used (opening it restores nothing, so it does not speak of that)."""
    dest = write(images, tmp_path, manifest, form)
    data = bytearray(dest.read_bytes())
    data[len(data) // 2] ^= 0xFF
    dest.write_bytes(data)
    with pytest.raises(ArtifactCorrupt, match="is damaged: member .* cannot be used") as caught:
        open_artifact(dest)
    assert "restor" not in str(caught.value)


@pytest.mark.parametrize("form", FILE_FORMS)
def test_trailing_data(form: str, images: Path, tmp_path: Path, manifest: Manifest) -> None:
    """Bytes appended after the end of the artifact are reported as damage."""
    dest = write(images, tmp_path, manifest, form)
    with dest.open("ab") as file:
        file.write(b"appended")
    with pytest.raises(ArtifactCorrupt, match="damaged"):
        open_artifact(dest)


def test_manifest_changed_after_open(images: Path, tmp_path: Path, manifest: Manifest) -> None:
    """An artifact replaced after it was opened is caught on the next read."""
    dest = write(images, tmp_path, manifest, "zstd")
    artifact = open_artifact(dest)
    (images / "core-1.img").write_bytes(b"other")
    write_artifact(images, dest, manifest, overwrite=True)
    with pytest.raises(ArtifactCorrupt, match="changed since it was opened"):
        artifact.verify()


# --- tampering: added, missing, modified, duplicated members -------------------------------


@pytest.mark.parametrize("form", FILE_FORMS)
def test_member_added(form: str, tmp_path: Path, manifest: Manifest) -> None:
    """A member the manifest does not list raises ArtifactCorrupt naming it."""
    path = tampered(
        tmp_path,
        form,
        manifest,
        PAIR,
        [
            regular("core-1.img", b"core"),
            regular("evil.img", b"x"),
            regular("pages-1.img", b"pages"),
        ],
    )
    with pytest.raises(ArtifactCorrupt, match="'evil.img' was added"):
        open_artifact(path)


@pytest.mark.parametrize("form", FILE_FORMS)
def test_member_missing(form: str, tmp_path: Path, manifest: Manifest) -> None:
    """A member the manifest lists but the tar lacks raises ArtifactCorrupt naming it."""
    path = tampered(tmp_path, form, manifest, PAIR, [regular("core-1.img", b"core")])
    with pytest.raises(ArtifactCorrupt, match="'pages-1.img' listed in the manifest is missing"):
        open_artifact(path)


@pytest.mark.parametrize("form", FILE_FORMS)
@pytest.mark.parametrize(
    ("data", "message"),
    [(b"PAGES", "does not match its blake3"), (b"pages!", "holds 6 bytes, the manifest says 5")],
)
def test_member_modified(
    form: str, data: bytes, message: str, tmp_path: Path, manifest: Manifest
) -> None:
    """A member whose content or size differs from the manifest raises ArtifactCorrupt."""
    path = tampered(
        tmp_path, form, manifest, {"pages-1.img": b"pages"}, [regular("pages-1.img", data)]
    )
    with pytest.raises(ArtifactCorrupt, match=f"'pages-1.img' {message}"):
        open_artifact(path)


@pytest.mark.parametrize("form", FILE_FORMS)
@pytest.mark.parametrize("name", ["pages-1.img", "manifest.json"])
def test_duplicate_member(form: str, name: str, tmp_path: Path, manifest: Manifest) -> None:
    """A member stored twice (even an identical copy, or a second manifest) is refused."""
    files = {"pages-1.img": b"pages"}
    path = tampered(
        tmp_path, form, manifest, files, [regular("pages-1.img", b"pages"), regular(name, b"pages")]
    )
    with pytest.raises(ArtifactCorrupt, match="twice"):
        open_artifact(path)


def test_directory_form_tampering(images: Path, tmp_path: Path, manifest: Manifest) -> None:
    """In the directory form, added, missing and modified files are caught like in a tar."""
    dest = write(images, tmp_path, manifest, "directory")
    (dest / "rootfs" / "extra").write_bytes(b"x")
    with pytest.raises(ArtifactCorrupt, match="'rootfs/extra' was added"):
        open_artifact(dest)
    (dest / "rootfs" / "extra").unlink()
    (dest / "core-1.img").unlink()
    with pytest.raises(ArtifactCorrupt, match="'core-1.img' listed in the manifest is missing"):
        open_artifact(dest)
    (dest / "core-1.img").write_bytes(b"CORE")
    with pytest.raises(ArtifactCorrupt, match="'core-1.img' does not match its blake3"):
        open_artifact(dest)
    (dest / "core-1.img").write_bytes(b"core")
    open_artifact(dest)


# --- unsafe members -------------------------------------------------------------------------

UNSAFE_NAMES = [
    "../x",
    "/etc/x",
    "a/../../x",
    "./x",
    "a//b",
    "a\\..\\x",
    "x\x1by",
    "nul/" + "n" * 120 + "\x00/x",
]


@pytest.mark.parametrize("form", FILE_FORMS)
@pytest.mark.parametrize("name", UNSAFE_NAMES)
@pytest.mark.parametrize("listed", [True, False], ids=["listed", "unlisted"])
def test_unsafe_names(
    form: str,
    name: str,
    listed: bool,
    tmp_path: Path,
    manifest: Manifest,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A traversing, absolute or odd name raises UnsafeArtifact, listed or not; nothing escapes."""
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    files = {"core-1.img": b"core"}
    if listed:
        files[name] = b"x"
    path = tampered(
        tmp_path, form, manifest, files, [regular("core-1.img", b"core"), regular(name, b"x")]
    )
    with pytest.raises(UnsafeArtifact, match="unsafe member"):
        open_artifact(path)

    def open_and_extract() -> None:
        open_artifact(path, verify=False).extract(work / "out")

    with pytest.raises(UnsafeArtifact, match="unsafe member"):
        open_and_extract()
    assert list(tmp_path.rglob("x")) == []
    assert not (work / "out").exists()


@pytest.mark.parametrize("name", UNSAFE_NAMES[:3])
def test_unsafe_names_in_directory_manifest(
    name: str, images: Path, tmp_path: Path, manifest: Manifest
) -> None:
    """A directory artifact whose manifest lists a traversing name is refused at open."""
    dest = write(images, tmp_path, manifest, "directory")
    document = json.loads((dest / "manifest.json").read_bytes())
    document["members"].append({"name": name, "size": 0, "sha256": "0" * 64})
    (dest / "manifest.json").write_text(json.dumps(document))
    with pytest.raises(UnsafeArtifact):
        open_artifact(dest, verify=False)


SPECIAL = [
    pytest.param(tarfile.SYMTYPE, "/etc/passwd", "symbolic link", id="symlink"),
    pytest.param(tarfile.LNKTYPE, "core-1.img", "hard link", id="hardlink"),
    pytest.param(tarfile.CHRTYPE, "", "character device", id="chardev"),
    pytest.param(tarfile.BLKTYPE, "", "block device", id="blockdev"),
    pytest.param(tarfile.FIFOTYPE, "", "FIFO", id="fifo"),
    pytest.param(tarfile.GNUTYPE_SPARSE, "", "sparse", id="sparse"),
]


@pytest.mark.parametrize("form", FILE_FORMS)
@pytest.mark.parametrize(("kind", "linkname", "what"), SPECIAL)
def test_links_and_devices(
    form: str, kind: bytes, linkname: str, what: str, tmp_path: Path, manifest: Manifest
) -> None:
    """A link, device node, FIFO or other special entry raises UnsafeArtifact naming it."""
    files = {"core-1.img": b"core", "pages-1.img": b""}
    entries = [regular("core-1.img", b"core"), special("pages-1.img", kind, linkname)]
    path = tampered(tmp_path, form, manifest, files, entries)
    with pytest.raises(UnsafeArtifact, match=f"'pages-1.img'.*{what}"):
        open_artifact(path)
    with pytest.raises(UnsafeArtifact):
        open_artifact(path, verify=False).extract(tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("form", FILE_FORMS)
def test_directory_entries(form: str, tmp_path: Path, manifest: Manifest) -> None:
    """A directory entry with a safe name is tolerated; one with a traversing name is unsafe."""
    files = {"rootfs/diff.tar": b"diff"}
    good = tampered(
        tmp_path,
        form,
        manifest,
        files,
        [special("rootfs", tarfile.DIRTYPE), regular("rootfs/diff.tar", b"diff")],
    )
    open_artifact(good)
    bad = tampered(
        tmp_path,
        form,
        manifest,
        files,
        [special("../rootfs", tarfile.DIRTYPE), regular("rootfs/diff.tar", b"diff")],
    )
    with pytest.raises(UnsafeArtifact):
        open_artifact(bad)


def test_manifest_as_symlink(tmp_path: Path, manifest: Manifest) -> None:
    """A first entry named manifest.json that is a symlink is refused as unsafe."""
    path = build(
        tmp_path / "ckpt.tar.zst",
        [special("manifest.json", tarfile.SYMTYPE, "/etc/passwd")],
        compress=True,
    )
    with pytest.raises(UnsafeArtifact):
        open_artifact(path)


@pytest.mark.parametrize("kind", ["symlink", "fifo"])
def test_directory_form_special_files(
    kind: str, images: Path, tmp_path: Path, manifest: Manifest
) -> None:
    """A symlink or FIFO inside a directory artifact raises UnsafeArtifact, listed or not."""
    dest = write(images, tmp_path, manifest, "directory")
    target = dest / "core-1.img"
    target.unlink()
    if kind == "symlink":
        target.symlink_to(images / "core-1.img")
    else:
        os.mkfifo(target)
    with pytest.raises(UnsafeArtifact, match="'core-1.img'"):
        open_artifact(dest)


def test_large_member_header(tmp_path: Path) -> None:
    """A member of 8 GiB or more gets a PAX size the reader understands.

    Writing such a file in a unit test is too slow, so this checks the header alone.
    """
    size = 9 << 30
    header = _tar._member_header("pages-1.img", size, 0)
    reader = _tar._TarReader(io.BytesIO(header), tmp_path / "x")
    assert reader.next_entry() == ("pages-1.img", size)


# --- extraction -----------------------------------------------------------------------------


@pytest.mark.parametrize("form", FORMS)
def test_extract_only(form: str, images: Path, tmp_path: Path, manifest: Manifest) -> None:
    """only= writes the chosen members and nothing else, yet still checks the rest."""
    dest = write(images, tmp_path, manifest, form)
    out = tmp_path / "out"
    open_artifact(dest).extract(out, only=lambda name: name.startswith("pages"))
    assert tree_of(out) == {"pages-1.img": IMAGES["pages-1.img"]}


@pytest.mark.parametrize("form", FILE_FORMS)
def test_extract_only_still_verifies(form: str, tmp_path: Path, manifest: Manifest) -> None:
    """A damaged member that only= skips still fails the extraction, which then leaves nothing."""
    path = stored_pair(tmp_path, form, manifest, {"pages-1.img": b"PAGES"})
    out = tmp_path / "out"
    with pytest.raises(ArtifactCorrupt, match="pages-1.img"):
        open_artifact(path, verify=False).extract(out, only=lambda name: name == "core-1.img")
    assert not out.exists()


@pytest.mark.parametrize("form", FILE_FORMS)
def test_failed_extract_removes_what_it_wrote(
    form: str, tmp_path: Path, manifest: Manifest
) -> None:
    """When the last member is bad, the members already written are removed; dest's own files stay."""
    files = {"a/core-1.img": b"core", "b/c/inventory.img": b"inv", "z.img": b"zzz"}
    entries = [
        regular("a/core-1.img", b"core"),
        regular("b/c/inventory.img", b"inv"),
        regular("z.img", b"ZZZ"),
    ]
    path = tampered(tmp_path, form, manifest, files, entries)
    out = tmp_path / "out"
    out.mkdir()
    (out / "mine.txt").write_text("keep")
    with pytest.raises(ArtifactCorrupt, match="'z.img'"):
        open_artifact(path, verify=False).extract(out)
    assert sorted(p.name for p in out.rglob("*")) == ["mine.txt"]
    fresh = tmp_path / "fresh"
    with pytest.raises(ArtifactCorrupt):
        open_artifact(path, verify=False).extract(fresh)
    assert not fresh.exists()


@pytest.mark.parametrize("form", FORMS)
def test_extract_never_replaces_files(
    form: str, images: Path, tmp_path: Path, manifest: Manifest
) -> None:
    """An existing file in dest raises ArtifactExists, is kept, and the rest is cleaned up."""
    dest = write(images, tmp_path, manifest, form)
    out = tmp_path / "out"
    (out / "rootfs").mkdir(parents=True)
    (out / "rootfs" / "diff.tar").write_bytes(b"theirs")
    with pytest.raises(ArtifactExists):
        open_artifact(dest).extract(out)
    assert tree_of(out) == {"rootfs/diff.tar": b"theirs"}


@pytest.mark.parametrize("form", FORMS)
def test_extract_does_not_follow_symlinks(
    form: str, images: Path, tmp_path: Path, manifest: Manifest
) -> None:
    """A symlink already in dest cannot redirect a member outside it."""
    dest = write(images, tmp_path, manifest, form)
    outside = tmp_path / "outside"
    outside.mkdir()
    out = tmp_path / "out"
    out.mkdir()
    (out / "rootfs").symlink_to(outside)
    with pytest.raises(UnsafeArtifact, match="symlink"):
        open_artifact(dest).extract(out)
    assert list(outside.iterdir()) == []
    assert sorted(p.name for p in out.iterdir()) == ["rootfs"]


# --- read_member ----------------------------------------------------------------------------


@pytest.mark.parametrize("form", FORMS)
def test_read_member(form: str, images: Path, tmp_path: Path, manifest: Manifest) -> None:
    """read_member returns one member's bytes, and KeyError for a name the manifest lacks."""
    dest = write(images, tmp_path, manifest, form)
    artifact = open_artifact(dest, verify=False)
    assert artifact.read_member("rootfs/diff.tar") == IMAGES["rootfs/diff.tar"]
    assert artifact.read_member("empty.img") == b""
    with pytest.raises(KeyError):
        artifact.read_member("descriptors.json")


@pytest.mark.parametrize("form", FILE_FORMS)
def test_read_member_verifies(form: str, tmp_path: Path, manifest: Manifest) -> None:
    """read_member refuses a member that does not match the manifest, and unsafe entries before it."""
    path = stored_pair(tmp_path, form, manifest, {"core-1.img": b"CORE"})
    with pytest.raises(ArtifactCorrupt, match="'core-1.img' does not match"):
        open_artifact(path, verify=False).read_member("core-1.img")
    path = tampered(
        tmp_path,
        form,
        manifest,
        PAIR,
        [special("core-1.img", tarfile.SYMTYPE, "/etc"), regular("pages-1.img", b"pages")],
    )
    with pytest.raises(UnsafeArtifact):
        open_artifact(path, verify=False).read_member("pages-1.img")


def test_read_member_directory_form(images: Path, tmp_path: Path, manifest: Manifest) -> None:
    """In the directory form, read_member checks the member it reads against the manifest."""
    dest = write(images, tmp_path, manifest, "directory")
    artifact = open_artifact(dest)
    (dest / "core-1.img").write_bytes(b"CORE")
    with pytest.raises(ArtifactCorrupt, match="'core-1.img' does not match"):
        artifact.read_member("core-1.img")


def test_tar_padding_must_be_zero(images: Path, tmp_path: Path, manifest: Manifest) -> None:
    """Bytes hidden in a plain tar's padding after a member are reported as damage."""
    dest = write(images, tmp_path, manifest, "tar")
    raw = bytearray(dest.read_bytes())
    with tarfile.open(fileobj=io.BytesIO(bytes(raw)), mode="r:") as tar:
        core = tar.getmember("core-1.img")
    raw[core.offset_data + core.size] = ord("!")
    dest.write_bytes(raw)
    with pytest.raises(ArtifactCorrupt, match="padding"):
        open_artifact(dest)


@pytest.mark.parametrize("kind", ["symlink", "directory", "fifo"])
def test_directory_manifest_must_be_a_file(
    kind: str, images: Path, tmp_path: Path, manifest: Manifest
) -> None:
    """A directory artifact whose manifest.json is a symlink, directory or FIFO is unsafe."""
    dest = write(images, tmp_path, manifest, "directory")
    target = dest / "manifest.json"
    target.rename(tmp_path / "real-manifest.json")
    if kind == "symlink":
        target.symlink_to(tmp_path / "real-manifest.json")
    elif kind == "directory":
        target.mkdir()
    else:
        os.mkfifo(target)
    with pytest.raises(UnsafeArtifact, match="'manifest.json'"):
        open_artifact(dest, verify=False)


# --- the fast verification of a just-written artifact --------------------------------------


@pytest.fixture
def big_images(tmp_path: Path) -> Path:
    root = tmp_path / "big"
    root.mkdir()
    (root / "pages-1.img").write_bytes(os.urandom(3 << 20) + bytes(range(256)) * 8192)
    (root / "pstree.img").write_bytes(b"tree")
    return root


def test_frame_verify_catches_every_flip_in_the_data(
    big_images: Path, tmp_path: Path, manifest: Manifest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """verify(digests=False) relies on zstd's frame checksums: a flipped bit anywhere in the
    compressed members is still refused, without rehashing."""
    dest = tmp_path / "a.tar.zst"
    write_artifact(big_images, dest, manifest)
    data = dest.read_bytes()

    def no_rehash(*_: object) -> None:
        raise AssertionError("verify(digests=False) must not hash the members")

    monkeypatch.setattr("cedana.artifact.reader._hashing", no_rehash)
    open_artifact(dest, verify=False).verify(digests=False)
    offsets = range(len(data) // 10, len(data), len(data) // 10)
    assert len(offsets) >= 9
    for offset in offsets:
        bad = bytearray(data)
        bad[offset] ^= 0x10
        damaged = tmp_path / f"bad{offset}.tar.zst"
        damaged.write_bytes(bytes(bad))
        with pytest.raises((ArtifactCorrupt, UnsafeArtifact)):
            open_artifact(damaged, verify=False).verify(digests=False)


def test_frame_verify_still_hashes_forms_without_checksums(
    big_images: Path, tmp_path: Path, manifest: Manifest
) -> None:
    """A plain tar has no checksums, so digests=False hashes anyway and finds a changed byte."""
    dest = tmp_path / "a.tar"
    write_artifact(big_images, dest, manifest, compress="none")
    data = bytearray(dest.read_bytes())
    data[len(data) // 2] ^= 0x01
    dest.write_bytes(bytes(data))
    with pytest.raises(ArtifactCorrupt, match="blake3"):
        open_artifact(dest, verify=False).verify(digests=False)


def test_threaded_hash_matches_and_catches(
    big_images: Path, tmp_path: Path, manifest: Manifest
) -> None:
    """Members big enough to be hashed on a second thread verify and extract correctly, and
    a changed byte in one is caught by that thread's digest."""
    assert (big_images / "pages-1.img").stat().st_size >= _members._THREADED_HASH // 2
    (big_images / "pages-1.img").write_bytes(os.urandom(_members._THREADED_HASH + 12345))
    dest = tmp_path / "a.tar.zst"
    write_artifact(big_images, dest, manifest)
    out = tmp_path / "out"
    open_artifact(dest).extract(out)
    assert (out / "pages-1.img").read_bytes() == (big_images / "pages-1.img").read_bytes()
    plain = tmp_path / "a.tar"  # no frame checksums: only the digest can catch it
    write_artifact(big_images, plain, manifest, compress="none")
    data = bytearray(plain.read_bytes())
    data[len(data) // 2] ^= 0x01
    plain.write_bytes(bytes(data))
    with pytest.raises(ArtifactCorrupt, match="pages-1.img.*blake3"):
        open_artifact(plain, verify=False).verify()


def test_file_is_anonymous_until_complete(images: Path, tmp_path: Path, manifest: Manifest) -> None:
    """A file artifact has no name in its directory until it is complete (an ``O_TMPFILE``),
    so a writer killed midway leaves nothing behind."""
    with ArtifactWriter(tmp_path / "ckpt.tar.zst") as out:
        out.add_tree(images)
        assert leftovers(tmp_path) == []
        out.finish(manifest)
    assert leftovers(tmp_path) == ["ckpt.tar.zst"]


@pytest.mark.parametrize("form", ["directory", "replacing"])
def test_temporary_carries_its_owner(
    form: str, images: Path, tmp_path: Path, manifest: Manifest, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A named temporary (the directory form's, or a file's when it replaces another) is
    named for its writer's pid and start time, so that what a killed writer leaves can be
    told apart from a live one's."""
    seen: list[str] = []
    real_replace = writer._replace

    def replace(tmp: Path, dest: Path) -> None:
        seen.append(tmp.name)
        real_replace(tmp, dest)

    monkeypatch.setattr(writer, "_replace", replace)
    name = dest_for(tmp_path, "directory" if form == "directory" else "zstd").name
    if form == "replacing":
        write(images, tmp_path, manifest, "zstd")
        write_artifact(images, tmp_path / name, manifest, overwrite=True)
    else:
        write(images, tmp_path, manifest, "directory")
    assert re.fullmatch(rf"\.{re.escape(name)}\.tmp-{staging.owner_tag()}-[0-9a-f]{{12}}", seen[0])


def test_temporaries_of_dead_writers_are_removed(
    images: Path, tmp_path: Path, manifest: Manifest
) -> None:
    """The next write into a directory removes the temporaries whose writer is gone (dead,
    or its pid reused by a process started later); a live writer's, this process's own,
    other names and the old unowned form stay."""
    gone = subprocess.Popen(["sleep", "60"])
    gone_started = procfs.proc_info(gone.pid).start_time
    gone.kill()
    gone.wait()
    live = subprocess.Popen(["sleep", "60"])
    try:
        live_started = procfs.proc_info(live.pid).start_time
        dead = tmp_path / f".job.tar.zst.tmp-{gone.pid}-{gone_started}-0123456789ab"
        reused = tmp_path / f".job.tar.zst.tmp-{live.pid}-{live_started + 7}-0123456789ab"
        dead_dir = tmp_path / f".job.tmp-{gone.pid}-{gone_started}-abcdefabcdef"
        kept = [
            tmp_path / f".job.tar.zst.tmp-{live.pid}-{live_started}-0123456789ab",
            tmp_path / f".job.tar.zst.tmp-{staging.owner_tag()}-0123456789ab",
            tmp_path / ".job.tar.zst.tmp-0123456789ab",
            tmp_path / f"job.tar.zst.tmp-{gone.pid}-{gone_started}-0123456789ab",
            tmp_path / f".notes.tmp-{gone.pid}-{gone_started}-zz",
        ]
        for path in (dead, reused, *kept):
            path.write_bytes(b"partial artifact")
        (dead_dir / "sub").mkdir(parents=True)
        write(images, tmp_path, manifest, "tar")
        assert not dead.exists()
        assert not reused.exists()
        assert not dead_dir.exists()
        assert all(path.exists() for path in kept)
    finally:
        live.kill()
        live.wait()


# --- streamed members ------------------------------------------------------------------------


@pytest.mark.parametrize("form", list(FORMS))
def test_streamed_members_read_back_in_every_form(
    form: str, images: Path, tmp_path: Path, manifest: Manifest
) -> None:
    """Members whose size is known only when they end (CRIU's pages) read back whole in
    every form, beside the files added after them, and ``tar`` lists them with their sizes."""
    dest = dest_for(tmp_path, form)
    pages = os.urandom(3 << 20) + bytes(2 << 20)
    with ArtifactWriter(dest, **FORMS[form]) as out:
        stream = out.open_member("pages-1.img")
        for i in range(0, len(pages), 1 << 20):
            stream.write(pages[i : i + (1 << 20)])
        assert stream.close().size == len(pages)
        second = out.open_member("pages-2.img")
        second.write(b"x" * 4096)
        second.close()
        out.add_tree(images)
        written = out.finish(manifest)
    artifact = open_artifact(dest)
    assert artifact.read_member("pages-1.img") == pages
    assert artifact.read_member("pages-2.img") == b"x" * 4096
    assert {m.name for m in written.members} == {"pages-1.img", "pages-2.img", *IMAGES}
    if form != "directory":
        raw = dest.read_bytes()
        if form == "zstd":  # through the skippable frames, as every zstd decoder reads it
            reader = zstandard.ZstdDecompressor().stream_reader(raw, read_across_frames=True)
            raw = reader.read()
        with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
            assert tar.getnames()[0] == "manifest.json"
            assert tar.getmember("pages-1.img").size == len(pages)


@pytest.mark.parametrize("form", ["zstd", "tar"])
def test_manifest_that_outgrows_its_room_gets_a_bigger_one(
    form: str, images: Path, tmp_path: Path, manifest: Manifest
) -> None:
    """A manifest longer than the room left for it (no draft, no spare here) moves the body
    behind a bigger room: the artifact still opens, whole, manifest first."""
    dest = dest_for(tmp_path, form)
    big = attrs.evolve(manifest, workload={"note": "n" * 200_000})
    with ArtifactWriter(dest, spare=0, **FORMS[form]) as out:
        out.add_tree(images)
        out.finish(big)
    artifact = open_artifact(dest)
    assert artifact.manifest.workload["note"] == "n" * 200_000
    assert tree_of_artifact(artifact, tmp_path / "out") == IMAGES


def tree_of_artifact(artifact: Any, out: Path) -> dict[str, bytes]:
    artifact.extract(out)
    return tree_of(out)
