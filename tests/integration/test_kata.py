"""KataSandbox with a real QEMU: a kata-style sandbox VM (tests/kata_guest.py) saved through
QMP and restored from the artifact, its counter and its virtiofs share going on.

One VM is shared by the tests that only read it or leave it running; the last of them
checkpoints it without leave_running (it is quit). The 9p test boots a VM of its own.
Under TCG (KVM guests do not run on this machine's nested hypervisor) a boot takes ~10 s.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

import cedana
from cedana.artifact import write_artifact
from cedana.artifact.manifest import thaw
from cedana.artifact.signing import host_key
from cedana.errors import (
    ArtifactCorrupt,
    ContainerError,
    ContainerNotFound,
    NotCheckpointable,
)
from cedana.progress import Progress
from cedana.runtimes._kata_vm import STATE_MEMBER
from cedana.runtimes._qemu_spec import UnsupportedVm
from cedana.runtimes.kata import KataSandbox
from tests.capabilities import requires_kata, requires_root
from tests.helpers import tmpfs
from tests.kata_guest import (
    RUNTIME_DIR,
    Sandbox,
    build_initrd,
    last_count,
    sandbox,
    start_sandbox,
    wait_for,
)

pytestmark = [pytest.mark.integration, requires_root, requires_kata()]


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("kata")


@pytest.fixture(scope="module")
def initrd(work: Path) -> Path:
    return build_initrd(work / "initrd.img")


@pytest.fixture(scope="module")
def vm(work: Path, initrd: Path) -> Iterator[Sandbox]:
    """One sandbox VM for the module's tests (the last one quits it through cedana)."""
    box = start_sandbox(work, initrd, rootfs=True)
    try:
        yield box
    finally:
        box.stop()


@pytest.fixture
def restored() -> Iterator[list[KataSandbox]]:
    """Restored VMs a test made; stopped after it, pass or fail."""
    made: list[KataSandbox] = []
    yield made
    for sandbox_ in made:
        sandbox_.stop()


def _qemu_named(name: str) -> bool:
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
                if f"sandbox-{name}".encode() in argv:
                    return True
    return False


def test_no_such_sandbox_is_refused() -> None:
    """A sandbox id no QEMU runs is ContainerNotFound, naming where cedana looked."""
    with pytest.raises(ContainerNotFound, match="no kata sandbox kata-none"):
        KataSandbox("kata-none").checkpoint("/tmp/kata-none.tar.zst")


def test_found_by_id_or_by_qmp_socket(vm: Sandbox) -> None:
    """A sandbox is found by its id (QEMU's ``-name sandbox-<id>``) or by an explicit
    QMP socket; either way the same QEMU, whose QMP answers."""
    by_id = KataSandbox(vm.id)
    by_qmp = KataSandbox(qmp=vm.run_dir / "qmp.sock")
    assert by_id.pid == by_qmp.pid == vm.qemu.pid
    assert by_id.qmp_socket == vm.run_dir / "qmp.sock"
    with by_qmp.connect() as qmp:
        assert qmp.execute("query-status")["status"] == "running"


def test_restore_into_a_sandbox_dir_in_use_is_refused(vm: Sandbox, work: Path) -> None:
    """Restoring under the name of a sandbox whose runtime dir exists (the original's) is
    ContainerExists before anything starts; the original's dir is left as it was."""
    source = work / "inuse.tar.zst"
    KataSandbox(vm.id).checkpoint(source, leave_running=True)
    before = sorted(p.name for p in vm.run_dir.iterdir())
    with pytest.raises(cedana.ContainerExists, match="pass another name"):
        KataSandbox.restore(source)  # the recorded id: the original's
    assert sorted(p.name for p in vm.run_dir.iterdir()) == before
    assert vm.qemu.poll() is None


