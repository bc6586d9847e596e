"""One process per run folder: an OS lock (``fcntl.flock``) on ``run.lock``.

The kernel drops the lock when its holder exits, however it exits (kill -9,
out of memory), so a dead holder never blocks a folder, and a live unrelated
process that happens to reuse a dead holder's pid cannot either (the pid-file
scheme this replaces had both faults). The file itself stays in the folder
(removing it could let two processes lock two different files of one name);
it holds the holder's host and pid, for people. ``flock`` works across
machines on NFS (Linux emulates it with POSIX locks there).
"""
import fcntl
import os
import socket

LOCK_NAME = "run.lock"


class RunLock:
    def __init__(self, run_dir):
        self.path = os.path.join(run_dir, LOCK_NAME)
        self._fd = None

    def acquire(self):
        """True when this process now holds the folder's lock; False when another does."""
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.write(fd, f"{socket.gethostname()} {os.getpid()}\n".encode())
        self._fd = fd
        return True

    def release(self):
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def held(self):
        """Whether some process (this one included) holds the lock now."""
        if self._fd is not None:
            return True
        if not os.path.exists(self.path):
            return False
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except OSError:
            return False
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # closing drops a shared lock taken just to look
        return False

    def holder(self):
        """``host pid`` of the last holder, as it wrote them (for messages)."""
        try:
            with open(self.path, encoding="utf-8") as handle:
                return handle.read().strip() or "unknown"
        except OSError:
            return "unknown"

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()
