"""The overlay snapshotter's tar of an upper directory: what it carries, and what apply refuses.

No overlay mount is needed: an upper directory is an ordinary directory tree
with whiteouts (char 0:0) and ``trusted.overlay.*`` attributes, made here.
Whiteouts, opaque directories and ownership need root (mknod, trusted.*,
chown); those tests skip without it.
"""

from __future__ import annotations

import io
import os
import stat
import tarfile
from pathlib import Path

import pytest

from cedana.errors import UnsafeArtifact
from cedana.rootfs import RootfsDiff, snapshotter_for
from cedana.rootfs.mounts import overlay_options, parse_mountinfo
from cedana.rootfs.overlay import (
    DIFF_NAME,
    OverlayLayers,
    OverlaySnapshotter,
    apply_upper,
    capture_upper,
)
from tests.capabilities import requires_root


def snapshot(root: Path) -> dict[str, tuple[object, ...]]:
    """Every entry under ``root``: type, mode, owner, content or target, xattrs, mtime."""
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            rel = os.path.relpath(path, root)
            if stat.S_ISREG(st.st_mode):
                what: object = Path(path).read_bytes()
            elif stat.S_ISLNK(st.st_mode):
                what = os.readlink(path)
            elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
                what = st.st_rdev
            else:
                what = None
            try:
                xattrs = {
                    n: os.getxattr(path, n, follow_symlinks=False)
                    for n in os.listxattr(path, follow_symlinks=False)
                }
            except OSError:
                xattrs = {}
            out[rel] = (
                stat.S_IFMT(st.st_mode),
                stat.S_IMODE(st.st_mode),
                st.st_uid,
                st.st_gid,
                what,
                xattrs,
                st.st_mtime_ns,
            )
    return out


def roundtrip(upper: Path, tmp: Path) -> tuple[RootfsDiff, RootfsDiff, Path]:
    buf = io.BytesIO()
    captured = capture_upper(upper, buf)
    diff = tmp / "diff.tar"
    diff.write_bytes(buf.getvalue())
    target = tmp / "new-upper"
    target.mkdir()
    applied = apply_upper(diff, target)
    return captured, applied, target


def make_plain_upper(upper: Path) -> None:
    (upper / "etc").mkdir(parents=True)
    (upper / "etc" / "app.conf").write_text("port=8080\n")
    os.chmod(upper / "etc" / "app.conf", 0o640)
    (upper / "bin").mkdir()
    (upper / "bin" / "tool").write_bytes(b"\x7fELF" + bytes(5000))
    os.chmod(upper / "bin" / "tool", 0o755)
    os.link(upper / "bin" / "tool", upper / "bin" / "tool2")
    (upper / "bin" / "abs").symlink_to("/usr/bin/env")
    (upper / "bin" / "rel").symlink_to("../etc/app.conf")
    os.mkfifo(upper / "fifo", 0o600)
    (upper / "empty").mkdir(mode=0o700)
    os.setxattr(upper / "etc" / "app.conf", "user.note", b"\x00\xffbinary\x01")
    os.utime(upper / "etc" / "app.conf", ns=(1_600_000_000_123_456_789,) * 2)


def test_plain_upper_roundtrips_exactly(tmp_path: Path) -> None:
    """Files, modes, hard links, absolute and relative symlinks, FIFOs, binary user
    xattrs and nanosecond mtimes come back the same; the counts say what was carried."""
    upper = tmp_path / "upper"
    make_plain_upper(upper)
    captured, applied, target = roundtrip(upper, tmp_path)
    assert snapshot(target) == snapshot(upper)
    assert os.stat(target / "bin" / "tool").st_ino == os.stat(target / "bin" / "tool2").st_ino
    assert captured == applied
    assert (captured.files, captured.hardlinks, captured.symlinks, captured.special) == (2, 1, 2, 1)
    assert captured.directories == 3 and captured.bytes == 5004 + 10
    assert captured.members == (DIFF_NAME,)


def test_tar_is_a_plain_pax_tar(tmp_path: Path) -> None:
    """Any tar reader lists the diff; xattrs ride as SCHILY.xattr records (GNU tar's form)."""
    upper = tmp_path / "upper"
    make_plain_upper(upper)
    buf = io.BytesIO()
    capture_upper(upper, buf)
    buf.seek(0)
    with tarfile.open(fileobj=buf) as tar:
        names = tar.getnames()
        conf = tar.getmember("etc/app.conf")
    assert names[0] == "." and "bin/tool2" in names
    assert conf.pax_headers["SCHILY.xattr.user.note"].encode("utf-8", "surrogateescape") == (
        b"\x00\xffbinary\x01"
    )


def test_non_utf8_names_roundtrip(tmp_path: Path) -> None:
    """A file name that is not UTF-8 keeps its exact bytes."""
    upper = tmp_path / "upper"
    upper.mkdir()
    name = os.fsdecode(b"caf\xe9.txt")
    (upper / name).write_text("x")
    _, _, target = roundtrip(upper, tmp_path)
    assert os.listdir(os.fsencode(target)) == [b"caf\xe9.txt"]


