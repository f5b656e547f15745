"""The run directory lock: a live holder refuses a second run and is named; the lock dies with its
holder, even when the holder forked children that outlive it (megatron-core's checkpoint writers)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest

from megatron_emu3.training.run_lock import RunDirLockedError, RunLock

HOLDER = """
import os, sys, time
from megatron_emu3.training.run_lock import RunLock
RunLock(sys.argv[1]).acquire()
child = os.fork()
if child == 0:  # what a forked checkpoint writer is: a child sharing the holder's open files
    time.sleep(120)
    os._exit(0)
print(child, flush=True)
time.sleep(120)
"""


def test_lock_is_refused_while_held_and_freed_when_the_holder_dies_despite_its_children(tmp_path):
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    child = int(holder.stdout.readline())
    try:
        with pytest.raises(RunDirLockedError, match=rf"in use by a live run \(host \S+, pid {holder.pid}, started "):
            RunLock(tmp_path).acquire()
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=30)
        os.kill(child, 0)  # the forked child outlives the holder (it shares the lock file's descriptor)
        lock = RunLock(tmp_path).acquire()  # ...and does not keep the directory locked
        assert f'"pid": {os.getpid()}' in (tmp_path / ".run.lock").read_text()
        lock.release()
        assert (tmp_path / ".run.lock").read_text() == ""
        RunLock(tmp_path).acquire().release()  # a released lock is free again
    finally:
        for pid in (holder.pid, child):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