def test_leave_running_then_restore_continues_counter_and_share(
    vm: Sandbox, work: Path, restored: list[KataSandbox]
) -> None:
    """leave_running saves the VM and continues it; the restored VM's serial counter goes on
    from where it was saved, the file the guest wrote through virtiofs before the checkpoint
    is in its new shared directory, and the restored guest keeps writing there (its
    fresh virtiofsd serves it, though the guest holds a deleted file of it open); the
    container rootfs overlay in the share is mounted again on its image layer with the
    guest's changes, and unmounted when the VM is stopped."""
    out = work / "leave.tar.zst"
    seen: list[Progress] = []
    ckpt = KataSandbox(vm.id).checkpoint(out, leave_running=True, progress=seen.append)
    saved = last_count(vm.console)
    assert saved is not None
    assert ckpt.kind == "vm" and ckpt.runtime == "kata"
    qemu = ckpt.manifest.workload["qemu"]
    assert qemu["machine_type"].startswith("pc-q35-")
    assert "vhost-user-fs-pci" in qemu["devices"]
    state = ckpt.manifest.member(STATE_MEMBER).size
    assert seen and {p.phase for p in seen} == {"dump"} and seen[-1].done == state
    # The original runs on.
    wait_for(lambda: (last_count(vm.console) or 0) > saved + 1, 30, "the original's counter")
    assert vm.qemu.poll() is None

    shared = work / "leave-shared"
    seen.clear()
    box = cedana.restore(out, name=f"{vm.id}-r1", shared_dir=shared, progress=seen.append)
    assert isinstance(box, KataSandbox)
    restored.append(box)
    assert [p.phase for p in seen if p.phase != seen[0].phase][-1] == "unpack"
    assert seen[0].phase == "verify" and seen[-1].done == state
    console = RUNTIME_DIR / f"{vm.id}-r1" / "console.log"
    assert box.pid > 0 and box.qmp_socket.exists()
    wait_for(lambda: last_count(console) is not None, 30, "the restored console")
    first = last_count(console)
    assert first is not None and saved <= first <= saved + 2  # it went on, not from 0
    assert (shared / "before.txt").read_text() == "written by the guest before the checkpoint\n"
    at_restore = int((shared / "count").read_text())
    wait_for(
        lambda: int((shared / "count").read_text() or 0) > at_restore + 1,
        30,
        "the restored guest writing through virtiofs",
    )
    # The container rootfs in the share: an overlay again, on the same image layer, with
    # what the guest wrote into it before, and what it goes on writing.
    rootfs = shared / "ctr" / "rootfs"
    assert os.path.ismount(rootfs)
    assert (rootfs / "hello.txt").read_text() == "from the image layer\n"
    assert (rootfs / "guest.txt").read_text() == "written into the container rootfs\n"
    in_rootfs = int((rootfs / "count").read_text())
    wait_for(
        lambda: int((rootfs / "count").read_text() or 0) > in_rootfs,
        30,
        "the restored guest writing into its rootfs overlay",
    )
    box.stop()
    assert not box.running
    assert not (RUNTIME_DIR / f"{vm.id}-r1").exists()
    assert not os.path.ismount(rootfs)
    assert (vm.shared / "ctr" / "rootfs" / "hello.txt").exists()  # the original's is untouched


def test_damaged_state_is_refused_before_qemu_starts(
    vm: Sandbox, work: Path, restored: list[KataSandbox]
) -> None:
    """An artifact whose VM-state member is damaged is ArtifactCorrupt at restore, and no
    QEMU was started for it (nor its runtime dir made)."""
    out = work / "damaged.tar.zst"
    KataSandbox(vm.id).checkpoint(out, leave_running=True)
    data = bytearray(out.read_bytes())
    # The state is nearly all of the file; its middle is within it.
    data[len(data) // 2] ^= 0xFF
    out.write_bytes(bytes(data))
    with pytest.raises(ArtifactCorrupt):
        restored.append(KataSandbox.restore(out, name=f"{vm.id}-bad"))
    assert not _qemu_named(f"{vm.id}-bad")
    assert not (RUNTIME_DIR / f"{vm.id}-bad").exists()
    assert vm.qemu.poll() is None


def test_a_full_disk_leaves_the_vm_running(vm: Sandbox, work: Path) -> None:
    """The artifact's filesystem fills up while the VM state streams in: NoSpace, nothing is
    left at the destination, and the VM (paused for the save) runs on."""
    with tmpfs(work / "small", "4m") as small:
        with pytest.raises(cedana.NoSpace):
            KataSandbox(vm.id).checkpoint(small / "full.tar.zst")
        assert list(small.iterdir()) == []
    with KataSandbox(vm.id).connect() as qmp:
        assert qmp.execute("query-status")["status"] == "running"
    before = last_count(vm.console) or 0
    wait_for(lambda: (last_count(vm.console) or 0) > before, 30, "the counter after NoSpace")


def _edited(work: Path, source: Path, name: str, edit: Callable[[Any], None]) -> Path:
    """A copy of ``source`` with its recorded QEMU facts changed, re-signed by this host
    (as a hostile or mismatched artifact could be)."""
    ckpt = cedana.open(source)
    members = work / f"{name}-members"
    ckpt.extract(members)
    workload = thaw(ckpt.manifest.workload)
    edit(workload["qemu"])
    manifest = attrs.evolve(ckpt.manifest, workload=workload, members=())
    dest = work / f"{name}.tar.zst"
    write_artifact(members, dest, manifest, signer=host_key())
    shutil.rmtree(members)
    return dest


def test_unavailable_or_unsafe_recorded_vm_is_refused(vm: Sandbox, work: Path) -> None:
    """A restore whose recorded machine type, device or QEMU binary this host lacks, or whose
    command line holds a device outside the allow-list, is refused before QEMU starts."""
    source = work / "leave.tar.zst"
    if not source.exists():
        KataSandbox(vm.id).checkpoint(source, leave_running=True)

    def machine(qemu: dict[str, Any]) -> None:
        qemu["machine_type"] = "pc-q35-99.0"

    def binary(qemu: dict[str, Any]) -> None:
        qemu["argv"][0] = "/usr/bin/qemu-system-s390x"

    def device(qemu: dict[str, Any]) -> None:
        qemu["argv"] += ["-device", "vfio-pci,host=0000:00:02.0"]

    def host_file(qemu: dict[str, Any]) -> None:
        qemu["argv"] += ["-object", "memory-backend-file,id=x,size=1M,mem-path=/etc/shadow"]

    cases = [
        (machine, ContainerError, "no machine type pc-q35-99.0"),
        (binary, ContainerError, "qemu-system-s390x, which is not installed"),
        (device, UnsupportedVm, "device 'vfio-pci' is not one cedana restores"),
        (host_file, UnsupportedVm, "memory backend x is a file at '/etc/shadow'"),
    ]
    for n, (edit, error, message) in enumerate(cases):
        artifact = _edited(work, source, f"edit{n}", edit)
        with pytest.raises(error, match=message):
            KataSandbox.restore(artifact, name=f"{vm.id}-e{n}")
        assert not _qemu_named(f"{vm.id}-e{n}")
        assert not (RUNTIME_DIR / f"{vm.id}-e{n}").exists()


def _virtiofsds_on(run_dir: Path) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError):
                argv = Path(f"/proc/{entry}/cmdline").read_bytes()
                if b"virtiofsd" in argv and str(run_dir).encode() in argv:
                    found.append(int(entry))
    return found


