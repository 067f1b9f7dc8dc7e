"""The command line's docs agree with its parser.

docs/cli.rst's reference is rendered from :func:`cedana.cli.build_parser` by sphinx-argparse
when the docs are built (``nox -s docs``, with -W), so it cannot drift; these tests check that
the page really is generated from the parser, and that the words written by hand around it (the
page's prose, the README's synopsis) name only options the parser has, and all of them.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

from cedana import cli

ROOT = Path(__file__).resolve().parents[2]
OPTION = re.compile(r"(?<![\w-])(--[a-z][a-z-]*|-[a-zA-Z])(?![\w-])")


def options(parser: argparse.ArgumentParser) -> set[str]:
    return {s for a in parser._actions for s in a.option_strings} - {"-h", "--help"}


def commands() -> dict[str, argparse.ArgumentParser]:
    parser = cli.build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


def test_page_is_rendered_from_the_parser() -> None:
    """docs/cli.rst renders build_parser() with sphinx-argparse, which the docs build loads."""
    page = (ROOT / "docs" / "cli.rst").read_text()
    directive = re.search(r"^\.\. argparse::\n((?:   :.*\n)+)", page, re.MULTILINE)
    assert directive is not None, "docs/cli.rst has no argparse directive"
    fields = dict(re.findall(r"   :(\w+): (.*)", directive.group(1)))
    assert fields == {"module": "cedana.cli", "func": "build_parser", "prog": "cedana"}
    assert '"sphinxarg.ext"' in (ROOT / "docs" / "conf.py").read_text()
    assert '"sphinx-argparse' in (ROOT / "noxfile.py").read_text()


def test_page_prose_names_only_real_options() -> None:
    """Every option the page's own text gives cedana is one the command line takes."""
    page = (ROOT / "docs" / "cli.rst").read_text().partition(".. argparse::")[0]
    # ``--json``, ``cedana COMMAND --help``, ``$ cedana -v ...``; not ``python -m cedana``.
    said = re.findall(r"``(.+?)``", page) + re.findall(r"^\s*\$ (.*)", page, re.MULTILINE)
    every = {"--help"}.union(options(cli.build_parser()), *map(options, commands().values()))
    mentioned = {o for s in said if s.startswith(("cedana ", "-")) for o in OPTION.findall(s)}
    assert mentioned, "the page mentions no option at all"
    assert mentioned - every == set()


def readme_synopsis() -> dict[str, set[str]]:
    """The README's ``cedana [-v] COMMAND ...`` lines: the options each command lists."""
    text = (ROOT / "README.md").read_text()
    section = text.split("## Command line\n", 1)[1].split("\n## ", 1)[0]
    found: dict[str, set[str]] = {}
    current = None
    for line in section.splitlines():
        start = re.match(r"    cedana \[-v\] ([a-z]+)", line)
        if start:
            current = start.group(1)
            found[current] = set(OPTION.findall(line[start.end() :]))
        elif not line.startswith("     "):  # the synopsis block ended
            current = None
        elif current is not None and "TARGET =" not in line:  # a continuation line
            found[current] |= set(OPTION.findall(line))
    return found


def test_readme_synopsis_matches_the_parser() -> None:
    """The README lists every command and, for each, every option it takes (in one of its
    spellings, ``-o`` or ``--output``) and no other."""
    synopsis = readme_synopsis()
    parsers = commands()
    assert set(synopsis) == set(parsers)
    for name, parser in parsers.items():
        listed = synopsis[name]
        assert listed <= options(parser), name
        for action in parser._actions:
            spellings = set(action.option_strings) - {"-h", "--help", "-v", "--verbose"}
            # -v is global: the README shows it once per line, before the command.
            assert not spellings or spellings & listed, f"{name} {action.option_strings}"
