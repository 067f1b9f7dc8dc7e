"""Moving a checkpoint to another host, simulated on this machine, against real CRIU and runc.

Two "hosts" are two network namespaces the test makes, joined by a veth pair with private
addresses and no route anywhere else (traffic goes only between them; the workloads send
a fixed handful of lines with timeouts). Each host has its own state: a temp dir, a runc
state root, a bundle dir and an artifact dir; cedana runs on a host as its command line
started in that host's network namespace, as it would run there. The artifact is copied
from one host's dir to the other's.

Also here: a target that cannot run the images is refused before anything runs, by the
real checks (a manifest naming a newer CRIU; a cpuinfo image with a feature no CPU has,
which the real ``criu cpuinfo check`` refuses).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable, Iterator
from pathlib import Path

import attrs
import pytest

import cedana
from cedana import procfs
from cedana.artifact import thaw, write_artifact
from cedana.artifact.signing import host_key
from tests.capabilities import integration, requires_busybox, requires_runtime, requires_tool
from tests.conftest import Workloads, reap_zombie_children, wait_for
from tests.helpers import assert_counts_on, name_for, wait_count
from tests.integration.test_runc import Containers, busybox_rootfs  # noqa: F401 (a fixture)

pytestmark = [*integration, requires_tool("ip", "nsenter", "iptables-restore")]

#: Answers each line of one connection with how many lines it has had: the count is in
#: memory only, so an answer after a restore shows the connection and the state came back.
SERVER = """
    import socket, sys
    srv = socket.socket()
    srv.bind((sys.argv[1], int(sys.argv[2])))
    srv.listen(1)
    conn, _ = srv.accept()
    n = 0
    for line in conn.makefile():
        n += 1
        conn.sendall(f"{n} {line.strip()}\\n".encode())
"""

#: Connects to the server and passes each stdin line to it, printing each answer;
#: every wait is bounded.
CLIENT = """
    import socket, sys
    conn = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=10)
    conn.settimeout(30)
    answers = conn.makefile()
    for line in sys.stdin:
        conn.sendall(line.encode())
        print(answers.readline().strip(), flush=True)
"""


@attrs.frozen
class Host:
    """One simulated host: a network namespace, an address, and state dirs of its own."""

    netns: str
    dev: str
    address: str
    dir: Path

    @property
    def runc_root(self) -> Path:
        return self.dir / "runc"

    @property
    def artifacts(self) -> Path:
        return self.dir / "artifacts"

    def argv(self, *argv: str) -> list[str]:
        """``argv`` as run on this host: in its network namespace."""
        return ["nsenter", f"--net=/run/netns/{self.netns}", "--", *argv]

    def ip(self, *args: str) -> None:
        subprocess.run(["ip", "-n", self.netns, *args], check=True, timeout=30)

    def cedana(self, *args: str) -> subprocess.CompletedProcess[str]:
        """The cedana command line run on this host, with this host's temp dir."""
        return subprocess.run(
            self.argv(sys.executable, "-m", "cedana", *args),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            env={**os.environ, "TMPDIR": str(self.dir / "tmp")},
        )


@pytest.fixture
def hosts(tmp_path: Path) -> Iterator[tuple[Host, Host]]:
    """Two hosts joined by a veth pair (10.231.N.1 and .2/24, N random); both namespaces
    (and with them the veth pair) are deleted at teardown."""
    tag = secrets.token_hex(3)
    net = f"10.231.{secrets.randbelow(254) + 1}"
    made: list[str] = []
    pair = []
    try:
        for side, octet in (("a", 1), ("b", 2)):
            name = f"pidns-{tag}-{side}"
            subprocess.run(["ip", "netns", "add", name], check=True, timeout=30)
            made.append(name)
            home = tmp_path / f"host-{side}"
            for sub in ("tmp", "runc", "artifacts", "bundles"):
                (home / sub).mkdir(parents=True)
            pair.append(Host(netns=name, dev=f"pns{tag}{side}", address=f"{net}.{octet}", dir=home))
        a, b = pair
        subprocess.run(
            ["ip", "link", "add", a.dev, "netns", a.netns, "type", "veth", "peer", "name", b.dev,
             "netns", b.netns],
            check=True,
            timeout=30,
        )  # fmt: skip
        for host in pair:
            host.ip("link", "set", "lo", "up")
            host.ip("addr", "add", f"{host.address}/24", "dev", host.dev)
            host.ip("link", "set", host.dev, "up")
        yield a, b
    finally:
        for name in made:
            subprocess.run(["ip", "netns", "del", name], check=False, timeout=30)


