"""Kata without a VM: the QEMU command line's allow-list (what a restore rebuilds and what it
refuses), the rebuilt command line (cedana's own sockets only), target parsing and the
refusal of other hypervisors."""

from __future__ import annotations

from pathlib import Path

import pytest

import cedana
from cedana import registry
from cedana.errors import ContainerNotFound, InvalidOption, NotCheckpointable
from cedana.runtimes._qemu_spec import UnsupportedVm, parse_command_line, split_options
from cedana.runtimes.kata import KataSandbox

KATA_LIKE = [
    "/usr/bin/qemu-system-x86_64",
    "-name", "sandbox-abc",
    "-uuid", "0b8e7f3c-54a5-4c0e-9c3e-5b0d6f1e2a33",
    "-machine", "q35,accel=tcg",
    "-qmp", "unix:/run/vc/vm/abc/qmp.sock,server=on,wait=off",
    "-m", "2048M,slots=10,maxmem=8G",
    "-smp", "1,cores=1,threads=1,sockets=4,maxcpus=4",
    "-object", "memory-backend-file,id=dimm1,size=2048M,mem-path=/dev/shm,share=on",
    "-numa", "node,memdev=dimm1",
    "-device", "pci-bridge,bus=pcie.0,id=pci-bridge-0,chassis_nr=1,shpc=off,addr=2",
    "-device", "virtio-serial-pci,disable-modern=true,id=serial0",
    "-device", "virtconsole,chardev=charconsole0,id=console0",
    "-chardev", "socket,id=charconsole0,path=/run/vc/vm/abc/console.sock,server=on,wait=off",
    "-object", "rng-random,id=rng0,filename=/dev/urandom",
    "-device", "virtio-rng-pci,rng=rng0",
    "-chardev", "socket,id=char-fs,path=/run/vc/vm/abc/vhost-fs.sock",
    "-device", "vhost-user-fs-pci,chardev=char-fs,tag=kataShared,queue-size=1024",
    "-rtc", "base=utc,driftfix=slew,clock=host",
    "-global", "kvm-pit.lost_tick_policy=discard",
    "-vga", "none", "-no-user-config", "-nodefaults", "-nographic", "--no-reboot",
    "-kernel", "/usr/share/kata-containers/vmlinux.container",
    "-append", "console=hvc0 quiet",
    "-pidfile", "/run/vc/vm/abc/pid",
]  # fmt: skip


def test_a_kata_command_line_parses_into_its_description() -> None:
    """kata's QEMU command line (as its QEMU driver writes it) is within the allow-list, and
    the description keeps its machine, memory, devices and images."""
    spec = parse_command_line(KATA_LIKE)
    assert spec.sandbox_id == "abc"
    assert spec.machine == "q35" and spec.accel == "tcg"
    assert spec.qmp == "/run/vc/vm/abc/qmp.sock"
    assert spec.device_models() == [
        "pci-bridge",
        "virtio-serial-pci",
        "virtconsole",
        "virtio-rng-pci",
        "vhost-user-fs-pci",
    ]
    assert [tag for tag, _ in spec.virtiofs()] == ["kataShared"]
    assert spec.kernel == "/usr/share/kata-containers/vmlinux.container"