@requires_root
def test_whiteouts_opaque_dirs_and_owners(tmp_path: Path) -> None:
    """Deleted files (char 0:0), opaque directories, kept overlay attributes, owners and
    set-id bits come back; overlay attributes tied to this mount's inodes are dropped."""
    upper = tmp_path / "upper"
    (upper / "etc").mkdir(parents=True)
    os.mknod(upper / "etc" / "deleted.txt", stat.S_IFCHR | 0o000, os.makedev(0, 0))
    (upper / "var" / "cache").mkdir(parents=True)
    os.setxattr(upper / "var" / "cache", "trusted.overlay.opaque", b"y")
    os.setxattr(upper / "var", "trusted.overlay.impure", b"y")
    (upper / "var" / "cache" / "new").write_text("n")
    os.setxattr(upper / "var" / "cache" / "new", "trusted.overlay.origin", b"\x00\xfb")
    (upper / "suid").write_text("s")
    os.chown(upper / "suid", 1000, 1001)
    os.chmod(upper / "suid", 0o4755)
    os.lchown(upper / "etc", 33, 33)
    captured, applied, target = roundtrip(upper, tmp_path)
    assert (captured.whiteouts, captured.opaque) == (1, 1) == (applied.whiteouts, applied.opaque)
    wh = os.lstat(target / "etc" / "deleted.txt")
    assert stat.S_ISCHR(wh.st_mode) and wh.st_rdev == 0
    assert os.getxattr(target / "var" / "cache", "trusted.overlay.opaque") == b"y"
    assert "trusted.overlay.impure" not in os.listxattr(target / "var")
    assert "trusted.overlay.origin" not in os.listxattr(target / "var" / "cache" / "new")
    st = os.stat(target / "suid")
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1000, 1001, 0o4755)
    assert os.stat(target / "etc").st_uid == 33


@requires_root
def test_userxattr_target_gets_user_overlay_attributes(tmp_path: Path) -> None:
    """Applied for a userxattr overlay, trusted.overlay.opaque becomes user.overlay.opaque."""
    upper = tmp_path / "upper"
    (upper / "d").mkdir(parents=True)
    os.setxattr(upper / "d", "trusted.overlay.opaque", b"y")
    buf = io.BytesIO()
    capture_upper(upper, buf)
    (tmp_path / "diff.tar").write_bytes(buf.getvalue())
    (tmp_path / "t").mkdir()
    apply_upper(tmp_path / "diff.tar", tmp_path / "t", userxattr=True)
    assert os.getxattr(tmp_path / "t" / "d", "user.overlay.opaque") == b"y"


@requires_root
def test_metacopy_files_are_read_through_the_merged_view(tmp_path: Path) -> None:
    """An upper file holding only metadata (overlay metacopy) is stored with its full
    content from the merged view, without the metacopy attribute; without a merged view
    capture refuses rather than store an empty file."""
    upper, merged = tmp_path / "upper", tmp_path / "merged"
    upper.mkdir()
    merged.mkdir()
    (upper / "big").write_bytes(b"")
    os.setxattr(upper / "big", "trusted.overlay.metacopy", b"")
    (merged / "big").write_bytes(b"data from the lower layer")
    buf = io.BytesIO()
    capture_upper(upper, buf, merged=merged)
    (tmp_path / "diff.tar").write_bytes(buf.getvalue())
    (tmp_path / "t").mkdir()
    apply_upper(tmp_path / "diff.tar", tmp_path / "t")
    assert (tmp_path / "t" / "big").read_bytes() == b"data from the lower layer"
    assert os.listxattr(tmp_path / "t" / "big") == []
    with pytest.raises(ValueError, match="metacopy"):
        capture_upper(upper, io.BytesIO())


# --- apply refuses what would escape ---------------------------------------------------


def evil_tar(path: Path, *entries: tarfile.TarInfo) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for info in entries:
            data = io.BytesIO(b"x" * info.size) if info.isreg() else None
            tar.addfile(info, data)
    return path


def entry(
    name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "", size: int = 1
) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = linkname
    info.size = size if kind == tarfile.REGTYPE else 0
    info.mode = 0o644
    info.uid, info.gid = os.getuid(), os.getgid()
    return info


@pytest.mark.parametrize(
    ("entries", "why"),
    [
        ([entry("/etc/passwd")], "absolute"),
        ([entry("a/../../outside")], r"'\.\.'"),
        ([entry("../outside")], r"'\.\.'"),
        ([entry("link", tarfile.SYMTYPE, "/"), entry("link/pwned")], "through a symlink"),
        ([entry("hl", tarfile.LNKTYPE, "../../etc/passwd")], r"'\.\.'"),
        ([entry("hl", tarfile.LNKTYPE, "etc/shadow")], "not a file of this diff"),
        ([entry("a/b/up", tarfile.SYMTYPE, "../../../etc")], "outside the root"),
        ([entry("f"), entry("f")], "listed twice"),
    ],
    ids=[
        "absolute",
        "dotdot",
        "leading-dotdot",
        "via-symlink",
        "hardlink-dotdot",
        "hardlink-outside",
        "symlink-climbs",
        "duplicate",
    ],
)
def test_apply_refuses_escapes(tmp_path: Path, entries: list[tarfile.TarInfo], why: str) -> None:
    """Entries that would land or point outside the target are UnsafeArtifact, and
    nothing is written outside it."""
    outside = tmp_path / "outside"
    target = tmp_path / "box" / "upper"
    target.mkdir(parents=True)
    diff = evil_tar(tmp_path / "evil.tar", *entries)
    before = sorted(p.name for p in tmp_path.iterdir())
    with pytest.raises(UnsafeArtifact, match=why):
        apply_upper(diff, target)
    assert not outside.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == before
    # '../x' from the target lands beside it, in box/: nothing may appear there either.
    assert list((tmp_path / "box").iterdir()) == [target]


