"""How to checkpoint and how to restore: the options every layer takes, checked when made.

:class:`CheckpointOptions` and :class:`RestoreOptions` are what :class:`cedana.Process`
and every container runtime's ``checkpoint()`` / ``restore`` pass down; each field is
validated as the options are made, so a bad value is an InvalidOption before anything
is frozen or unpacked.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import attrs

from cedana.artifact import check_write_arguments
from cedana.descriptors import StdioTarget
from cedana.errors import InvalidOption
from cedana.progress import ProgressArg

__all__ = ["DEFAULT_LEVEL", "PID_WAIT", "CheckpointOptions", "PidNamespaceMode", "RestoreOptions"]

#: What ``pid_namespace=`` takes (see :class:`RestoreOptions`).
PidNamespaceMode = Literal["current", "new", "auto"]
_PID_NAMESPACES = ("current", "new", "auto")

#: How long a restore waits, by default, for the tree's own zombies to be reaped.
PID_WAIT = 5.0


def _check_pid_namespace(_options: object, _attribute: object, value: Any) -> None:
    if value is not None and value not in _PID_NAMESPACES:
        raise InvalidOption(
            f"pid_namespace={value!r}: pass 'current' (the original pids, here), 'new' (a "
            "new pid namespace held by cedana's init) or 'auto' (a new one only when a pid "
            "is taken)"
        )


def _check_pid_wait(_options: object, _attribute: object, value: Any) -> None:
    if not isinstance(value, int | float) or isinstance(value, bool) or value < 0:
        raise InvalidOption(f"pid_wait={value!r}: pass a number of seconds, 0 or more")


#: zstd's level when none is given: its own default, a good speed/size balance.
DEFAULT_LEVEL = 1


def _check_compress(_options: object, _attribute: object, value: Any) -> None:
    check_write_arguments(value, DEFAULT_LEVEL, 0)


def _check_level(_options: object, _attribute: object, value: Any) -> None:
    check_write_arguments("zstd", value, 0)


def _check_threads(_options: object, _attribute: object, value: Any) -> None:
    check_write_arguments("zstd", DEFAULT_LEVEL, value)


@attrs.frozen(kw_only=True)
class CheckpointOptions:
    """How to checkpoint.

    Attributes:
        leave_running: Keep the workload running after the checkpoint. When
            False it is killed, but only once the artifact is complete.
        tcp_established: Dump established TCP connections (CRIU's TCP repair).
        file_locks: Dump file locks held by the tree.
        shell_job: Force CRIU's shell-job mode; None detects it.
        compress: ``"zstd"`` or ``"none"`` (a plain tar).
        level: zstd level: 1 (fastest) to 22 (smallest), or negative for zstd's faster
            modes; only with ``compress="zstd"``.
        threads: zstd worker threads; 0 (the default) compresses on the writer's own thread,
            beside the threads receiving and hashing the pages.
        directory: Write the directory form instead of one file (nothing compressed).
        overwrite: Replace an existing artifact at the path.
        work_dir: Where CRIU's images are staged; the system temp dir by default.
        signing_key: The Ed25519 private key (PEM) that signs the artifact; this host's
            key (made on first use) by default.
        criu: Any other ``criu_opts`` field (CRIU's RPC names), the escape hatch.
        progress: Called with a :class:`cedana.progress.Progress` as the checkpoint goes
            (from a helper thread while pages stream), or True for a bar; not recorded.
        rootfs_only: For a container: save its root filesystem changes only (manifest kind
            ``"rootfs"``), without CRIU; the container keeps running (its cgroup is frozen
            only while the changes are read), whatever ``leave_running`` says. It restores
            as a new container started fresh from the image plus the changes.
        shift_owners: With ``rootfs_only``, for a container in a user namespace: record
            the files' owners as the container sees them (its uid/gid mappings applied
            backwards), not as the host stores them.

    Every value, and how they combine, is checked here, when the options are made:

    Raises:
        InvalidOption: A value out of range (``level=0``, ``threads=-1``...) or options
            that contradict each other (``level`` with ``compress="none"``).
    """

    leave_running: bool = False
    tcp_established: bool = False
    file_locks: bool = False
    shell_job: bool | None = None
    compress: Literal["zstd", "none"] = attrs.field(default="zstd", validator=_check_compress)
    level: int = attrs.field(default=DEFAULT_LEVEL, validator=_check_level)
    threads: int = attrs.field(default=0, validator=_check_threads)
    directory: bool = False
    overwrite: bool = False
    work_dir: Path | None = None
    signing_key: Path | None = attrs.field(default=None, converter=attrs.converters.optional(Path))
    criu: Mapping[str, Any] = attrs.field(factory=dict)
    progress: ProgressArg = attrs.field(default=None, eq=False, repr=False)
    rootfs_only: bool = False
    shift_owners: bool = False

    def __attrs_post_init__(self) -> None:
        # Runs on construction and on every attrs.evolve, so a bad combination never
        # reaches planning, let alone CRIU.
        if self.shift_owners and not self.rootfs_only:
            raise InvalidOption(
                "shift_owners=True records the owners of a rootfs-only checkpoint as the "
                "container sees them; a process checkpoint restores on the host's owners: "
                "pass rootfs_only=True (--rootfs-only) too, or drop shift_owners"
            )
        if self.rootfs_only:
            steering = [
                name
                for name, value in (
                    ("tcp_established", self.tcp_established),
                    ("file_locks", self.file_locks),
                    ("shell_job", self.shell_job is not None),
                    ("criu", bool(self.criu)),
                )
                if value
            ]
            if steering:
                raise InvalidOption(
                    f"{', '.join(steering)} steer CRIU, which a rootfs-only checkpoint does "
                    "not run (it saves the root filesystem changes only): drop them, or "
                    "drop rootfs_only"
                )
        if self.directory and self.compress == "none":
            raise InvalidOption(
                "directory=True writes the members as plain files, compress='none' is for a "
                "single plain tar: pass one of them"
            )
        if self.level != DEFAULT_LEVEL and (self.directory or self.compress == "none"):
            form = "directory=True" if self.directory else "compress='none'"
            raise InvalidOption(
                f"level={self.level} sets zstd's level, and {form} compresses nothing: "
                "drop level, or pass compress='zstd'"
            )

    def check_path(self, path: Path) -> None:
        """Refuse a destination whose name says another form than these options write,
        before anything is frozen (a plain tar named ``.tar.zst`` fools every reader).

        Raises:
            InvalidOption: The name ends in ``.zst`` but nothing would be compressed.
        """
        if not path.name.endswith(".zst") or (self.compress == "zstd" and not self.directory):
            return
        plain = path.name.removesuffix(".zst")
        if self.directory:
            raise InvalidOption(
                f"{path} ends in .zst, but directory=True writes a directory of plain files: "
                f"name it {path.with_name(plain.removesuffix('.tar'))}, or drop directory=True "
                "for a .tar.zst"
            )
        raise InvalidOption(
            f"{path} ends in .zst, but compress='none' writes a plain tar: name it "
            f"{path.with_name(plain if plain.endswith('.tar') else plain + '.tar')}, or pass "
            "compress='zstd' (--compress zstd)"
        )

    @classmethod
    def merged(
        cls,
        options: CheckpointOptions | None,
        *,
        leave_running: bool = False,
        tcp_established: bool = False,
        file_locks: bool = False,
        **given: Any,
    ) -> CheckpointOptions:
        """``options`` (or the defaults) with a ``checkpoint()`` call's keywords applied.

        The three flags are turned on, never off; every other keyword (a field's name)
        left None keeps the value of ``options`` (None means "as the options say": the
        default). The ``checkpoint()`` methods spell the keywords out, typed.

        Raises:
            TypeError: A keyword that is no field.
        """
        opts = options if options is not None else cls()
        return attrs.evolve(
            opts,
            leave_running=leave_running or opts.leave_running,
            tcp_established=tcp_established or opts.tcp_established,
            file_locks=file_locks or opts.file_locks,
            **{k: v for k, v in given.items() if v is not None},
        )

    def to_manifest(self) -> dict[str, Any]:
        """The options as recorded in the manifest."""
        return {
            "leave_running": self.leave_running,
            "tcp_established": self.tcp_established,
            "file_locks": self.file_locks,
            "compress": self.compress,
            "level": self.level,
            "criu": dict(self.criu),
            **(
                {"rootfs_only": True, "shift_owners": self.shift_owners} if self.rootfs_only else {}
            ),
        }


@attrs.frozen(kw_only=True)
class RestoreOptions:
    """How to restore.

    Attributes:
        tcp_established: Restore established TCP connections; None follows the checkpoint.
        stdin: What the tree's outside stdin becomes (fd, path, file object);
            /dev/null when None.
        stdout: Likewise for stdout (a path is opened for appending).
        stderr: Likewise for stderr.
        work_dir: Where the images are unpacked; the system temp dir by default.
        pid_namespace: Where the tree gets its original pids back: ``"current"`` here,
            in the caller's pid namespace (PidInUse when one is taken); ``"new"`` in a new
            pid namespace held by cedana's init, where they are always free; ``"auto"``
            here when they are free, else in a new namespace. None (the default):
            ``"new"`` for a checkpoint taken in a pid namespace of its own
            (``spawn(pid_namespace=True)``, or restored into one), else ``"current"``.
        pid_wait: Seconds to wait for pids held by the tree's own zombies (the tree
            just checkpointed, not yet reaped by its parent) before a pid counts as
            taken.
        criu: Any other ``criu_opts`` field, the escape hatch.
    """

    tcp_established: bool | None = None
    stdin: StdioTarget = None
    stdout: StdioTarget = None
    stderr: StdioTarget = None
    work_dir: Path | None = None
    pid_namespace: PidNamespaceMode | None = attrs.field(
        default=None, validator=_check_pid_namespace
    )
    pid_wait: float = attrs.field(default=PID_WAIT, validator=_check_pid_wait)
    criu: Mapping[str, Any] = attrs.field(factory=dict)
