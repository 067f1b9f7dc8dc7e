"""Artifacts on a full filesystem: ENOSPC propagates with its errno, and nothing is left behind.

A 4 MiB tmpfs stands in for a full disk; the images are 8 MiB of random bytes, which no
compression brings under 4 MiB.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from cedana.artifact import HostInfo, Manifest, ProcessEntry, open_artifact, write_artifact
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
    """Writing an artifact bigger than the filesystem raises ENOSPC and leaves it empty."""
    dest = small_fs / "ckpt"
    with pytest.raises(OSError) as caught:
        write_artifact(images, dest, manifest, **FORMS[form])
    assert caught.value.errno == errno.ENOSPC
    assert_empty(small_fs)


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
