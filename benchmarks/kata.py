"""Checkpoint and restore of a kata-style sandbox VM, cedana beside QEMU's own migration.

Workload: the test suite's kata-style sandbox (``tests/kata_guest.py``): QEMU with
``--mib`` MiB of memfd guest memory shared with a virtiofsd, Debian's guest kernel and a
busybox initramfs running a counter, under KVM where it works here and TCG otherwise. In the
same run, on the same VM and disk, it times:

- checkpoint: QEMU's own ``stop`` + ``migrate exec:cat > FILE`` + ``cont`` over QMP (the
  raw stream, uncompressed: what a hand-written script does); the same into
  ``zstd -1 -T0`` (the one-liner that compresses); and ``KataSandbox.checkpoint`` with
  ``leave_running`` (blockers checked, the share captured, migrate to a pipe into the zstd
  stream, cont, fsync, read back: one signed file);
- restore: a fresh virtiofsd and QEMU with ``-incoming "exec:cat FILE"`` + ``cont`` from
  the raw file; and ``KataSandbox.restore`` (verify every member, put the share back,
  virtiofsd, QEMU with ``-incoming fd:`` fed from the artifact, cont).

Each restored VM is stopped before the next round. Prints medians, sizes and ratios; run
with ``python -m benchmarks.kata [--rounds N] [--mib N] [--dir DIR]`` as root, after
``scripts/provision`` (QEMU >= 8.2, virtiofsd, the guest kernel) and with ``cedana[kata]``.
"""

from __future__ import annotations

import shutil
import subprocess
import time
from functools import partial
from pathlib import Path

from benchmarks.common import arguments, du, scratch, table, timed
from cedana.runtimes._qemu_spec import parse_command_line
from cedana.runtimes._qmp import QmpConnection
from cedana.runtimes.kata import KataSandbox
from tests.kata_guest import RUNTIME_DIR, build_initrd, start_sandbox, wait_for


def qmp_migrate(qmp_path: Path, uri: str) -> None:
    """QEMU's own save: stop, migrate to ``uri``, wait for completed, cont."""
    with QmpConnection.open(qmp_path) as qmp:
        qmp.execute("stop")
        qmp.execute("migrate", {"uri": uri})
        while qmp.execute("query-migrate").get("status") != "completed":
            time.sleep(0.01)
        qmp.execute("cont")


def raw_restore(
    argv: list[str], state: Path, share: Path, run_dir: Path
) -> list[subprocess.Popen[bytes]]:
    """A virtiofsd and QEMU loading ``state`` with ``-incoming exec:cat``; returns once the
    VM runs again."""
    run_dir.mkdir()
    sock = run_dir / "vhost-fs-0.sock"
    fsd = subprocess.Popen(
        ["virtiofsd", f"--socket-path={sock}", f"--shared-dir={share}", "--cache=never",
         "--sandbox=chroot"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    wait_for(sock.exists, 10, "virtiofsd")
    spec = parse_command_line(argv)
    cmd = spec.command_line(
        binary=shutil.which(spec.binary) or spec.binary,
        name=spec.name + "-raw",
        machine_type=spec.machine,
        accel=spec.accel,
        run_dir=run_dir,
        kernel=spec.kernel,
        initrd=spec.initrd,
        incoming_fd=0,
    )
    cmd[-1] = f"exec:cat {state}"
    qemu = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    with QmpConnection.open(run_dir / "qmp.sock", wait=10) as qmp:
        while qmp.execute("query-migrate").get("status") != "completed":
            time.sleep(0.01)
        qmp.execute("cont")
    return [qemu, fsd]


def main(argv: list[str] | None = None) -> int:
    p = arguments("kata", __doc__, mib=256)
    args = p.parse_args(argv)
    raw_ck, zstd_ck, cedana_ck = (
        "QMP migrate exec:cat > FILE (raw)",
        "QMP migrate exec:zstd -1 -T0 > FILE",
        "KataSandbox.checkpoint (leave_running)",
    )
    raw_rs, cedana_rs = "QEMU -incoming exec:cat FILE", "KataSandbox.restore"
    dump: dict[str, list[float]] = {raw_ck: [], zstd_ck: [], cedana_ck: []}
    rest: dict[str, list[float]] = {raw_rs: [], cedana_rs: []}
    sizes: dict[str, int] = {}
    with scratch(args.dir) as work:
        initrd = build_initrd(work / "initrd.img")
        box = start_sandbox(work, initrd, memory=args.mib)
        try:
            qmp_path = box.run_dir / "qmp.sock"
            argv_ = Path(f"/proc/{box.qemu.pid}/cmdline").read_bytes().rstrip(b"\0").split(b"\0")
            recorded = [a.decode() for a in argv_]
            sandbox = KataSandbox(box.id)
            for r in range(args.rounds):
                raw, packed = work / f"raw{r}.state", work / f"raw{r}.state.zst"
                dump[raw_ck].append(timed(partial(qmp_migrate, qmp_path, f"exec:cat > {raw}")))
                sizes[raw_ck] = du(raw)
                zstd = f"exec:zstd -q -1 -T0 > {packed}"
                dump[zstd_ck].append(timed(partial(qmp_migrate, qmp_path, zstd)))
                sizes[zstd_ck] = du(packed)
                packed.unlink()
                artifact = work / f"cedana{r}.tar.zst"
                dump[cedana_ck].append(
                    timed(partial(sandbox.checkpoint, artifact, leave_running=True))
                )
                sizes[cedana_ck] = du(artifact)

                run_dir = RUNTIME_DIR / f"{box.id}-raw{r}"
                share = work / f"raw{r}-share"
                shutil.copytree(box.shared, share)
                procs: list[subprocess.Popen[bytes]] = []
                began = time.perf_counter()
                try:
                    procs = raw_restore(recorded, raw, share, run_dir)
                    rest[raw_rs].append(time.perf_counter() - began)
                finally:
                    for proc in procs:
                        proc.kill()
                        proc.wait()
                    shutil.rmtree(run_dir, ignore_errors=True)
                raw.unlink()

                name = f"{box.id}-c{r}"
                restore = partial(KataSandbox.restore, artifact, name=name)
                began = time.perf_counter()
                restored = restore()
                rest[cedana_rs].append(time.perf_counter() - began)
                restored.stop()
                artifact.unlink()
        finally:
            box.stop()
    print(table(f"kata sandbox VM checkpoint, {args.mib} MiB guest", [
        (k, v, sizes.get(k)) for k, v in dump.items()], raw_ck, one_liner=zstd_ck))  # fmt: skip
    print(table(f"kata sandbox VM restore, {args.mib} MiB guest", [
        (k, v, None) for k, v in rest.items()], raw_rs))  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
