"""The command line without CRIU: its parser and help, errors (plain and ``--json``), ``-v``.

The calls it makes into the library are replaced by stand-ins that raise or log, so these
tests need no root; tests/integration/test_cli.py runs the same commands against real CRIU.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
from pathlib import Path
from typing import Any, NoReturn

import pytest

import cedana
from cedana import cli, registry
from cedana.artifact import HostInfo, Manifest, ProcessEntry, check_destination, write_artifact
from cedana.artifact.signing import host_key
from cedana.errors import ArtifactCorrupt, ArtifactExists, CedanaError


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    """Each subcommand's parser, by name."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def raising(exc: BaseException) -> Any:
    def stand_in(*args: object, **kwargs: object) -> NoReturn:
        raise exc

    return stand_in


def test_build_parser_is_the_command_line() -> None:
    """build_parser() is public and is what main() parses: every subcommand is there."""
    assert "build_parser" in cli.__all__
    parser = cli.build_parser()
    assert parser.prog == "cedana"
    assert set(subparsers(parser)) == {
        "check",
        "checkpoint",
        "restore",
        "inspect",
        "export",
        "push",
        "pull",
        "commit",
        "key",
        "demo",
    }


def test_help_has_a_description_and_an_epilog() -> None:
    """``cedana --help`` starts with what cedana does (not the module's docstring) and ends
    with the TARGET forms and examples."""
    text = cli.build_parser().format_help()
    assert "parse, call the public API, print" not in text
    assert "Checkpoint a live process tree or container" in text
    for target in ("PID, process:PID", "runc:ID", "containerd:[NAMESPACE/]ID"):
        assert target in text
    assert "Examples" in text
    assert "cedana checkpoint 1234 -o job.tar.zst" in text
    checkpoint = subparsers(cli.build_parser())["checkpoint"].format_help()
    assert "containerd:[NAMESPACE/]ID  a containerd container" in checkpoint


def test_every_option_has_help() -> None:
    """Every option and argument of every subcommand says what it does."""
    parser = cli.build_parser()
    missing = []
    for name, sub in {"cedana": parser, **subparsers(parser)}.items():
        for action in sub._actions:
            if isinstance(action, argparse._SubParsersAction):
                continue
            if not action.help or action.help == argparse.SUPPRESS:
                missing.append(f"{name} {'/'.join(action.option_strings) or action.dest}")
    assert missing == []


def test_into_lists_every_restore_target() -> None:
    """``restore --into``'s help names every runtime cedana.restore takes, and only those."""
    targets = {t for runtime in registry.entries() for t in runtime.restores_into}
    assert set(cli._RESTORE_TARGETS) == targets
    (into,) = [
        a
        for a in subparsers(cli.build_parser())["restore"]._actions
        if "--into" in a.option_strings
    ]
    assert into.help is not None
    assert all(re.search(rf"\b{t}\b", into.help) for t in targets), into.help


@pytest.mark.parametrize(
    ("argv", "verbose"),
    [
        (["-v", "inspect", "f"], True),
        (["inspect", "f", "-v"], True),
        (["inspect", "--verbose", "f"], True),
        (["--verbose", "checkpoint", "1", "-o", "x"], True),
        (["inspect", "f"], False),
    ],
)
def test_verbose_before_or_after_the_command(argv: list[str], verbose: bool) -> None:
    """-v/--verbose is global: it may stand before or after the subcommand."""
    assert cli.build_parser().parse_args(argv).verbose is verbose


