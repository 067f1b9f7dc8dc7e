"""The one safe-filesystem writer: entries are made under the root, never through a symlink,
and what was made can be undone. Artifact extraction and the overlay diff apply both use it."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import pytest

from cedana._safefs import SafeTree


class Escaped(Exception):
    """The error the tests hand in for a path through a symlink or a file."""


def tree(root: Path, **kwargs: object) -> SafeTree:
    options: dict[str, object] = {"dir_mode": 0o700, "logger": logging.getLogger("test")}
    options.update(kwargs)
    return SafeTree(root, escape=Escaped, **options)  # type: ignore[arg-type]


def test_files_and_parents_are_made_with_their_modes_whatever_the_umask(tmp_path: Path) -> None:
    """A new file gets the asked mode and its missing parents the tree's directory mode, even
    under a umask that would take bits away."""
    old = os.umask(0o077)
    try:
        writer = tree(tmp_path, dir_mode=0o755)
        os.close(writer.create_file(("a", "b", "f"), 0o644))
        writer.close()
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "a").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "a" / "b").stat().st_mode) == 0o755
    assert stat.S_IMODE((tmp_path / "a" / "b" / "f").stat().st_mode) == 0o644


def test_a_symlinked_directory_under_the_root_is_refused(tmp_path: Path) -> None:
    """A symlink on the way (here to a directory outside the root) raises the caller's error
    with the path, and nothing is written where it points."""
    root, outside = tmp_path / "root", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    (root / "a").symlink_to(outside)
    writer = tree(root)
    with pytest.raises(Escaped, match="^a$"):
        writer.create_file(("a", "f"))
    writer.close()
    assert list(outside.iterdir()) == []


def test_a_file_on_the_way_is_refused(tmp_path: Path) -> None:
    """A regular file where a directory goes is refused the same way."""
    (tmp_path / "a").write_text("x")
    writer = tree(tmp_path)
    with pytest.raises(Escaped, match="^a$"):
        writer.directory(("a", "b"))
    writer.close()


def test_an_existing_entry_is_never_replaced_nor_followed(tmp_path: Path) -> None:
    """create_file refuses a file already there and a symlink in its place (which would
    otherwise write through it)."""
    target = tmp_path / "target"
    target.write_text("keep")
    root = tmp_path / "root"
    root.mkdir()
    (root / "link").symlink_to(target)
    (root / "file").write_text("keep")
    writer = tree(root)
    for name in ("link", "file"):
        with pytest.raises(FileExistsError):
            writer.create_file((name,))
    writer.close()
    assert target.read_text() == "keep"
    assert (root / "file").read_text() == "keep"


def test_the_root_itself_is_not_followed_unless_asked(tmp_path: Path) -> None:
    """A root that is a symlink is refused by default (a directory cedana made must be one),
    and followed with follow_root (a destination the caller named)."""
    real = tmp_path / "real"
    real.mkdir()
    (tmp_path / "alias").symlink_to(real)
    with pytest.raises(OSError):
        tree(tmp_path / "alias")
    writer = tree(tmp_path / "alias", follow_root=True)
    os.close(writer.create_file(("f",)))
    writer.close()
    assert (real / "f").is_file()


def test_links_and_nodes_are_made_relative_to_their_directory(tmp_path: Path) -> None:
    """symlink, link and mknod make their entry under the root; a hard link to a symlink
    links the symlink itself."""
    writer = tree(tmp_path)
    os.close(writer.create_file(("d", "f")))
    writer.symlink(("d", "s"), "/etc/passwd")
    writer.link(("d", "h"), ("d", "f"))
    writer.link(("d", "hs"), ("d", "s"))
    writer.mknod(("d", "p"), stat.S_IFIFO | 0o600)
    writer.close()
    d = tmp_path / "d"
    assert os.readlink(d / "s") == "/etc/passwd"
    assert (d / "h").stat().st_ino == (d / "f").stat().st_ino
    assert (d / "hs").is_symlink()
    assert stat.S_ISFIFO((d / "p").lstat().st_mode)


def test_clear_removes_anything_but_a_directory(tmp_path: Path) -> None:
    """clear unlinks a file or a symlink in the way and leaves a directory."""
    (tmp_path / "f").write_text("x")
    (tmp_path / "s").symlink_to("f")
    (tmp_path / "d").mkdir()
    writer = tree(tmp_path)
    for name in ("f", "s", "d", "missing"):
        writer.clear((name,))
    writer.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d"]


def test_remove_created_undoes_only_what_it_made(tmp_path: Path) -> None:
    """remove_created removes the entries and directories it made, and the root if it made
    it; what was there before stays."""
    root = tmp_path / "root"
    writer = tree(root, create_root=True)
    os.close(writer.create_file(("a", "f")))
    writer.symlink(("a", "s"), "f")
    writer.remove_created()
    assert not root.exists()

    root.mkdir()
    (root / "a").mkdir()
    (root / "a" / "old").write_text("keep")
    writer = tree(root, create_root=True)
    os.close(writer.create_file(("a", "b", "new")))
    writer.remove_created()
    assert sorted(p.name for p in root.rglob("*")) == ["a", "old"]
