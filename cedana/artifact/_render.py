"""How an inspection reads: text tables for a terminal, HTML tables for a notebook (all text
escaped). Its JSON form is :meth:`Inspection.to_dict <cedana.artifact.Inspection.to_dict>`."""

from __future__ import annotations

import html
from collections.abc import Iterable, Sequence
from typing import TYPE_CHECKING

from cedana.units import human_bytes

if TYPE_CHECKING:
    from cedana.artifact.inspection import Inspection, ProcessInfo, SocketInfo


def _summary(inspection: Inspection) -> str:
    n, threads = len(inspection.processes), inspection.threads
    return (
        f"{n} process{'es' if n != 1 else ''}, {threads} thread"
        f"{'s' if threads != 1 else ''}, {human_bytes(inspection.memory_bytes)} of memory "
        f"({inspection.memory_pages:,} pages), images {human_bytes(inspection.images_bytes)}"
    )


def text(inspection: Inspection) -> str:
    """Render readable tables for a terminal.

    The process tree comes first (children indented under their parent), then
    the open files of each process, then the sockets.
    """
    out = [_summary(inspection), "", "Processes"]
    rows = [
        [
            *_process_cells(p),
            "    " * (depth - 1) + "  \\_ " + p.command if depth else p.command,
            p.exe or "-",
        ]
        for p, depth in _tree_order(inspection.processes)
    ]
    out += _text_table([h.upper() for h in _PROCESS_HEADERS], rows, right={0, 1, 2, 3, 4})
    out += ["", "Open files"]
    if inspection.files:
        out += _text_table([h.upper() for h in _FILE_HEADERS], _file_rows(inspection), right={0, 2})
    else:
        out.append("(none)")
    out += ["", "Sockets"]
    if inspection.sockets:
        out += _text_table(_SOCKET_HEADERS, [_socket_row(s) for s in inspection.sockets], right={0})
    else:
        out.append("(none)")
    if inspection.skipped:
        out += ["", "Not shown (images that could not be decoded):"]
        out += [f"  {reason}" for reason in inspection.skipped]
    return "\n".join(out) + "\n"


def _file_rows(inspection: Inspection) -> list[list[str]]:
    commands = {p.pid: p.command for p in inspection.processes}
    return [
        [str(f.pid), commands.get(f.pid, "?"), str(f.fd), f.kind, f.description]
        for f in inspection.files
    ]


def html_tables(inspection: Inspection) -> str:
    """Render readable HTML tables for a notebook; all text is escaped."""
    esc = html.escape
    parts = ['<div class="cedana-inspection">', f"<p><b>{esc(_summary(inspection))}</b></p>"]
    parts.append("<h4>Processes</h4>")
    rows = []
    for p, depth in _tree_order(inspection.processes):
        cells = _process_cells(p)
        tds = "".join(f'<td style="text-align:right">{esc(c)}</td>' for c in cells[:5])
        tds += f"<td>{esc(cells[5])}</td>"
        tds += f'<td style="padding-left:{0.5 + 1.5 * depth:g}em">{esc(p.command)}</td>'
        tds += f"<td>{esc(p.exe)}</td>"
        rows.append(f"<tr>{tds}</tr>")
    parts.append(_html_table(_PROCESS_HEADERS, rows))
    parts.append("<h4>Open files</h4>")
    if inspection.files:
        rows = [_html_row(cells) for cells in _file_rows(inspection)]
        parts.append(_html_table(_FILE_HEADERS, rows))
    else:
        parts.append("<p>(none)</p>")
    parts.append("<h4>Sockets</h4>")
    if inspection.sockets:
        rows = [_html_row(_socket_row(s)) for s in inspection.sockets]
        parts.append(_html_table([h.capitalize() for h in _SOCKET_HEADERS], rows))
    else:
        parts.append("<p>(none)</p>")
    if inspection.skipped:
        parts.append("<p>Not shown (images that could not be decoded):</p><ul>")
        parts += [f"<li>{esc(reason)}</li>" for reason in inspection.skipped]
        parts.append("</ul>")
    parts.append("</div>")
    return "\n".join(parts)


_PROCESS_HEADERS = ["PID", "PPID", "Threads", "Memory", "VMAs", "State", "Command", "Executable"]
_FILE_HEADERS = ["PID", "Command", "FD", "Kind", "Description"]
_SOCKET_HEADERS = ["INODE", "FAMILY", "TYPE", "PROTO", "STATE", "LOCAL", "REMOTE"]


def _process_cells(p: ProcessInfo) -> list[str]:
    """A process's numbers and state: the cells before its command."""
    return [
        str(p.pid),
        str(p.ppid),
        str(p.threads),
        human_bytes(p.memory_bytes),
        str(p.vmas),
        p.state,
    ]


def _socket_row(s: SocketInfo) -> list[str]:
    remote = s.remote or (f"inode {s.peer_inode}" if s.peer_inode else "-")
    local = s.local or ("(unnamed)" if s.family == "unix" else "-")
    return [str(s.inode), s.family, s.type, s.protocol or "-", s.state, local, remote]


def _tree_order(processes: Sequence[ProcessInfo]) -> list[tuple[ProcessInfo, int]]:
    """Processes depth-first from the roots, each with its depth in the tree."""
    pids = {p.pid for p in processes}
    children: dict[int, list[ProcessInfo]] = {}
    for p in processes:
        children.setdefault(p.ppid, []).append(p)
    ordered: list[tuple[ProcessInfo, int]] = []
    seen: set[int] = set()

    def walk(p: ProcessInfo, depth: int) -> None:
        if p.pid in seen:
            return
        seen.add(p.pid)
        ordered.append((p, depth))
        for child in children.get(p.pid, ()):
            walk(child, depth + 1)

    for p in processes:
        if p.ppid not in pids or p.ppid == p.pid:
            walk(p, 0)
    for p in processes:  # a parent loop in damaged images: show the rest flat
        walk(p, 0)
    return ordered


def _text_table(
    headers: Sequence[str], rows: Sequence[Sequence[str]], right: set[int]
) -> list[str]:
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]

    def line(cells: Sequence[str]) -> str:
        padded = [
            c.rjust(w) if i in right else c.ljust(w)
            for i, (c, w) in enumerate(zip(cells, widths, strict=True))
        ]
        return "  ".join(padded).rstrip()

    return [line(headers), *(line(r) for r in rows)]


def _html_row(cells: Iterable[str]) -> str:
    return "<tr>" + "".join(f"<td>{html.escape(c)}</td>" for c in cells) + "</tr>"


def _html_table(headers: Sequence[str], rows: Sequence[str]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in headers)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"
