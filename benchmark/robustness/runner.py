"""Many runs' evaluations on this machine: each run in a worker process of
the shared pool (:func:`benchmark.pools.run_in_pool`, as a grid's cells),
under its folder's lock. This is the local executor's way
(``benchmark.executors``); on Slurm each run is a task of a job array
(``benchmark.cluster``), which calls :func:`evaluate_job` too."""
import os
import socket
import time

from ..errors import GridFailed, RunInterrupted
from ..locks import RunLock
from ..pools import pool_died_message, run_in_pool
from ..records import ROBUSTNESS_PARTIAL_NAME as PARTIAL_NAME
from .evaluation import Evaluation
from .jobs import job_status
from .jobs import todo as jobs_todo


def evaluate_job(job, settings, data_dir, device, threads=None):
    """Evaluate one job in this process (a worker's task); returns (name, status, message)."""
    import torch

    from ..run_model import resolve_device
    previous = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    lock = RunLock(job.run_dir)
    if not lock.acquire():
        return job.name, "busy", "skipped (another process holds the run folder)"
    try:
        started = time.time()
        result = Evaluation(job, settings, data_dir, resolve_device(device)).run()
        return job.name, "evaluated", f"{summary_line(result)} ({time.time() - started:.0f}s)"
    except (KeyboardInterrupt, RunInterrupted):
        raise
    except Exception as exc:  # one failing run must not stop the others
        return job.name, "failed", f"{type(exc).__name__}: {exc}".splitlines()[0]
    finally:
        lock.release()
        torch.set_num_threads(previous)


def summary_line(result):
    """Clean error and the largest eps's PGD errors of a result, in one line."""
    parts = []
    for state, entry in result["states"].items():
        largest = max(result["settings"]["eps"])
        worst = {row["gradient"]: row["error"] for row in entry["attacks"]
                 if row["eps"] == largest and row["attack"] == result["settings"]["attacks"][-1]}
        text = ", ".join(f"{g} {e:.1f}%" for g, e in worst.items())
        parts.append(f"{state}: clean {entry['clean_error']:.2f}%"
                     + (f", {result['settings']['attacks'][-1]} eps {largest:g}: {text}" if text else ""))
    return "; ".join(parts)


def run_all(jobs, settings, data_dir, device="auto", jobs_count=1, threads=None, echo=print):
    """Evaluate every job not done yet (in :func:`.jobs.todo`'s order) in
    ``jobs_count`` worker processes; returns ``{status: count}``."""
    todo = jobs_todo(jobs, settings)
    threads = threads or max(1, (os.cpu_count() or 1) // jobs_count)
    echo(f"robustness: {len(jobs)} run(s), {len(jobs) - len(todo)} already evaluated, {len(todo)} to evaluate "
         f"({jobs_count} job(s) x {threads} thread(s))")
    counts, started, reported = {}, time.time(), set()
    targets = {}  # a BP run's folder -> the runs whose transfer examples it makes
    for job in jobs:
        if job.source:
            targets.setdefault(os.path.realpath(job.source), []).append(job.name)

    def report(done, task, result):
        job, (name, status, message) = task[0], result
        reported.add(job.run_dir)
        if status == "failed" and os.path.realpath(job.run_dir) in targets:
            message += f" (it is the transfer source of {', '.join(targets[os.path.realpath(job.run_dir)])})"
        counts[status] = counts.get(status, 0) + 1
        elapsed = time.time() - started
        eta = elapsed / done * (len(todo) - done)
        echo(f"[{done}/{len(todo)}] {name}: {status}: {message}  (elapsed {elapsed / 60:.1f} min, "
             f"ETA {eta / 60:.1f} min)")

    def died(workers):
        # Each worker's lock line (RunLock writes "host pid") tells which runs
        # the dead pool held; they keep their finished units in the partial file.
        holders = {f"{socket.gethostname()} {pid}" for pid in workers}
        held = [job.name for job in todo if job.run_dir not in reported and RunLock(job.run_dir).holder()
                in holders and job_status(job, settings) == "todo"]
        return GridFailed(pool_died_message("robustness", f"evaluating {', '.join(held) or 'a run'}",
                                            f"the finished attacks of each are kept in its {PARTIAL_NAME}"))

    try:
        run_in_pool(evaluate_job, [(job, settings, data_dir, device, threads) for job in todo], jobs_count,
                    report, died)
    except KeyboardInterrupt:
        raise RunInterrupted("robustness interrupted; rerun the same command to go on (finished attacks of the "
                             "interrupted runs are kept in their robustness.partial.json)") from None
    return counts
