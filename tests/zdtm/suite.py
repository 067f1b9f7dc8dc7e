"""CRIU's zdtm static tests: where they are, what each one's ``.desc`` asks, which to run.

A test is an executable in ``test/zdtm/static`` of CRIU's source tree. Its optional
``NAME.desc`` is a Python literal (zdtm.py ``eval``s it; here it is read with
:func:`ast.literal_eval`, and the one desc that is code instead is reported as such)
with the keys this harness honours:

``flavor``
    zdtm's flavors the test runs in (``h``, ``ns``, ``uns``; all three by default).
    Only the host flavor ``h`` runs here: the others need zdtm's own root
    filesystem and namespaces.
``flags``
    ``noauto`` (manual runs only: skipped, as zdtm skips it with ``-a``), ``crfail``
    (checkpoint or restore is expected to fail, and the test to go on passing),
    ``excl``, ``reqrst``, ``suid``, ``nouser`` (always met: the runner is serial,
    always restores, and runs every test as root), ``samens`` and ``nolazy`` (only
    for zdtm modes not used here).
``opts``, ``dopts``, ``ropts``
    CRIU command-line options for dump and restore, dump only, restore only: raw
    CRIU gets them as written; cedana gets them translated by :func:`translate`.
``feature``, ``arch``, ``timeout``
    ``criu check --feature`` names that must pass, the architecture, the seconds
    a test may take to start and to stop.

Tests also skip when their ``NAME.checkskip`` script says so, as in zdtm.py.
"""

from __future__ import annotations

import ast
import contextlib
import fcntl
import os
import platform
import re
import stat
import subprocess
import sys
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

__all__ = [
    "SOURCE_POINTER",
    "Desc",
    "Test",
    "Translation",
    "build",
    "discover",
    "load",
    "locked",
    "rebase",
    "source_tree",
    "translate",
]

#: Where scripts/provision records the CRIU source tree it built CRIU from.
SOURCE_POINTER = Path("/usr/local/src/cedana/criu-src")

#: What zdtm.desc excludes from the static directory (not tests).
_NOT_TESTS = {"route_rules", "criu-rtc.so"}

_ARCH = {"x86_64": "x86_64", "aarch64": "aarch64", "ppc64le": "ppc64", "s390x": "s390"}


def source_tree(pointer: Path = SOURCE_POINTER) -> Path | None:
    """The CRIU source tree with zdtm's static tests, or None when there is none."""
    try:
        tree = Path(pointer.read_text().strip())
    except OSError:
        return None
    if not (tree / "test" / "zdtm" / "static" / "Makefile").is_file():
        return None
    return tree


@attrs.frozen(kw_only=True)
class Desc:
    """A test's ``.desc`` (zdtm's defaults when it has none)."""

    flavors: tuple[str, ...] = ("h", "ns", "uns")
    flags: frozenset[str] = frozenset()
    opts: tuple[str, ...] = ()
    dopts: tuple[str, ...] = ()
    ropts: tuple[str, ...] = ()
    features: tuple[str, ...] = ()
    arch: str | None = None
    timeout: int = 30

    @classmethod
    def parse(cls, text: str) -> Desc:
        """Read a desc; raise ValueError when it is not a dict literal."""
        if not text.strip():
            return cls()
        value = ast.literal_eval(text)
        if not isinstance(value, dict):
            raise ValueError("not a dict")
        return cls.from_mapping(value)

    @classmethod
    def from_mapping(cls, value: Mapping[str, Any]) -> Desc:
        def words(key: str) -> tuple[str, ...]:
            return tuple(str(value.get(key) or "").split())

        return cls(
            flavors=words("flavor") or ("h", "ns", "uns"),
            flags=frozenset(words("flags")),
            opts=words("opts"),
            dopts=words("dopts"),
            ropts=words("ropts"),
            features=words("feature"),
            arch=value.get("arch"),
            timeout=int(value.get("timeout") or 30),
        )

    @property
    def dump_options(self) -> tuple[str, ...]:
        """CRIU's options for the dump, as zdtm passes them."""
        return self.opts + self.dopts

    @property
    def restore_options(self) -> tuple[str, ...]:
        """CRIU's options for the restore, as zdtm passes them."""
        return self.opts + self.ropts

    @property
    def crfail(self) -> bool:
        """The checkpoint or the restore is expected to fail."""
        return "crfail" in self.flags