def test_the_rebuilt_command_line_uses_only_cedanas_own_sockets(tmp_path: Path) -> None:
    """The restore's argv is built from the description: every socket and file in cedana's
    run dir, none of the recorded host paths, plus -incoming on the given fd."""
    spec = parse_command_line(KATA_LIKE)
    argv = spec.command_line(
        binary="/usr/bin/qemu-system-x86_64",
        name="sandbox-new",
        machine_type="pc-q35-10.0",
        accel="tcg",
        run_dir=tmp_path,
        kernel="/k",
        initrd=None,
        incoming_fd=7,
    )
    text = " ".join(argv)
    assert "/run/vc/vm/abc" not in text
    assert f"path={tmp_path}/vhost-fs-0.sock" in text
    assert f"unix:{tmp_path}/qmp.sock,server=on,wait=off" in text
    assert argv[argv.index("-machine") + 1] == "pc-q35-10.0,accel=tcg"
    assert argv[-2:] == ["-incoming", "fd:7"]
    assert parse_command_line(argv).device_models() == spec.device_models()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["-device", "vfio-pci,host=0000:00:02.0"], "device 'vfio-pci' is not one"),
        (["-device", "virtio-rng-pci,romfile=/etc/passwd"], "is not a plain word"),
        (["-object", "memory-backend-file,id=m,size=1M,mem-path=/etc"], "is a file at '/etc'"),
        (["-object", "rng-random,id=r,filename=/dev/sda"], "reads '/dev/sda'"),
        (["-drive", "file=/etc/shadow"], "option -drive is not one"),
        (["-chardev", "pty,id=p"], "only socket and file chardevs"),
        (["-chardev", "socket,id=lonely,path=/x"], "chardev 'lonely' is not used"),
        (["-netdev", "tap,id=n0"], "option -netdev is not one"),
        (["-serial", "stdio"], "-serial 'stdio' is not supported"),
        (["-global", "virtio-pci.romfile=/x"], "-global"),
        (["-kernel", "relative/vmlinux"], "not an absolute path"),
        (["-machine", "q35,accel=xen"], "accelerator 'xen'"),
    ],
)
def test_what_the_allow_list_refuses(extra: list[str], message: str) -> None:
    """Host-facing options (host devices, files, drives, tap devices, stdio) and values
    that are not plain words are refused, naming what."""
    with pytest.raises(UnsupportedVm, match=message):
        parse_command_line([*KATA_LIKE, *extra])


def test_not_qemu_is_refused() -> None:
    """A recorded program that is not a QEMU system emulator is refused."""
    with pytest.raises(UnsupportedVm, match="not a QEMU system emulator"):
        parse_command_line(["/usr/bin/cloud-hypervisor", "--api-socket", "/x"])
    assert issubclass(UnsupportedVm, NotCheckpointable)


def test_qemu_option_lists_split_like_qemu() -> None:
    """``,,`` is a literal comma; the first bare item is the implied value."""
    assert split_options("q35,accel=tcg") == ("q35", {"accel": "tcg"})
    assert split_options("file,id=a,path=/x,,y") == ("file", {"id": "a", "path": "/x,y"})


@pytest.mark.parametrize(
    ("hypervisor", "socket"),
    [("cloud-hypervisor", "clh-api.sock"), ("firecracker", "firecracker.socket")],
)
def test_other_hypervisors_are_refused_naming_qemu(
    tmp_path: Path, hypervisor: str, socket: str
) -> None:
    """A sandbox whose runtime dir holds another hypervisor's API socket is refused, naming
    the hypervisor and QEMU as the one supported; nothing else is touched."""
    (tmp_path / "sb1").mkdir()
    (tmp_path / "sb1" / socket).touch()
    with pytest.raises(NotCheckpointable, match=rf"runs under {hypervisor}.*QEMU"):
        KataSandbox("sb1", runtime_dir=tmp_path).checkpoint(tmp_path / "out.tar.zst")
    assert not (tmp_path / "out.tar.zst").exists()


def test_no_such_sandbox(tmp_path: Path) -> None:
    """No QEMU with that guest name and no other hypervisor's socket: ContainerNotFound."""
    with pytest.raises(ContainerNotFound, match="no kata sandbox sb2"):
        KataSandbox("sb2", runtime_dir=tmp_path).checkpoint(tmp_path / "out.tar.zst")


def test_criu_options_are_refused(tmp_path: Path) -> None:
    """CRIU's options mean nothing to a VM save: refused before the sandbox is looked up."""
    with pytest.raises(InvalidOption, match="CRIU's options"):
        KataSandbox("sb3", runtime_dir=tmp_path).checkpoint(
            tmp_path / "o.tar.zst", tcp_established=True
        )
    with pytest.raises(InvalidOption, match="sandbox_id or a qmp"):
        KataSandbox()