def test_absolute_and_inward_symlinks_are_kept(tmp_path: Path) -> None:
    """Absolute links resolve inside the container's root at run time, and relative
    ones that stay inside are fine: both are written as they are."""
    diff = evil_tar(
        tmp_path / "ok.tar",
        entry("bin/sh", tarfile.SYMTYPE, "/bin/busybox"),
        entry("usr/lib/x", tarfile.SYMTYPE, "../../lib/x"),
    )
    (tmp_path / "t").mkdir()
    apply_upper(diff, tmp_path / "t")
    assert os.readlink(tmp_path / "t" / "bin" / "sh") == "/bin/busybox"
    assert os.readlink(tmp_path / "t" / "usr" / "lib" / "x") == "../../lib/x"


# --- layers, mountinfo, the protocol ----------------------------------------------------


def test_overlay_layers_from_mount_options() -> None:
    """lowerdir (with escaped colons), lowerdir+ / datadir+ layers, upper, work, userxattr."""
    layers = OverlayLayers.from_options(
        ["rw", r"lowerdir=/l/a\:b:/l/c", "lowerdir+=/l/d", "upperdir=/u", "workdir=/w", "uuid=on"]
    )
    assert layers == OverlayLayers(lower=("/l/a:b", "/l/c", "/l/d"), upper="/u", work="/w")
    assert OverlayLayers.from_options(["lowerdir=/a", "userxattr"]).userxattr


def test_mountinfo_parsing_unescapes_fields() -> None:
    """Octal escapes in mount points are undone; super options split before unescaping."""
    line = (
        "44 27 0:39 / /tmp/my\\040root rw,relatime shared:1 - overlay overlay "
        "rw,lowerdir=/l,upperdir=/u\\054x,workdir=/w"
    )
    (m,) = parse_mountinfo(line + "\nbroken line\n")
    assert m.mountpoint == "/tmp/my root" and m.fstype == "overlay"
    assert m.super_option_list() == ["rw", "lowerdir=/l", "upperdir=/u,x", "workdir=/w"]


def test_overlay_options_refuse_separators() -> None:
    """Paths overlay's option syntax cannot carry are refused before mount(2)."""
    assert overlay_options(["/a", "/b"], "/u", "/w") == "lowerdir=/a:/b,upperdir=/u,workdir=/w"
    with pytest.raises(ValueError, match="cannot take"):
        overlay_options(["/a:b"], "/u", "/w")


def test_plain_directory_has_no_snapshotter(tmp_path: Path) -> None:
    """A rootfs that is not an overlay mount has nothing to capture."""
    assert snapshotter_for(tmp_path) is None


def test_capturing_needs_the_layers(tmp_path: Path) -> None:
    """An OverlaySnapshotter made without the overlay it captures refuses to capture or to
    describe its layers (a checkpoint it made could not be restored), naming the fix."""
    for call in (
        lambda: OverlaySnapshotter().capture(tmp_path, tmp_path / "out"),
        OverlaySnapshotter().layers_json,
        OverlaySnapshotter(OverlayLayers(lower=("/l",), upper=None)).layers_json,
    ):
        with pytest.raises(ValueError, match="snapshotter_for"):
            call()
    assert not (tmp_path / "out").exists()
    layers = OverlayLayers(lower=("/a", "/b"), upper="/u", work="/w")
    assert OverlaySnapshotter(layers).layers_json() == {
        "lower": ["/a", "/b"],
        "lower_identity": [None, None],  # unreadable layers: restore will need lower=
        "userxattr": False,
    }


def test_snapshotter_protocol_and_diff_record(tmp_path: Path) -> None:
    """OverlaySnapshotter.apply reads the member from the diff directory; RootfsDiff
    survives the manifest's JSON and describes itself in one line."""
    upper = tmp_path / "upper"
    make_plain_upper(upper)
    members = tmp_path / "members"
    members.mkdir()
    with (members / DIFF_NAME).open("wb") as out:
        captured = capture_upper(upper, out)
    (tmp_path / "t").mkdir()
    applied = OverlaySnapshotter().apply(members, tmp_path / "t")
    assert applied == captured
    assert RootfsDiff.from_json({**captured.to_json(), "future": 1}) == captured
    assert captured.describe().startswith("2 files (4.9 KiB), 3 dirs")
