"""What the two gRPC clients (containerd's API, the CRI) share: the map from gRPC status
codes to cedana's errors, and the socket path of an address."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from cedana.errors import (
    CedanaError,
    ContainerError,
    ContainerExists,
    ContainerNotFound,
    NotPermitted,
    RuntimeUnavailable,
)

__all__ = ["STATUS_ERRORS", "socket_path", "status_error"]

#: gRPC status code name -> the error raised for it (every code has one).
STATUS_ERRORS: Mapping[str, type[CedanaError]] = {
    "OK": ContainerError,
    "CANCELLED": ContainerError,
    "UNKNOWN": ContainerError,
    "INVALID_ARGUMENT": ContainerError,
    "DEADLINE_EXCEEDED": ContainerError,
    "NOT_FOUND": ContainerNotFound,
    "ALREADY_EXISTS": ContainerExists,
    "PERMISSION_DENIED": NotPermitted,
    "RESOURCE_EXHAUSTED": ContainerError,
    "FAILED_PRECONDITION": ContainerError,
    "ABORTED": ContainerError,
    "OUT_OF_RANGE": ContainerError,
    "UNIMPLEMENTED": ContainerError,
    "INTERNAL": ContainerError,
    "UNAVAILABLE": RuntimeUnavailable,
    "DATA_LOSS": ContainerError,
    "UNAUTHENTICATED": NotPermitted,
}


def status_error(exc: Any) -> tuple[type[CedanaError], str]:
    """The error class for gRPC error ``exc`` (its ``code()``) and its ``details()``."""
    code = exc.code() if callable(getattr(exc, "code", None)) else None
    name = getattr(code, "name", "UNKNOWN")
    details = exc.details() if callable(getattr(exc, "details", None)) else str(exc)
    return STATUS_ERRORS.get(name, ContainerError), str(details)


def socket_path(address: str) -> str:
    """The file of a unix socket address (``unix://`` optional)."""
    return address[len("unix://") :] if address.startswith("unix://") else address