@attrs.frozen(kw_only=True)
class Test:
    """One zdtm static test and, when it is not run, why not."""

    name: str
    desc: Desc
    skip: str | None = None


def _executables(static: Path) -> Iterator[str]:
    """Every regular executable in ``static``, as zdtm.py's ``all_tests`` finds them."""
    for entry in sorted(os.listdir(static)):
        st = os.lstat(static / entry)
        if not stat.S_ISREG(st.st_mode) or not st.st_mode & stat.S_IXUSR:
            continue
        if entry.endswith((".checkskip", ".hook")) or entry in _NOT_TESTS:
            continue
        yield entry


@contextlib.contextmanager
def locked(static: Path) -> Iterator[None]:
    """One run at a time per source tree: tests write NAME.pid and NAME.out beside
    themselves, so two runs of one test would trample each other."""
    with open(static / ".cedana-zdtm.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            print("zdtm: waiting for another zdtm run on this source tree", file=sys.stderr)
            fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def build(source: Path, names: Sequence[str] | None, log: Path) -> None:
    """make -C test/zdtm/lib, then make -k the static tests (only ``names`` if given).

    Some tests need libraries this machine lacks (``netns_sub_veth``: libnl-route);
    those do not build and are reported as skipped.
    """
    zdtm = source / "test" / "zdtm"
    jobs = f"-j{os.cpu_count() or 1}"
    with open(log, "ab") as out:
        lib = subprocess.run(
            ["make", jobs, "-C", str(zdtm / "lib")],
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
        )
        if lib.returncode != 0:
            raise SystemExit(f"zdtm: building {zdtm / 'lib'} failed; see {log}")
        subprocess.run(
            ["make", jobs, "-k", "-C", str(zdtm / "static"), *(names or [])],
            stdout=out,
            stderr=subprocess.STDOUT,
            check=False,
        )


def _read_desc(path: Path) -> Desc:
    return Desc.parse(path.read_text()) if path.exists() else Desc()


class _Features:
    """``criu check --feature NAME``, asked once per name."""

    def __init__(self, criu: str):
        self._criu = criu
        self._known: dict[str, bool] = {}

    def __call__(self, name: str) -> bool:
        if name not in self._known:
            done = subprocess.run(
                [self._criu, "check", "--feature", name],
                stdin=subprocess.DEVNULL,
                capture_output=True,
                check=False,
                timeout=60,
            )
            self._known[name] = done.returncode == 0
        return self._known[name]


def _checkskip_says_skip(test_dir: Path, name: str) -> bool:
    script = test_dir / "zdtm" / "static" / f"{name}.checkskip"
    if not os.access(script, os.X_OK):
        return False
    done = subprocess.run(
        [f"zdtm/static/{name}.checkskip"],
        cwd=test_dir,
        stdin=subprocess.DEVNULL,
        capture_output=True,
        check=False,
        timeout=60,
    )
    return done.returncode != 0


def load(source: Path, name: str) -> Test:
    """One test and its desc, without deciding whether it runs (what a run needs)."""
    static = source / "test" / "zdtm" / "static"
    return Test(name=name, desc=_read_desc(static / f"{name}.desc"))


def discover(source: Path, *, criu: str, only: Iterable[str] | None = None) -> list[Test]:
    """The static tests of ``source``, each with the reason it is skipped (or None).

    Without ``only``, the tests are the built executables, as zdtm.py finds them;
    ``only`` names tests (built or not: one that did not build is skipped), and a
    name with neither an executable nor a source file raises KeyError.
    """
    static = source / "test" / "zdtm" / "static"
    names = list(_executables(static))
    if only is not None:
        wanted = list(dict.fromkeys(only))
        unknown = [
            n for n in wanted if not (static / n).is_file() and not (static / f"{n}.c").is_file()
        ]
        if unknown:
            raise KeyError(", ".join(unknown))
        names = wanted
    feature = _Features(criu)
    arch = _ARCH.get(platform.machine(), platform.machine())
    tests = []
    for name in names:
        try:
            desc = _read_desc(static / f"{name}.desc")
        except (ValueError, SyntaxError):
            tests.append(Test(name=name, desc=Desc(), skip="its .desc is code, not a literal"))
            continue
        tests.append(
            Test(name=name, desc=desc, skip=_skip_reason(name, desc, static, feature, arch))
        )
    return tests


def _skip_reason(name: str, desc: Desc, static: Path, feature: _Features, arch: str) -> str | None:
    if not (static / name).is_file():
        return "did not build"
    if desc.arch is not None and desc.arch != arch:
        return f"arch {desc.arch} only"
    if "noauto" in desc.flags:
        return "noauto: manual runs only"
    if "h" not in desc.flavors:
        return f"flavor {' '.join(desc.flavors)} only (zdtm's own namespaces and root)"
    missing = [f for f in desc.features if not feature(f)]
    if missing:
        return f"CRIU lacks feature {missing[0]} here"
    if _checkskip_says_skip(static.parent.parent, name):
        return f"{name}.checkskip: not on this machine"
    return None


#: zdtm.py's images directory, ``test/dump/zdtm/static/NAME/PID/ITER``, is this many levels
#: below ``test/``; CRIU works there, so descs write paths relative to it.
_ZDTM_IMAGES_DEPTH = 6
#: Options whose relative path is relative to CRIU's working directory (the images).
_PATH_OPTIONS = {"--cgroup-yard"}


def rebase(options: Iterable[str], test_dir: Path) -> tuple[str, ...]:
    """``options`` with the paths a desc gives relative to zdtm.py's images directory made
    absolute (``--cgroup-yard ../../../../../../external_yard`` is ``test/external_yard``):
    here the images live elsewhere, and cedana keeps them in a directory of its own."""
    words = list(options)
    base = test_dir.joinpath(*["x"] * _ZDTM_IMAGES_DEPTH)
    for i, word in enumerate(words):
        name, eq, inline = word.partition("=")
        if name not in _PATH_OPTIONS:
            continue
        if eq and not os.path.isabs(inline):
            words[i] = f"{name}={os.path.normpath(base / inline)}"
        elif not eq and i + 1 < len(words) and not os.path.isabs(words[i + 1]):
            words[i + 1] = os.path.normpath(base / words[i + 1])
    return tuple(words)


# --- CRIU's command-line options in cedana's terms -----------------------------------


@attrs.frozen(kw_only=True)
class Translation:
    """CRIU command-line options said the cedana way.

    Attributes:
        keywords: Keywords of ``Process.checkpoint`` / ``cedana.restore`` (cedana's own
            options: ``tcp_established``, ``file_locks``, ``shell_job``).
        criu: ``criu_opts`` fields for the ``criu=`` escape hatch.
        unsupported: Options CRIU's RPC has no field for, which cedana cannot pass.
    """

    keywords: Mapping[str, Any] = attrs.field(factory=dict)
    criu: Mapping[str, Any] = attrs.field(factory=dict)
    unsupported: tuple[str, ...] = ()


#: Options without a value that are one criu_opts boolean.
_FIELD_FLAGS = {
    "--ext-unix-sk": ("ext_unix_sk", True),
    "--link-remap": ("link_remap", True),
    "--tcp-close": ("tcp_close", True),
    "--skip-in-flight": ("tcp_skip_in_flight", True),
    "--force-irmap": ("force_irmap", True),
    "--enable-external-masters": ("ext_masters", True),
    "--enable-external-sharing": ("ext_sharing", True),
    "--evasive-devices": ("evasive_devices", True),
    "--mntns-compat-mode": ("mntns_compat_mode", True),
    "--no-mntns-compat-mode": ("mntns_compat_mode", False),
    "--weak-sysctls": ("weak_sysctls", True),
}
#: Options with a value that is one criu_opts string (or, for lists, one more entry).
_FIELD_VALUES = {
    "--cgroup-yard": "cgroup_yard",
    "--network-lock": "network_lock",
    "--lsm-mount-context": "lsm_mount_context",
    "--freeze-cgroup": "freeze_cgroup",
}
_FIELD_LISTS = {
    "--external": "external",
    "--irmap-scan-path": "irmap_scan_paths",
    "--enable-fs": "enable_fs",
    "--skip-mnt": "skip_mnt",
}
#: Options that take a value (``--opt VALUE`` or ``--opt=VALUE``) but have no field.
_VALUED_UNSUPPORTED = {"--libdir"}

_SIZE = re.compile(r"^(\d+)([KMG]?)$")


def _size(text: str) -> int:
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"not a size: {text!r}")
    return int(match.group(1)) << {"": 0, "K": 10, "M": 20, "G": 30}[match.group(2)]


