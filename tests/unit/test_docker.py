"""DockerContainer's parts that need no daemon: the confined HostConfig, the create config,
the overlay2 layers read from an inspect record, the registry entry."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

import cedana
from cedana import registry
from cedana.container.confine import DEFAULT_MASKED_PATHS, Grants
from cedana.errors import ContainerError, NotCheckpointable, UnsafeArtifact
from cedana.rootfs.overlay2 import Overlay2Snapshotter
from cedana.runtimes.docker import _checked_host_config, _create_config

#: A HostConfig as docker 20.10 reports it for ``docker run --network none``.
HOST: dict[str, Any] = {
    "Binds": None,
    "LogConfig": {"Type": "json-file", "Config": {}},
    "NetworkMode": "none",
    "RestartPolicy": {"Name": "no", "MaximumRetryCount": 0},
    "CapAdd": None,
    "CgroupnsMode": "host",
    "IpcMode": "private",
    "PidMode": "",
    "Privileged": False,
    "SecurityOpt": None,
    "ShmSize": 67108864,
    "Runtime": "runc",
    "Devices": [],
    "Ulimits": [{"Name": "nofile", "Hard": 1024, "Soft": 1024}],
    "MaskedPaths": list(DEFAULT_MASKED_PATHS),
    "ReadonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
}


def test_a_default_host_config_is_carried_over() -> None:
    """What ``docker run`` gives a container by default passes, field by field."""
    out = _checked_host_config(HOST, None)
    assert out["NetworkMode"] == "none" and out["IpcMode"] == "private"
    assert out["Ulimits"] == HOST["Ulimits"] and out["LogConfig"]["Type"] == "json-file"
    assert out["MaskedPaths"] == HOST["MaskedPaths"]
    assert "Privileged" not in out and "Binds" not in out


@pytest.mark.parametrize(
    ("field", "value", "match"),
    [
        ("Privileged", True, "HostConfig.Privileged.*privileged"),
        ("Binds", ["/:/host"], "HostConfig.Binds"),
        ("Mounts", [{"Type": "bind", "Source": "/"}], "HostConfig.Mounts"),
        ("Devices", [{"PathOnHost": "/dev/sda"}], "HostConfig.Devices"),
        ("CgroupParent", "/", "HostConfig.CgroupParent"),
        ("Runtime", "/bin/evil", "HostConfig.Runtime"),
        ("CapAdd", ["SYS_ADMIN"], r"HostConfig.CapAdd adds CAP_SYS_ADMIN.*capabilities="),
        ("NetworkMode", "host", r"HostConfig.NetworkMode.*host's network.*namespaces="),
        ("PidMode", "container:abc", "HostConfig.PidMode"),
        ("SecurityOpt", ["seccomp=unconfined"], "HostConfig.SecurityOpt"),
        ("MaskedPaths", [], r"HostConfig.MaskedPaths leaves /proc/.* open"),
        ("LogConfig", {"Type": "syslog"}, "HostConfig.LogConfig.*syslog"),
    ],
)
def test_host_resources_are_refused(field: str, value: Any, match: str) -> None:
    """A recorded HostConfig asking for host resources is refused, naming the field."""
    with pytest.raises(UnsafeArtifact, match=match):
        _checked_host_config({**HOST, field: value}, None)


def test_grants_allow_what_they_name() -> None:
    """Capabilities and host namespaces granted by the caller pass."""
    grants = Grants(capabilities={"CAP_SYS_ADMIN"}, namespaces={"network": "host"})
    out = _checked_host_config({**HOST, "CapAdd": ["SYS_ADMIN"], "NetworkMode": "host"}, grants)
    assert out["CapAdd"] == ["SYS_ADMIN"] and out["NetworkMode"] == "host"


def test_binds_only_from_granted_sources(tmp_path: Path) -> None:
    """Binds (what a restore from another runtime uses for files of cedana's) pass only
    when every source lies inside a granted bind source."""
    binds = [f"{tmp_path}/files/run-.containerenv:/run/.containerenv"]
    with pytest.raises(UnsafeArtifact, match="Binds"):
        _checked_host_config({**HOST, "Binds": binds}, None)
    with pytest.raises(UnsafeArtifact, match="Binds"):
        _checked_host_config(
            {**HOST, "Binds": [*binds, "/etc:/host-etc"]}, Grants(binds=[tmp_path])
        )
    out = _checked_host_config({**HOST, "Binds": binds}, Grants(binds=[tmp_path / "files"]))
    assert out["Binds"] == binds


def test_create_config_names_the_image_by_id_and_labels_the_origin() -> None:
    """The new container's config is the recorded one on the recorded image id, labelled
    with the checkpointed container's name; a record without a config is refused."""
    recorded = {
        "name": "web",
        "config": {"Image": "busybox", "Cmd": ["sh"], "Labels": {"a": "b"}},
        "host_config": HOST,
    }
    out = _create_config(recorded, "sha256:abc", None)
    assert out["Image"] == "sha256:abc" and out["Cmd"] == ["sh"]
    assert out["Labels"] == {"a": "b", "io.cedana.restored-from": "web"}
    assert out["HostConfig"]["NetworkMode"] == "none"
    with pytest.raises(UnsafeArtifact, match="docker.config"):
        _create_config({"name": "web"}, "sha256:abc", None)


def test_overlay2_layers_from_the_inspect_record(tmp_path: Path) -> None:
    """The snapshotter reads docker's reported layers (upper, lowers uppermost first) and
    accepts only overlay2; prepare refuses a layer that is not fresh."""
    upper = tmp_path / "id" / "diff"
    upper.mkdir(parents=True)
    record = {
        "GraphDriver": {
            "Name": "overlay2",
            "Data": {
                "LowerDir": "/x/id-init/diff:/x/img/diff",
                "UpperDir": str(upper),
                "WorkDir": str(tmp_path / "id" / "work"),
                "MergedDir": str(tmp_path / "id" / "merged"),
            },
        }
    }
    layer = Overlay2Snapshotter.of(record, what="web")
    assert layer.layers.lower == ("/x/id-init/diff", "/x/img/diff")
    assert layer.upper() == upper and (layer.name, layer.format) == ("overlay2", "overlay")
    assert layer.prepare().upper == str(upper)
    (upper / "file").write_text("x")
    with pytest.raises(ContainerError, match="not empty"):
        layer.prepare()
    with pytest.raises(NotCheckpointable, match="graph driver 'btrfs'"):
        Overlay2Snapshotter.of({"GraphDriver": {"Name": "btrfs", "Data": {}}}, what="web")


def test_registry_entry() -> None:
    """``docker:NAME`` opens a DockerContainer; its checkpoints restore into docker first,
    or into runc."""
    runtime = registry.lookup("docker")
    assert runtime is not None and runtime.cls is cedana.DockerContainer
    assert runtime.restores_into == ("docker", "runc")
    assert runtime.flags == {"address": "address", "root": "runc_root"}


@pytest.mark.parametrize("field", ["NetworkingConfig", "HostConfig"])
def test_a_create_body_field_in_the_recorded_config_is_refused(field: str) -> None:
    """The recorded ``Config`` is spread into docker's create body, so a field of the body
    itself there (``NetworkingConfig`` attaches the container to any network, past the
    confined ``NetworkMode``) is refused, naming it."""
    recorded = {
        "name": "web",
        "config": {"Image": "busybox", "Cmd": ["sh"], field: {"EndpointsConfig": {"host": {}}}},
        "host_config": HOST,
    }
    with pytest.raises(UnsafeArtifact, match=f"docker.config.{field}"):
        _create_config(recorded, "sha256:abc", None)
