"""Which global sample indices a data-parallel rank reads, from ``consumed_samples`` alone.

Megatron's ``MegatronPretrainingSampler`` idea, in the layout the trainer's ``data_feed`` uses: the
global batch starting at ``consumed`` is samples ``[consumed, consumed + global_batch_size)``; data-
parallel rank r takes the contiguous slice ``[consumed + r*g/dp, consumed + (r+1)*g/dp)`` and cuts it
into micro-batches of ``micro_batch_size``. The order of samples is the dataset's (seeded by seed and
epoch in `dataset.py`), so the only state is ``consumed_samples``: save it with the checkpoint and a
resumed run reads exactly the samples the uninterrupted run would have read.

The sampler's own count advances when a whole global batch has been *handed out*. With a prefetching
DataLoader it runs ahead of training, so checkpoint the trainer's count (``steps * global_batch_size``)
or call `state_dict` on a sampler that is only iterated in step (as ``data_feed`` does).
"""

from __future__ import annotations

from typing import Iterator


class PretrainingSampler:
    """Yields this rank's micro-batches (lists of dataset indices), global batch after global batch."""

    def __init__(self, total_samples: int, consumed_samples: int, micro_batch_size: int, global_batch_size: int,
                 dp_rank: int, dp_size: int, wrap: bool = False):
        if total_samples <= 0:
            raise ValueError(f"the dataset has no samples ({total_samples}); check the data sources")
        if micro_batch_size <= 0 or dp_size <= 0 or not 0 <= dp_rank < dp_size:
            raise ValueError(f"bad sampler layout: micro_batch_size={micro_batch_size}, dp_rank={dp_rank}, "
                             f"dp_size={dp_size}")
        if global_batch_size % (micro_batch_size * dp_size):
            raise ValueError(f"global_batch_size {global_batch_size} is not a multiple of micro_batch_size "
                             f"{micro_batch_size} x data-parallel size {dp_size}")
        if consumed_samples < 0 or consumed_samples % global_batch_size:
            raise ValueError(f"consumed_samples {consumed_samples} is not a multiple of global_batch_size "
                             f"{global_batch_size}; the checkpoint was written with another batch size")
        self.total_samples, self.consumed_samples = total_samples, consumed_samples
        self.micro_batch_size, self.global_batch_size = micro_batch_size, global_batch_size
        self.dp_rank, self.dp_size, self.wrap = dp_rank, dp_size, wrap

    def global_batch(self, consumed: int) -> list[list[int]]:
        """This rank's micro-batches of the global batch that starts at `consumed`."""
        per_rank = self.global_batch_size // self.dp_size
        start = consumed + self.dp_rank * per_rank
        if not self.wrap and consumed + self.global_batch_size > self.total_samples:
            raise IndexError(f"global batch at {consumed} needs samples up to {consumed + self.global_batch_size} "
                             f"but the dataset has {self.total_samples}; build it with more train samples")
        idx = [(start + i) % self.total_samples for i in range(per_rank)]
        return [idx[i:i + self.micro_batch_size] for i in range(0, per_rank, self.micro_batch_size)]

    def __iter__(self) -> Iterator[list[int]]:
        while self.wrap or self.consumed_samples + self.global_batch_size <= self.total_samples:
            batch = self.global_batch(self.consumed_samples)
            for i, micro in enumerate(batch):
                if i == len(batch) - 1:
                    self.consumed_samples += self.global_batch_size
                yield micro

    def __len__(self) -> int:
        """Micro-batches left for this rank (without wrap)."""
        steps = (self.total_samples - self.consumed_samples) // self.global_batch_size
        return steps * self.global_batch_size // (self.micro_batch_size * self.dp_size)

    def state_dict(self) -> dict[str, int]:
        return {"consumed_samples": int(self.consumed_samples)}

    def load_state_dict(self, state: dict) -> None:
        consumed = int(state["consumed_samples"])
        if consumed % self.global_batch_size:
            raise ValueError(f"checkpointed consumed_samples {consumed} is not a multiple of global_batch_size "
                             f"{self.global_batch_size}")
        self.consumed_samples = consumed
