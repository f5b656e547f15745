"""Logging set-up shared by the training entry point and the command-line tools."""

from __future__ import annotations

import logging
import os
import warnings

# megatron-core warns at import that fused kernels are missing; on CPU that is expected.
LIBRARY_NOISE = ("Transformer Engine and Apex are not installed", "Apex is not installed")


def configure_logging(rank: int = 0, fmt: str = "%(asctime)s %(levelname)s %(name)s: %(message)s") -> None:
    """INFO on rank 0 (other ranks: their place in the job, then warnings), megatron-core quieter."""
    logging.basicConfig(level=logging.INFO, format=fmt)
    logging.getLogger("megatron.core").setLevel(logging.WARNING)
    logging.getLogger("megatron.core.rerun_state_machine").setLevel(logging.ERROR)  # "implicit init" notice
    if rank != 0:
        logging.getLogger().setLevel(logging.WARNING)
        logging.getLogger("megatron_emu3.parallel.setup").setLevel(logging.INFO)
    quiet_library_warnings()
    warnings.filterwarnings("ignore", category=FutureWarning)


def quiet_library_warnings() -> None:
    """Silence megatron-core's import-time warnings (missing fused kernels: expected on CPU), here and
    in the processes this one starts (checkpoint writers, preprocessing workers read the env)."""
    os.environ["PYTHONWARNINGS"] = ",".join(f"ignore:{m}:UserWarning" for m in LIBRARY_NOISE)
    for message in LIBRARY_NOISE:
        warnings.filterwarnings("ignore", message=f".*{message}.*")
    warnings.filterwarnings("ignore", category=UserWarning, module="megatron.core")
