"""Where CRIU's images are staged between CRIU and the artifact.

Images are written once, read once (compressed into the artifact, or restored
right after unpacking), then deleted, all within seconds: in the system temp
directory they live in the page cache and are usually gone before writeback
reaches the disk. (Staging them in /dev/shm was measured slower here: tmpfs
pages cost more to fill and to free than page-cache pages of a file that is
deleted unwritten. For a 4 GiB restore too: the unpack into /dev/shm took 3.9 s
instead of 10.7 s, but CRIU's restore from there 14.8 s instead of 3.8 s.)

What a killed process leaves behind is removed by the next one: a scratch
directory (and the artifact writer's temporary file) carries its owner's pid and
start time (:func:`owner_tag`), so a later call tells a dead owner from a live
one, even when the pid was reused since (:func:`owner_gone`). CRIU logs kept
for an error message are bounded too: the newest :data:`KEPT_LOGS` stay.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import logging
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from cedana import procfs
from cedana.errors import CriuError, NoSpace, ProcessNotFound

__all__ = ["KEPT_LOGS", "owner_gone", "owner_tag", "scratch_dir"]

logger = logging.getLogger("cedana.staging")

#: How many CRIU logs of failed runs are kept in the temp dir (the newest; older ones go).
KEPT_LOGS = 20

_KEPT_LOG_PREFIX = "cedana-criu-"
_FULL = (errno.ENOSPC, errno.EDQUOT)


@functools.cache
def _own_start_time() -> int:
    return procfs.proc_info(os.getpid()).start_time


def owner_tag() -> str:
    """``PID-STARTTIME`` of this process, for the names of what it may leave behind."""
    return f"{os.getpid()}-{_own_start_time()}"


def owner_gone(pid: int, start_time: int | None = None) -> bool:
    """Whether the process that named something ``pid`` (started at ``start_time``, in
    clock ticks after boot, when known) no longer exists. A pid now held by a process
    that started at another time counts as gone: the pid was reused."""
    if pid == os.getpid():
        return start_time is not None and start_time != _own_start_time()
    try:
        info = procfs.proc_info(pid)
    except ProcessNotFound:
        return True
    except OSError:  # cannot look: assume it lives
        return False
    return start_time is not None and info.start_time != start_time


@contextlib.contextmanager
def scratch_dir(
    prefix: str, *, parent: str | os.PathLike[str] | None = None, fills: str | None = None
) -> Iterator[Path]:
    """A private (0700) scratch directory, removed on every path. A CRIU log inside it
    that an error points at is copied out first.

    Args:
        prefix: Name prefix (``.cedana-dump-``...).
        parent: The caller's choice of directory (``work_dir=``); the temp dir when None.
        fills: What is staged there (``"CRIU's images"``): when given, a full filesystem
            (ENOSPC, from our writes or CRIU's) is raised as :class:`~cedana.errors.NoSpace`
            naming the directory, what filled it, and ``work_dir=``.
    """
    where = Path(parent) if parent is not None else Path(tempfile.gettempdir())
    _sweep(where)
    # The owner in the name lets a later call sweep what a killed process left.
    path = Path(tempfile.mkdtemp(prefix=f"{prefix}{owner_tag()}-", dir=where))
    try:
        yield path
    except NoSpace:
        raise
    except CriuError as exc:
        if exc.log_path and Path(exc.log_path).is_relative_to(path):
            _keep_log(exc)
        if fills is not None and _criu_filled(exc):
            raise _no_space(where, path, fills, exc.log_path) from exc
        raise
    except OSError as exc:
        if fills is not None and exc.errno in _FULL:
            raise _no_space(where, path, fills, None, exc.errno) from exc
        raise
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _criu_filled(exc: CriuError) -> bool:
    return exc.errno in _FULL or os.strerror(errno.ENOSPC) in str(exc)  # the log tail too


def _no_space(
    where: Path, path: Path, fills: str, log: str | None, code: int = errno.ENOSPC
) -> NoSpace:
    kept = f" (CRIU's log: {log})" if log else ""
    size = " (about the workload's memory)" if "CRIU" in fills else ""
    return NoSpace(
        f"no space left on device in {where}: {fills} (staged in {path}) filled its "
        "filesystem; free space there, or pass work_dir= a directory on a filesystem with "
        f"room for them{size}{kept}",
        filename=str(where),
        errno=code,
    )


_OWNED = re.compile(r"^\.cedana-[a-z]+-(\d+)-(?:(\d+)-)?")


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
        started = int(match.group(2)) if match.group(2) else None
        if not owner_gone(owner, started):
            continue
        logger.debug("removing %s, left by pid %d", entry.path, owner)
        shutil.rmtree(entry.path, ignore_errors=True)


def _keep_log(exc: CriuError) -> None:
    """Copy CRIU's log out of a scratch directory so the error can point at it; an error
    never points at a log that is about to vanish (or never was, when CRIU did not run).
    Only the newest :data:`KEPT_LOGS` kept logs stay."""
    if not exc.log_path or not os.path.exists(exc.log_path):
        exc.log_path = None
        return
    fd, kept = tempfile.mkstemp(prefix=_KEPT_LOG_PREFIX, suffix=".log")
    os.close(fd)
    with contextlib.suppress(OSError):
        shutil.copyfile(exc.log_path, kept)
        exc.log_path = kept
    _prune_logs(Path(kept).parent, keep=Path(kept))


def _prune_logs(directory: Path, *, keep: Path) -> None:
    """Remove all but the newest :data:`KEPT_LOGS` of cedana's kept CRIU logs (``keep``,
    the one just written, always stays)."""
    logs = []
    with contextlib.suppress(OSError), os.scandir(directory) as entries:
        for entry in entries:
            if not (entry.name.startswith(_KEPT_LOG_PREFIX) and entry.name.endswith(".log")):
                continue
            with contextlib.suppress(OSError):
                st = entry.stat(follow_symlinks=False)
                if entry.is_file(follow_symlinks=False) and st.st_uid == os.geteuid():
                    logs.append((st.st_mtime_ns, entry.path))
    logs.sort(reverse=True)
    for _mtime, old in logs[KEPT_LOGS:]:
        if Path(old) != keep:
            logger.debug("removing %s, an old CRIU log", old)
            with contextlib.suppress(OSError):
                os.unlink(old)