def test_error_is_one_line_on_stderr(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    """Without --json an error is ``cedana: error: ...`` on stderr, exit 1, nothing on stdout."""
    monkeypatch.setattr(cedana, "open", raising(ArtifactCorrupt("f is damaged: x\nmore")))
    assert cli.main(["inspect", "f"]) == 1
    out, err = capsys.readouterr()
    assert out == ""
    assert err == "cedana: error: f is damaged: x\n"


def test_json_error_is_a_json_object(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    """With --json an error is one JSON line on stdout naming the error's class; exit 1."""
    monkeypatch.setattr(cedana, "open", raising(ArtifactCorrupt("f is damaged: x")))
    assert cli.main(["inspect", "f", "--json"]) == 1
    out, err = capsys.readouterr()
    assert err == ""
    assert out.count("\n") == 1
    assert json.loads(out) == {"error": "f is damaged: x", "type": "ArtifactCorrupt"}


def test_json_error_of_an_os_error(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    """OSErrors (a missing file) come out as JSON too, with their own class name."""
    monkeypatch.setattr(cedana, "open", raising(FileNotFoundError(2, "no checkpoint", "f")))
    assert cli.main(["inspect", "f", "--json"]) == 1
    data = json.loads(capsys.readouterr().out)
    assert data["type"] == "FileNotFoundError"
    assert "no checkpoint" in data["error"]


@pytest.mark.parametrize("as_json", [False, True])
def test_interrupt_is_one_line_and_130(
    as_json: bool, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    """Ctrl-C: exit status 130 and one line (JSON on stdout with --json), no traceback."""
    monkeypatch.setattr(cedana, "open", raising(KeyboardInterrupt()))
    assert cli.main(["inspect", "f", *(["--json"] if as_json else [])]) == 130
    out, err = capsys.readouterr()
    if as_json:
        assert err == ""
        assert json.loads(out) == {"error": "interrupted", "type": "KeyboardInterrupt"}
    else:
        assert out == ""
        assert err == "cedana: interrupted\n"


def logs_a_step(*args: object, **kwargs: object) -> NoReturn:
    logging.getLogger("cedana.process").debug("open %s: complete in %.3fs", "f", 0.25)
    raise CedanaError("stop here")


def test_verbose_shows_steps_with_times(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    """-v shows the library's DEBUG events on stderr as ``  0.123s cedana.process: ...``,
    and takes its handler away again when the command ends."""
    monkeypatch.setattr(cedana, "open", logs_a_step)
    before = list(logging.getLogger("cedana").handlers)
    assert cli.main(["-v", "inspect", "f"]) == 1
    err = capsys.readouterr().err.splitlines()
    assert re.fullmatch(r" *\d+\.\d{3}s cedana\.process: open f: complete in 0\.250s", err[0])
    assert err[1] == "cedana: error: stop here"
    assert logging.getLogger("cedana").handlers == before
    assert logging.getLogger("cedana").level == logging.NOTSET


def test_no_steps_without_verbose(monkeypatch: pytest.MonkeyPatch, capsys: Any) -> None:
    """Without -v the library's DEBUG events go nowhere: the library configures no logging."""
    monkeypatch.setattr(cedana, "open", logs_a_step)
    assert cli.main(["inspect", "f"]) == 1
    assert capsys.readouterr().err == "cedana: error: stop here\n"


# --- messages name the command line's flags beside the Python keywords ---------------------


def test_exists_message_names_the_flag(tmp_path: Path) -> None:
    """An existing output says ``overwrite=True (--overwrite)``."""
    dest = tmp_path / "c.tar.zst"
    dest.write_bytes(b"")
    with pytest.raises(ArtifactExists, match=r"overwrite=True \(--overwrite\)"):
        check_destination(dest, overwrite=False)


def a_process_artifact(tmp_path: Path) -> Path:
    images = tmp_path / "images"
    images.mkdir()
    (images / "pstree.img").write_bytes(b"not decoded here")
    (images / "pages-1.img").write_bytes(os.urandom(256 << 10))  # most of the file
    manifest = Manifest(
        created="2026-11-28T23:59:59Z",
        host=HostInfo(kernel="6.18.0", arch="x86_64", criu_version="4.2.1", hostname="box"),
        kind="process",
        options={},
        tree=[ProcessEntry(pid=42, ppid=1, command="sleep 100")],
        workload={"external": []},
    )
    dest = tmp_path / "c.tar.zst"
    write_artifact(images, dest, manifest, signer=host_key())  # signed: trusted here
    return dest


def test_unusable_restore_options_name_their_flags(tmp_path: Path) -> None:
    """Options a process restore does not take are named as the CLI spells them too."""
    artifact = a_process_artifact(tmp_path)
    with pytest.raises(CedanaError) as caught:
        cedana.restore(artifact, bundle="/b", namespace="ns")
    message = str(caught.value)
    assert "bundle= (--bundle)" in message
    assert "namespace= (--name NAMESPACE/NAME)" in message


def test_damaged_file_on_inspect_says_what_is_wrong(tmp_path: Path, capsys: Any) -> None:
    """``cedana inspect`` of a damaged file names the file and the damage and that it cannot
    be used; it does not speak of restoring, which inspect never does."""
    artifact = a_process_artifact(tmp_path)
    data = bytearray(artifact.read_bytes())
    data[len(data) // 2] ^= 0xFF
    artifact.write_bytes(data)
    assert cli.main(["inspect", str(artifact)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"cedana: error: {artifact} is damaged: "), err
    assert "the checkpoint cannot be used" in err
    assert "restor" not in err
    assert err.count("\n") == 1


def test_undecodable_images_on_inspect_name_the_artifact(tmp_path: Path, capsys: Any) -> None:
    """Members that verify but are not CRIU images: the error names the artifact, not the
    scratch directory inspect unpacked it into, and says the checkpoint cannot be used."""
    artifact = a_process_artifact(tmp_path)  # its pstree.img is not an image
    assert cli.main(["inspect", str(artifact)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"cedana: error: {artifact} is damaged: "), err
    assert "pstree.img" in err
    assert "the checkpoint cannot be used" in err
    assert ".cedana-inspect-" not in err
