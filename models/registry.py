"""A tiny name -> object registry, so adding a rule, an architecture or a
dataset is one new module plus one ``register`` line, or, from another
package, one entry point (a plug-in).

Plug-ins are found through a Python entry-point group (``biobench.rules``,
``biobench.archs``, ``biobench.datasets``), read the first time a registry is
asked for its names or an entry, so every process (grid workers, Slurm tasks)
sees them. A plug-in that fails to import, or whose name is already taken, is
reported in one line on stderr and left out; everything else keeps working.
"""
import importlib
import sys
from collections.abc import Callable
from importlib.metadata import entry_points
from typing import Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """Names -> objects of one kind (``T``: a rule class, an architecture function, ...)."""

    def __init__(self, kind: str, group: str | None = None) -> None:
        self.kind = kind
        self.group = group  # entry-point group of plug-ins, e.g. "biobench.rules"
        self._entries = {}
        self._sources = {}
        self._plugins_loaded = group is None
        self.problems = []  # one line per plug-in that could not be loaded

    def register(self, name: str, obj: T | str | None = None,
                 source: str | None = None) -> T | str | Callable[[T], T]:
        """Register ``obj`` under ``name``; usable as a decorator. ``obj`` may
        be a ``"module:attribute"`` string, imported on first use, so listing
        the names imports nothing (``cli.py table`` never loads torch).
        ``source`` says where it comes from (default: the object's module)."""
        def add(target):
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered (by {self._sources[name]})")
            self._entries[name] = target
            module = target.partition(":")[0] if isinstance(target, str) else getattr(target, "__module__", "?")
            self._sources[name] = source or f"built-in ({module})"
            return target
        return add if obj is None else add(obj)

    def _resolve(self, name):
        target = self._entries[name]
        if isinstance(target, str):
            module, _, attribute = target.partition(":")
            target = self._entries[name] = getattr(importlib.import_module(module), attribute)
        return target

    def _load_plugins(self):
        if self._plugins_loaded:
            return
        self._plugins_loaded = True
        for point in sorted(entry_points(group=self.group), key=lambda p: p.name):
            dist = point.dist.name if point.dist is not None else "?"
            source = f"plug-in {dist} ({point.value})"
            try:
                target = point.load()
            except Exception as exc:  # a broken plug-in must not take the CLI down
                self._report(f"{self.kind} plug-in {point.name!r} from {source} failed to import: "
                             f"{type(exc).__name__}: {exc}".splitlines()[0] + "; left out")
                continue
            name = point.name
            if getattr(target, "name", name) != name:
                self._report(f"{self.kind} plug-in {name!r} from {source} calls itself {target.name!r}; "
                             f"the entry point and the name must agree; left out")
                continue
            if name in self._entries:
                self._report(f"{self.kind} {name!r} from {source} clashes with the {self._sources[name]} "
                             f"one of that name; the plug-in is left out (rename it)")
                continue
            self.register(name, target, source=source)

    def _report(self, message):
        self.problems.append(message)
        sys.stderr.write(f"error: {message}\n")

    def get(self, name: str) -> T:
        self._load_plugins()
        try:
            return self._resolve(name)
        except KeyError:
            raise ValueError(
                f"unknown {self.kind} {name!r}; allowed: {', '.join(self.names())}"
            ) from None

    def source(self, name: str) -> str:
        self._load_plugins()
        return self._sources[name]

    def names(self) -> list[str]:
        self._load_plugins()
        return sorted(self._entries)

    def registered(self, plugins: bool = True) -> list[str]:
        """Names in registration order, built-ins first (the order tables use);
        ``plugins=False``: the built-ins only (what the paper presets run)."""
        if not plugins:
            return [n for n in self._entries if not self._sources[n].startswith("plug-in")]
        self._load_plugins()
        return list(self._entries)

    def __contains__(self, name: object) -> bool:
        self._load_plugins()
        return name in self._entries
