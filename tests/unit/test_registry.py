"""The registry of runtimes: command line targets, restore dispatch and inspection read it,
so a runtime is one module that registers itself."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any, ClassVar

import attrs
import pytest

import cedana
from cedana import cli, registry
from cedana.artifact import write_artifact
from cedana.artifact.manifest import HostInfo, Manifest, ProcessEntry
from cedana.artifact.signing import host_key
from cedana.container.runc import container_lines, container_summary
from cedana.errors import CedanaError, ContainerError

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize(
    ("target", "name", "keywords"),
    [
        ("1234", "process", {"pid": 1234}),
        ("process:99", "process", {"pid": 99}),
        ("runc:web", "runc", {"id": "web"}),
        ("containerd:web", "containerd", {"id": "web", "namespace": None}),
        ("containerd:k8s.io/web", "containerd", {"id": "web", "namespace": "k8s.io"}),
        ("docker:web", "docker", {"name": "web"}),
        ("crio:0a1b2c", "crio", {"id": "0a1b2c"}),
    ],
)
def test_targets_parse_into_constructor_keywords(
    target: str, name: str, keywords: dict[str, Any]
) -> None:
    """Each runtime's own entry turns a target's ident into its class's keywords."""
    runtime, parsed = registry.parse_target(target)
    assert runtime.name == name
    assert parsed == keywords