def test_a_state_qemu_cannot_load_leaves_nothing_behind(vm: Sandbox, work: Path) -> None:
    """A recorded machine that does not match its state (less memory than was saved):
    QEMU refuses to load it, RestoreFailed carries QEMU's words, and nothing of the
    restore is left: no QEMU, no virtiofsd, no overlay mount, no run dir."""
    source = work / "inuse.tar.zst"
    if not source.exists():
        KataSandbox(vm.id).checkpoint(source, leave_running=True)

    def smaller(qemu: dict[str, Any]) -> None:
        qemu["argv"] = [
            a.replace("size=256M", "size=128M") if a.startswith("memory-backend") else a
            for a in qemu["argv"]
        ]
        qemu["argv"][qemu["argv"].index("-m") + 1] = "128M"

    artifact = _edited(work, source, "smaller", smaller)
    name = f"{vm.id}-small"
    with pytest.raises(cedana.RestoreFailed, match="load of migration failed"):
        KataSandbox.restore(artifact, name=name)
    assert not _qemu_named(name)
    assert not (RUNTIME_DIR / name).exists()
    assert not _virtiofsds_on(RUNTIME_DIR / name)
    assert str(RUNTIME_DIR / name) not in Path("/proc/self/mountinfo").read_text()


def test_checkpoint_quits_vm_and_cli_restores_it(
    vm: Sandbox, work: Path, restored: list[KataSandbox]
) -> None:
    """Without leave_running the VM is quit once the artifact is written and verified
    (through the command line: ``cedana checkpoint kata:ID``); ``cedana inspect`` shows the
    recorded machine and devices; ``cedana restore`` starts it again, its counter going on
    (the restored VM runs on after the command exits)."""
    out = work / "quit.tar.zst"
    run = subprocess.run(
        [sys.executable, "-m", "cedana", "checkpoint", f"kata:{vm.id}", "-o", str(out), "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    saved = last_count(vm.console)
    assert saved is not None
    vm.qemu.wait(30)  # quit by cedana
    assert cedana.open(out).kind == "vm"
    run = subprocess.run(
        [sys.executable, "-m", "cedana", "inspect", str(out), "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    facts = json.loads(run.stdout)["vm"]
    assert facts["sandbox"] == vm.id and facts["machine_type"].startswith("pc-q35-")
    assert "vhost-user-fs-pci" in facts["devices"] and facts["state_bytes"] > 0
    run = subprocess.run(
        [sys.executable, "-m", "cedana", "restore", str(out), "--name", f"{vm.id}-r2", "--json"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["runtime"] == "kata"
    box = KataSandbox(f"{vm.id}-r2")
    restored.append(attrs.evolve(box, owned_dirs=(RUNTIME_DIR / f"{vm.id}-r2",)))
    console = RUNTIME_DIR / f"{vm.id}-r2" / "console.log"
    wait_for(lambda: (last_count(console) or -1) > saved + 1, 30, "the restored counter")
    shared = RUNTIME_DIR / f"{vm.id}-r2" / "share-0"
    assert (shared / "before.txt").exists()


def test_mounted_9p_share_is_refused(work: Path, initrd: Path) -> None:
    """A VM whose share is 9p and mounted: QEMU reports it blocks migration, and checkpoint
    refuses with that reason before stopping anything; the VM runs on."""
    with sandbox(work, initrd, fs="9p") as box:
        with pytest.raises(NotCheckpointable, match="virtio-9p|9p"):
            KataSandbox(box.id).checkpoint(work / "9p.tar.zst")
        before = last_count(box.console) or 0
        wait_for(lambda: (last_count(box.console) or 0) > before, 30, "the 9p VM's counter")
        assert not (work / "9p.tar.zst").exists()
