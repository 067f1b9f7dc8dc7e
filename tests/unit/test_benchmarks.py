"""The benchmarks' own logic: CRIU's dump statistics, peak memory roles, tables, targets.

No time is asserted: the numbers here are made up or only checked for their shape.
"""

from __future__ import annotations

import io
import sys
from pathlib import Path

import pytest
from pycriu import images

from benchmarks import __main__ as bench_main
from benchmarks import common, scaling
from benchmarks.common import DumpStats, Method, ProcSeen, Sample, Target


def stats_image(**dump: int) -> bytes:
    fields = {
        "freezing_time": 0, "frozen_time": 0, "memdump_time": 0, "memwrite_time": 0,
        "pages_scanned": 0, "pages_skipped_parent": 0, "pages_written": 0, "pages_lazy": 0,
        **dump,
    }  # fmt: skip
    out = io.BytesIO()
    images.dump({"magic": "STATS", "entries": [{"dump": fields}]}, out)
    return out.getvalue()


def test_dump_stats_decode_freezing_and_frozen_time() -> None:
    """A stats-dump image decodes to its times in microseconds; stopped_s adds the two."""
    data = stats_image(freezing_time=1500, frozen_time=248500, memdump_time=9, memwrite_time=7)
    stats = common.decode_dump_stats(data)
    assert stats == DumpStats(freezing_us=1500, frozen_us=248500, memdump_us=9, memwrite_us=7)
    assert stats.stopped_s == pytest.approx(0.25)


def test_dump_stats_missing_or_damaged_are_none(tmp_path: Path) -> None:
    """No stats or a damaged image: None, never an error."""
    assert common.decode_dump_stats(b"not an image") is None
    assert common.decode_dump_stats(stats_image()[:10]) is None
    assert common.stats_in_dir(tmp_path) is None
    (tmp_path / "stats-dump").write_bytes(stats_image(frozen_time=5))
    assert common.stats_in_dir(tmp_path) == DumpStats(
        freezing_us=0, frozen_us=5, memdump_us=0, memwrite_us=0
    )


def test_stats_from_cedanas_report() -> None:
    """cedana's dump_stats (the API's Checkpoint.dump_stats, the command line's --json) give
    the frozen time; a report without them gives None."""
    stats = common.stats_from_cedana({"freezing_time": 3, "frozen_time": 4, "memwrite_time": 2})
    assert stats is not None
    assert (stats.freezing_us, stats.frozen_us, stats.memwrite_us) == (3, 4, 2)
    assert common.stats_from_cedana(None) is None
    assert common.stats_from_cedana({}) is None


def test_peaks_count_criu_but_not_the_tree_it_restores() -> None:
    """Roles: the root is "self"; CRIU is its topmost process; what CRIU forks (the restored
    tree, which holds the workload's memory) is left out; others count by name (a restored
    child too, under its own name, which no method takes as its own)."""
    seen = {
        10: ProcSeen("python3", "", 100),  # cedana
        11: ProcSeen("criu", "python3", 30),  # criu swrk
        12: ProcSeen("python3", "criu", 5000),  # the restored root, forked by CRIU
        13: ProcSeen("python3", "python3", 6000),  # a restored child
        14: ProcSeen("zstd", "python3", 20),
        15: ProcSeen("zstd", "bash", 25),
    }
    assert common.peaks(seen, 10) == {"self": 100, "criu": 30, "zstd": 25, "python3": 6000}
    assert common.peaks({7: ProcSeen("criu", "", 9)}, 7) == {"self": 9, "criu": 9}


def test_tree_sampler_sees_children_under_their_first_parent() -> None:
    """The sampler finds a command's children, names them, and keeps the name their parent had
    when first seen (here bash, which then runs the pipeline's last command)."""
    script = "python3 -c 'import time; x = bytes(4 << 20); time.sleep(0.3)' | cat; true"
    sample = common.measure_command(["bash", "-c", script], settled=False)
    assert sample.peaks["python3"] >= 4 << 20
    assert "cat" in sample.peaks and "self" in sample.peaks


def test_measure_command_reports_peaks_and_refuses_failures(tmp_path: Path) -> None:
    """A command's sample names its own peak ("self"); a failing one raises with its output."""
    # It stays a moment at its peak: the sampler polls, and growth in a process's last
    # poll interval is not seen (TreeSampler's docstring).
    script = "import time; x = bytes(8 << 20); time.sleep(0.3)"
    sample = common.measure_command([sys.executable, "-c", script], settled=False)
    assert sample.peaks["self"] >= 8 << 20
    log = tmp_path / "log"
    with pytest.raises(RuntimeError, match="failed \\(3\\).*boom"):
        common.measure_command(["sh", "-c", "echo boom; exit 3"], log=log, settled=False)


