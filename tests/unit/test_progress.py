"""Progress: the callback of the call in progress, phases reported by the layers, the bars."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from cedana import procfs
from cedana.artifact import HostInfo, Manifest, open_artifact, write_artifact
from cedana.progress import Progress, TerminalBar, report, reporting, resolve


def test_report_reaches_only_the_callback_of_its_context() -> None:
    """report() calls the callback that reporting() set, and nothing outside it."""
    seen: list[Progress] = []
    report("dump", 1, 2)  # nobody listening: a no-op
    with reporting(seen.append):
        report("unpack", 5, 10)
    report("unpack", 6, 10)
    assert seen == [Progress("unpack", 5, 10)]


def test_resolve() -> None:
    """False and None mean no progress, a callable is itself, anything else is refused."""
    assert resolve(None) is None and resolve(False) is None
    assert resolve(print) is print
    with pytest.raises(TypeError, match="callable or True"):
        resolve("yes")  # type: ignore[arg-type]


def test_terminal_bar_draws_and_clears() -> None:
    """The bar shows the phase, a filled share and MiB done, redraws on a new phase, and
    clears its line when closed."""
    out = io.StringIO()
    bar = TerminalBar(out, width=10)
    bar(Progress("dump", 512 << 20, 1024 << 20))
    assert "dump     [#####-----]  50% 512 MiB" in out.getvalue()
    bar(Progress("restore", 0, None))
    assert out.getvalue().rsplit("\r", 1)[1].startswith("restore  0 MiB")
    bar.close()
    assert out.getvalue().endswith("\r")


def test_unpacking_reports_every_member_byte(tmp_path: Path) -> None:
    """Extracting an artifact reports the unpack phase up to exactly the members' total."""
    images = tmp_path / "images"
    images.mkdir()
    (images / "pages-1.img").write_bytes(bytes(9 << 20))
    (images / "core-1.img").write_bytes(b"core")
    host = HostInfo(kernel="6.1", arch="x86_64", criu_version="4.2.1", hostname="h")
    manifest = Manifest(host=host, kind="process", options={}, tree=(), workload={})
    write_artifact(images, tmp_path / "a.tar.zst", manifest)
    seen: list[Progress] = []
    with reporting(seen.append):
        open_artifact(tmp_path / "a.tar.zst", verify=False).extract(tmp_path / "out")
    total = (9 << 20) + 4
    assert seen[-1] == Progress("unpack", total, total)
    assert [p.done for p in seen] == sorted(p.done for p in seen)


def test_dump_estimate_is_anonymous_memory() -> None:
    """The estimate of what CRIU will dump is this process's anonymous memory: some."""
    import os

    assert (procfs.anonymous_memory([os.getpid()]) or 0) > 1 << 20
