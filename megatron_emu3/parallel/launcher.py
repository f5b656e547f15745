"""Ranks die with their launcher: a rank started by torchrun exits when the torchrun agent dies.

torchrun's workers run in process groups of their own, so a SIGKILL of the launcher alone leaves
them training (and writing checkpoints into a run directory that a relaunch then races with). On
Linux, `prctl(PR_SET_PDEATHSIG)` asks the kernel to SIGKILL the rank as soon as its parent is gone.
Only under torchrun: a plain `python -m ...` run must survive its shell (nohup, tmux, screen).
"""

from __future__ import annotations

import ctypes
import logging
import os
import signal
import sys

logger = logging.getLogger(__name__)

PR_SET_PDEATHSIG = 1


def under_torchrun(environ=os.environ) -> bool:
    return "TORCHELASTIC_RUN_ID" in environ


def exit_with_launcher(environ=os.environ) -> bool:
    """Arrange for this process to be killed when its launcher (torchrun) dies; True when armed."""
    if not under_torchrun(environ):
        return False
    return die_with_parent()


def die_with_parent() -> bool:
    """Ask the kernel to SIGKILL this process when its parent dies (Linux); True when armed. Also
    used by the tests' rank pools, whose ranks must not outlive their pytest worker."""
    if not sys.platform.startswith("linux"):
        return False
    parent = os.getppid()
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0:
        logger.warning("prctl(PR_SET_PDEATHSIG) failed (errno %d): this process will outlive its parent",
                       ctypes.get_errno())
        return False
    if os.getppid() != parent or parent == 1:  # the parent died before the request took effect
        os.kill(os.getpid(), signal.SIGKILL)
    return True