def test_kata_targets_are_registered() -> None:
    """``kata:ID`` names a sandbox; its checkpoints restore into kata; --root is the
    runtime dir."""
    runtime, keywords = registry.parse_target("kata:abc")
    assert runtime.cls is cedana.KataSandbox
    assert keywords == {"sandbox_id": "abc"}
    assert runtime.restores_into == ("kata",)
    assert runtime.flags == {"root": "runtime_dir"}
    with pytest.raises(cedana.CedanaError, match="expected kata:ID"):
        registry.parse_target("kata:a/b")
    with pytest.raises(cedana.CedanaError, match="expected kata:ID"):
        registry.parse_target("kata:a,debug-threads=on")


def test_recorded_kernel_and_initrd_are_checked(tmp_path: Path) -> None:
    """A recorded image path is handed to QEMU only as an absolute path to a regular file
    only root may write, whose digest is the recorded one: the rest is refused."""
    import os

    from cedana.errors import ContainerError, UnsafeArtifact
    from cedana.runtimes._kata_vm import _checked_image, _file_digest

    with pytest.raises(UnsafeArtifact, match="not a plain absolute path"):
        _checked_image("boot/vmlinuz", "0" * 64, "kernel")
    with pytest.raises(UnsafeArtifact, match="not a file cedana hands QEMU"):
        _checked_image("/proc/kcore", "0" * 64, "kernel")
    with pytest.raises(ContainerError, match="not on this host"):
        _checked_image(str(tmp_path / "gone"), "0" * 64, "kernel")
    writable = tmp_path / "vmlinuz"
    writable.write_bytes(b"kernel")
    writable.chmod(0o666)
    with pytest.raises(UnsafeArtifact, match="only root may write"):
        _checked_image(str(writable), _file_digest(str(writable)), "kernel")
    with pytest.raises(ContainerError, match="digest differs"):
        _checked_image("/bin/sh", "0" * 64, "kernel")
    # Handed to QEMU where it leads: a link swapped after the checks changes nothing.
    real = os.path.realpath("/bin/sh")
    assert _checked_image("/bin/sh", _file_digest("/bin/sh"), "kernel") == real


def test_a_shares_overlay_layers_must_be_the_recorded_directories(tmp_path: Path) -> None:
    """A share's overlay is mounted again only on lower layers that are plain absolute
    paths of the same directories (by identity) the checkpoint recorded."""
    from cedana.errors import ContainerError, UnsafeArtifact
    from cedana.rootfs.overlay import layer_identity
    from cedana.runtimes._kata_vm import _checked_lower

    layer = tmp_path / "layer"
    layer.mkdir()
    (layer / "a").write_text("a")
    identity = layer_identity(layer)
    assert _checked_lower([str(layer)], [identity]) == (str(layer),)
    with pytest.raises(UnsafeArtifact, match="no lower layers"):
        _checked_lower([str(layer)], [])
    with pytest.raises(UnsafeArtifact, match="not a plain absolute path"):
        _checked_lower([f"{tmp_path}/x/../layer"], [identity])
    with pytest.raises(ContainerError, match="not on this host"):
        _checked_lower([str(tmp_path / "gone")], [identity])
    (layer / "b").write_text("b")
    with pytest.raises(UnsafeArtifact, match="not the image layer"):
        _checked_lower([str(layer)], [identity])


def _vm_artifact(tmp_path: Path) -> Path:
    """A kata VM artifact as KataSandbox writes one (a tiny made-up state), signed here."""
    from cedana.artifact import write_artifact
    from cedana.artifact.manifest import HostInfo, Manifest, ProcessEntry
    from cedana.artifact.signing import host_key

    members = tmp_path / "members"
    (members / "vm").mkdir(parents=True)
    (members / "vm" / "state").write_bytes(b"QEVM not a real stream")
    manifest = Manifest(
        host=HostInfo(kernel="6.18.0", arch="x86_64", criu_version="", hostname="box"),
        kind="vm",
        runtime="kata",
        options={},
        tree=[ProcessEntry(pid=42, ppid=1, command=" ".join(KATA_LIKE))],
        workload={
            "sandbox": {"id": "abc", "name": "sandbox-abc"},
            "qemu": {
                "argv": KATA_LIKE,
                "version": {"major": 10, "minor": 0, "micro": 2},
                "machine_type": "pc-q35-10.0",
                "accel": "tcg",
                "devices": parse_command_line(KATA_LIKE).device_models(),
            },
            "shares": [],
        },
    )
    dest = tmp_path / "vm.tar.zst"
    write_artifact(members, dest, manifest, signer=host_key())
    return dest


