"""Docker's Engine API, through the docker SDK: the only importer of ``docker``.

The SDK (``pip install 'cedana[docker]'``) is docker's own Python client: it
finds the daemon (``DOCKER_HOST`` or the socket given), negotiates the API
version and gives typed errors, which this module maps to cedana's at one
boundary (:func:`mapped`). It is imported on first use, so cedana without
the extra imports fine and says what to install when docker is asked for.

The SDK has no checkpoint calls (the routes are experimental in the daemon);
the one this module needs, ``POST /containers/{id}/start?checkpoint=NAME``, goes
through the SDK's own low-level client, with its error handling.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import IO, Any

import attrs

from cedana.errors import (
    CedanaError,
    ContainerError,
    ContainerExists,
    ContainerNotFound,
    ImageNotFound,
    RuntimeUnavailable,
)

__all__ = ["DockerClient", "mapped"]

_EXTRA = "pip install 'cedana[docker]'"


@contextlib.contextmanager
def mapped(what: str, *, missing: type[ContainerError] = ContainerNotFound) -> Iterator[None]:
    """Map the SDK's errors raised inside to cedana's (``... from exc``).

    Args:
        what: What was asked, for the message (``container 'web'``).
        missing: The error for a 404 (no such container, image...).
    """
    import docker.errors
    import requests.exceptions

    try:
        yield
    except docker.errors.NotFound as exc:
        raise missing(f"docker has no {what} ({_explain(exc)})") from exc
    except docker.errors.APIError as exc:
        if exc.status_code == 409:
            raise ContainerExists(f"docker refused {what}: {_explain(exc)}") from exc
        raise ContainerError(f"docker refused {what}: {_explain(exc)}") from exc
    except (docker.errors.DockerException, requests.exceptions.RequestException) as exc:
        raise RuntimeUnavailable(f"docker's API failed for {what}: {exc}") from exc


def _explain(exc: Any) -> str:
    return str(getattr(exc, "explanation", None) or exc)


@attrs.define(eq=False)
class DockerClient:
    """A connection to one docker daemon.

    Args:
        address: The daemon's API (``unix:///run/docker.sock``, a socket path, or
            anything ``DOCKER_HOST`` takes); None for ``DOCKER_HOST`` or docker's default.

    Raises:
        RuntimeUnavailable: The docker SDK is not installed, or the daemon does not answer.
    """

    address: str | None = None
    _api: Any = attrs.field(default=None, init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        try:
            import docker
        except ImportError as exc:
            raise RuntimeUnavailable(f"docker containers need the docker SDK: {_EXTRA}") from exc
        address = self.address
        if address and address.startswith("/"):
            address = f"unix://{address}"
        where = address or "DOCKER_HOST or the default socket"
        try:
            if address:
                api = docker.APIClient(base_url=address, version="auto", timeout=120)
            else:
                api = docker.from_env(version="auto", timeout=120).api
        except docker.errors.DockerException as exc:
            raise RuntimeUnavailable(
                f"docker is not answering at {where}: {exc}; start dockerd, or pass its "
                "socket (address=, --address, DOCKER_HOST)"
            ) from exc
        self._api = api

    def close(self) -> None:
        """Close the connection (idempotent)."""
        if self._api is not None:
            self._api.close()
            self._api = None

    def __enter__(self) -> DockerClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def base_url(self) -> str:
        """Where the daemon was reached."""
        return str(self._api.base_url)

    def info(self) -> dict[str, Any]:
        """``GET /info``: the daemon's settings (``ExperimentalBuild``, ``DockerRootDir``...)."""
        with mapped("info"):
            info: dict[str, Any] = self._api.info()
        return info

    def inspect_container(self, name: str) -> dict[str, Any]:
        """``GET /containers/{name}/json``.

        Raises:
            ContainerNotFound: No container has that name or id.
        """
        with mapped(f"container {name!r}"):
            record: dict[str, Any] = self._api.inspect_container(name)
        return record

    def find_container(self, name: str) -> dict[str, Any] | None:
        """The container named ``name``; None when there is none."""
        try:
            return self.inspect_container(name)
        except ContainerNotFound:
            return None

    def inspect_image(self, ref: str) -> dict[str, Any]:
        """``GET /images/{ref}/json``.

        Raises:
            ImageNotFound: No such image.
        """
        with mapped(f"image {ref!r}", missing=ImageNotFound):
            record: dict[str, Any] = self._api.inspect_image(ref)
        return record

    def save_image(self, ref: str, out: IO[bytes]) -> None:
        """``GET /images/{ref}/get``: the image as ``docker save`` writes it, into ``out``.

        Raises:
            ImageNotFound: No such image.
        """
        with mapped(f"image {ref!r}", missing=ImageNotFound):
            for chunk in self._api.get_image(ref, chunk_size=1 << 20):
                out.write(chunk)

    def load_image(self, archive: Path) -> None:
        """``POST /images/load`` (``docker load``) of the image tar ``archive``."""
        with mapped("loading an image"), open(archive, "rb") as data:
            for event in self._api.load_image(data) or ():
                if isinstance(event, Mapping) and event.get("error"):
                    raise ContainerError(f"docker could not load {archive}: {event['error']}")

    def create_container(self, config: Mapping[str, Any], name: str) -> str:
        """``POST /containers/create?name=NAME`` with ``config`` as is; the new id."""
        with mapped(f"creating container {name!r}"):
            made = self._api.create_container_from_config(dict(config), name=name)
        return str(made["Id"])

    def start_from_checkpoint(self, container: str, checkpoint: str) -> None:
        """``POST /containers/{id}/start?checkpoint=NAME`` (``docker start --checkpoint``):
        docker hands the container's ``checkpoints/NAME`` to containerd, whose runc shim
        restores the task from it."""
        api = self._api
        with mapped(f"starting container {container!r} from checkpoint {checkpoint!r}"):
            res = api._post(
                api._url("/containers/{0}/start", container),
                params={"checkpoint": checkpoint},
            )
            api._raise_for_status(res)

    def start_container(self, container: str) -> None:
        """``POST /containers/{id}/start`` (``docker start``)."""
        with mapped(f"starting container {container!r}"):
            self._api.start(container)

    def remove_container(self, container: str) -> None:
        """``DELETE /containers/{id}?force=1``: killed if it runs; gone already is fine."""
        with contextlib.suppress(ContainerNotFound), mapped(f"removing container {container!r}"):
            self._api.remove_container(container, force=True)

    def stop_container(self, container: str, timeout: int = 10) -> None:
        """``POST /containers/{id}/stop``."""
        with mapped(f"stopping container {container!r}"):
            self._api.stop(container, timeout=timeout)

    def wait_container(self, container: str, timeout: float = 30) -> None:
        """``POST /containers/{id}/wait``: until it has stopped."""
        import requests.exceptions

        try:
            with mapped(f"waiting for container {container!r}"):
                self._api.wait(container, timeout=timeout)
        except RuntimeUnavailable as exc:
            if isinstance(exc.__cause__, requests.exceptions.ReadTimeout):
                raise CedanaError(f"container {container!r} did not stop in {timeout}s") from exc
            raise
