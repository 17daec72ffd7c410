"""One registry type for everything a scenario names: codecs, datasets, partitions, models.

A :class:`Registry` maps names to factories. ``@REG.register("name")`` adds one and refuses a
second entry under the same name, so two modules cannot silently shadow each other. Looking up
an unknown name raises :class:`UnknownName` saying what is known and the closest match::

    >>> MODELS = Registry("model")
    >>> _ = MODELS.register("mlp")(lambda: None)
    >>> MODELS["mpl"]
    Traceback (most recent call last):
    ...
    fedkit.registry.UnknownName: unknown model 'mpl' (did you mean 'mlp'?); known: mlp

:meth:`Registry.lookup` also accepts an import path ``"package.module:attr"``, so a user's own
factory needs no registration. The current working directory is put at the end of
``sys.path`` for these imports when it is not there yet (the ``fedkit`` console script, unlike
``python -m``, does not add it), so ``model: {name: "mynet:make"}`` finds ``./mynet.py`` in the
directory the run starts from; anything else must be installed or on ``PYTHONPATH``. A module
that fails to import reports its real error (``ModuleNotFoundError: No module named 'x' (while
importing mynet)``), never "unknown model".

Ground floor: imports nothing from fedkit, so every layer can use it.
"""

from __future__ import annotations

import difflib
import importlib
import os
import sys
import traceback
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")

__all__ = ["ImportPathError", "Registry", "UnknownName", "did_you_mean", "resolve_import", "unknown"]


class UnknownName(ValueError, KeyError):
    """A name no registry entry has. A ValueError (bad input) and a KeyError (a failed lookup)."""

    __str__ = BaseException.__str__  # KeyError would quote the message


class ImportPathError(ValueError):
    """An import path that does not resolve; the message carries the underlying error."""


def did_you_mean(word: str, options: Iterable[str]) -> str:
    """``" (did you mean 'x'?)"`` for the closest option (case-insensitive), else ``""``.

    >>> did_you_mean("FedAdm", ["fedavg", "fedadam"])
    " (did you mean 'fedadam'?)"
    """
    by_lower: dict[str, str] = {}
    for opt in options:
        by_lower.setdefault(str(opt).lower(), str(opt))
    close = difflib.get_close_matches(str(word).lower(), list(by_lower), n=1, cutoff=0.6)
    return f" (did you mean {by_lower[close[0]]!r}?)" if close else ""


def unknown(what: str, name: str, known: Iterable[str], hint: str = "") -> UnknownName:
    """The one "unknown <what>" error: closest match first, then every known name."""
    names = sorted(known)
    shown = repr(name) if len(name) <= 120 else f"{name[:120]!r}... ({len(name)} chars)"  # may be hostile
    return UnknownName(
        f"unknown {what} {shown}{did_you_mean(name, names) if len(name) <= 64 else ''}; "
        f"known: {', '.join(names) or '(none)'}{hint}"
    )


def _cwd_on_path() -> None:
    cwd = os.path.realpath(os.getcwd())
    for entry in sys.path:
        if os.path.realpath(str(entry) or os.curdir) == cwd:
            return
    sys.path.append(cwd)


def _split_path(path: str, what: str) -> tuple[str, list[str]]:
    mod, sep, attr = path.partition(":")
    parts = attr.split(".")
    dotted = mod.split(".")
    if not sep or not all(p.isidentifier() for p in dotted + parts):
        raise ImportPathError(f"bad {what} import path {path!r}: expected 'package.module:attr'")
    return mod, parts


def _where(exc: BaseException) -> str:
    """``file:line`` of the innermost frame outside importlib, where a module import failed."""
    frames = [
        f for f in traceback.extract_tb(exc.__traceback__) if not f.filename.startswith("<frozen")
    ]
    return f", at {frames[-1].filename}:{frames[-1].lineno}" if frames else ""


def resolve_import(path: str, what: str) -> Callable[..., Any]:
    """The callable at ``"package.module:attr"`` (``attr`` may be dotted, ``Class.method``).

    Puts the current directory on ``sys.path`` when absent (see the module docstring). Raises
    :class:`ImportPathError` whose message names the path and the real cause: the module that is
    missing, the exception raised while importing it (with file and line), or the attribute that
    does not exist (with the closest name).
    """
    mod, attrs = _split_path(path, what)
    _cwd_on_path()
    importlib.invalidate_caches()  # a module written after the last import attempt is found
    head = f"cannot import {what} {path!r}"
    try:
        obj: Any = importlib.import_module(mod)
    except ModuleNotFoundError as e:
        if e.name is not None and (mod == e.name or mod.startswith(e.name + ".")):
            raise ImportPathError(
                f"{head}: ModuleNotFoundError: {e} (searched sys.path, which includes the current "
                f"directory {os.getcwd()!r})"
            ) from e
        raise ImportPathError(f"{head}: ModuleNotFoundError: {e} (while importing {mod})") from e
    except Exception as e:  # a user's module may fail in any way while it runs
        raise ImportPathError(
            f"{head}: {type(e).__name__}: {e} (while importing {mod}{_where(e)})"
        ) from e
    owner = mod
    for i, attr in enumerate(attrs):
        if not hasattr(obj, attr):
            public = [n for n in dir(obj) if not n.startswith("_")]
            raise ImportPathError(
                f"{head}: AttributeError: {owner!r} has no attribute {attr!r}"
                f"{did_you_mean(attr, public)}"
            )
        obj, owner = getattr(obj, attr), f"{mod}:{'.'.join(attrs[: i + 1])}"
    if not callable(obj):
        raise ImportPathError(f"{what} {path!r} is not callable (it is a {type(obj).__name__})")
    return obj  # type: ignore[no-any-return]


class Registry(Generic[T]):
    """Named entries of one kind; ``what`` names the kind in messages ("codec", "model").

    ``entry`` names what an import path points to in messages (default: ``what``), e.g.
    "model factory".
    """

    def __init__(self, what: str, entry: str | None = None) -> None:
        self.what = what
        self.entry = entry or what
        self._items: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator adding an entry under ``name``; a second entry for a name is refused."""
        if not isinstance(name, str) or not name or ":" in name:
            raise ValueError(f"{self.what} name must be a non-empty string without ':', got {name!r}")

        def deco(item: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.what} {name!r} registered twice")
            self._items[name] = item
            return item

        return deco

    def __getitem__(self, name: str) -> T:
        try:
            return self._items[name]
        except (KeyError, TypeError):
            raise unknown(self.what, str(name), self._items) from None

    def lookup(self, name: str) -> T | Callable[..., Any]:
        """A registered entry, or the callable an import path ``"pkg.mod:attr"`` names."""
        if name in self._items:
            return self._items[name]
        if ":" in name:
            return resolve_import(name, self.entry)
        raise unknown(self.what, name, self._items, hint=", or an import path 'package.module:attr'")

    def names(self) -> list[str]:
        """Registered names, sorted."""
        return sorted(self._items)

    def items(self) -> list[tuple[str, T]]:
        return list(self._items.items())

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Registry({self.what!r}: {', '.join(self.names())})"
