"""One optimizer step of any task, on megatron-core's forward-backward schedule.

`get_forward_backward_func()` runs the micro-batches (forward, the task's loss, backward; with
pipeline parallelism the 1F1B or interleaved schedule), accumulating gradients with the last
micro-batch's reduction overlapped when `parallel.overlap_grad_reduce`. The task's loss is already the
micro-batch's exact share of the global loss (see `task.py`), so the schedule must not rescale it:
`calculate_per_token_loss=True` (`config/to_mcore.py`) keeps it as returned, and the step finalises
gradients itself instead of handing the schedule a token count to divide by (`parallel/ddp.py`).
"""

from __future__ import annotations

from typing import Sequence

import torch
from megatron.core.distributed import finalize_model_grads
from megatron.core.pipeline_parallel import get_forward_backward_func

from megatron_emu3.parallel.context import ParallelContext
from megatron_emu3.training.task import Task


def forward_backward(chunks, task: Task, micro_batches: Sequence[dict[str, torch.Tensor]], ctx: ParallelContext,
                     forward_only: bool = False) -> torch.Tensor:
    """Run every micro-batch through the model chunks (and backward unless `forward_only`); returns the
    task's global sums. `chunks`: this rank's wrapped model chunks (a single model is one chunk).

    Every pipeline stage reads the same micro-batches (the first needs the tokens, the last the labels
    and loss weights; the normalisers come from the data on every rank); under interleaving each
    virtual stage walks them in order with its own iterator, as the schedule asks."""
    chunks = list(chunks) if isinstance(chunks, (list, tuple)) else [chunks]
    normalisers = ctx.sum_over_dp_cp(task.normalisers(micro_batches).to(ctx.device))
    task.check_normalisers(normalisers)

    def forward_step(data_iterator, model_chunk):
        batch = next(data_iterator)
        output, extra = task.forward(model_chunk, batch)

        def loss_func(output_tensor):
            share, sums = task.loss(batch, output_tensor, extra, normalisers)
            return share, torch.ones((), dtype=torch.int), sums

        return output, loss_func

    shape = micro_batches[0]["tokens"].shape  # this CP rank's part: the schedule wants the whole length
    iterators = [iter(micro_batches) for _ in chunks]
    outputs = get_forward_backward_func()(
        forward_step_func=forward_step, data_iterator=iterators if len(chunks) > 1 else iterators[0],
        model=chunks, num_microbatches=len(micro_batches), seq_length=shape[-1] * ctx.cp_size,
        micro_batch_size=shape[0], forward_only=forward_only)
    total = torch.zeros(len(task.stat_keys), dtype=torch.float64, device=ctx.device)
    for sums in outputs:  # one entry per micro-batch on the last pipeline stage, none elsewhere
        total += sums
    return ctx.sum_over_pp(ctx.sum_over_dp_cp(total))


def train_step(chunks, optimizer, task: Task, micro_batches: Sequence[dict[str, torch.Tensor]],
               ctx: ParallelContext) -> dict:
    """One optimizer step; returns the task's metrics plus grad norm (and a skipped update)."""
    chunks = list(chunks) if isinstance(chunks, (list, tuple)) else [chunks]
    for chunk in chunks:
        chunk.zero_grad_buffer()
    optimizer.zero_grad()
    result = task.metrics(forward_backward(chunks, task, micro_batches, ctx))
    finalize_model_grads(chunks)
    update_ok, grad_norm, _ = optimizer.step()
    result["grad_norm"] = float(grad_norm) if grad_norm is not None else None
    if not update_ok:
        result["skipped_update"] = True
    return result


@torch.no_grad()
def eval_step(chunks, task: Task, micro_batches: Sequence[dict[str, torch.Tensor]], ctx: ParallelContext) -> dict:
    """The task's metrics on held-out micro-batches (same normalisation as training, no update)."""
    return task.metrics(forward_backward(chunks, task, micro_batches, ctx, forward_only=True))
