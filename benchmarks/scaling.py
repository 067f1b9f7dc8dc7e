"""How checkpoint and restore scale with the workload's memory: seconds per GiB.

For each size in ``--sizes`` (MiB; 256,1024,2048,4096,8192 by default) it runs
:mod:`benchmarks.process`'s rounds on a workload of that size (half random, half
a pattern), with the command-line methods only: raw ``criu dump -D dir`` and
``criu restore -d``, ``criu dump`` + ``tar | zstd -T0`` (with and without an
fsync) and its restore, ``cedana checkpoint --leave-running`` and ``cedana
restore``. It prints, per size and method, the median seconds, seconds per GiB
and the peak RSS of the method's own process (cedana's must stay flat), and with
``--plot FILE`` (``.svg`` or ``.png``; needs ``cedana[bench]``, i.e. matplotlib)
draws seconds against GiB, one line per method, checkpoint and restore side by
side. ``--json FILE`` saves the medians, and ``--replot FILE`` draws the picture
again from them without measuring.

A size the disk or memory cannot hold is skipped with a note (it needs about
3.5x its size free under ``--dir`` and 1.5x in memory); a size that fails is
reported and the next one runs. Whatever fails, the workload and its restored
copies are killed. Run with ``python -m benchmarks.scaling [--sizes 256,1024]
[--rounds N] [--level N] [--peer-level N] [--dir DIR] [--plot FILE] [--json
FILE]`` (as root).
"""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from benchmarks.common import Method, MiB, arguments, become_subreaper, cedana_level, scratch
from benchmarks.process import Rounds

#: Per phase, per method: (GiB, median seconds, peak RSS of the method's own process).
Points = dict[str, dict[str, list[tuple[float, float, int | None]]]]


