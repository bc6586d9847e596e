"""Where the cells of a grid or a search run: one small interface, a registry.

An executor takes a list of run configs (cells), the output folder and the
data root, trains every cell that is not done, and returns ``{status:
count}``. ``grid`` and ``search`` use whichever the user names (``--executor``);
adding one is a class and one ``register`` line, like rules and datasets.
"""
from dataclasses import dataclass

from models.registry import Registry


@dataclass
class ExecutorSettings:
    """What every executor is told; each uses the parts that apply to it."""
    device: str = "auto"
    jobs: int = 1  # local worker processes
    threads: int = None  # torch threads per cell
    echo: object = print
    epoch_lines: bool = False  # one line per finished epoch of every cell
    tensorboard: str = None
    wait: bool = True  # block until every cell ended (a Slurm grid may return after submitting)
    slurm: object = None  # cluster.SlurmOptions
    deadline: float = None  # time.time() after which no epoch may end (local only)


class Executor:
    """Runs cells; subclasses implement :meth:`run`."""
    name = ""

    def __init__(self, settings):
        self.settings = settings

    def run(self, cells, out, data_dir):
        """Train the cells that are not done; returns ``{status: count}``."""
        raise NotImplementedError


EXECUTORS: Registry[type[Executor]] = Registry("executor")


@EXECUTORS.register("local")
class LocalExecutor(Executor):
    """Worker processes on this machine (``--jobs``, threads split between them)."""
    name = "local"

    def run(self, cells, out, data_dir):
        from .grid import run_grid
        s = self.settings
        return run_grid(cells, out, data_dir, device=s.device, jobs=s.jobs, echo=s.echo, threads=s.threads,
                        epoch_lines=s.epoch_lines, tensorboard=s.tensorboard, deadline=s.deadline)


@EXECUTORS.register("slurm")
class SlurmExecutor(Executor):
    """One Slurm job array through submitit (``benchmark.cluster``)."""
    name = "slurm"

    def run(self, cells, out, data_dir):
        import os

        from . import cluster
        from .errors import ConfigError
        s = self.settings
        if s.deadline is not None:
            raise ConfigError("--deadline works with --executor local; on Slurm use --slurm-time, whose cells "
                              "requeue and resume")
        submitted, jobs, skipped = cluster.submit(cells, out, data_dir, s.device, s.threads, s.slurm,
                                                  echo=s.echo, tensorboard=s.tensorboard)
        if not submitted:
            s.echo(f"slurm: nothing to submit ({skipped} cell(s) done or already queued)")
            return {}
        job_id = jobs[0].job_id.split("_")[0]
        s.echo(f"slurm: submitted {len(submitted)} cell(s) as job array {job_id} ({skipped} done or queued); "
               f"logs in {os.path.join(out, cluster.LOGS)}")
        if not s.wait:
            s.echo(f"check on it with: squeue -j {job_id}, or python cli.py grid --status {out}")
            return {"submitted": len(submitted)}
        return cluster.wait(submitted, jobs, out, echo=s.echo)


def make_executor(name, settings=None):
    """The executor registered as ``name``, with ``settings``."""
    return EXECUTORS.get(name)(settings or ExecutorSettings())
