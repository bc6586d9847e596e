"""The one family of user-facing errors.

Every error that is the user's to fix (a bad value, a missing file, an
unusable cluster) is a :class:`BiobenchError` whose message is one whole line;
the CLI turns any of them into ``error: <message>`` and its ``exit_code`` in
one place (``cli.BiobenchGroup``), so no command catches them one by one.
The base class and ``ConfigError`` are defined in ``models.errors`` (``models``
raises them and must not import ``benchmark``); import them from here.
"""
from models.errors import BiobenchError, ConfigError

__all__ = ["BiobenchError", "ConfigError", "RunError", "RunInterrupted", "DeadlineReached", "RunDiverged",
           "DataError", "RecordError", "ClusterError", "BoardError", "GridFailed", "ResultsMissing"]


class RunError(BiobenchError):
    """A run could not start or continue."""


class RunInterrupted(BiobenchError):
    """Stopped (Ctrl-C / SIGTERM, or a write that failed) with ``epochs_kept``
    epochs in its checkpoint: not bad input."""
    exit_code = 1

    def __init__(self, message, epochs_kept=None):
        super().__init__(message)
        self.epochs_kept = epochs_kept


class DeadlineReached(RunInterrupted):
    """A run stopped at an epoch boundary because the next epoch would end after ``--deadline``."""


class RunDiverged(BiobenchError):
    """A run's loss or weights stopped being finite; its record says where."""
    exit_code = 1


class DataError(BiobenchError):
    """A dataset could not be found or read."""


class RecordError(BiobenchError):
    """A record file is unreadable or not a biobench record."""


class ClusterError(BiobenchError):
    """Slurm or submitit is not usable."""


class BoardError(BiobenchError):
    """TensorBoard output was asked for but cannot be written."""


class GridFailed(BiobenchError):
    """Some cells of a grid failed (the others finished)."""
    exit_code = 1


class ResultsMissing(BiobenchError):
    """No usable records where results were expected (or a bad one under --strict)."""
    exit_code = 1
