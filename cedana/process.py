"""Process: checkpoint and restore a live process tree through CRIU.

The checkpoint path, and why it is safe:

1. Look at the tree in /proc while nothing is frozen: refuse what cannot be
   dumped (kernel threads, ourselves, established TCP without
   ``tcp_established``), detect shell-job and descriptors leading outside.
2. CRIU dumps into a private scratch directory (:mod:`cedana.staging`). With
   ``leave_running=False`` the artifact is written, fsynced and verified from
   CRIU's ``post-dump`` callback, while the tree is still frozen: only when
   that succeeds does CRIU kill it.
   If anything fails, CRIU thaws the tree and it keeps running.
3. With ``leave_running=True`` CRIU thaws the tree right after the dump and the
   artifact is written afterwards.

The artifact is signed (:mod:`cedana.artifact.signing`) with this host's key or
the one named in ``signing_key``, which is read (or made) before anything is frozen.

Restore opens the artifact and checks its signer is trusted first, checks every
pid is free, then unpacks it (verifying every member) and asks CRIU to restore,
reattaching outside descriptors to the ones given.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import subprocess
import time
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import attrs

from cedana import compat, pidns, procfs, registry
from cedana.artifact import (
    ArtifactWriter,
    HostInfo,
    Manifest,
    ProcessEntry,
    check_destination,
    remove_path,
    sweep_temporaries,
)
from cedana.artifact.signing import KeySource, Trust, signing_key
from cedana.checkpoint import Checkpoint
from cedana.criu import CPU_CAP, CriuBackend, CriuRequest, default_backend, load_image
from cedana.criu import restore_failed as criu_restore_failed
from cedana.descriptors import (
    StdioTarget,
    inherit_plan,
    inherited_fds,
    open_stdio,
    outside_descriptors,
)
from cedana.errors import (
    CedanaError,
    DumpFailed,
    InvalidOption,
    LiveConnectionsWarning,
    NotCheckpointable,
    ProcessNotFound,
    RestoreFailed,
)
from cedana.options import (
    CheckpointOptions,
    PidNamespaceMode,
    RestoreOptions,
)
from cedana.pageserver import PageServer
from cedana.progress import ProgressArg, current, report, reporting
from cedana.staging import scratch_dir

__all__ = ["CheckpointOptions", "Process", "RestoreOptions", "open_stdio", "spawn"]

logger = logging.getLogger("cedana.process")

#: What fills a work dir, for a full filesystem's error message.
_IMAGES = "CRIU's images"
_DUMPED = "CRIU's images (and, for a container, its root filesystem changes)"


@attrs.frozen(kw_only=True)
class DumpPlan:
    """What the Process layer worked out for one dump; layers above extend it."""

    pid: int
    tree: tuple[procfs.ProcInfo, ...]
    criu: Mapping[str, Any]
    external: tuple[Mapping[str, Any], ...]
    terminal: bool = False
    #: For a tree in a pid namespace held by cedana's init: each pid (this /proc's) to the
    #: tree's own pid in that namespace, which CRIU, run inside it, dumps. Empty otherwise.
    ns_pids: Mapping[int, int] = attrs.field(factory=dict)

    def own_pid(self, pid: int) -> int:
        """``pid`` as the checkpoint records it (its pid in the tree's namespace)."""
        return self.ns_pids.get(pid, pid)

    @property
    def shell_job(self) -> bool:
        """Whether CRIU is told the tree is a shell job."""
        return bool(self.criu.get("shell_job"))


def plan_dump(
    pid: int, options: CheckpointOptions, *, layer: Mapping[str, Any] | None = None
) -> DumpPlan:
    """Look at the live tree and decide CRIU's options; nothing is frozen.

    CRIU's options come, each overriding the one before, from what the tree shows,
    from ``layer`` (what a layer above knows better: a container's runc options),
    from ``options.shell_job`` when set, and from ``options.criu`` (the caller's
    escape hatch).

    Raises:
        ProcessNotFound: No such pid.
        NotCheckpointable: A kernel thread, ourselves, a process already traced (another
            checkpoint of it running), a session led from outside the pid namespace, or
            established TCP connections without ``tcp_established``.
    """
    root = procfs.proc_info(pid)
    procfs.check_dumpable(root)
    tree = procfs.tree(pid)
    procfs.check_not_traced(tree)
    ns_pids: dict[int, int] = {}
    if pidns.cedana_init_of(pid) is not None:
        # CRIU cannot dump a namespace without its init, so it runs inside the namespace
        # and dumps the tree under the pids the tree itself sees.
        ns_pids = {info.pid: pidns.ns_pids(info.pid)[-1] for info in tree}
        with contextlib.suppress(ProcessNotFound):  # the root's parent, the init or another
            ns_pids[root.ppid] = pidns.ns_pids(root.ppid)[-1]
        outside = [info for info in tree if pidns.ns_sid(info.pid) == 0]
    else:
        outside = [info for info in tree if info.sid == 0]
    if outside:
        raise NotCheckpointable(
            f"pid {outside[0].pid} belongs to a session whose leader is outside this pid "
            "namespace, which CRIU cannot dump; start the workload in its own session "
            "(setsid, subprocess start_new_session=True, or cedana.spawn)"
        )
    fds = {info.pid: procfs.descriptors(info.pid) for info in tree}
    external, tty = outside_descriptors(fds)
    # CRIU's tcp_close (through criu=) dumps them too, to be restored closed.
    if not (options.tcp_established or options.criu.get("tcp_close")):
        conns = []
        for info in tree:
            conns += procfs.established_tcp(info.pid, fds[info.pid])
        if conns:
            first = conns[0]
            raise NotCheckpointable(
                f"pid {first.pid} has {len(conns)} established TCP connection(s) "
                f"(fd {first.fd}: {first.local} -> {first.remote}); pass tcp_established=True "
                "(--tcp-established) to dump them with TCP repair"
            )
    criu: dict[str, Any] = {
        "pid": ns_pids.get(pid, pid),
        "cpu_cap": CPU_CAP,  # makes CRIU write cpuinfo.img, checked before a restore
        "shell_job": root.sid != root.pid or tty,
        "tcp_established": options.tcp_established,
        "file_locks": options.file_locks,
        "leave_running": options.leave_running,
        # Pipes leading outside are reattached at restore via inherit_fd.
        "ext_unix_sk": True,
    }
    criu.update(layer or {})
    if options.shell_job is not None:
        criu["shell_job"] = options.shell_job
    criu.update(options.criu)
    return DumpPlan(
        pid=pid,
        tree=tuple(tree),
        criu=criu,
        external=tuple(external),
        terminal=tty,
        ns_pids=ns_pids,
    )


def _reap_if_ours(
    pids: Sequence[int], popen: subprocess.Popen[bytes] | None, *, root_is_ours: bool = False
) -> None:
    """Wait for killed processes (``pids``, the root first) to go, reaping only what no one
    else will: our own ``popen`` (through it), descendants of the root that this process
    adopted as a subreaper, and the root when ``root_is_ours`` (a tree cedana restored, which
    this process adopted).

    A root that is the caller's own child (its ``subprocess.Popen``) is left to the caller:
    reaping it here would steal its exit status (``Popen.poll()`` would say 0, not -9). A
    zombie holds its pid, and CRIU restores under the original pids, so a restore before the
    caller waits fails with PidInUse saying so.
    """
    if not pids:
        return
    root = pids[0]
    pending = set(pids)
    if popen is not None and popen.pid in pending:
        with contextlib.suppress(subprocess.TimeoutExpired):
            popen.wait(timeout=10)
        pending.discard(popen.pid)
    deadline = time.monotonic() + 10
    while pending and time.monotonic() < deadline:
        for pid in list(pending):
            try:
                info = procfs.proc_info(pid)
            except ProcessNotFound:
                pending.discard(pid)
                continue
            if info.state == "Z":
                if info.ppid == os.getpid() and (pid != root or root_is_ours):
                    with contextlib.suppress(ChildProcessError):
                        os.waitpid(pid, 0)
                pending.discard(pid)
        if pending:
            time.sleep(0.005)


def checkpoint_tree(
    plan: DumpPlan,
    path: Path,
    options: CheckpointOptions,
    *,
    kind: str,
    runtime: str | None = None,
    workload: Mapping[str, Any] | None = None,
    add_members: Callable[[Path], Mapping[str, Any] | None] | None = None,
    backend: CriuBackend | None = None,
    popen: subprocess.Popen[bytes] | None = None,
    root_is_ours: bool = False,
) -> Checkpoint:
    """Dump ``plan`` with CRIU and write the artifact at ``path``.

    The shared checkpoint path of every layer: a container layer passes its own
    plan, manifest fields and ``add_members`` (called once with the images
    directory from CRIU's post-dump callback, while the tree is frozen, in both
    modes, to add e.g. the rootfs changes; what it returns is merged into the
    manifest's ``workload``). ``popen`` and ``root_is_ours`` say who reaps the killed root
    (see :func:`_reap_if_ours`).
    """
    backend = backend_or_default(backend)  # callers ran preflight() before planning
    path = Path(path)
    options.check_path(path)
    check_destination(path, overwrite=options.overwrite)
    signer = signing_key(options.signing_key)  # before freezing: a bad key fails first
    # Before the dump: what a killed checkpoint left may be what would fill the disk.
    sweep_temporaries(path.parent)
    if options.leave_running and options.tcp_established:
        _warn_live_connections(plan.pid)

    manifest = Manifest(
        host=HostInfo.current(criu_version=_criu_version(backend)),
        kind=kind,
        runtime=runtime,
        options=options.to_manifest(),
        tree=tuple(
            ProcessEntry(pid=plan.own_pid(p.pid), ppid=plan.own_pid(p.ppid), command=p.command)
            for p in plan.tree
        ),
        workload={
            "root_pid": plan.own_pid(plan.pid),
            **({"pid_namespace": "own"} if plan.ns_pids else {}),
            "shell_job": plan.shell_job,
            "terminal": plan.terminal,
            "external": [dict(e) for e in plan.external],
            **(workload or {}),
        },
    )
    written: list[Manifest] = []
    added: dict[str, Any] | None = None  # what add_members returned, once it has run

    def add(images: Path) -> None:
        nonlocal added
        if added is None:
            added = dict(add_members(images) or {}) if add_members is not None else {}

    started = time.monotonic()
    logger.debug("checkpoint pid %d -> %s: start", plan.pid, path)
    try:
        # The log lives apart from the images: when their disk fills up, it still says why.
        with (
            reporting(options.progress),
            scratch_dir(".cedana-dump-", parent=options.work_dir, fills=_DUMPED) as work,
            scratch_dir(".cedana-log-") as logs,  # always the temp dir
            ArtifactWriter(
                path,
                compress=options.compress,
                level=options.level,
                threads=options.threads,
                directory=options.directory,
                overwrite=options.overwrite,
                signer=signer,
                draft=manifest,
            ) as writer,
        ):
            images = work / "images"
            images.mkdir(mode=0o700)
            # The pages go from CRIU straight into the artifact while it dumps; the other
            # images land in the scratch dir and are added once the dump is complete.
            # The estimate walks every process's page tables: only when someone is watching.
            watched = current() is not None
            expected = procfs.anonymous_memory(p.pid for p in plan.tree) if watched else None
            pages = PageServer(writer, images, expected=expected)

            def finish(images: Path) -> None:
                began = time.monotonic()
                pages.finish()
                add(images)  # a no-op when the post-dump callback already added them
                writer.add_tree(images)
                final = attrs.evolve(manifest, workload={**manifest.workload, **(added or {})})
                # Before a kill the artifact is read back; a workload left running can be
                # checkpointed again, and restore verifies every byte before it runs.
                written.append(writer.finish(final, verify=not options.leave_running))
                logger.debug(
                    "artifact %s: complete and verified %.3fs after the dump",
                    path,
                    time.monotonic() - began,
                )

            def on_notify(event: str, _pid: int) -> None:
                # post-dump: images complete, tree still frozen; raising makes CRIU thaw it.
                if event == "post-dump":
                    if options.leave_running:
                        add(images)
                    else:
                        finish(images)

            with pages:
                request = CriuRequest(
                    images_dir=images,
                    options={**plan.criu, "ps": {"fd": pages.criu_fd}},
                    pass_fds=(pages.criu_fd,),
                    log_file="dump.log",
                    log_dir=logs,
                    notify=on_notify,
                    runner=pidns.EnterRunner(plan.pid) if plan.ns_pids else None,
                )
                try:
                    backend.dump(request)
                except DumpFailed:
                    pages.raise_error()  # a full disk made CRIU fail: say that
                    raise
                stats = _dump_stats(logs)
                if options.leave_running:
                    finish(images)
    except BaseException:
        logger.debug("checkpoint pid %d: failed", plan.pid)
        if written:  # CRIU failed after the artifact was written: the tree runs on
            remove_path(path)
        raise
    if not options.leave_running:
        _reap_if_ours([p.pid for p in plan.tree], popen, root_is_ours=root_is_ours)
    logger.debug("checkpoint pid %d: complete in %.3fs", plan.pid, time.monotonic() - started)
    # Signed just now; whether this host trusts that key is for a restore to decide.
    return attrs.evolve(Checkpoint.open(path, verify=False, trust="any"), dump_stats=stats)


def _dump_stats(logs: Path) -> dict[str, int] | None:
    """CRIU's own account of the dump (``stats-dump``, which it writes in its work dir)."""
    try:
        raw = load_image(logs / "stats-dump")["entries"][0]["dump"]
    except (OSError, ValueError, KeyError, IndexError, TypeError):
        return None
    stats = {k: int(v) for k, v in raw.items() if isinstance(v, int)}
    logger.debug(
        "criu dump stats: frozen %.3fs (freezing %.3fs), memdump %.3fs, memwrite %.3fs",
        stats.get("frozen_time", 0) / 1e6,
        stats.get("freezing_time", 0) / 1e6,
        stats.get("memdump_time", 0) / 1e6,
        stats.get("memwrite_time", 0) / 1e6,
    )
    return stats


def _warn_live_connections(pid: int) -> None:
    message = (
        f"checkpoint of pid {pid} with leave_running and tcp_established: its TCP connections "
        "stay live in the original, so a restore elsewhere meets peers that have the "
        "original's state (or saw its sockets close when it was killed) and its connections "
        "usually break at once; checkpoint without leave_running to move the connections"
    )
    logger.warning("%s", message)
    # stacklevel: the caller of checkpoint(), through checkpoint_tree and the layer's method.
    warnings.warn(message, LiveConnectionsWarning, stacklevel=4)


def _criu_version(backend: CriuBackend) -> str:
    try:
        return backend.version()[1]
    except CedanaError:
        return "unknown"


def backend_or_default(backend: CriuBackend | None) -> CriuBackend:
    """The CRIU backend to use: ``backend``, or when None (the default) the real one."""
    return default_backend() if backend is None else backend


def preflight(backend: CriuBackend | None = None) -> CriuBackend:
    """Check that CRIU is usable (once per operation, before anything is looked at);
    returns the backend checked."""
    checked = backend_or_default(backend)
    checked.preflight()
    return checked


#: A failed restore run by a runtime (runc, a shim), with the tail of CRIU's log.
restore_failed = criu_restore_failed


def restores_tcp(tcp_established: bool | None, manifest: Manifest) -> bool:
    """Whether a restore repairs established TCP connections: as asked, or when None (the
    default) as the checkpoint was taken."""
    if tcp_established is None:
        return bool(manifest.options.get("tcp_established", False))
    return tcp_established


def restore_tree(
    checkpoint: Checkpoint,
    options: RestoreOptions,
    *,
    backend: CriuBackend | None = None,
) -> tuple[int, pidns.PidNamespace | None]:
    """Unpack ``checkpoint`` (verifying it) and restore its tree; return the root's pid
    (in this /proc) and the new pid namespace holding it, if one was made."""
    backend = backend_or_default(backend)
    manifest = checkpoint.manifest
    if manifest.kind == "rootfs":
        raise RestoreFailed(
            f"{checkpoint.path} is a rootfs-only checkpoint (a container's root filesystem "
            "changes, no processes): cedana.restore (cedana restore) starts it as a new "
            "container of its runtime"
        )
    backend.preflight()
    compat.check_host(checkpoint, backend)
    workload = manifest.workload
    terminal = bool(workload.get("terminal", False))
    mode = pidns.pid_namespace_mode(options.pid_namespace, manifest)
    if mode != "new":
        free, waited = pidns.await_pids_free(manifest.tree, options.pid_wait)
        if not free and mode == "auto" and not terminal:
            logger.info("restore %s: a pid is taken, into a new pid namespace", checkpoint.path)
            mode = "new"
        elif not free:
            pidns.check_pids_free(manifest.tree, waited=waited)
    if terminal and mode == "new":
        raise RestoreFailed(
            "this checkpoint holds processes attached to a terminal, which cedana does not "
            "restore into a new pid namespace: restore with pid_namespace='current'"
        )
    if terminal and not os.isatty(0):
        raise RestoreFailed(
            "this checkpoint holds processes attached to a terminal; CRIU gives them the "
            "terminal of the restoring process, and this one's stdin is not a terminal: "
            "restore from a terminal (e.g. `cedana restore FILE` in a shell)"
        )
    runner = None
    if mode == "new":
        root_pid = workload.get("root_pid", manifest.tree[0].pid)
        runner = pidns.PidNamespace.for_restore([e.pid for e in manifest.tree], root_pid)
    tcp = restores_tcp(options.tcp_established, manifest)
    started = time.monotonic()
    with (
        open_stdio(options.stdin, options.stdout, options.stderr) as stdio,
        inherited_fds(inherit_plan(workload.get("external", []), stdio)) as inherit,
        scratch_dir(".cedana-restore-", parent=options.work_dir, fills=_IMAGES) as work,
    ):
        images = work / "images"
        checkpoint.extract(images)
        request_opts: dict[str, Any] = {
            "cpu_cap": CPU_CAP,
            "shell_job": bool(workload.get("shell_job", False)),
            "tcp_established": tcp,
            "file_locks": bool(manifest.options.get("file_locks", False)),
            "ext_unix_sk": True,
            "inherit_fd": inherit,
        }
        request_opts.update(options.criu)
        request = CriuRequest(
            images_dir=images,
            options=request_opts,
            pass_fds=tuple(sorted({fd for _, fd in inherit})),
            log_file="restore.log",
            terminal=terminal,
            runner=runner,
        )
        logger.debug("restore %s: start (pid namespace: %s)", checkpoint.path, mode)
        report("restore", 0, 1)
        namespace = None
        try:
            pid = backend.restore(request)
            if runner is not None:
                namespace, pid = runner.restored(pid)
        except BaseException as exc:
            if runner is not None:
                runner.close()  # ends whatever CRIU left in the namespace
            if isinstance(exc, RestoreFailed) and exc.errno == 17 and runner is None:
                pidns.check_pids_free(manifest.tree)  # name the holder if we can
            raise
    report("restore", 1, 1)
    logger.debug("restore %s: pid %d in %.3fs", checkpoint.path, pid, time.monotonic() - started)
    return pid, namespace


@attrs.define(eq=False)
class Process:
    """A live process tree, identified by its root pid.

    Args:
        pid: The root of the tree.
        backend: The CRIU backend; the real one by default (tests hand in fakes).
        popen: The root's Popen when cedana started it (:func:`spawn`); cedana waits on it.
        restored: The tree is one cedana restored: when this process adopted its root
            (as a subreaper), cedana reaps it once it ends. Otherwise a root that is the
            caller's own child is left for the caller to wait on.
        namespace: The pid namespace cedana's init holds the tree in (``spawn(...,
            pid_namespace=True)``, ``restore(..., pid_namespace="new")``); ``pid`` is then
            the root's pid here, and :attr:`ns_pid` its pid inside.
    """

    pid: int
    _backend: CriuBackend | None = attrs.field(default=None, alias="backend", repr=False)
    _popen: subprocess.Popen[bytes] | None = attrs.field(default=None, alias="popen", repr=False)
    _restored: bool = attrs.field(default=False, alias="restored", repr=False)
    namespace: pidns.PidNamespace | None = attrs.field(default=None, repr=False)

    def __attrs_post_init__(self) -> None:
        if self.namespace is not None and self._popen is None:
            self._popen = self.namespace.holder  # its exit status is the root's

    @property
    def ns_pid(self) -> int:
        """The root's pid as the tree itself sees it: :attr:`pid` unless the tree runs in
        a pid namespace of its own (then the pid it was checkpointed with, or 2 when
        spawned)."""
        try:
            return pidns.ns_pids(self.pid)[-1]
        except ProcessNotFound:
            return self.pid

    @property
    def backend(self) -> CriuBackend:
        """The CRIU backend it is checkpointed with: the one handed in, or the real one."""
        return backend_or_default(self._backend)

    def preflight(self) -> None:
        """Check, once per operation, that CRIU is usable before anything is looked at."""
        self.backend.preflight()

    def plan(
        self, options: CheckpointOptions, *, layer: Mapping[str, Any] | None = None
    ) -> DumpPlan:
        """Look at the live tree and decide CRIU's options (:func:`plan_dump`); nothing is
        frozen. ``layer`` holds what a layer above knows better (a container's runc options)."""
        return plan_dump(self.pid, options, layer=layer)

    def dump(
        self,
        plan: DumpPlan,
        path: str | os.PathLike[str],
        options: CheckpointOptions,
        *,
        kind: str = "process",
        runtime: str | None = None,
        workload: Mapping[str, Any] | None = None,
        add_members: Callable[[Path], Mapping[str, Any] | None] | None = None,
    ) -> Checkpoint:
        """Dump ``plan`` with this tree's backend and write the artifact at ``path``
        (:func:`checkpoint_tree`): a layer above passes its manifest facts and members."""
        ckpt = checkpoint_tree(
            plan,
            Path(path),
            options,
            kind=kind,
            runtime=runtime,
            workload=workload,
            add_members=add_members,
            backend=self.backend,
            popen=self._popen,
            root_is_ours=self._restored,
        )
        if self.namespace is not None and not options.leave_running:
            # The killed root's init ends its namespace once CRIU has left it: wait for the
            # holder, so the tree is not running (nor its namespace there) from now on.
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.namespace.holder.wait(timeout=10)
        return ckpt

    def checkpoint(
        self,
        path: str | os.PathLike[str],
        *,
        leave_running: bool = False,
        tcp_established: bool = False,
        file_locks: bool = False,
        shell_job: bool | None = None,
        compress: Literal["zstd", "none"] | None = None,
        level: int | None = None,
        threads: int | None = None,
        directory: bool | None = None,
        overwrite: bool | None = None,
        work_dir: str | os.PathLike[str] | None = None,
        signing_key: str | os.PathLike[str] | None = None,
        criu: Mapping[str, Any] | None = None,
        progress: ProgressArg = None,
        rootfs_only: bool | None = None,
        shift_owners: bool | None = None,
        options: CheckpointOptions | None = None,
    ) -> Checkpoint:
        """Checkpoint the tree to ``path``; see :class:`CheckpointOptions`.

        Every keyword but ``options`` sets the :class:`CheckpointOptions` field of the
        same name, over ``options`` (None keeps that field as it is).

        Raises:
            InvalidOption: A bad option, or a ``.zst`` ``path`` for an uncompressed
                artifact; nothing was looked at.
            ProcessNotFound: No such pid.
            NotCheckpointable: The tree cannot be dumped as asked (or another checkpoint
                or tracer holds it).
            NotPermitted: Not root.
            DumpFailed: CRIU failed; the tree keeps running.
            ArtifactExists: ``path`` exists and ``overwrite`` was not set.
            NoSpace: The artifact's or the work dir's filesystem filled up; the tree
                keeps running.
            OSError: Writing the artifact failed otherwise; the tree keeps running.

        Warns:
            LiveConnectionsWarning: ``leave_running`` with ``tcp_established``.
        """
        opts = CheckpointOptions.merged(
            options,
            leave_running=leave_running,
            tcp_established=tcp_established,
            file_locks=file_locks,
            shell_job=shell_job,
            compress=compress,
            level=level,
            threads=threads,
            directory=directory,
            overwrite=overwrite,
            work_dir=work_dir,
            signing_key=signing_key,
            criu=criu,
            progress=progress,
            rootfs_only=rootfs_only,
            shift_owners=shift_owners,
        )
        if opts.rootfs_only:
            raise InvalidOption(
                f"pid {self.pid} is a process tree, which has no root filesystem of its own: "
                "rootfs_only=True (--rootfs-only) is for containers (runc:ID, podman:NAME...)"
            )
        self.preflight()
        return self.dump(self.plan(opts), path, opts)

    @classmethod
    def restore(
        cls,
        checkpoint: Checkpoint | str | os.PathLike[str],
        *,
        tcp_established: bool | None = None,
        stdin: StdioTarget = None,
        stdout: StdioTarget = None,
        stderr: StdioTarget = None,
        work_dir: str | os.PathLike[str] | None = None,
        pid_namespace: PidNamespaceMode | None = None,
        pid_wait: float | None = None,
        criu: Mapping[str, Any] | None = None,
        options: RestoreOptions | None = None,
        backend: CriuBackend | None = None,
        trust: Trust = "trusted",
        trusted_keys: Iterable[KeySource] | None = None,
    ) -> Process:
        """Restore a process checkpoint; the tree runs again, detached from the caller.

        The keywords set the :class:`RestoreOptions` field of the same name, over
        ``options``; None leaves the field as it is. ``trust`` and ``trusted_keys`` are
        those of :meth:`cedana.Checkpoint.open`: an artifact no trusted key signed is
        refused before anything is unpacked, unless ``trust="any"``.

        In a new pid namespace (``pid_namespace``) the returned Process has the root's pid
        here as :attr:`pid` (signal it, read its /proc), its own as :attr:`ns_pid`, and
        :meth:`wait` gives its exit status (cedana's init passes it on).

        Raises:
            IncompatibleHost: This host's CRIU is older than the checkpoint's, or its CPU
                lacks a feature the images need; nothing was unpacked.
            PidInUse: A pid is taken (after waiting ``pid_wait`` for the tree's own
                zombies) and ``pid_namespace`` is ``"current"``.
            RestoreFailed: CRIU failed; nothing of the tree is left running.
        """
        given: dict[str, Any] = {
            "tcp_established": tcp_established,
            "stdin": stdin,
            "stdout": stdout,
            "stderr": stderr,
            "work_dir": Path(work_dir) if work_dir is not None else None,
            "pid_namespace": pid_namespace,
            "pid_wait": pid_wait,
            "criu": criu,
        }
        opts = attrs.evolve(
            options or RestoreOptions(), **{k: v for k, v in given.items() if v is not None}
        )
        ckpt = Checkpoint.of(checkpoint, trust=trust, trusted_keys=trusted_keys)
        pid, namespace = restore_tree(ckpt, opts, backend=backend)
        return cls(pid, backend=backend, restored=True, namespace=namespace)

    # --- observing and ending the tree ---------------------------------------

    @property
    def running(self) -> bool:
        """True while the root exists and is not a zombie."""
        if self._popen is not None and self._popen.poll() is not None:
            return False
        try:
            return procfs.proc_info(self.pid).state not in ("Z", "X")
        except ProcessNotFound:
            return False

    def tree(self) -> list[procfs.ProcInfo]:
        """The live tree, root first."""
        return procfs.tree(self.pid)

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the root."""
        os.kill(self.pid, signum)

    def kill(self) -> None:
        """Kill every process of the tree; reap the root when cedana started or restored it
        (the caller's own child is left for the caller to wait on)."""
        try:
            pids = [p.pid for p in procfs.tree(self.pid)]
        except ProcessNotFound:
            pids = [self.pid]
        for pid in reversed(pids):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        _reap_if_ours(pids, self._popen, root_is_ours=self._restored)
        if self.namespace is not None:
            self.namespace.close()  # its init ends, and the kernel ends all left inside

    def wait(self, timeout: float | None = None) -> int | None:
        """Wait for the root to end; its exit status when cedana started it (:func:`spawn`)
        or restored it and this process adopted it; None otherwise."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.running:
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"pid {self.pid} still running after {timeout}s")
            time.sleep(0.01)
        if self._popen is not None:
            return self._popen.wait()
        if self._restored:
            with contextlib.suppress(ChildProcessError):
                reaped, status = os.waitpid(self.pid, os.WNOHANG)
                if reaped == self.pid:
                    return os.waitstatus_to_exitcode(status)
        return None


def spawn(
    argv: Sequence[str],
    *,
    log: str | os.PathLike[str] | None = None,
    cwd: str | os.PathLike[str] | None = None,
    env: Mapping[str, str] | None = None,
    pid_namespace: bool = False,
) -> Process:
    """Start a workload that can always be checkpointed.

    It gets its own session (so no shell-job, no terminal), stdin from
    /dev/null, and stdout and stderr appended to ``log`` (or /dev/null): no
    descriptor leads back to the caller.

    With ``pid_namespace=True`` it starts as pid 2 of a new pid namespace held by
    cedana's init (pid 1 there, which reaps, passes signals on and exits as the workload
    does), with a /proc of its own: its checkpoints hold only the namespace's pids, and
    restore into a new namespace by default, so they never collide with a pid anywhere.
    The returned Process has the workload's pid here (:attr:`Process.pid`);
    :meth:`Process.wait` gives its exit status.
    """
    out = os.open(
        os.fspath(log) if log is not None else os.devnull,
        os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC,
        0o600,
    )
    if pid_namespace:
        try:
            ns, root = pidns.PidNamespace.spawn(
                list(argv),
                stdout=out,
                stderr=out,
                cwd=cwd,
                env=dict(env) if env is not None else None,
            )
        finally:
            os.close(out)
        logger.debug("spawned pid %d (2 in its pid namespace): %s", root, " ".join(argv))
        return Process(root, namespace=ns)
    try:
        popen = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            cwd=cwd,
            env=dict(env) if env is not None else None,
            start_new_session=True,
            close_fds=True,
        )
    finally:
        os.close(out)
    logger.debug("spawned pid %d: %s", popen.pid, " ".join(argv))
    return Process(popen.pid, popen=popen)


def _parse_pid(ident: str) -> dict[str, Any]:
    if not ident.isdigit():
        raise ValueError(ident)
    return {"pid": int(ident)}


registry.register(
    registry.Runtime(
        name="process",
        target="PID, process:PID",
        help="a process tree, by the pid of its root",
        cls=Process,
        parse=_parse_pid,
        restores_into=("process",),
        bare=True,
    )
)
