"""VQ training checkpoints: one `torch.save` of every state dict by rank 0, published atomically with
`checkpoint.layout` (iter_NNNNNNN.partial -> iter_NNNNNNN -> `latest`, keep-last-N).

Data parallel ranks hold identical weights and optimizer states (gradients are averaged before
every step), so rank 0's copy is the whole state; every rank loads it on resume. The data position
is the step itself (samples are a function of the step, see `vq.data`).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch
import torch.distributed as dist

from megatron_emu3.checkpoint import layout

logger = logging.getLogger(__name__)

STATE_FILE = "state.pt"
FORMAT = "megatron_emu3.vq/1"


def save(ckpt_dir: Path, step: int, state: dict, rank: int, keep_last: int) -> None:
    """Every rank calls this; rank 0 writes and publishes."""
    if rank == 0:
        partial = layout.partial_dir(ckpt_dir, step)
        partial.mkdir(parents=True, exist_ok=True)
        torch.save(state, partial / STATE_FILE)
        (partial / layout.METADATA).write_text(json.dumps({"format": FORMAT, "step": step}) + "\n")
        final = layout.commit(ckpt_dir, step, keep_last)
        logger.info("saved checkpoint %s", final)
    if dist.is_initialized():
        dist.barrier()


def load_latest(ckpt_dir: Path) -> tuple[int, dict] | None:
    """(step, state) of the newest complete checkpoint, or None for a fresh start."""
    found = layout.find_latest(ckpt_dir)
    if found is None:
        return None
    meta = json.loads((found / layout.METADATA).read_text())
    if meta.get("format") != FORMAT:
        raise ValueError(f"{found} is not a VQ training checkpoint (format {meta.get('format')!r}); "
                         "give this run its own run_dir")
    state = torch.load(found / STATE_FILE, map_location="cpu", weights_only=False)
    return layout.step_of(found), state


def rng_state() -> dict:
    out = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
