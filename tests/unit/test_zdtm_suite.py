"""The zdtm harness's reading of a test's .desc and its translation of CRIU's command-line
options into cedana's keywords and criu_opts fields (no CRIU, no root)."""

from __future__ import annotations

from pathlib import Path

import pytest

from cedana import criu
from tests.zdtm.suite import Desc, rebase, source_tree, translate

#: Every option the host-flavor static tests of CRIU 4.2 give in opts, dopts or ropts.
DESC_OPTIONS = [
    "--tcp-established",
    "--file-locks",
    "--shell-job",
    "--ext-unix-sk",
    "--link-remap",
    "--tcp-close",
    "--skip-in-flight",
    "--force-irmap",
    "--irmap-scan-path /zdtm/static",
    "--manage-cgroups",
    "--manage-cgroups=full",
    "--manage-cgroups=ignore",
    "--cgroup-root name=zdtmtst:/prefix",
    "--cgroup-root /newroot",
    "--cgroup-yard ../external_yard",
    "--ghost-limit 8M",
    "--network-lock nftables",
    "--join-ns net:/var/run/netns/criu-net-lock-test",
    "--external mnt[]:s",
    "--ext-mount-map auto",
    "--enable-external-masters",
    "--enable-fs nfsd",
    "--mntns-compat-mode",
    "--no-mntns-compat-mode",
    "--lsm-mount-context=system_u:object_r:container_file_t:s0",
]


def test_desc_defaults_are_zdtms() -> None:
    """A test without a desc runs in every flavor with no flags, options or features, and
    a 30 s timeout, as zdtm.py's default_test."""
    desc = Desc.parse("")
    assert desc.flavors == ("h", "ns", "uns")
    assert not desc.flags and not desc.opts and not desc.features
    assert desc.timeout == 30


def test_desc_splits_words_and_combines_options_per_side() -> None:
    """opts apply to both sides, dopts to the dump and ropts to the restore, in that order."""
    desc = Desc.parse(
        "{'flavor': 'h ns', 'flags': 'suid crfail', 'opts': '--tcp-established',"
        " 'dopts': '--network-lock nftables', 'ropts': '--tcp-close', 'timeout': 60}"
    )
    assert desc.flavors == ("h", "ns")
    assert desc.crfail and "suid" in desc.flags
    assert desc.dump_options == ("--tcp-established", "--network-lock", "nftables")
    assert desc.restore_options == ("--tcp-established", "--tcp-close")
    assert desc.timeout == 60


def test_desc_that_is_code_is_refused() -> None:
    """A desc is read as a literal, never run: code (mnt_ext_dev's) raises ValueError."""
    with pytest.raises(ValueError):
        Desc.parse('os.getenv("X") and {"flags": "noauto"}')


def test_cedanas_own_options_become_keywords() -> None:
    """--tcp-established, --file-locks and --shell-job are cedana's checkpoint keywords; on
    restore file locks and shell-job follow the checkpoint, so they are plain fields there."""
    words = ["--tcp-established", "--file-locks", "--shell-job"]
    dump = translate(words, side="dump")
    assert dump.keywords == {"tcp_established": True, "file_locks": True, "shell_job": True}
    assert dump.criu == {}
    restore = translate(words, side="restore")
    assert restore.keywords == {"tcp_established": True}
    assert restore.criu == {"file_locks": True, "shell_job": True}


def test_valued_options_take_the_next_word_or_the_inline_value() -> None:
    """``--opt VALUE`` and ``--opt=VALUE`` read alike; sizes, pairs and lists are parsed."""
    got = translate(
        [
            "--ghost-limit",
            "8M",
            "--cgroup-root",
            "name=zdtmtst:/prefix",
            "--cgroup-root=/newroot",
            "--join-ns",
            "net:/run/netns/x",
            "--external",
            "a",
            "--external=b",
        ],
        side="restore",
    )
    assert got.criu == {
        "ghost_limit": 8 << 20,
        "cg_root": [("name=zdtmtst", "/prefix"), ("", "/newroot")],
        "join_ns": [("net", "/run/netns/x")],
        "external": ["a", "b"],
    }
    assert got.unsupported == ()


def test_manage_cgroups_mode_only_inline() -> None:
    """CRIU takes the cgroup mode only as --manage-cgroups=MODE; bare, it is the default mode."""
    assert translate(["--manage-cgroups"], side="dump").criu == {"manage_cgroups": True}
    assert translate(["--manage-cgroups=full"], side="dump").criu == {
        "manage_cgroups": True,
        "manage_cgroups_mode": "full",
    }


def test_options_without_an_rpc_field_are_reported() -> None:
    """What CRIU's RPC cannot take is listed (with its value), not silently dropped."""
    got = translate(["--ghost-fiemap", "--libdir", "/x", "--link-remap"], side="dump")
    assert got.unsupported == ("--ghost-fiemap", "--libdir /x")
    assert got.criu == {"link_remap": True}


@pytest.mark.parametrize("option", DESC_OPTIONS)
@pytest.mark.parametrize("side", ["dump", "restore"])
def test_every_translated_option_is_a_criu_opts_field(option: str, side: str) -> None:
    """Each option the tests use translates to fields CRIU's RPC accepts, with values of
    the right type (cedana's own option builder takes them)."""
    got = translate(option.split(), side=side)
    assert got.unsupported == ()
    criu.build_options(dict(got.criu))


def test_source_tree_needs_the_zdtm_makefile(tmp_path: Path) -> None:
    """The pointer file names a tree; it counts only when it holds test/zdtm/static."""
    pointer = tmp_path / "criu-src"
    assert source_tree(pointer) is None  # no pointer
    tree = tmp_path / "criu-4.2"
    pointer.write_text(f"{tree}\n")
    assert source_tree(pointer) is None  # no tree
    (tree / "test" / "zdtm" / "static").mkdir(parents=True)
    (tree / "test" / "zdtm" / "static" / "Makefile").write_text("")
    assert source_tree(pointer) == tree


def test_rebase_resolves_paths_against_zdtms_images_directory() -> None:
    """A cgroup yard given relative to zdtm.py's images directory (six levels below
    test/) names the same place from anywhere; other options stay as written."""
    test_dir = Path("/src/criu/test")
    got = rebase(
        ["--manage-cgroups", "--cgroup-yard", "../../../../../../external_yard", "--x", "y"],
        test_dir,
    )
    assert got == ("--manage-cgroups", "--cgroup-yard", "/src/criu/test/external_yard", "--x", "y")
    assert rebase(["--cgroup-yard=../../../../../../y"], test_dir) == (
        "--cgroup-yard=/src/criu/test/y",
    )
    assert rebase(["--cgroup-yard", "/abs"], test_dir) == ("--cgroup-yard", "/abs")