def test_a_vm_checkpoint_is_shown_and_refused_where_it_does_not_fit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``cedana inspect`` shows a VM checkpoint's machine and devices (it has no CRIU
    images); restoring it into another runtime, exporting it for podman or Kubernetes, and
    decoding it as CRIU images are refused, naming it a vm checkpoint."""
    import json

    from cedana import cli
    from cedana.errors import ArtifactError

    artifact = _vm_artifact(tmp_path)
    assert cli.main(["inspect", str(artifact), "--json"]) == 0
    vm = json.loads(capsys.readouterr().out)["vm"]
    assert vm["sandbox"] == "abc" and vm["machine_type"] == "pc-q35-10.0"
    assert "vhost-user-fs-pci" in vm["devices"] and vm["qemu"] == "10.0.2"
    with pytest.raises(cedana.CedanaError, match="restores into kata, not into 'runc'"):
        cedana.restore(artifact, into="runc")
    with pytest.raises(ArtifactError, match="is a VM checkpoint"):
        cedana.open(artifact).inspect()
    for fmt in ("podman", "kubernetes"):
        assert cli.main(["export", str(artifact), "--format", fmt, "-o", str(tmp_path / "x")]) != 0
        assert "holds a vm checkpoint" in capsys.readouterr().err


def test_a_recorded_rom_file_is_refused() -> None:
    """A device's ``romfile`` is a file QEMU opens by name, relative to its working
    directory first (``romfile=secret`` opens ./secret), so a crafted command line could
    make it read a host file: only kata's empty ``romfile=`` (no option ROM) passes."""
    spec = parse_command_line([*KATA_LIKE, "-device", "virtio-scsi-pci,id=scsi0,romfile="])
    assert ("romfile", "") in dict(spec.devices)["virtio-scsi-pci"]
    for name in ("secret", "efi-virtio.rom", ".."):
        with pytest.raises(UnsupportedVm, match="romfile"):
            parse_command_line([*KATA_LIKE, "-device", f"virtio-rng-pci,romfile={name}"])


def test_qemu_runs_in_the_run_dir(tmp_path: Path) -> None:
    """The restored QEMU starts in cedana's run dir, not in the caller's working directory,
    so nothing it opens by a relative name is one of the caller's files."""
    import os

    from cedana.runtimes._kata_vm import _start_qemu

    read_fd, write_fd = os.pipe()
    try:
        proc = _start_qemu(["/bin/sh", "-c", "pwd"], tmp_path, read_fd)
        proc.wait(10)
    finally:
        os.close(read_fd)
        os.close(write_fd)
    assert (tmp_path / "qemu.log").read_text().strip() == str(tmp_path)