def mem_available() -> int:
    """Bytes of memory the kernel says it can give without swapping."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return int(line.split()[1]) * 1024
    return 0


def room_for(mib: int, where: Path) -> str | None:
    """Why a workload of ``mib`` MiB cannot run here, or None if it can."""
    size = mib * MiB
    free = shutil.disk_usage(where).free
    if free < size * 3.5:
        return f"{free / 2**30:.1f} GiB free under {where}, needs {size * 3.5 / 2**30:.1f}"
    if mem_available() < size * 1.5:
        return (
            f"{mem_available() / 2**30:.1f} GiB of memory available, needs {size * 1.5 / 2**30:.1f}"
        )
    return None


def add_points(points: Points, phase: str, gib: float, methods: Mapping[str, Method]) -> None:
    for label, m in methods.items():
        if m.samples:
            points.setdefault(phase, {}).setdefault(label, []).append((gib, m.median(), m.peak()))


def report(points: Points) -> str:
    """Per phase, per method, per size: median seconds, seconds per GiB, own peak RSS."""
    lines: list[str] = []
    for phase, methods in points.items():
        width = max(len(label) for label in methods)
        lines += [
            phase,
            f"  {'method':{width}} {'GiB':>5} {'median s':>9} {'s/GiB':>7} {'peak MiB':>8}",
        ]
        for label, series in methods.items():
            for gib, seconds, peak in series:
                peak_s = f"{peak / MiB:.0f}" if peak is not None else "-"
                lines.append(
                    f"  {label:{width}} {gib:5.2f} {seconds:9.3f} {seconds / gib:7.3f} {peak_s:>8}"
                )
    return "\n".join(lines)


def plot(points: Points, path: Path, title: str) -> None:
    """Seconds against GiB, one line per method, one panel per phase; then the peak memory
    of cedana's own process against GiB (the fast path's bound: at most 256 MiB whatever the size)."""
    import matplotlib

    matplotlib.use("Agg")
    matplotlib.rcParams["svg.hashsalt"] = "cedana"  # the same data draws the same file
    matplotlib.rcParams["svg.fonttype"] = "none"  # text stays text: a small, diffable file
    from matplotlib import pyplot as plt

    phases = list(points)
    fig, axes = plt.subplots(
        1, len(phases) + 1, figsize=(5.2 * (len(phases) + 1), 4.8), squeeze=False
    )
    for ax, phase in zip(axes[0], phases, strict=False):
        for label, series in points[phase].items():
            xs, ys = [g for g, _, _ in series], [s for _, s, _ in series]
            ax.plot(xs, ys, marker="o", label=label)
        ax.set_title(phase)
        ax.set_xlabel("workload memory (GiB)")
        ax.set_ylabel("seconds (median)")
        ax.set_xlim(left=0)
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
    ax = axes[0][-1]
    for phase in phases:
        for label, series in points[phase].items():
            peaks = [(g, p / MiB) for g, _, p in series if p is not None]
            if label.startswith("cedana") and peaks:
                ax.plot(*zip(*peaks, strict=True), marker="o", label=f"{phase}: {label}")
    ax.axhline(256, color="grey", linestyle="--", label="the fast path's bound (256 MiB)")
    ax.set_title("peak RSS of cedana's own process")
    ax.set_xlabel("workload memory (GiB)")
    ax.set_ylabel("MiB")
    ax.set_xlim(left=0)
    ax.set_ylim(bottom=0, top=300)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.suptitle(title, fontsize="medium")
    fig.tight_layout()
    fig.savefig(path, metadata={"Date": None} if path.suffix == ".svg" else None)
    plt.close(fig)


def save(points: Points, title: str, path: Path) -> None:
    path.write_text(json.dumps({"title": title, "points": points}, indent=1) + "\n")


def load(path: Path) -> tuple[Points, str]:
    data = json.loads(path.read_text())
    points = {
        phase: {label: [(g, s, p) for g, s, p in series] for label, series in methods.items()}
        for phase, methods in data["points"].items()
    }
    return points, str(data["title"])


def sizes(text: str) -> list[int]:
    return [int(s) for s in text.split(",") if s.strip()]


def main(argv: Sequence[str] | None = None) -> int:
    p = arguments("scaling", __doc__, mib=0)
    p.add_argument(
        "--sizes", type=sizes, default=[256, 1024, 2048, 4096, 8192], help="MiB, comma-separated"
    )
    p.add_argument("--plot", type=Path, default=None, help="draw the picture into this .svg/.png")
    p.add_argument("--json", type=Path, default=None, help="save the medians to this file")
    p.add_argument(
        "--replot", type=Path, default=None, help="measure nothing: draw --plot from a --json file"
    )
    p.set_defaults(rounds=1)
    args = p.parse_args(argv)
    if args.replot is not None:
        saved, title = load(args.replot)
        print(title)
        print(report(saved))
        if args.plot is not None:
            plot(saved, args.plot, title)
        return 0
    become_subreaper()
    points: Points = {}
    status = 0
    for mib in args.sizes:
        why = room_for(mib, args.dir)
        if why is not None:
            print(f"scaling: skipping {mib} MiB: {why}", file=sys.stderr)
            continue
        rounds: Rounds | None = None
        try:
            with scratch(args.dir) as work:
                rounds = Rounds(work, mib, args.level, args.peer_level, api=False, kill=False)
                for r in range(args.rounds):
                    rounds.round(r)
        except Exception as exc:  # one size failing says why, and the next one runs
            print(f"scaling: {mib} MiB failed: {exc}", file=sys.stderr)
            status = 1
            continue
        add_points(points, "checkpoint", mib / 1024, rounds.dump)
        add_points(points, "restore", mib / 1024, rounds.rest)
        print(f"scaling: {mib} MiB done", file=sys.stderr, flush=True)
    title = (
        f"process workload (half random), {cedana_level(args.level)}, one-liners zstd "
        f"-{args.peer_level} -T0, {args.rounds} round(s) per size"
    )
    print(title)
    print(report(points))
    if args.json is not None:
        save(points, title, args.json)
    if args.plot is not None and points:
        plot(points, args.plot, title)
        print(f"picture: {args.plot}")
    return status


if __name__ == "__main__":
    sys.exit(main())
