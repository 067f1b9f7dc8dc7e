"""Checkpoint and restore of a process, cedana beside raw CRIU and the one-liner.

Workload: a Python process holding ``--mib`` MiB (half random, half a
repeating pattern; 1 GiB by default). In the same run, on the same workload and
disk, it times, round after round:

- checkpoint (every peer with leave-running): ``criu dump -D dir`` (raw CRIU,
  uncompressed images: the baseline of the fast path's targets); ``criu dump`` then
  ``tar -cf - . | zstd -T0`` (the one-liner one would script by hand, at
  ``--peer-level``, 1 by default), and the same followed by an fsync of the
  tarball (the honest peer of cedana's durable write); ``Process.checkpoint``
  in this process (the API); ``cedana checkpoint PID -o F --leave-running`` as a
  process of its own (the command line, what a user runs); and last
  ``cedana checkpoint PID -o F`` without leave-running (written, fsynced and
  verified while frozen, then the workload is killed), after which the workload
  is started anew for the next round;
- restore: raw ``criu restore -d`` from the uncompressed images; ``zstd -d |
  tar -x`` then ``criu restore -d``; ``cedana.restore`` (the API);
  ``cedana restore F`` (the command line). Each restored tree is killed before
  the next restore.

Every command (CRIU, the one-liners, cedana's command line) runs as a process of
its own, timed from its start to its exit. Before each method the page cache is
synced and dropped (``timed``/``measure_*`` do it), so no method pays for
another's writeback or cached memory. For each method the tables show median,
min and max seconds, the ratio to raw CRIU and to the one-liner, CRIU's frozen
time (``stats-dump``: freezing + frozen time) and the peak RSS of the method's
own process and of CRIU; then each of the fast path's targets, met or missed. Run
with ``python -m benchmarks.process [--rounds N] [--mib N] [--level N]
[--peer-level N] [--dir DIR]`` (as root).
"""

from __future__ import annotations

import shutil
import sys
from functools import partial
from pathlib import Path

import attrs

import cedana
from benchmarks.common import (
    Method,
    MiB,
    Target,
    arguments,
    become_subreaper,
    cedana_cli,
    cedana_level,
    du,
    kill_and_wait,
    level_flags,
    measure_call,
    measure_command,
    ratio,
    scratch,
    stats_in_dir,
    table,
    targets,
    wait_until,
)

WORKLOAD = """
import os, time
half = {half}
rand = os.urandom(half)
pattern = bytes(range(256)) * (half // 256)
print("ready", flush=True)
while True:
    time.sleep(1)
"""

# The rows, by key; ``api`` rows run cedana in this process, the others as commands.
RAW_DUMP = "criu dump -D dir (raw, uncompressed)"
ONE_LINER = "criu dump + tar|zstd -T0"
ONE_LINER_SYNC = "criu dump + tar|zstd -T0 + fsync"
API_DUMP = "cedana API checkpoint (leave_running)"
CLI_DUMP = "cedana checkpoint --leave-running (CLI)"
CLI_DUMP_KILL = "cedana checkpoint (CLI, workload killed)"
RAW_RESTORE = "criu restore -d (raw, uncompressed)"
ONE_LINER_RESTORE = "zstd -d|tar -x + criu restore -d"
API_RESTORE = "cedana API restore"
CLI_RESTORE = "cedana restore (CLI)"


