"""OCI images and registries: image layouts, archives, and the distribution API.

Everything that reads or writes OCI images goes through this package: ``cedana commit``
(a container's rootfs changes as a new image on its original one), ``cedana push`` /
``pull`` (a checkpoint as an OCI artifact), and the Kubernetes checkpoint image of
``cedana export --format oci-image``.

Modules::

    reference.py     oci:DIR[:NAME], oci-archive:PATH[:NAME], docker://HOST/REPO[:TAG|@DIGEST]
    media.py         media types, annotation keys, digests
    layout.py        Layout (an OCI image layout directory), Descriptor, Image; building:
                     add_layer (gzip/zstd), image_config, write_image
    archive.py       oci-archive: a layout as one tar, written atomically, read checked
    distribution.py  RegistryClient (python-dxf underneath), RegistryOptions, error mapping
    transfer.py      push(image, ref) and pull(ref, into) for every transport

Building and pushing an image::

    from cedana import oci

    layout = oci.Layout.create(workdir)
    layer = oci.add_layer(layout, "files.tar")                    # gzip; -> Layer
    image = oci.write_image(layout, layers=[layer], annotations={"k": "v"})
    oci.push(image, "oci-archive:out.tar:localhost/app:v1")
    oci.push(image, "docker://localhost:5000/app:v1")

    image = oci.pull("docker://localhost:5000/app:v1", into=other_dir)   # every blob checked
    image.layers[0], image.layout.blob_path(image.layers[0].digest)
"""

from cedana.oci.distribution import RegistryClient, RegistryOptions
from cedana.oci.layout import (
    Compression,
    Descriptor,
    Image,
    Layer,
    Layout,
    add_layer,
    host_platform,
    image_config,
    write_image,
)
from cedana.oci.reference import Reference, parse_reference
from cedana.oci.transfer import pull, push

__all__ = [
    "Compression",
    "Descriptor",
    "Image",
    "Layer",
    "Layout",
    "Reference",
    "RegistryClient",
    "RegistryOptions",
    "add_layer",
    "host_platform",
    "image_config",
    "parse_reference",
    "pull",
    "push",
    "write_image",
]
