"""One run per run directory: rank 0 holds ``RUN_DIR/.run.lock`` for the life of the run.

The lock is a POSIX record lock (`fcntl.lockf`) on the file, so it goes away with the process that
held it, however that process died: a stale file left by a dead run never blocks. Not `flock`: a
`flock` belongs to the open file, which every forked child shares, so megatron-core's forked
checkpoint writers, orphaned by a SIGKILLed rank 0, would keep a dead run's directory locked. A record
lock belongs to the process alone. The file's content names the holder (host, pid, Slurm job, start
time) for the message that refuses a second launch into a live run's directory. On a filesystem
without lock support the run goes on with a warning.
"""

from __future__ import annotations

import errno
import fcntl
import json
import logging
import os
import socket
import time
from pathlib import Path

logger = logging.getLogger(__name__)

LOCK_NAME = ".run.lock"


class RunDirLockedError(RuntimeError):
    """Another live run holds this run directory."""


def holder_facts() -> dict:
    """Who holds the lock: host, pid, Slurm job (when under Slurm) and when it started."""
    facts = {"host": socket.gethostname(), "pid": os.getpid(),
             "started": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())}
    if os.environ.get("SLURM_JOB_ID"):
        facts["slurm_job"] = os.environ["SLURM_JOB_ID"]
    return facts


class RunLock:
    """`acquire()` or raise RunDirLockedError naming the holder; `release()` when the run ends."""

    def __init__(self, run_dir: str | os.PathLike):
        self.path = Path(run_dir) / LOCK_NAME
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                os.close(fd)
                logger.warning("cannot lock %s (%s): two runs in this directory would not be told apart",
                               self.path, err)
                return self
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "unknown holder"
            os.close(fd)
            raise RunDirLockedError(
                f"run directory {self.path.parent} is in use by a live run ({_describe(holder)}); wait for it "
                "to finish, stop it (scancel JOB / kill PID), or choose another run_dir") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder_facts()) + "\n").encode(), 0)
        os.fsync(fd)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing releases the record lock
            self._fd = None


def _describe(holder: str) -> str:
    try:
        facts = json.loads(holder)
    except json.JSONDecodeError:
        return holder
    words = [f"host {facts.get('host')}", f"pid {facts.get('pid')}"]
    if facts.get("slurm_job"):
        words.append(f"Slurm job {facts['slurm_job']}")
    words.append(f"started {facts.get('started')}")
    return ", ".join(words)
