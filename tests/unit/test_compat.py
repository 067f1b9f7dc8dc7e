"""Whether this host can restore a checkpoint (cedana.compat): CRIU version, architecture and
CPU features are checked first, and a refusal comes before anything is unpacked but
``cpuinfo.img`` or handed to CRIU's restore.

Needs no root: artifacts are written with the writer, CRIU is a recording fake (the real
CRIU's cpuinfo check is tested in tests/integration/test_hosts.py).
"""

from __future__ import annotations

import os
from pathlib import Path

import attrs
import pytest

import cedana
from cedana import compat
from cedana.artifact import HostInfo, Manifest, ProcessEntry, write_artifact
from cedana.artifact.signing import host_key
from cedana.criu import CriuReport, CriuRequest
from cedana.errors import IncompatibleHost, RestoreFailed


@attrs.define
class Host:
    """A CRIU backend with a given version and cpuinfo verdict, recording its calls."""

    numbers: tuple[int, ...] = (4, 2, 1)
    cpu: str | None = None
    calls: list[str] = attrs.field(factory=list)
    seen: list[bytes] = attrs.field(factory=list)

    def preflight(self) -> None:
        self.calls.append("preflight")

    def version(self) -> tuple[tuple[int, ...], str]:
        return self.numbers, ".".join(map(str, self.numbers))

    def cpuinfo_check(self, images_dir: Path) -> str | None:
        self.calls.append("cpuinfo_check")
        self.seen.append((images_dir / compat.CPUINFO).read_bytes())
        assert sorted(p.name for p in images_dir.iterdir()) == [compat.CPUINFO]
        return self.cpu

    def dump(self, request: CriuRequest) -> None:
        raise NotImplementedError

    def restore(self, request: CriuRequest) -> int:
        self.calls.append("restore")
        raise RestoreFailed("the fake does not restore")

    def report(self) -> CriuReport:
        raise NotImplementedError


def artifact(
    tmp_path: Path, *, criu: str = "4.2.1", arch: str | None = None, cpuinfo: bool = True
) -> cedana.Checkpoint:
    images = tmp_path / "images"
    images.mkdir(parents=True)
    (images / "pstree.img").write_bytes(b"tree")
    if cpuinfo:
        (images / "cpuinfo.img").write_bytes(b"the cpu")
    manifest = Manifest(
        host=HostInfo(
            kernel="6.18.0",
            arch=arch or os.uname().machine,
            criu_version=criu,
            hostname="elsewhere",
        ),
        kind="process",
        options={},
        tree=[ProcessEntry(pid=4194000, ppid=1, command="sleep 100")],
        workload={"external": [], "root_pid": 4194000},
    )
    dest = tmp_path / "ckpt.tar.zst"
    write_artifact(images, dest, manifest, signer=host_key())
    return cedana.open(dest)


@pytest.mark.parametrize(
    ("text", "numbers"),
    [
        ("4.2.1", (4, 2, 1)),
        ("4.2.1 (abcdef)", (4, 2, 1)),
        ("4.2", (4, 2, 0)),
        ("unknown", None),
        ("", None),
    ],
)
def test_parse_version(text: str, numbers: tuple[int, int, int] | None) -> None:
    """The manifest's CRIU version text reads as numbers; what is no version reads as None."""
    assert compat.parse_version(text) == numbers


@pytest.mark.parametrize("here", [(4, 2, 1), (4, 3, 0), (5, 0)])
def test_same_or_newer_criu_restores(here: tuple[int, ...]) -> None:
    """A CRIU as new as the dumping one, or newer, is accepted (CRIU reads older images)."""
    compat.check_criu_version("4.2.1 (gitid)", here, "here")


@pytest.mark.parametrize("here", [(4, 2, 0), (4, 1, 9), (3, 17)])
def test_older_criu_is_refused(here: tuple[int, ...]) -> None:
    """An older CRIU here is refused, naming both versions and what to install."""
    with pytest.raises(IncompatibleHost, match=r"made by CRIU 4\.2\.1.*install CRIU 4\.2\.1"):
        compat.check_criu_version("4.2.1", here, ".".join(map(str, here)))


def test_unknown_version_is_let_through() -> None:
    """A checkpoint whose dumping CRIU is unknown is not refused on the version."""
    compat.check_criu_version("unknown", (4, 2, 1), "4.2.1")


def test_cpu_check_sees_only_the_cpuinfo_image(tmp_path: Path) -> None:
    """The CPU check gets a directory holding only cpuinfo.img, with the artifact's bytes."""
    backend = Host()
    compat.check_host(artifact(tmp_path), backend)
    assert backend.calls == ["cpuinfo_check"]
    assert backend.seen == [b"the cpu"]


def test_cpu_without_a_feature_is_refused_with_criu_words(tmp_path: Path) -> None:
    """CRIU's reason comes through in the refusal."""
    backend = Host(cpu="CPU xfeatures has unsupported bits (0x4000000000000000)")
    with pytest.raises(IncompatibleHost, match="CPU lacks.*xfeatures has unsupported bits"):
        compat.check_host(artifact(tmp_path), backend)


def test_no_cpuinfo_image_skips_the_cpu_check(tmp_path: Path) -> None:
    """A checkpoint made before cedana recorded cpuinfo.img restores without the CPU check."""
    backend = Host(cpu="never asked")
    compat.check_host(artifact(tmp_path, cpuinfo=False), backend)
    assert backend.calls == []


def test_other_architecture_is_refused_first(tmp_path: Path) -> None:
    """Images of another architecture are refused before CRIU is asked anything."""
    backend = Host()
    with pytest.raises(IncompatibleHost, match="made on s390x"):
        compat.check_host(artifact(tmp_path, arch="s390x"), backend)
    assert backend.calls == []


def test_restore_refuses_before_criu_restores(tmp_path: Path) -> None:
    """Process.restore runs the host check before the pid checks and CRIU's restore: an
    artifact from a newer CRIU never reaches the backend's restore."""
    backend = Host(numbers=(4, 2, 0))
    ckpt = artifact(tmp_path, criu="4.3.0")
    with pytest.raises(IncompatibleHost, match="made by CRIU 4.3.0"):
        cedana.Process.restore(ckpt, backend=backend)
    assert backend.calls == ["preflight"]
    with pytest.raises(IncompatibleHost, match="CPU lacks"):
        cedana.Process.restore(artifact(tmp_path / "b", criu="4.2.0"), backend=Host(cpu="no"))


def test_incompatible_host_is_a_restore_failure() -> None:
    """Callers catching RestoreFailed (or CedanaError) catch it too."""
    assert issubclass(IncompatibleHost, RestoreFailed)
    assert issubclass(cedana.IncompatibleHost, cedana.CedanaError)


def test_unknown_host_of_a_foreign_archive_is_not_compared(tmp_path: Path) -> None:
    """A foreign archive (podman's export) records its host as unknown: neither its
    architecture nor its CRIU version is held against this host."""
    unknown = "unknown (a podman export)"
    compat.check_host(artifact(tmp_path, criu=unknown, arch=unknown, cpuinfo=False), Host())