@pytest.fixture
def client_of() -> Iterator[Callable[[Host, str, int, Path], subprocess.Popen[str]]]:
    """Starts the client on a host; every client is killed at teardown."""
    started: list[subprocess.Popen[str]] = []

    def start(host: Host, address: str, port: int, script: Path) -> subprocess.Popen[str]:
        client = subprocess.Popen(
            host.argv(sys.executable, str(script), address, str(port)),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        started.append(client)
        return client

    yield start
    for client in started:
        client.kill()
        client.wait()


def ask(client: subprocess.Popen[str], line: str) -> str:
    assert client.stdin is not None and client.stdout is not None
    client.stdin.write(line + "\n")
    client.stdin.flush()
    return client.stdout.readline().strip()


def test_established_tcp_moves_to_the_other_host(
    hosts: tuple[Host, Host],
    workloads: Workloads,
    client_of: Callable[[Host, str, int, Path], subprocess.Popen[str]],
    tmp_path: Path,
) -> None:
    """A server on host B with an established connection from a client on host A is
    checkpointed on B (tcp_established), its artifact copied to A, its address moved to A
    (TCP repair needs the connection's local address), and restored on A: the client's
    same connection gets answers that go on from the server's in-memory count."""
    a, b = hosts
    port = 20000 + secrets.randbelow(20000)
    (tmp_path / "server.py").write_text(textwrap.dedent(SERVER))
    (tmp_path / "client.py").write_text(textwrap.dedent(CLIENT))
    server = cedana.spawn(b.argv(sys.executable, str(tmp_path / "server.py"), b.address, str(port)))
    workloads.track(server.pid)
    wait_for(lambda: procfs.proc_info(server.pid).comm.startswith("python"), 10, "the server")

    def listening() -> bool:
        probe = subprocess.run(
            b.argv("ss", "-Htln", f"sport = :{port}"), capture_output=True, text=True, check=False
        )
        return bool(probe.stdout.strip())

    wait_for(listening, 10, "the server to listen")
    client = client_of(a, b.address, port, tmp_path / "client.py")
    assert [ask(client, w) for w in ("one", "two", "three")] == ["1 one", "2 two", "3 three"]

    art = b.artifacts / "server.tar.zst"
    done = b.cedana("checkpoint", str(server.pid), "-o", str(art), "--tcp-established")
    assert done.returncode == 0, done.stderr
    server.wait(10)  # reap it, as its parent on host B would: its pid is free again
    moved = a.artifacts / art.name
    shutil.copy(art, moved)
    b.ip("addr", "del", f"{b.address}/24", "dev", b.dev)
    a.ip("addr", "add", f"{b.address}/32", "dev", "lo")

    done = a.cedana("restore", str(moved), "--tcp-established", "--json")
    assert done.returncode == 0, done.stderr
    restored = json.loads(done.stdout)["pid"]
    workloads.track(restored)
    assert restored == server.pid
    assert os.stat(f"/proc/{restored}/ns/net").st_ino == os.stat(f"/run/netns/{a.netns}").st_ino
    assert ask(client, "four") == "4 four"
    assert ask(client, "five") == "5 five"


@requires_runtime("runc")
@requires_busybox
def test_runc_container_moves_to_the_other_host(
    hosts: tuple[Host, Host],
    busybox_rootfs: Path,  # noqa: F811 (the fixture imported above)
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    """A counter container run by host B's runc (its own state root) is checkpointed on B,
    copied, and restored by host A's runc under A's state root and bundle dir: it counts
    on from where it was, and B's runc no longer has it."""
    a, b = hosts
    name = name_for(request)
    on_b = Containers(b.dir / "bundles", busybox_rootfs, b.runc_root)
    on_a = Containers(a.dir / "bundles", busybox_rootfs, a.runc_root)
    try:
        web = on_b.run(name)
        wait_count(web, 5)
        art = b.artifacts / "web.tar.zst"
        done = b.cedana("checkpoint", f"runc:{name}", "-o", str(art), "--root", str(b.runc_root))
        assert done.returncode == 0, done.stderr
        before = [
            int(x) for x in (b.dir / "bundles" / name / "upper/tmp/count.log").read_text().split()
        ]
        moved = a.artifacts / art.name
        shutil.copy(art, moved)
        on_a.track(name)
        bundle = a.dir / "bundles" / f"{name}-restored"
        done = a.cedana(
            "restore", str(moved), "--root", str(a.runc_root), "--bundle", str(bundle), "--json"
        )
        assert done.returncode == 0, done.stderr
        assert json.loads(done.stdout)["runtime"] == "runc"
        restored = cedana.RuncContainer(name, root=a.runc_root)
        assert restored.status == "running"
        assert_counts_on(restored, before)
        listed = subprocess.run(
            ["runc", "--root", str(b.runc_root), "list", "-q"],
            capture_output=True,
            text=True,
            check=False,
        )
        assert name not in listed.stdout.split()
    finally:
        on_a.cleanup()
        on_b.cleanup()


def recraft(base: Path, dest: Path, *, criu_version: str | None = None,
            images: Callable[[Path], None] | None = None) -> Path:  # fmt: skip
    """``base`` unpacked, edited (its manifest's CRIU version, its images), and written
    again as a consistent artifact signed by this host's key: what another host that
    really had that CRIU, or that CPU, would have made."""
    work = dest.with_name(dest.name + ".d")
    ckpt = cedana.open(base)
    ckpt.extract(work)
    if images is not None:
        images(work)
    host = ckpt.manifest.host
    if criu_version is not None:
        host = attrs.evolve(host, criu_version=criu_version)
    manifest = attrs.evolve(ckpt.manifest, host=host, members=())
    write_artifact(work, dest, manifest, signer=host_key())
    shutil.rmtree(work)
    assert thaw(cedana.open(dest).manifest.workload) == thaw(ckpt.manifest.workload)
    return dest


@pytest.fixture
def sleeping(workloads: Workloads, tmp_path: Path) -> tuple[cedana.Process, Path]:
    """A running process and a leave-running checkpoint of it."""
    proc, _ = workloads.python("import time\nwhile True: time.sleep(1)\n")
    ckpt = proc.checkpoint(tmp_path / "base.tar.zst", leave_running=True)
    return proc, ckpt.path


def test_newer_criu_in_the_manifest_is_refused(
    sleeping: tuple[cedana.Process, Path], tmp_path: Path
) -> None:
    """A checkpoint made by a newer CRIU than this host's is refused before anything runs,
    from Python and from the command line (one line naming both versions)."""
    proc, base = sleeping
    art = recraft(base, tmp_path / "newer.tar.zst", criu_version="99.1.0")
    here = cedana.check().version_text
    with pytest.raises(cedana.IncompatibleHost, match=rf"CRIU 99\.1\.0.*CRIU {here}.*older"):
        cedana.restore(art, pid_namespace="new")
    done = subprocess.run(
        [sys.executable, "-m", "cedana", "restore", str(art), "--new-pidns"],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert done.returncode != 0
    assert "made by CRIU 99.1.0" in done.stderr
    assert [p.pid for p in proc.tree()] == [proc.pid]  # nothing else came up beside it
    reap_zombie_children()


def test_a_cpu_feature_this_host_lacks_is_refused_by_criu(
    sleeping: tuple[cedana.Process, Path], tmp_path: Path
) -> None:
    """A cpuinfo image claiming an xsave feature no CPU has (bit 62) is refused by the real
    CRIU's cpuinfo check, in CRIU's words, before anything is restored; the untouched image
    passes the same check."""
    import pycriu.images

    proc, base = sleeping

    def impossible(images: Path) -> None:
        path = images / "cpuinfo.img"
        with path.open("rb") as f:
            image = pycriu.images.load(f)
        entry = image["entries"][0]["x86_entry"][0]
        entry["xfeatures_mask"] = int(entry["xfeatures_mask"]) | 1 << 62
        with path.open("wb") as f:
            pycriu.images.dump(image, f)
        checked = subprocess.run(
            ["criu", "cpuinfo", "check", "-D", str(images)],
            capture_output=True,
            text=True,
            check=False,
        )
        assert checked.returncode != 0 and "xfeatures" in checked.stderr

    art = recraft(base, tmp_path / "cpu.tar.zst", images=impossible)
    with pytest.raises(cedana.IncompatibleHost, match="xfeatures has unsupported bits"):
        cedana.restore(art, pid_namespace="new")
    assert [p.pid for p in proc.tree()] == [proc.pid]
    again = cedana.restore(base, pid_namespace="new")  # the real image passes the check
    try:
        assert again.running
    finally:
        again.kill()
    reap_zombie_children()
