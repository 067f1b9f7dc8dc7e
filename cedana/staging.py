"""Where CRIU's images are staged between CRIU and the artifact.

Images are written once, read once (compressed into the artifact, or restored
right after unpacking), then deleted, all within seconds: in the system temp
directory they live in the page cache and are usually gone before writeback
reaches the disk. (Staging them in /dev/shm was measured slower here: tmpfs
pages cost more to fill and to free than page-cache pages of a file that is
deleted unwritten.) A scratch directory carries its owner's pid, so one that a
killed process left behind is removed by the next.
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

__all__ = ["scratch_dir"]

logger = logging.getLogger("cedana.staging")


@contextlib.contextmanager
def scratch_dir(prefix: str, *, parent: str | os.PathLike[str] | None = None) -> Iterator[Path]:
    """A private (0700) scratch directory, removed on every path. A CRIU log inside it
    that an error points at is copied out first.

    Args:
        prefix: Name prefix (``.cedana-dump-``...).
        parent: The caller's choice of directory (``work_dir=``); the temp dir when None.
    """
    where = Path(parent) if parent is not None else Path(tempfile.gettempdir())
    _sweep(where)
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
    """Copy CRIU's log out of a scratch directory so the error can point at it; an error
    never points at a log that is about to vanish (or never was, when CRIU did not run)."""
    if not exc.log_path or not os.path.exists(exc.log_path):
        exc.log_path = None
        return
    fd, kept = tempfile.mkstemp(prefix="cedana-criu-", suffix=".log")
    os.close(fd)
    with contextlib.suppress(OSError):
        shutil.copyfile(exc.log_path, kept)
        exc.log_path = kept
