"""Atomic file writes: a reader never sees a half-written file."""
import json
import os
import tempfile
from contextlib import contextmanager


def _umask():
    current = os.umask(0)
    os.umask(current)
    return current


@contextmanager
def atomic_path(path):
    """Yield a temporary path in the target's folder; on success fsync it and
    rename it over ``path`` (atomic on POSIX), on failure remove it."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.splitext(path)[1] or ".tmp", dir=folder)
    os.close(fd)
    try:
        yield tmp
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        # mkstemp makes the file private (0600); results are meant to be
        # shared, so give it the mode a plain open() would (0666 & ~umask).
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text(path, text):
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as handle:
            handle.write(text)


def write_json(path, obj):
    write_text(path, json.dumps(obj, indent=1, sort_keys=False) + "\n")
