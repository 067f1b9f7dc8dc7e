""" "None means the default", said one way: every option left None takes its default here."""

from __future__ import annotations

from typing import TypeVar

__all__ = ["or_default"]

_T = TypeVar("_T")


def or_default(value: _T | None, default: _T) -> _T:
    """``default`` when ``value`` is None (an option left unset), else ``value``.

    Only None means the default: ``""``, ``0`` and ``False`` are values.
    """
    return default if value is None else value
