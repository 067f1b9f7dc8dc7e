"""The checkpoint manifest: validation, freezing, and an exact JSON round trip."""

from __future__ import annotations

import datetime
import json
import os
import types

import attrs
import pytest
from hypothesis import given
from hypothesis import strategies as st

from cedana.artifact.manifest import (
    FORMAT_VERSION,
    HostInfo,
    Manifest,
    Member,
    ProcessEntry,
)
from cedana.errors import ArtifactCorrupt, UnsupportedFormat

SHA = "ab" * 32

json_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
json_values = st.recursive(
    json_scalars,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)
json_objects = st.dictionaries(st.text(max_size=8), json_values, max_size=5)

manifests = st.builds(
    Manifest,
    created=st.datetimes(min_value=datetime.datetime(1970, 1, 1)).map(
        lambda d: d.strftime("%Y-%m-%dT%H:%M:%SZ")
    ),
    host=st.builds(
        HostInfo, kernel=st.text(), arch=st.text(), criu_version=st.text(), hostname=st.text()
    ),
    kind=st.sampled_from(["process", "container"]),
    runtime=st.none() | st.text(),
    options=json_objects,
    tree=st.lists(
        st.builds(
            ProcessEntry,
            pid=st.integers(1, 2**22),
            ppid=st.integers(0, 2**22),
            command=st.text(),
        ),
        max_size=4,
    ),
    workload=json_objects,
    members=st.lists(
        st.builds(
            Member,
            name=st.text(min_size=1),
            size=st.integers(0, 2**40),
            sha256=st.text("0123456789abcdef", min_size=64, max_size=64),
        ),
        max_size=4,
    ),
)


def make(**changes: object) -> Manifest:
    fields: dict[str, object] = {
        "created": "2026-11-28T23:59:59Z",
        "host": HostInfo(kernel="6.18.0", arch="x86_64", criu_version="4.2.1", hostname="box"),
        "kind": "container",
        "runtime": "runc",
        "options": {"leave_running": True, "level": 3},
        "tree": [ProcessEntry(pid=42, ppid=1, command="sleep 100")],
        "workload": {"external": ["pipe:[123]"], "config": {"id": "web", "mounts": []}},
        "members": [Member(name="pages-1.img", size=4096, sha256=SHA)],
    }
    fields.update(changes)
    return Manifest(**fields)  # type: ignore[arg-type]


@given(manifests)
def test_json_round_trip_is_exact(manifest: Manifest) -> None:
    """Any valid manifest survives to_json/from_json unchanged, and serializes stably."""
    data = manifest.to_json()
    again = Manifest.from_json(data)
    assert again == manifest
    assert again.to_json() == data


def test_json_layout() -> None:
    """to_json writes sorted keys, a 2-space indent and a trailing newline, all ASCII."""
    data = make(tree=[ProcessEntry(pid=1, ppid=0, command="caf\u00e9 \udcff")]).to_json()
    text = data.decode("ascii")
    assert text.endswith("}\n")
    document = json.loads(text)
    assert text == json.dumps(document, sort_keys=True, indent=2) + "\n"
    assert document["format_version"] == FORMAT_VERSION
    assert document["members"] == [{"name": "pages-1.img", "sha256": SHA, "size": 4096}]


def test_nested_json_is_frozen() -> None:
    """options and workload become read-only mappings and tuples, so no layer can alter them."""
    manifest = make()
    assert isinstance(manifest.workload, types.MappingProxyType)
    assert isinstance(manifest.workload["config"], types.MappingProxyType)
    assert manifest.workload["external"] == ("pipe:[123]",)
    with pytest.raises(TypeError):
        manifest.workload["config"]["id"] = "other"  # type: ignore[index]
    with pytest.raises(attrs.exceptions.FrozenInstanceError):
        manifest.kind = "process"  # type: ignore[misc]


def test_freezing_keeps_the_callers_dict_apart() -> None:
    """Changing the dict passed in afterwards does not change the manifest."""
    options = {"a": {"b": 1}}
    manifest = make(options=options)
    options["a"]["b"] = 2
    assert manifest.options["a"]["b"] == 1


@pytest.mark.parametrize(
    "options",
    [
        {"x": {1, 2}},
        {"x": float("nan")},
        {"x": float("inf")},
        {1: "non-string key"},
        {"x": object()},
    ],
)
def test_rejects_values_json_cannot_carry(options: dict[object, object]) -> None:
    """A value JSON cannot carry is refused when the manifest is built, not when written."""
    with pytest.raises((TypeError, ValueError), match="JSON"):
        make(options=options)


@pytest.mark.parametrize(
    "changes",
    [
        {"kind": "zone"},
        {"created": "yesterday"},
        {"created": "2026-11-28T23:59:59+02:00"},
        {"created": "2026-11-28T23:59:59"},
        {"members": [Member(name="a", size=1, sha256=SHA), "b"]},
        {"tree": [{"pid": 1, "ppid": 0, "command": "x"}]},
        {"format_version": 4},
    ],
)
def test_rejects_invalid_fields(changes: dict[str, object]) -> None:
    """Wrong kinds, non-UTC or unparsable times, and foreign objects in tuples are refused,
    the error naming the field."""
    (field,) = changes
    with pytest.raises((TypeError, ValueError), match=field):
        make(**changes)


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"name": "a", "size": -1, "sha256": SHA}, "size"),
        ({"name": "a", "size": True, "sha256": SHA}, "size"),
        ({"name": "a", "size": 1, "sha256": SHA.upper()}, "sha256"),
        ({"name": "a", "size": 1, "sha256": "abc"}, "sha256"),
        ({"name": 3, "size": 1, "sha256": SHA}, "name"),
        ({"name": "a", "size": 1, "blake3": "abc"}, "blake3"),
        ({"name": "a", "size": 1}, "exactly one digest"),
        ({"name": "a", "size": 1, "sha256": SHA, "blake3": SHA}, "exactly one digest"),
    ],
)
def test_member_validation(kwargs: dict[str, object], field: str) -> None:
    """A member needs a string name, a non-negative int size and 64 lowercase hex digits;
    the error names the field."""
    with pytest.raises((TypeError, ValueError), match=field):
        Member(**kwargs)  # type: ignore[arg-type]