def translate(options: Iterable[str], *, side: str) -> Translation:
    """Say CRIU's command-line ``options`` for a dump or a restore (``side``) in cedana's terms.

    Options cedana has a keyword for become that keyword (a restore follows the
    checkpoint's ``file_locks`` and ``shell_job`` by itself, so there they are
    passed as fields); every other option with an RPC field goes into ``criu``.
    """
    keywords: dict[str, Any] = {}
    criu: dict[str, Any] = {}
    unsupported: list[str] = []
    words = iter(options)
    for word in words:
        name, has_inline, inline = word.partition("=")

        def value(name: str = name, has_inline: str = has_inline, inline: str = inline) -> str:
            if has_inline:
                return inline
            try:
                return next(words)
            except StopIteration:
                raise ValueError(f"{name} needs a value") from None

        if name == "--tcp-established":
            keywords["tcp_established"] = True
        elif name in ("--file-locks", "--shell-job"):
            field = name[2:].replace("-", "_")
            if side == "dump":
                keywords[field] = True
            else:
                criu[field] = True
        elif name in _FIELD_FLAGS:
            field, flag = _FIELD_FLAGS[name]
            criu[field] = flag
        elif name in _FIELD_VALUES:
            criu[_FIELD_VALUES[name]] = value()
        elif name in _FIELD_LISTS:
            criu.setdefault(_FIELD_LISTS[name], []).append(value())
        elif name == "--manage-cgroups":
            criu["manage_cgroups"] = True
            if has_inline:  # CRIU takes the mode only as --manage-cgroups=MODE
                criu["manage_cgroups_mode"] = inline
        elif name == "--cgroup-root":
            ctrl, _, path = value().rpartition(":")
            criu.setdefault("cg_root", []).append((ctrl, path))
        elif name == "--ghost-limit":
            criu["ghost_limit"] = _size(value())
        elif name == "--join-ns":
            ns, _, ns_file = value().partition(":")
            criu.setdefault("join_ns", []).append((ns, ns_file))
        elif name == "--ext-mount-map":
            mapping = value()
            if mapping == "auto":
                criu["auto_ext_mnt"] = True
            else:
                key, _, val = mapping.partition(":")
                criu.setdefault("ext_mnt", []).append((key, val))
        elif name in _VALUED_UNSUPPORTED and not has_inline:
            unsupported.append(f"{name} {value()}")
        else:
            unsupported.append(word)
    return Translation(keywords=keywords, criu=criu, unsupported=tuple(unsupported))
