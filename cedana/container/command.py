"""The ``runc`` command, run for the few things only runc itself may do.

Looking a container up needs no runc (its ``state.json`` says it all); runc
is run to restore a container (so runc creates its state and manages it
afterwards) and to delete one.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs

from cedana.errors import ContainerError, RuntimeTimeout, RuntimeUnavailable

__all__ = ["RuncCommand"]

logger = logging.getLogger("cedana.runc")

Stdio = int | Any  # what subprocess accepts: DEVNULL, a descriptor, a file object


@attrs.define
class RuncCommand:
    """``runc --root ROOT ...``.

    Args:
        root: runc's state root.
        binary: The runc to run; found on PATH when None.
    """

    root: Path
    binary: str | None = None

    def _binary(self) -> str:
        if self.binary:
            return self.binary
        found = shutil.which("runc") or shutil.which("runc", path="/usr/local/sbin:/usr/sbin:/sbin")
        if not found:
            raise RuntimeUnavailable("runc is not installed; run scripts/provision as root")
        self.binary = found
        return found

    def argv(self, *args: str, log: Path | None = None) -> list[str]:
        """The command line for ``runc --root ROOT [--log LOG] ARGS``."""
        head = [self._binary(), "--root", os.fspath(self.root)]
        if log is not None:
            head += ["--log", os.fspath(log), "--log-format", "json"]
        return [*head, *args]

    def run(
        self,
        *args: str,
        log: Path | None = None,
        stdin: Stdio = subprocess.DEVNULL,
        stdout: Stdio = subprocess.DEVNULL,
        stderr: Stdio = subprocess.PIPE,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess[bytes]:
        """Run runc and return what it did, failed or not.

        Raises:
            RuntimeUnavailable: runc cannot be run.
            RuntimeTimeout: It ran longer than ``timeout`` seconds (it was killed).
        """
        argv = self.argv(*args, log=log)
        started = time.monotonic()
        logger.debug("runc: %s", " ".join(argv))
        try:
            done = subprocess.run(
                argv,
                stdin=stdin,
                stdout=stdout,
                stderr=stderr,
                timeout=timeout,
                check=False,
                close_fds=True,
            )
        except FileNotFoundError as exc:
            raise RuntimeUnavailable(f"cannot run runc: {exc}") from exc
        except subprocess.TimeoutExpired as exc:  # subprocess.run killed it
            raise RuntimeTimeout(
                f"{' '.join(argv)} did not finish in {timeout:g}s and was killed; is runc (or "
                "CRIU under it) hung? see its log, and retry"
            ) from exc
        logger.debug(
            "runc %s: status %d in %.3fs",
            args[0] if args else "",
            done.returncode,
            time.monotonic() - started,
        )
        return done

    def delete(self, container_id: str, *, force: bool = False) -> None:
        """``runc delete [--force] ID``.

        Raises:
            ContainerError: runc refused.
        """
        args = ["delete", *(["--force"] if force else []), container_id]
        done = self.run(*args)
        if done.returncode != 0:
            why = _last_line(done.stderr)
            raise ContainerError(f"runc delete {container_id} failed: {why}")

    def exec(self, container_id: str, argv: Sequence[str], *, timeout: float = 60) -> bytes:
        """``runc exec ID ARGV...``; return its stdout.

        Raises:
            ContainerError: The command failed.
        """
        done = self.run("exec", container_id, *argv, stdout=subprocess.PIPE, timeout=timeout)
        if done.returncode != 0:
            raise ContainerError(
                f"runc exec {container_id} {' '.join(argv)} failed (status {done.returncode}): "
                f"{_last_line(done.stderr)}"
            )
        return done.stdout


def _last_line(data: bytes | None) -> str:
    lines = (data or b"").decode(errors="replace").strip().splitlines()
    return lines[-1] if lines else "no message"


def log_errors(log: Path) -> str:
    """The error messages of a runc ``--log-format json`` log, one per line."""
    try:
        text = log.read_text(errors="replace")
    except OSError:
        return ""
    out = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            out.append(line)
            continue
        if record.get("level") in ("error", "fatal", "warning"):
            out.append(str(record.get("msg", "")))
    return "\n".join(out[-8:])
