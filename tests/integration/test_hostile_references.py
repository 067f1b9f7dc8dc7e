"""Names and ids an artifact carries reach the runtimes' command lines only as operands.

A checkpoint (a podman export's ``config.dump``, a manifest's ``podman.image.id``) names
its image; cedana looks it up with ``podman image inspect`` and saves it with ``podman
image save``. A name spelled as an option (``--root=DIR``) would be read by podman as one:
podman then makes a store at DIR and mounts in it, on the host, from an artifact's word.
These tests run the real podman with such names and check that nothing is made.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from cedana.errors import CedanaError
from cedana.rootfs.mounts import mountinfo, umount
from cedana.runtimes import _podman_archive
from cedana.runtimes._images import PodmanImages
from cedana.runtimes.podman import PodmanCLI
from tests.capabilities import integration, requires_runtime

pytestmark = [*integration, requires_runtime("podman")]


def _made(where: Path) -> list[str]:
    mounted = [str(e.mountpoint) for e in mountinfo() if str(e.mountpoint).startswith(str(where))]
    return [*(str(p) for p in where.iterdir()), *mounted]


@pytest.fixture
def where(tmp_path: Path) -> Iterator[Path]:
    """A directory a hostile name points podman at; whatever podman mounted there is
    unmounted afterwards (so a failure leaves no mount)."""
    path = tmp_path / "hostile"
    path.mkdir()
    yield path
    for entry in sorted(mountinfo(), key=lambda e: -len(str(e.mountpoint))):
        if str(entry.mountpoint).startswith(f"{path}/"):
            with contextlib.suppress(OSError):
                umount(entry.mountpoint, detach=True)


def test_an_image_id_spelled_as_an_option_makes_no_store(tmp_path: Path, where: Path) -> None:
    """An image id ``--root=DIR`` (what a hostile podman archive's rootfsImageID says) is
    looked up as an image name, not read as podman's --root: no store and no mount appear
    at DIR. Fails while the id reaches podman's argv as an option."""
    ident = f"--root={where}/store"
    assert _podman_archive._image_layers(ident) == ([], [])
    with pytest.raises(CedanaError):
        PodmanCLI().image(f"--runroot={where}/run")
    with pytest.raises(CedanaError):
        PodmanImages().save(ident, tmp_path / "image.tar")
    assert _made(where) == []
    assert not (tmp_path / "image.tar").exists()
