"""Artifacts on a full filesystem: ENOSPC is a NoSpace that keeps its errno and names what
filled up, and nothing is left behind.

A 4 MiB tmpfs stands in for a full disk; the images are 8 MiB of random bytes, which no
compression brings under 4 MiB.
"""

from __future__ import annotations

import errno
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from cedana import procfs
from cedana.artifact import HostInfo, Manifest, ProcessEntry, open_artifact, write_artifact
from cedana.errors import NoSpace
from tests.capabilities import requires_root
from tests.helpers import FORMS, tmpfs

# Mounting a tmpfs needs root; CRIU does not take part.
pytestmark = [pytest.mark.integration, requires_root]


@pytest.fixture
def small_fs(tmp_path: Path) -> Iterator[Path]:
    """A 4 MiB tmpfs, unmounted afterwards whatever happened."""
    with tmpfs(tmp_path / "small", "4m") as mountpoint:
        yield mountpoint


@pytest.fixture
def images(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    (root / "sub").mkdir(parents=True)
    (root / "core-1.img").write_bytes(b"core")
    (root / "pages-1.img").write_bytes(os.urandom(8 << 20))
    (root / "sub" / "z.img").write_bytes(b"last")
    return root


@pytest.fixture
def manifest() -> Manifest:
    return Manifest(
        host=HostInfo.current("4.2.1"),
        kind="process",
        options={},
        tree=[ProcessEntry(pid=1, ppid=0, command="init")],
        workload={},
    )


def assert_empty(filesystem: Path) -> None:
    """No entry is left, and no space is held by a file left open after its removal."""
    assert os.listdir(filesystem) == []
    usage = os.statvfs(filesystem)
    assert usage.f_bfree == usage.f_blocks


@pytest.mark.parametrize("form", FORMS)
def test_write_onto_full_filesystem(
    form: str, small_fs: Path, images: Path, manifest: Manifest
) -> None:
    """Writing an artifact bigger than the filesystem raises NoSpace (an OSError, errno
    ENOSPC) naming the artifact and what to do, and leaves the filesystem empty."""
    dest = small_fs / "ckpt"
    with pytest.raises(NoSpace) as caught:
        write_artifact(images, dest, manifest, **FORMS[form])
    assert isinstance(caught.value, OSError) and caught.value.errno == errno.ENOSPC
    assert caught.value.filename == str(dest)
    assert f"the artifact {dest} filled its filesystem" in str(caught.value)
    assert "free space there, or write the checkpoint to another destination" in str(caught.value)
    assert_empty(small_fs)


def test_full_filesystem_of_a_killed_writer_is_freed_by_the_next(
    small_fs: Path, images: Path, manifest: Manifest
) -> None:
    """A temporary artifact that a killed writer left on a filesystem (here filling most of
    it) is removed by the next write into that directory, which then fits."""
    gone = subprocess.Popen(["true"])
    started = procfs.proc_info(gone.pid).start_time
    gone.wait()
    left = small_fs / f".ckpt.tmp-{gone.pid}-{started}-0123456789ab"
    left.write_bytes(os.urandom(3 << 20))
    (images / "pages-1.img").write_bytes(os.urandom(512 << 10))
    write_artifact(images, small_fs / "ckpt", manifest)
    assert sorted(os.listdir(small_fs)) == ["ckpt"]
    open_artifact(small_fs / "ckpt").verify()


@pytest.mark.parametrize("form", FORMS)
def test_extract_onto_full_filesystem(
    form: str, small_fs: Path, images: Path, manifest: Manifest, tmp_path: Path
) -> None:
    """Extracting onto a full filesystem raises ENOSPC and removes everything it wrote."""
    dest = tmp_path / "ckpt"
    write_artifact(images, dest, manifest, **FORMS[form])
    with pytest.raises(OSError) as caught:
        open_artifact(dest).extract(small_fs / "out")
    assert caught.value.errno == errno.ENOSPC
    assert_empty(small_fs)
