"""A tiny name -> object registry, so adding a rule, an architecture or a
dataset is one new module plus one ``register`` line."""


class Registry:
    def __init__(self, kind):
        self.kind = kind
        self._entries = {}

    def register(self, name, obj=None):
        """Register ``obj`` under ``name``; usable as a decorator."""
        def add(target):
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._entries[name] = target
            return target
        return add if obj is None else add(obj)

    def get(self, name):
        try:
            return self._entries[name]
        except KeyError:
            raise ValueError(
                f"unknown {self.kind} {name!r}; allowed: {', '.join(self.names())}"
            ) from None

    def names(self):
        return sorted(self._entries)

    def registered(self):
        """Names in registration order (the order tables and presets use)."""
        return list(self._entries)

    def __contains__(self, name):
        return name in self._entries