def test_member_digests_round_trip() -> None:
    """A version 3 member lists its BLAKE3 digest and nothing of sha256 (and the reverse for
    the older versions), and reads back the same."""
    new = Member(name="pages-1.img", size=4096, blake3=SHA)
    old = Member(name="pages-1.img", size=4096, sha256=SHA)
    for member, key in ((new, "blake3"), (old, "sha256")):
        manifest = make(members=[member])
        document = json.loads(manifest.to_json())
        assert document["members"] == [{"name": "pages-1.img", key: SHA, "size": 4096}]
        assert Manifest.from_json(manifest.to_json()) == manifest
        assert (member.algorithm, member.digest) == (key, SHA)


def test_created_defaults_to_now_in_utc() -> None:
    """Without ``created`` the manifest records the current UTC time in the documented form."""
    fields = attrs.asdict(make(), recurse=False)
    del fields["created"]
    before = datetime.datetime.now(datetime.UTC).replace(microsecond=0)
    created = Manifest(**fields).created
    assert len(created) == 20
    assert created.endswith("Z")
    when = datetime.datetime.strptime(created, "%Y-%m-%dT%H:%M:%SZ")
    assert before <= when.replace(tzinfo=datetime.UTC) <= datetime.datetime.now(datetime.UTC)


def test_host_info_current() -> None:
    """HostInfo.current describes this machine from os.uname()."""
    uname = os.uname()
    host = HostInfo.current("4.2.1")
    assert host == HostInfo(
        kernel=uname.release, arch=uname.machine, criu_version="4.2.1", hostname=uname.nodename
    )


def test_member_lookup() -> None:
    """member() finds a member by name and raises KeyError for an unknown one."""
    manifest = make()
    assert manifest.member("pages-1.img").size == 4096
    with pytest.raises(KeyError):
        manifest.member("nope")


def test_unknown_keys_are_ignored() -> None:
    """Keys a later release may add are ignored rather than refused."""
    document = json.loads(make().to_json())
    document["added_later"] = {"x": 1}
    document["host"]["cpu"] = "zen"
    assert Manifest.from_json(json.dumps(document).encode()) == make()


@pytest.mark.parametrize("version", [0, 4, 99])
def test_unknown_format_version(version: int) -> None:
    """An unknown format version raises UnsupportedFormat saying what is read and to upgrade."""
    document = json.loads(make().to_json())
    document["format_version"] = version
    with pytest.raises(UnsupportedFormat) as caught:
        Manifest.from_json(json.dumps(document))
    message = str(caught.value)
    assert str(version) in message
    assert "version(s) 1, 2" in message
    assert "upgrade cedana" in message


def _without(key: str) -> bytes:
    document = json.loads(make().to_json())
    del document[key]
    return json.dumps(document).encode()


def _with(path: tuple[str | int, ...], value: object) -> bytes:
    document = json.loads(make().to_json())
    target = document
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = value
    return json.dumps(document).encode()


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(b"", id="empty"),
        pytest.param(b"{not json", id="not-json"),
        pytest.param(b"\xff\xfe", id="not-utf8"),
        pytest.param(b"[1, 2]", id="array"),
        pytest.param(b"{}", id="no-version"),
        pytest.param(b'{"format_version": "1"}', id="version-string"),
        pytest.param(b'{"format_version": true}', id="version-bool"),
        pytest.param(_without("host"), id="missing-host"),
        pytest.param(_without("tree"), id="missing-tree"),
        pytest.param(_without("created"), id="missing-created"),
        pytest.param(_with(("host",), "box"), id="host-string"),
        pytest.param(_with(("host", "kernel"), 6), id="kernel-int"),
        pytest.param(_with(("tree",), "sleep"), id="tree-string"),
        pytest.param(_with(("tree", 0, "pid"), "42"), id="pid-string"),
        pytest.param(_with(("tree", 0, "pid"), True), id="pid-bool"),
        pytest.param(_with(("members", 0, "size"), 1.5), id="size-float"),
        pytest.param(_with(("members", 0, "sha256"), "x"), id="bad-sha"),
        pytest.param(_with(("members", 0), ["pages-1.img"]), id="member-array"),
        pytest.param(_with(("options",), [1]), id="options-array"),
        pytest.param(_with(("kind",), "zone"), id="bad-kind"),
        pytest.param(b"[" * 100000 + b"]" * 100000, id="deep-nesting"),
    ],
)
def test_malformed_manifest_is_corrupt(data: bytes) -> None:
    """Bytes that are not a well-formed manifest raise ArtifactCorrupt, never a bare error."""
    with pytest.raises(ArtifactCorrupt):
        Manifest.from_json(data)