def test_guest_memory_files_go_only_in_existing_directories(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A ``memory-backend-file`` whose ``mem-path`` is missing on the restoring host (no
    /dev/hugepages mounted) is refused: QEMU would create that path as a file (0644) holding
    the guest's memory and leave it behind."""
    from cedana.runtimes import _qemu_spec
    from cedana.runtimes._kata_vm import _checked_memory_dirs

    here, missing = tmp_path / "shm", tmp_path / "hugepages"
    here.mkdir()
    monkeypatch.setattr(_qemu_spec, "_SHM_DIRS", ("/dev/shm", str(here), str(missing)))

    def spec_on(directory: Path) -> _qemu_spec.VmSpec:
        return parse_command_line(
            [*KATA_LIKE, "-object", f"memory-backend-file,id=m9,size=1M,mem-path={directory}"]
        )

    _checked_memory_dirs(spec_on(here))
    with pytest.raises(UnsupportedVm, match="not a directory"):
        _checked_memory_dirs(spec_on(missing))
    assert not missing.exists()


def test_a_recorded_image_through_a_symlink_is_checked_where_it_leads(tmp_path: Path) -> None:
    """A kernel path that is a link into /proc (as /etc/mtab is) is refused as a /proc
    file is, though the link itself is elsewhere."""
    from cedana.errors import UnsafeArtifact
    from cedana.runtimes._kata_vm import _checked_image, _file_digest

    link = tmp_path / "vmlinuz"
    link.symlink_to("/proc/version")
    with pytest.raises(UnsafeArtifact, match="not a file cedana hands QEMU"):
        _checked_image(str(link), _file_digest(str(link)), "kernel")


@pytest.mark.parametrize(
    "shares",
    [
        "vm/share-0.tar",
        ["vm/share-0.tar"],
        [{"tag": "kataShared"}],
        [{"member": "vm/share-0.tar", "overlays": "ab"}],
        [{"member": "vm/share-0.tar", "overlays": [["path", "x"]]}],
    ],
)
def test_malformed_shares_are_refused_before_anything_is_made(shares: object) -> None:
    """A manifest whose ``shares`` are not records of the expected shape is an
    UnsafeArtifact naming the field, not a KeyError or AttributeError half-way through a
    restore."""
    from cedana.errors import UnsafeArtifact
    from cedana.runtimes._kata_vm import _checked_shares

    spec = parse_command_line(KATA_LIKE)
    _checked_shares({"shares": [{"member": "vm/share-0.tar", "overlays": []}]}, spec)
    with pytest.raises(UnsafeArtifact, match="shares"):
        _checked_shares({"shares": shares}, spec)


def test_a_failed_restore_empties_the_callers_shared_dir_again(tmp_path: Path) -> None:
    """A share put back into the caller's empty ``shared_dir`` is taken out again when
    the restore fails after it (here: virtiofsd does not start), so the directory is left
    as it was given, empty; one cedana made is removed."""
    import contextlib

    from cedana.artifact import write_artifact
    from cedana.artifact.manifest import HostInfo, Manifest
    from cedana.artifact.signing import host_key
    from cedana.errors import ContainerError
    from cedana.rootfs.overlay import capture_upper
    from cedana.runtimes._kata_vm import _restore_shares, _RestorePlan

    content = tmp_path / "content"
    (content / "etc").mkdir(parents=True)
    (content / "etc" / "hostname").write_text("guest\n")
    members = tmp_path / "members"
    (members / "vm").mkdir(parents=True)
    (members / "vm" / "state").write_bytes(b"QEVM")
    with open(members / "vm" / "share-0.tar", "wb") as out:
        capture_upper(content, out)
    share = {"tag": "kataShared", "member": "vm/share-0.tar", "cache": "auto", "overlays": []}
    manifest = Manifest(
        host=HostInfo(kernel="6.18.0", arch="x86_64", criu_version="", hostname="box"),
        kind="vm",
        runtime="kata",
        options={},
        tree=[],
        workload={"qemu": {"argv": KATA_LIKE}, "shares": [share]},
    )
    write_artifact(members, tmp_path / "vm.tar.zst", manifest, signer=host_key())
    ckpt = cedana.open(tmp_path / "vm.tar.zst")
    plan = _RestorePlan(
        binary="qemu-system-x86_64",
        machine_type="q35",
        accel="tcg",
        kernel=None,
        initrd=None,
        virtiofsd="/bin/false",
    )
    given = tmp_path / "given"
    given.mkdir()
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    for shared_dir in (given, None):
        with (
            pytest.raises(ContainerError, match="virtiofsd did not start"),
            contextlib.ExitStack() as undo,
        ):
            _restore_shares(
                ckpt,
                workload={"shares": [share]},
                spec=parse_command_line(KATA_LIKE),
                plan=plan,
                run_dir=run_dir,
                shared_dir=shared_dir,
                undo=undo,
            )
        assert given.is_dir() and not any(given.iterdir())
        assert not (run_dir / "share-0").exists()
