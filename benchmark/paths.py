"""Checks of the folders a command reads and writes, before any work starts."""
import os
import tempfile

from .errors import ConfigError

DATA_ENV = "BIOBENCH_DATA"


def check_data_dir(path):
    if not os.path.isdir(path):
        raise ConfigError(f"--data-dir {path!r} is not a folder (set --data-dir or ${DATA_ENV} to a "
                          f"torchvision data root)")
    if not os.access(path, os.R_OK | os.X_OK):
        raise ConfigError(f"--data-dir {path!r} is not readable")


def check_out_dir(path, flag="--out"):
    """``path`` exists as a writable folder or can be created: checked by
    creating (and removing) a scratch folder in its nearest existing ancestor,
    so a read-only place, a file in the way or a pseudo file system like /proc
    is one line before any training starts."""
    probe = os.path.abspath(path)
    while not os.path.exists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise ConfigError(f"{flag} {path!r} cannot be created: {probe} is a file, not a folder")
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".biobench-probe-", dir=probe))
    except OSError as exc:
        raise ConfigError(f"{flag} {path!r} cannot be created or written: {exc.strerror} in {probe}") from None


def check_folders(flag, folders):
    for folder in folders:
        if not os.path.isdir(folder):
            raise ConfigError(f"{flag} {folder!r} is not a folder")
