"""What the commands that run work in a pool of worker processes (grid,
robustness) share: the one message when a worker dies, and the clean-up that
keeps their exit quiet after it."""


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
