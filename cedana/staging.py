"""Where CRIU's images are staged between CRIU and the artifact.

Images are written once and read once (compressed into the artifact, or
restored right after unpacking), then deleted: they need not touch a disk.
When memory allows, they are staged in ``/dev/shm``; otherwise in the system
temp directory. "Allows" means the tmpfs has room and both the machine and
this process's memory cgroup keep a wide margin after it (tmpfs pages are
charged to the cgroup that writes them, and an OOM kill mid-checkpoint would
be worse than a slower one).
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from cedana.errors import CriuError

__all__ = ["memory_headroom", "scratch_dir", "staging_parent"]

logger = logging.getLogger("cedana.staging")

SHM = Path("/dev/shm")
#: Staging in memory needs this many times the images' size free, everywhere.
MARGIN = 2
#: ... plus this much, whatever the size.
RESERVE = 512 << 20
_UNLIMITED = 1 << 62


def _meminfo_available() -> int:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def _read_int(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except OSError:
        return None
    if text == "max":
        return _UNLIMITED
    return int(text) if text.isdigit() else None


def _cgroup_headroom() -> int:
    """Memory this process's cgroup (v2 or v1) may still use; unlimited if unknown."""
    try:
        lines = Path("/proc/self/cgroup").read_text().splitlines()
    except OSError:
        return _UNLIMITED
    headroom = _UNLIMITED
    for line in lines:
        _, controllers, path = line.split(":", 2)
        rel = path.lstrip("/")
        if controllers == "":  # cgroup v2
            base = Path("/sys/fs/cgroup")
            if not (base / "cgroup.controllers").exists():
                base = Path("/sys/fs/cgroup/unified")
            limit, usage = base / rel / "memory.max", base / rel / "memory.current"
        elif "memory" in controllers.split(","):
            base = Path("/sys/fs/cgroup/memory")
            limit, usage = (
                base / rel / "memory.limit_in_bytes",
                base / rel / "memory.usage_in_bytes",
            )
        else:
            continue
        max_bytes, used = _read_int(limit), _read_int(usage)
        if max_bytes is not None and used is not None and max_bytes < _UNLIMITED:
            headroom = min(headroom, max(0, max_bytes - used))
    return headroom


def memory_headroom() -> int:
    """Bytes of memory that can still be used here (machine and cgroup)."""
    return min(_meminfo_available(), _cgroup_headroom())


def staging_parent(estimate: int, explicit: Path | None = None) -> Path | None:
    """The directory to stage ``estimate`` bytes of images in; None means the temp dir.

    Args:
        estimate: Expected size of the images.
        explicit: A directory the caller chose (``work_dir=``); always used when given.
    """
    if explicit is not None:
        return explicit
    need = estimate * MARGIN + RESERVE
    try:
        st = os.statvfs(SHM)
    except OSError:
        return None
    if not os.access(SHM, os.W_OK):
        return None
    shm_free = st.f_bavail * st.f_frsize
    headroom = memory_headroom()
    if shm_free >= need and headroom >= need:
        logger.debug("staging %d bytes of images in %s", estimate, SHM)
        return SHM
    logger.debug(
        "staging %d bytes on disk (tmpfs free %d, memory headroom %d)", estimate, shm_free, headroom
    )
    return None


@contextlib.contextmanager
def scratch_dir(
    prefix: str, *, estimate: int = 0, parent: str | os.PathLike[str] | None = None
) -> Iterator[Path]:
    """A private (0700) scratch directory for ``estimate`` bytes of images, removed on every
    path. A CRIU log inside it that an error points at is copied out first.

    Args:
        prefix: Name prefix (``.cedana-dump-``...).
        estimate: Expected bytes; decides between memory and disk (see :func:`staging_parent`).
        parent: The caller's choice of directory (``work_dir=``), used as is.
    """
    where = staging_parent(estimate, Path(parent) if parent is not None else None)
    _sweep(Path(where) if where is not None else Path(tempfile.gettempdir()))
    # The owner's pid in the name lets a later call sweep what a killed process left.
    path = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=where))
    try:
        yield path
    except CriuError as exc:
        if exc.log_path and Path(exc.log_path).is_relative_to(path):
            _keep_log(exc)
        raise
    finally:
        shutil.rmtree(path, ignore_errors=True)


_OWNED = re.compile(r"^\.cedana-[a-z]+-(\d+)-")


def _sweep(parent: Path) -> None:
    """Remove scratch directories whose owner died without cleaning up (SIGKILL, power
    loss of a container): in /dev/shm they would hold memory until reboot."""
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return
    for entry in entries:
        match = _OWNED.match(entry.name)
        if match is None or not entry.is_dir(follow_symlinks=False):
            continue
        owner = int(match.group(1))
        if owner == os.getpid() or _alive(owner):
            continue
        logger.debug("removing %s, left by pid %d", entry.path, owner)
        shutil.rmtree(entry.path, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _keep_log(exc: CriuError) -> None:
    """Copy CRIU's log out of a scratch directory so the error can point at it."""
    if not exc.log_path or not os.path.exists(exc.log_path):
        return
    fd, kept = tempfile.mkstemp(prefix="cedana-criu-", suffix=".log")
    os.close(fd)
    with contextlib.suppress(OSError):
        shutil.copyfile(exc.log_path, kept)
        exc.log_path = kept
