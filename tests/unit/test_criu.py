"""The CRIU boundary without CRIU: option building, and the swrk protocol against a stand-in
``criu swrk`` that answers as scripted (success, failure, notify, dying mid-request)."""

from __future__ import annotations

import os
import stat
import sys
from pathlib import Path

import pytest

from cedana import criu, procfs
from cedana.errors import CriuError, DumpFailed, InvalidOption, PidInUse, RestoreFailed
from tests.conftest import wait_for


def test_build_options_maps_scalars_and_repeated_fields() -> None:
    """Plain fields, repeated strings, pair lists and enums by name land in criu_opts."""
    opts = criu.build_options(
        {
            "pid": 42,
            "shell_job": True,
            "external": ["mnt[/x]:x"],
            "inherit_fd": [("pipe:[7]", 3)],
            "join_ns": [("net", "/proc/1/ns/net")],
            "ext_mnt": [("/proc", "proc")],
            "cg_root": [("", "/a"), ("cpu", "/b")],
            "manage_cgroups_mode": "soft",
            "network_lock": "skip",
        }
    )
    assert opts.pid == 42
    assert opts.shell_job is True
    assert list(opts.external) == ["mnt[/x]:x"]
    assert [(i.key, i.fd) for i in opts.inherit_fd] == [("pipe:[7]", 3)]
    assert [(j.ns, j.ns_file) for j in opts.join_ns] == [("net", "/proc/1/ns/net")]
    assert [(m.key, m.val) for m in opts.ext_mnt] == [("/proc", "proc")]
    assert [(c.ctrl, c.path) for c in opts.cg_root] == [("", "/a"), ("cpu", "/b")]
    assert opts.manage_cgroups_mode == 3
    assert opts.network_lock == 3


def test_build_options_rejects_unknown_names() -> None:
    """A misspelt option is a clear InvalidOption (a CedanaError and a ValueError) naming
    it, not a silent no-op."""
    with pytest.raises(InvalidOption, match="tcp_establish"):
        criu.build_options({"tcp_establish": True})


def test_build_options_rejects_bad_values() -> None:
    """A value of the wrong type (of a plain field, a pair list, an enum) is an InvalidOption
    naming the option or value."""
    with pytest.raises(InvalidOption, match="pid"):
        criu.build_options({"pid": "many"})
    with pytest.raises(InvalidOption, match="bad CRIU option value"):
        criu.build_options({"inherit_fd": [("pipe:[1]", "three")]})
    with pytest.raises(InvalidOption, match="bad CRIU option value"):
        criu.build_options({"manage_cgroups_mode": "sometimes"})


FAKE = """\
#!{python}
import os, socket, sys
sys.path[:0] = {path!r}
import pycriu.rpc_pb2 as rpc
sk = socket.socket(fileno=int(sys.argv[2]))
req = rpc.criu_req(); req.ParseFromString(sk.recv(1 << 20))
mode = {mode!r}
log = os.path.join("/proc/self/fd", str(req.opts.work_dir_fd if req.opts.HasField("work_dir_fd") else req.opts.images_dir_fd), req.opts.log_file)
with open(log, "w") as f:
    f.write("(00.001) starting\\n(00.002) Error (criu/cr-dump.c:1): something broke\\n")
def send(**kw):
    sk.send(rpc.criu_resp(type=req.type, **kw).SerializeToString())
if mode == "ok":
    send(success=True, restore=rpc.criu_restore_resp(pid=4242)) if req.type == rpc.RESTORE else send(success=True)
elif mode == "fail":
    send(success=False, cr_errno=17 if req.type == rpc.RESTORE else 1)
elif mode == "notify":
    sk.send(rpc.criu_resp(type=rpc.NOTIFY, success=True, notify=rpc.criu_notify(script="post-dump", pid=1)).SerializeToString())
    ack = rpc.criu_req(); ack.ParseFromString(sk.recv(1 << 20))
    with open(log, "a") as f:
        f.write("notify_success=%s\\n" % ack.notify_success)
    send(success=ack.notify_success)
elif mode == "die":
    os._exit(3)
elif mode == "die-in-notify":
    sk.send(rpc.criu_resp(type=rpc.NOTIFY, success=True, notify=rpc.criu_notify(script="post-dump", pid=1)).SerializeToString())
    os._exit(4)
"""


class _NoPreflight(criu.SwrkCriu):
    def preflight(self) -> None:
        """Unit tests run without root."""


def fake_backend(tmp_path: Path, mode: str) -> criu.SwrkCriu:
    import pycriu

    script = tmp_path / f"criu-{mode}"
    pkg_root = str(Path(pycriu.__file__).parent.parent)
    import google.protobuf

    google = str(Path(google.protobuf.__file__).parent.parent.parent)
    script.write_text(FAKE.format(python=sys.executable, path=[pkg_root, google], mode=mode))
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return _NoPreflight(binary=str(script))


def request(tmp_path: Path, **kw: object) -> criu.CriuRequest:
    images = tmp_path / "images"
    images.mkdir(exist_ok=True)
    return criu.CriuRequest(images_dir=images, options={"pid": 1}, **kw)  # type: ignore[arg-type]


def children() -> set[int]:
    return set(procfs.children(os.getpid()))


def test_success_and_child_reaped(tmp_path: Path) -> None:
    """A successful dump and restore return normally; no swrk child is left, even a zombie."""
    before = children()
    backend = fake_backend(tmp_path, "ok")
    backend.dump(request(tmp_path))
    assert backend.restore(request(tmp_path)) == 4242
    assert children() == before


