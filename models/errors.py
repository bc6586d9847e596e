"""The base of biobench's user-facing errors, and the kind ``models`` raises.

They live at the bottom of the import graph so that ``models`` raises them
without importing ``benchmark`` (which sits above it); ``benchmark.errors``
re-exports both beside its other kinds, and everything outside ``models``
imports them from there.
"""


class BiobenchError(Exception):
    """A one-line message for the user; exit code 2 (bad input), like click's own."""
    exit_code = 2


class ConfigError(BiobenchError):
    """Options that do not make a valid run, grid or search."""
