"""Container runtimes above runc: a RuncContainer, a snapshotter and the runtime's own API.

Layout::

    containerd.py        ContainerdContainer: lookup through containerd's API, checkpoint
                         (runc dump + the containerd snapshot), restore as a containerd
                         container (or into plain runc)
    _grpc.py             what both gRPC clients share: status codes -> cedana's errors
    _containerd_api.py   containerd's gRPC API: the only importer of grpc (optional:
                         ``pip install 'cedana[containerd]'``)
    _containerd_proto.py containerd's messages and methods, one table built into
                         descriptors at run time (any protobuf >= 3.20)
    podman.py            PodmanContainer: lookup through podman container inspect, checkpoint
                         (runc dump + the containers/storage layer), restore through
                         podman container restore --import (or into plain runc)
    _criu_archive.py     the archives of checkpointctl's family (podman's export, the
                         kubelet's from CRI-O or containerd) read as cedana checkpoints
                         (registered with cedana.artifact.foreign), one reader for all
    _podman_archive.py   podman's flavour of them
    _kube_archive.py     CRI-O's and containerd's flavours, and cedana's checkpoints
                         written as either (cedana export --format kubernetes|containerd)
    _kube_image.py       Kubernetes' checkpoint OCI image of such an archive: written
                         (--format oci-image) and pulled for a restore (through cedana.oci)
    crio.py              CrioContainer: lookup through the CRI API and containers/storage,
                         checkpoint (runc dump + the containers/storage layer), restore
                         into plain runc
    _cri_api.py          the CRI's runtime.v1 gRPC API (optional: ``pip install
                         'cedana[crio]'``), from _cri_descriptor.py (protoc's descriptor
                         of cri-api's api.proto, made by scripts/cri-descriptor)

    docker.py            DockerContainer: lookup through docker's Engine API, checkpoint
                         (runc dump + the overlay2 layer), restore as a docker container
                         (or into plain runc)
    _docker_api.py       docker's Engine API: the only importer of the docker SDK
                         (optional: ``pip install 'cedana[docker]'``)
    kata.py              KataSandbox: a kata sandbox's QEMU VM saved whole over QMP
                         (experimental), restored from an allow-listed command line
    _kata_vm.py          its plumbing: QEMU and virtiofsd found, started, fed and ended;
                         shares captured and put back
    _qmp.py              QEMU's machine protocol: the only importer of qemu.qmp
                         (optional: ``pip install 'cedana[kata]'``)
    _qemu_spec.py        a QEMU command line parsed into what a restore may rebuild

    _cross.py            a restore into another runtime: each runtime's source half
                         (its checkpoint as cedana.container.portable's neutral
                         description) and target half (that description as its own)
    _images.py           image stores found by chain id, and an image moved between
                         them through the runtimes' own save/load

Nothing here imports grpc, the docker SDK or qemu.qmp until a container of theirs is used.
"""

from cedana.runtimes import _kube_archive, _podman_archive  # noqa: F401 (register readers)
from cedana.runtimes._containerd_api import ContainerRecord, ImageRecord, TaskRecord
from cedana.runtimes.containerd import ContainerdContainer
from cedana.runtimes.crio import CrioContainer
from cedana.runtimes.docker import DockerContainer
from cedana.runtimes.kata import KataSandbox
from cedana.runtimes.podman import PodmanContainer

__all__ = [
    "ContainerRecord",
    "ContainerdContainer",
    "CrioContainer",
    "DockerContainer",
    "ImageRecord",
    "KataSandbox",
    "PodmanContainer",
    "TaskRecord",
]