def test_failure_maps_errno_and_log_tail(tmp_path: Path) -> None:
    """A failed dump is DumpFailed with CRIU's errno and the tail of its log."""
    with pytest.raises(DumpFailed) as info:
        fake_backend(tmp_path, "fail").dump(request(tmp_path))
    assert info.value.errno == 1
    assert "something broke" in info.value.log_tail
    assert "something broke" in str(info.value)


def test_restore_eexist_is_restore_failed_with_errno(tmp_path: Path) -> None:
    """A restore failing with EEXIST keeps errno 17 so the layer above can name the holder."""
    with pytest.raises(RestoreFailed) as info:
        fake_backend(tmp_path, "fail").restore(request(tmp_path))
    assert info.value.errno == 17
    assert not isinstance(info.value, PidInUse)


def test_notify_success(tmp_path: Path) -> None:
    """Notify events reach the callback and are acknowledged."""
    seen: list[tuple[str, int]] = []
    fake_backend(tmp_path, "notify").dump(
        request(tmp_path, notify=lambda e, p: seen.append((e, p)))
    )
    assert seen == [("post-dump", 1)]


def test_notify_failure_rolls_back_and_reraises(tmp_path: Path) -> None:
    """A callback that raises makes CRIU fail (roll back) and its own error comes out."""

    def boom(event: str, pid: int) -> None:
        raise OSError(28, "No space left on device")

    before = children()
    with pytest.raises(OSError, match="No space"):
        fake_backend(tmp_path, "notify").dump(request(tmp_path, notify=boom))
    log = (tmp_path / "images" / "criu.log").read_text()
    assert "notify_success=False" in log
    assert children() == before


def test_swrk_dying_is_a_criu_error(tmp_path: Path) -> None:
    """swrk exiting without an answer is a CriuError, and the child is reaped."""
    before = children()
    with pytest.raises(CriuError, match="exited before answering"):
        fake_backend(tmp_path, "die").dump(request(tmp_path))
    assert children() == before


def test_log_dir_used_for_the_log(tmp_path: Path) -> None:
    """With log_dir, CRIU's log is written there and read from there."""
    logs = tmp_path / "logs"
    logs.mkdir()
    with pytest.raises(DumpFailed) as info:
        fake_backend(tmp_path, "fail").dump(request(tmp_path, log_dir=logs))
    assert (logs / "criu.log").exists()
    assert info.value.log_path == str(logs / "criu.log")


def test_error_tree_leaves_subclass_builtins() -> None:
    """The leaves that have a natural builtin also are one."""
    from cedana import errors

    assert issubclass(errors.ProcessNotFound, ProcessLookupError)
    assert issubclass(errors.NotPermitted, PermissionError)
    assert issubclass(errors.PidInUse, FileExistsError)
    assert issubclass(errors.ArtifactExists, FileExistsError)
    assert issubclass(errors.ContainerNotFound, LookupError)
    assert issubclass(errors.InvalidOption, ValueError)
    assert issubclass(errors.NoSpace, OSError)
    for name in errors.__all__:
        cls = getattr(errors, name)
        if issubclass(cls, Warning):
            assert issubclass(cls, errors.CedanaWarning)
        else:
            assert issubclass(cls, errors.CedanaError)
        assert name in (errors.__doc__ or ""), f"{name} missing from the tree in the docstring"


def test_swrk_dying_during_a_callback_is_a_criu_error(tmp_path: Path) -> None:
    """swrk vanishing while a notify is answered is a CriuError (not a broken pipe), and
    the child is reaped."""
    before = children()
    with pytest.raises(CriuError, match="exited before answering"):
        fake_backend(tmp_path, "die-in-notify").dump(request(tmp_path, notify=lambda e, p: None))
    assert children() == before


def test_known_criu_failures_are_explained(tmp_path: Path) -> None:
    """CRIU's log lines for a tree already ptraced (dump) and for an open file whose size
    changed (restore) become messages that say what happened and what to do; a seize refused
    because the task is a zombie (which CRIU dumps anyway) is not taken for a tracer."""
    import subprocess

    log = tmp_path / "criu.log"
    log.write_text(
        "(00.001) Warn  (compel/src/lib/infect.c:132): Unable to interrupt task: 4194000 "
        "(Operation not permitted)\n"
        "(00.002) Error (compel/src/lib/infect.c:366): Unable to detach from 4194000: "
        "No such process\n"
    )
    said = criu.explain("dump", log) or ""
    assert said.startswith("pid 4194000 is being checkpointed or traced by another process")
    assert "wait for it to finish" in said
    assert criu.explain("restore", log) is None

    zombie = subprocess.Popen(["true"])
    try:
        wait_for(lambda: procfs.proc_info(zombie.pid).state == "Z", what="a zombie")
        log.write_text(
            f"Warn  (compel/src/lib/infect.c:132): Unable to interrupt task: {zombie.pid} "
            "(Operation not permitted)\n"
        )
        assert criu.explain("dump", log) is None
    finally:
        zombie.wait()

    log.write_text(
        "(00.010) Error (criu/files-reg.c:2175): File tmp/job/out.log has bad size 95 (expect 87)\n"
    )
    said = criu.explain("restore", log) or ""
    assert said.startswith("/tmp/job/out.log is 95 bytes now but was 87 at the checkpoint")
    assert "the original kept running" in said
    assert "truncate -s 87 /tmp/job/out.log" in said
    assert "checkpoint without leave_running" in said
    assert criu.explain("dump", log) is None
    assert criu.explain("restore", tmp_path / "missing.log") is None
