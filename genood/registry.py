"""One registry mechanism for everything found by name: scores, detectors, LID estimators, derived datasets.

A :class:`Registry` maps names to entries. Registering a name twice is an error that names both modules.
Entries are discovered, not imported by hand: a registry lists the packages whose modules register into
it and imports them the first time anyone looks a name up, so no module needs imports at its bottom and
registering modules can import the registry's module without a cycle.
"""
from __future__ import annotations

import importlib
import inspect
import pkgutil
import threading
from collections.abc import MutableMapping
from typing import Dict, Generic, Iterator, Sequence, Tuple, TypeVar

__all__ = ["DuplicateRegistration", "Registry"]

T = TypeVar("T")


class DuplicateRegistration(ValueError):
    """A name registered twice; phrased as one sentence naming both places."""


def _caller_module(depth: int = 2) -> str:
    frame = inspect.stack()[depth]
    module = inspect.getmodule(frame.frame)
    return module.__name__ if module is not None else frame.filename


class Registry(MutableMapping, Generic[T]):
    """``kind``: what an entry is, for messages ("OOD score"). ``packages``: packages whose every module is
    imported on first lookup (discovery); ``modules``: single modules to import likewise. ``registry[name] = x``
    and ``del registry[name]`` replace and remove deliberately (tests); :meth:`add` is how code registers."""

    def __init__(self, kind: str, packages: Sequence[str] = (), modules: Sequence[str] = ()):
        self.kind = kind
        self._packages, self._modules = tuple(packages), tuple(modules)
        self._items: Dict[str, Tuple[T, str]] = {}
        self._discovered = False
        self._lock = threading.RLock()

    def add(self, name: str, entry: T, module: str = None) -> T:
        """Register ``entry`` as ``name`` (``module``: where it is defined; default the caller's module)."""
        module = module or _caller_module()
        # no discovery here: a module registering while it is imported must not import its siblings (a later
        # duplicate, from either side, still meets the first one in _items)
        with self._lock:
            if name in self._items and self._items[name][1] != module:
                raise DuplicateRegistration(f"{self.kind} {name!r} is registered twice: in {self._items[name][1]} and "
                                            f"in {module}; rename one of them.")
            self._items[name] = (entry, module)
        return entry

    def where(self, name: str) -> str:
        """The module that registered ``name``."""
        self._discover()
        return self._items[name][1]

    def _discover(self) -> None:
        if self._discovered:
            return
        with self._lock:
            if self._discovered:
                return
            self._discovered = True  # set first: the modules imported below look names up while they load
            try:
                for package in self._packages:
                    pkg = importlib.import_module(package)
                    for info in pkgutil.iter_modules(pkg.__path__):
                        importlib.import_module(f"{package}.{info.name}")
                for module in self._modules:
                    importlib.import_module(module)
            except BaseException:
                self._discovered = False  # the next lookup tries again (and raises the same error)
                raise

    def __getitem__(self, name: str) -> T:
        self._discover()
        return self._items[name][0]

    def __iter__(self) -> Iterator[str]:
        self._discover()
        return iter(list(self._items))

    def __len__(self) -> int:
        self._discover()
        return len(self._items)

    def __contains__(self, name) -> bool:
        self._discover()
        return name in self._items

    def __setitem__(self, name: str, entry: T) -> None:
        self._discover()
        with self._lock:
            self._items[name] = (entry, _caller_module())

    def __delitem__(self, name: str) -> None:
        self._discover()
        with self._lock:
            del self._items[name]
