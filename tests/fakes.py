"""A stand-in CRIU for unit tests of the layers above the CRIU boundary.

Integration tests always use the real CRIU; this only lets the orchestration
(what happens before, during and after post-dump) be tested without root.
"""

from __future__ import annotations

import os
from pathlib import Path

import attrs

import cedana
from cedana.criu import CriuReport, CriuRequest


@attrs.define
class FakeCriu:
    """Writes two image files, then behaves as CRIU does around post-dump.

    Attributes:
        calls: ``dumped``, then ``killed`` or ``thawed``.
        frozen: True while the post-dump callback runs (the tree is frozen then).
        artifact: When set, checked to be complete and verified before the "kill";
            ``verified_before_kill`` records that it was.
        kill: Really SIGKILL the dumped pid after a successful post-dump, as CRIU does.
    """

    calls: list[str] = attrs.field(factory=list)
    frozen: bool = False
    artifact: Path | None = None
    verified_before_kill: bool = False
    kill: bool = False

    def preflight(self) -> None:
        pass

    def version(self) -> tuple[tuple[int, ...], str]:
        return (4, 2, 1), "4.2.1 (fake)"

    def dump(self, request: CriuRequest) -> None:
        (request.images_dir / "pstree.img").write_bytes(b"fake")
        (request.images_dir / "pages-1.img").write_bytes(os.urandom(4096))
        self.calls.append("dumped")
        self.frozen = True
        try:
            if request.notify is not None:
                request.notify("post-dump", 1)  # an exception here is CRIU thawing the tree
        finally:
            self.frozen = False
        if request.options.get("leave_running"):
            self.calls.append("thawed")
            return
        if self.artifact is not None:
            cedana.open(self.artifact).verify()
            self.verified_before_kill = True
        if self.kill:
            os.kill(request.options["pid"], 9)
        self.calls.append("killed")

    def restore(self, request: CriuRequest) -> int:
        raise NotImplementedError

    def report(self) -> CriuReport:
        raise NotImplementedError

    def cpuinfo_check(self, images_dir: Path) -> str | None:
        return None