def start_workload(mib: int, log: Path) -> cedana.Process:
    proc = cedana.spawn([sys.executable, "-c", WORKLOAD.format(half=(mib << 20) // 2)], log=log)

    def ready() -> bool:
        if not proc.running:
            raise RuntimeError(f"the workload exited before it was ready; see {log}")
        return "ready" in (log.read_text() if log.exists() else "")

    wait_until(ready, "the workload")
    return proc


@attrs.define
class Rounds:
    """Every method's rows, and how to run one round of them on one workload.

    ``api`` adds the in-process API rows; ``kill`` the checkpoint without
    leave-running (which ends the workload: the caller starts a new one per round).
    """

    work: Path
    mib: int
    level: int | None
    peer_level: int
    api: bool = True
    kill: bool = True
    dump: dict[str, Method] = attrs.field(init=False)
    rest: dict[str, Method] = attrs.field(init=False)

    def __attrs_post_init__(self) -> None:
        zstd = ("tar", "zstd")
        self.dump = {
            RAW_DUMP: Method(RAW_DUMP, own=("criu",)),
            ONE_LINER: Method(ONE_LINER, own=zstd),
            ONE_LINER_SYNC: Method(ONE_LINER_SYNC, own=zstd),
            **({API_DUMP: Method(API_DUMP)} if self.api else {}),
            CLI_DUMP: Method(CLI_DUMP),
            **({CLI_DUMP_KILL: Method(CLI_DUMP_KILL)} if self.kill else {}),
        }
        self.rest = {
            RAW_RESTORE: Method(RAW_RESTORE, own=("criu",)),
            ONE_LINER_RESTORE: Method(ONE_LINER_RESTORE, own=zstd),
            **({API_RESTORE: Method(API_RESTORE)} if self.api else {}),
            CLI_RESTORE: Method(CLI_RESTORE),
        }

    @property
    def log(self) -> Path:
        return self.work / "commands.log"

    @property
    def tmp(self) -> Path:
        """cedana's temp dir (its staged images, CRIU's log and statistics): on the same
        disk as everything else the benchmark writes."""
        path = self.work / "tmp"
        path.mkdir(exist_ok=True)
        return path

    def one_liner(self, pid: int, images: Path, tarball: Path, *, durable: bool) -> list[str]:
        script = (
            f"mkdir {images} && criu dump -t {pid} -D {images} -R && "
            f"tar -C {images} -cf - . | zstd -q -{self.peer_level} -T0 -o {tarball}"
        )
        if durable:  # what cedana also does before it lets a workload die
            script += f" && sync {tarball}"
        return ["bash", "-c", script]

    def round(self, r: int) -> None:
        """One round: start a workload, checkpoint it every way, restore every way."""
        proc = start_workload(self.mib, self.work / f"workload{r}.log")
        pid = proc.pid
        try:  # whatever fails, the workload (or a restored copy of it) does not outlive it
            self._checkpoints(r, proc)
            kill_and_wait(pid)  # reaps it too: its pid must be free for the restores
            self._restores(r, pid)
        finally:
            kill_and_wait(pid)

    def _checkpoints(self, r: int, proc: cedana.Process) -> None:
        w, d, pid = self.work, self.dump, proc.pid
        images, tarball = w / f"images{r}", w / f"criu{r}.tar.zst"
        api_file, cli_file = w / f"api{r}.tar.zst", w / f"cli{r}.tar.zst"
        images.mkdir()
        raw = ["criu", "dump", "-t", str(pid), "-D", str(images), "-R"]
        d[RAW_DUMP].add(measure_command(raw, log=self.log), stats_in_dir(images))
        d[RAW_DUMP].size = du(images)

        for key, durable in ((ONE_LINER, False), (ONE_LINER_SYNC, True)):
            staged, out = w / f"staged{r}", w / f"liner{r}.tar.zst"
            sample = measure_command(
                self.one_liner(pid, staged, out, durable=durable), log=self.log
            )
            d[key].add(sample, stats_in_dir(staged))
            d[key].size = du(out)
            shutil.rmtree(staged)
            if durable:
                out.unlink()
            else:
                out.rename(tarball)

        if self.api:
            checkpoint = partial(proc.checkpoint, api_file, leave_running=True, level=self.level)
            sample = measure_call(checkpoint, tmpdir=self.tmp)
            d[API_DUMP].add(sample)
            d[API_DUMP].size = du(api_file)

        cli = cedana_cli(
            "checkpoint", str(pid), "-o", str(cli_file), "--leave-running",
            *level_flags(self.level),
        )  # fmt: skip
        sample = measure_command(cli, log=self.log, tmpdir=self.tmp)
        d[CLI_DUMP].add(sample)
        d[CLI_DUMP].size = du(cli_file)

        if self.kill:  # last: it ends the workload
            kill_file = w / f"kill{r}.tar.zst"
            cli = cedana_cli("checkpoint", str(pid), "-o", str(kill_file), *level_flags(self.level))
            sample = measure_command(cli, log=self.log, tmpdir=self.tmp)
            d[CLI_DUMP_KILL].add(sample)
            d[CLI_DUMP_KILL].size = du(kill_file)
            kill_file.unlink()

    def _restores(self, r: int, pid: int) -> None:
        """Restore what :meth:`_checkpoints` wrote, every way, each copy killed after."""
        w, rs = self.work, self.rest
        images, tarball = w / f"images{r}", w / f"criu{r}.tar.zst"
        api_file, cli_file = w / f"api{r}.tar.zst", w / f"cli{r}.tar.zst"
        restore_raw = ["criu", "restore", "-D", str(images), "-d"]
        rs[RAW_RESTORE].add(measure_command(restore_raw, log=self.log))
        kill_and_wait(pid)
        shutil.rmtree(images)

        out = w / f"untar{r}"
        script = (
            f"mkdir {out} && zstd -q -d -c {tarball} | tar -C {out} -xf - && "
            f"criu restore -D {out} -d"
        )
        rs[ONE_LINER_RESTORE].add(measure_command(["bash", "-c", script], log=self.log))
        kill_and_wait(pid)
        shutil.rmtree(out)
        tarball.unlink()

        if self.api:
            rs[API_RESTORE].add(measure_call(partial(cedana.restore, api_file), tmpdir=self.tmp))
            kill_and_wait(pid)
            api_file.unlink()

        cli = cedana_cli("restore", str(cli_file))
        rs[CLI_RESTORE].add(measure_command(cli, log=self.log, tmpdir=self.tmp))
        kill_and_wait(pid)
        cli_file.unlink()


def goals(rounds: Rounds) -> str:
    """Issue 12's targets against this run's medians."""
    d, rs = rounds.dump, rounds.rest
    cli, raw = d[CLI_DUMP], d[RAW_DUMP]
    raw_stopped, cli_stopped = raw.stopped(), cli.stopped()
    checks = [
        Target("cedana checkpoint --leave-running (CLI) / raw criu dump", ratio(cli, raw), 1.5),
        Target("  the same / criu dump + tar|zstd -T0 (at least 2.5x faster)", ratio(cli, d[ONE_LINER]), 0.4),
    ]  # fmt: skip
    if CLI_DUMP_KILL in d:
        checks.append(
            Target("cedana checkpoint (CLI, killed) / --leave-running", ratio(d[CLI_DUMP_KILL], cli), 1.25)
        )  # fmt: skip
    checks += [
        Target(
            "frozen time: cedana (CLI) / raw criu dump",
            cli_stopped / raw_stopped if cli_stopped and raw_stopped else None,
            1.1,
        ),
        Target("cedana restore (CLI) / raw criu restore -d", ratio(rs[CLI_RESTORE], rs[RAW_RESTORE]), 1.25),
    ]  # fmt: skip
    for m in (cli, d.get(CLI_DUMP_KILL), rs[CLI_RESTORE]):
        if m is not None:
            peak = m.peak()
            checks.append(
                Target(f"peak RSS of cedana itself: {m.label}", peak / MiB if peak else None, 256, " MiB")
            )  # fmt: skip
    return targets("the fast path's targets (stretch: checkpoint 1.25x raw)", checks)


def main(argv: list[str] | None = None) -> int:
    p = arguments("process", __doc__, mib=1024)
    args = p.parse_args(argv)
    become_subreaper()
    with scratch(args.dir) as work:
        rounds = Rounds(work, args.mib, args.level, args.peer_level)
        for r in range(args.rounds):
            rounds.round(r)
    print(
        f"process with {args.mib} MiB (half random), {cedana_level(args.level)}, one-liners "
        f"zstd -{args.peer_level} -T0, {args.rounds} rounds, on {args.dir}"
    )
    print(table("checkpoint", list(rounds.dump.values()), RAW_DUMP, one_liner=ONE_LINER))
    print(table("restore", list(rounds.rest.values()), RAW_RESTORE, one_liner=ONE_LINER_RESTORE))
    print(goals(rounds))
    return 0


if __name__ == "__main__":
    sys.exit(main())
