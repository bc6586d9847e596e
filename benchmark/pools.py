"""The pool of worker processes that the commands running many tasks (a
grid's cells, robustness's runs) share: :func:`run_in_pool`, the one message
when a worker dies, and the clean-up that keeps their exit quiet after it."""
import multiprocessing
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool


def run_in_pool(work, tasks, jobs, report, died, stopped=None, initializer=None):
    """Call ``work(*task)`` for every task of ``tasks``: one after another in
    this process when ``jobs`` is 1, else in ``jobs`` worker processes (each
    set up by ``initializer``); ``report(done, task, result)`` as each ends
    (``done``: how many have). A worker killed by the OS (out of memory, kill
    -9) breaks the pool, which ends the others: once they have ended, the
    exception ``died(workers)`` returns is raised (``workers``: the pids of
    the pool's processes, to tell which tasks they held). Anything else that
    stops the loop (Ctrl-C, an interrupted task) stops every worker, then
    ``stopped()`` runs, and the exception goes on."""
    if jobs == 1:
        for done, task in enumerate(tasks, 1):
            report(done, task, work(*task))
        return
    pool = ProcessPoolExecutor(max_workers=jobs, initializer=initializer)
    workers = set()
    try:
        futures = {pool.submit(work, *task): task for task in tasks}
        workers = {child.pid for child in multiprocessing.active_children()}
        for done, future in enumerate(as_completed(futures), 1):
            report(done, futures[future], future.result())
    except BrokenProcessPool:
        pool.shutdown(wait=True)
        raise died(workers) from None
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        for worker in multiprocessing.active_children():
            worker.terminate()
        pool.shutdown(wait=True)
        forget_pool_wakeups()
        if stopped is not None:
            stopped()
        raise
    pool.shutdown(wait=True)


def pool_died_message(command, doing, kept):
    """The one line for a ``command`` whose worker process died while
    ``doing`` (naming the runs it held); ``kept``: what a rerun resumes from."""
    return (f"a {command} worker process died (killed by the OS, e.g. out of memory, or kill -9) while {doing}; "
            f"{kept}: rerun the same command to resume them all")


def forget_pool_wakeups():
    """concurrent.futures' exit handler writes to every pool's wake-up pipe it
    knows. A forked worker inherits the parent's, and after an interrupted
    pool's shutdown the parent's may be closed under it: either way it would
    fail at exit with a traceback (EBADF) after the one-line message. Called
    only where no pool of this process is running any more."""
    import concurrent.futures.process as pool_internals
    getattr(pool_internals, "_threads_wakeups", {}).clear()
