"""Where the work of many runs happens: one small interface, a registry.

An executor trains a list of run configs (cells: :meth:`Executor.run`) and
evaluates the robustness of a list of finished runs (jobs:
:meth:`Executor.evaluate`), each not done yet, and returns ``{status:
count}``. ``grid``, ``search`` and ``robustness`` use whichever the user
names (``--executor``); adding one is a class and one ``register`` line,
like rules and datasets.
"""
import os
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

    def evaluate(self, jobs, settings, data_dir, out):
        """Evaluate the robustness jobs (``benchmark.robustness.jobs.plan``)
        not evaluated yet under ``settings``; ``out``: the folder for the
        executor's own files. Returns ``{status: count}``."""
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

    def evaluate(self, jobs, settings, data_dir, out):
        from .robustness.runner import run_all
        s = self.settings
        return run_all(jobs, settings, data_dir, device=s.device, jobs_count=s.jobs, threads=s.threads, echo=s.echo)


@EXECUTORS.register("slurm")
class SlurmExecutor(Executor):
    """One Slurm job array through submitit (``benchmark.cluster``)."""
    name = "slurm"

    def run(self, cells, out, data_dir):
        from . import cluster
        from .errors import ConfigError
        s = self.settings
        if s.deadline is not None:
            raise ConfigError("--deadline works with --executor local; on Slurm use --slurm-time, whose cells "
                              "requeue and resume")
        submitted, jobs, skipped = cluster.submit(cells, out, data_dir, s.device, s.threads, s.slurm,
                                                  echo=s.echo, tensorboard=s.tensorboard)
        job_id = self._announce(submitted, jobs, skipped, out, "cell(s)", "done")
        if job_id is None:
            return {}
        if not s.wait:
            s.echo(f"check on it with: squeue -j {job_id}, or python cli.py grid --status {out}")
            return {"submitted": len(submitted)}
        return cluster.wait(submitted, jobs, out, echo=s.echo)

    def _announce(self, submitted, jobs, skipped, out, units, done):
        """Say what was submitted (``units``: what a task is; ``done``: what a
        skipped one already is); the job array's id, None when nothing was."""
        from . import cluster
        if not submitted:
            self.settings.echo(f"slurm: nothing to submit ({skipped} {units} {done} or already queued)")
            return None
        job_id = jobs[0].job_id.split("_")[0]
        self.settings.echo(f"slurm: submitted {len(submitted)} {units} as job array {job_id} ({skipped} {done} or "
                           f"queued); logs in {os.path.join(out, cluster.LOGS)}")
        return job_id

    def evaluate(self, jobs, settings, data_dir, out):
        from . import cluster
        s = self.settings
        submitted, tasks, skipped = cluster.submit_evaluations(jobs, settings, out, data_dir, s.device, s.threads,
                                                               s.slurm)
        if self._announce(submitted, tasks, skipped, out, "run(s)", "evaluated") is None:
            return {}
        return cluster.wait_evaluations(submitted, tasks, settings, echo=s.echo)


def make_executor(name, settings=None):
    """The executor registered as ``name``, with ``settings``."""
    return EXECUTORS.get(name)(settings or ExecutorSettings())