@pytest.mark.parametrize(
    ("target", "message"),
    [
        ("process:x", r"bad target 'process:x': expected PID, process:PID$"),
        ("runc:", r"bad target 'runc:': expected runc:ID$"),
        ("containerd:ns/", r"expected containerd:\[NAMESPACE/\]ID$"),
        ("podman:", r"bad target 'podman:': expected podman:NAME$"),
        ("docker:", r"bad target 'docker:': expected docker:NAME$"),
        ("crio:", r"bad target 'crio:': expected crio:ID$"),
        ("kube:web", r"^kube containers are not supported by this cedana yet$"),
        ("zone:web", r"expected PID, process:PID, runc:ID, .*crio:ID, .*docker:NAME.* or kube:ID$"),
    ],
)
def test_bad_and_planned_targets_say_so(
    target: str, message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A malformed target names its form; a planned runtime is said to be unsupported yet;
    an unknown prefix lists every form (registered and planned)."""
    monkeypatch.setattr(registry, "PLANNED", {"kube": "kube:ID"})
    with pytest.raises(CedanaError, match=message):
        registry.parse_target(target)


class Toy:
    """A stand-in runtime class: restore records what it was given."""

    given: ClassVar[dict[str, Any]] = {}

    def __init__(self, id: str, *, root: str | None = None) -> None:
        self.id, self.root, self.pid = id, root, 7

    @classmethod
    def restore(
        cls,
        checkpoint: Any,
        *,
        name: str | None = None,
        trust: str = "trusted",
        trusted_keys: Any = None,
    ) -> Toy:
        cls.given = {"checkpoint": checkpoint, "name": name}
        return cls(name or "toy")


@pytest.fixture
def toy(monkeypatch: pytest.MonkeyPatch) -> registry.Runtime:
    entry = registry.Runtime(
        name="toy",
        target="toy:ID",
        help="a toy container",
        cls=Toy,
        parse=lambda ident: {"id": ident},
        restores_into=("toy",),
        flags={"root": "root"},
        summary=lambda c: {"name": c.id},
    )
    monkeypatch.setitem(registry._REGISTRY, "toy", entry)
    return entry


def a_container_artifact(tmp_path: Path, runtime: str) -> Path:
    images = tmp_path / "images"
    images.mkdir()
    (images / "pstree.img").write_bytes(b"not decoded here")
    manifest = Manifest(
        created="2026-11-28T23:59:59Z",
        host=HostInfo(kernel="6.18.0", arch="x86_64", criu_version="4.2.1", hostname="box"),
        kind="container",
        runtime=runtime,
        options={},
        tree=[ProcessEntry(pid=42, ppid=1, command="sleep 100")],
        workload={"container": {"id": "c1", "status": "running"}, "rootfs": {}},
    )
    dest = tmp_path / "c.tar.zst"
    write_artifact(images, dest, manifest, signer=host_key())
    return dest


def test_a_registered_runtime_reaches_cli_restore_and_inspect(
    toy: registry.Runtime, tmp_path: Path
) -> None:
    """A runtime that registers itself is a command line target, cedana.restore dispatches
    its checkpoints to it (refusing options it does not take), and inspection says what it
    restores into: nothing else is edited."""
    runtime, keywords = registry.parse_target("toy:c1")
    assert runtime is toy and keywords == {"id": "c1"}
    assert "toy:ID" in registry.targets_help()
    artifact = a_container_artifact(tmp_path, "toy")
    restored = cedana.restore(artifact, name="c2")
    assert isinstance(restored, Toy) and restored.id == "c2"
    assert Toy.given["name"] == "c2"
    with pytest.raises(ContainerError, match=r"into toy does not take bundle= \(--bundle\)"):
        cedana.restore(artifact, bundle="/b")
    with pytest.raises(ContainerError, match=r"restores into toy, not into 'runc'"):
        cedana.restore(artifact, into="runc")
    summary = container_summary(cedana.open(artifact).manifest)
    assert summary is not None and summary["restores_into"] == ["toy"]
    assert dict(container_lines(summary))["restores"] == "toy"


def test_cli_restore_reports_a_registered_runtime(
    toy: registry.Runtime, tmp_path: Path, capsys: Any
) -> None:
    """``cedana restore --json`` names the runtime and the container from the registry."""
    artifact = a_container_artifact(tmp_path, "toy")
    assert cli.main(["restore", os.fspath(artifact), "--name", "c3", "--json"]) == 0
    out = capsys.readouterr().out
    assert '"runtime": "toy"' in out and '"name": "c3"' in out and '"pid": 7' in out


def test_an_unregistered_runtime_is_refused_clearly(tmp_path: Path) -> None:
    """A checkpoint of a runtime this cedana does not know says to upgrade."""
    artifact = a_container_artifact(tmp_path, "zone")
    with pytest.raises(CedanaError, match=r"holds a 'zone' checkpoint, .* cannot restore"):
        cedana.restore(artifact)
    summary = container_summary(cedana.open(artifact).manifest)
    assert summary is not None and summary["restores_into"] == []


def test_the_lower_layers_name_no_runtime() -> None:
    """The Process, CRIU and runc layers never name a runtime above runc: what differs per
    runtime is in its registry entry and its own module."""
    above = {r.name for r in registry.entries()} - {"process", "runc"}
    names = "|".join(sorted(above | set(registry.PLANNED) | {"kata"}))
    quoted = re.compile(rf"[\"']({names})[\"']")
    files = [ROOT / "cedana/process.py", ROOT / "cedana/criu.py"]
    files += sorted((ROOT / "cedana/container").glob("*.py"))
    named = {str(f.relative_to(ROOT)) for f in files if quoted.search(f.read_text())}
    assert named == set()


def test_entries_are_frozen() -> None:
    """An entry cannot be changed once registered (attrs frozen)."""
    runtime = registry.lookup("runc")
    assert runtime is not None
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        runtime.name = "other"  # type: ignore[misc]


def test_every_runc_based_checkpoint_restores_into_every_runc_based_runtime() -> None:
    """Each runtime that describes its checkpoints restores into its own targets first
    (its own the default), then into every runtime that adopts another's."""
    runc_based = ("runc", "containerd", "docker", "podman")
    for name in (*runc_based, "process"):
        runtime = registry.lookup(name)
        assert runtime is not None
        targets = registry.restore_targets(runtime)
        assert targets[0] == name
        assert set(targets) == (set(runc_based) if name != "process" else {"process"})