def method(label: str, times: list[float], **more: object) -> Method:
    m = Method(label, **more)  # type: ignore[arg-type]
    for t in times:
        m.add(Sample(t))
    return m


def test_table_keeps_the_plain_rows_form() -> None:
    """(label, times, size) rows still work: median, min, max, size, ratio to the baseline,
    and no frozen or memory columns when nothing measured them."""
    out = common.table(
        "restore", [("peer", [2.0, 4.0, 3.0], None), ("cedana", [6.0], 2**20)], "peer"
    )
    lines = out.splitlines()
    assert lines[0] == "restore"
    assert "frozen" not in out and "peak" not in out and "1-liner" not in out
    assert lines[2].split() == ["peer", "3.000", "2.000", "4.000", "1.00x"]
    assert lines[3].split() == ["cedana", "6.000", "6.000", "6.000", "1.0", "2.00x"]


def test_table_shows_one_liner_ratio_frozen_time_and_peaks() -> None:
    """With Methods: the ratio to the one-liner, the median frozen time, the own and CRIU
    peaks in MiB, and a dash where a method has none."""
    stats = DumpStats(freezing_us=100_000, frozen_us=400_000)
    raw = Method("raw", own=("criu",))
    raw.add(Sample(1.0, {"self": 8 << 20, "criu": 8 << 20}), stats)
    liner = Method("liner", own=("tar", "zstd"))
    liner.add(Sample(4.0, {"zstd": 20 << 20, "tar": 3 << 20, "criu": 9 << 20}))
    cedana = Method("cedana")
    cedana.add(Sample(2.0, {"self": 100 << 20, "criu": 10 << 20}), stats)
    cedana.add(Sample(3.0, {"self": 120 << 20, "criu": 10 << 20}))
    out = common.table("checkpoint", [raw, liner, cedana], "raw", one_liner="liner")
    rows = {line.split()[0]: line.split() for line in out.splitlines()[2:5]}
    assert rows["raw"][-5:] == ["1.00x", "0.25x", "0.500", "8", "8"]
    assert rows["liner"][-5:] == ["4.00x", "1.00x", "-", "20", "9"]
    assert rows["cedana"][1:4] == ["2.500", "2.000", "3.000"]
    assert rows["cedana"][-5:] == ["2.50x", "0.62x", "0.500", "120", "10"]


def test_targets_say_met_missed_or_not_measured() -> None:
    """Each target line gives the value, the limit and the verdict."""
    out = common.targets(
        "goals",
        [Target("fast", 1.2, 1.5), Target("faster", 2.0, 1.5), Target("frozen", None, 1.1),
         Target("memory", 300, 256, " MiB")],
    )  # fmt: skip
    lines = out.splitlines()
    assert lines[0] == "goals"
    assert lines[1].split()[-5:] == ["1.20x", "target", "<=", "1.5x", "met"]
    assert lines[2].endswith("MISSED")
    assert "n/a" in lines[3] and "met" not in lines[3]
    assert lines[4].split()[-7:] == ["300.00", "MiB", "target", "<=", "256", "MiB", "MISSED"]


def test_scaling_report_gives_seconds_per_gib() -> None:
    """The scaling report divides each median by the workload's size in GiB."""
    points: scaling.Points = {}
    scaling.add_points(points, "checkpoint", 2.0, {"cedana": method("cedana", [3.0, 5.0])})
    scaling.add_points(points, "checkpoint", 0.25, {"cedana": method("cedana", [1.0])})
    lines = scaling.report(points).splitlines()
    assert lines[2].split() == ["cedana", "2.00", "4.000", "2.000", "-"]
    assert lines[3].split() == ["cedana", "0.25", "1.000", "4.000", "-"]


def test_scaling_medians_survive_a_json_round_trip(tmp_path: Path) -> None:
    """--json saves what --replot draws again: the same points and title."""
    points: scaling.Points = {"restore": {"cedana": [(1.0, 2.5, 64 << 20), (2.0, 5.0, None)]}}
    scaling.save(points, "title", tmp_path / "s.json")
    assert scaling.load(tmp_path / "s.json") == (points, "title")


def test_bench_main_unknown_names(monkeypatch: pytest.MonkeyPatch) -> None:
    """A benchmark asked for by name that does not exist is an error; one in the default list
    that is not there yet (podman's, while it is written) is skipped."""
    assert bench_main.main(["nosuch"]) == 1
    monkeypatch.setattr(bench_main, "BENCHMARKS", ["nosuch"])
    assert bench_main.main([]) == 0
