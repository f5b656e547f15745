"""Stop cleanly on SIGUSR1 (Slurm's warning before the time limit) or SIGTERM (preemption).

The handler only sets a flag; the trainer checks it after each step, agreeing across ranks (a max
all-reduce), then saves a checkpoint and exits with code 0.
"""

from __future__ import annotations

import logging
import signal

import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGUSR1, signal.SIGTERM)


class StopFlag:
    """Set by a stop signal; `agreed()` is True on every rank once any rank received one."""

    def __init__(self):
        self.received: int | None = None
        self._previous = {}

    def install(self) -> "StopFlag":
        for sig in STOP_SIGNALS:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def uninstall(self) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum, frame) -> None:
        self.received = signum
        logger.warning("received %s: will save a checkpoint after this step and exit", signal.Signals(signum).name)

    def agreed(self, device: torch.device) -> bool:
        flag = torch.tensor([1 if self.received else 0], dtype=torch.int32, device=device)
        if dist.is_initialized():
            dist.all_reduce(flag, op=dist.ReduceOp.MAX)
        return bool(flag.item())
