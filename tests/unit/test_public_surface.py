"""The public surface: what ``import cedana`` offers is exactly ``cedana.__all__`` (as httpx
tests its exported members), and the verbs spell out their keywords."""

from __future__ import annotations

import inspect
import types
from typing import Any

import attrs

import cedana
from cedana import errors, registry


def test_all_is_the_public_namespace() -> None:
    """``cedana.__all__`` lists every public name of the package namespace (classes,
    functions, errors; the submodules Python binds as attributes aside), each once, sorted."""
    public = {
        name
        for name, value in vars(cedana).items()
        if not name.startswith("_") and not isinstance(value, types.ModuleType)
    }
    assert set(cedana.__all__) == public
    assert cedana.__all__ == sorted(set(cedana.__all__))


def test_every_error_is_exported() -> None:
    """Every error and warning of the tree can be caught as ``cedana.Name``."""
    tree = {
        name
        for name in errors.__all__
        if isinstance(getattr(errors, name), type)
        and issubclass(getattr(errors, name), (errors.CedanaError, errors.CedanaWarning))
    }
    assert tree <= set(cedana.__all__)
    assert set(errors.__all__) <= set(cedana.__all__)


def test_checkpoint_keywords_are_spelled_out() -> None:
    """Every ``checkpoint()`` takes each CheckpointOptions field by name (plus ``options``)
    and nothing through ``**kwargs``, so a typo is a TypeError and a mypy error."""
    fields = {f.name for f in attrs.fields(cedana.CheckpointOptions)}
    classes: set[Any] = {cedana.Process, cedana.RuncContainer, *(r.cls for r in registry.entries())}
    assert {cedana.DockerContainer, cedana.PodmanContainer} <= classes
    for cls in classes:
        params = inspect.signature(cls.checkpoint).parameters.values()
        assert not [p for p in params if p.kind is p.VAR_KEYWORD], cls
        keywords = {p.name for p in params if p.kind is p.KEYWORD_ONLY}
        assert keywords == fields | {"options"}, cls
