"""Which global sample indices a data-parallel rank reads, from ``consumed_samples`` alone.

Megatron's ``MegatronPretrainingSampler`` idea, without state of its own: the global batch starting at
``consumed`` is samples ``[consumed, consumed + global_batch_size)``; data-parallel rank r takes the
contiguous slice ``[consumed + r*g/dp, consumed + (r+1)*g/dp)`` and cuts it into micro-batches of
``micro_batch_size``. The order of samples is the dataset's (seeded by seed and epoch), so the only
state is the trainer's ``consumed_samples``, saved in checkpoints: a resumed run reads exactly the
samples the uninterrupted run would have read, and every layout reads the same global batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional


@dataclass(frozen=True)
class BatchSampler:
    """This rank's micro-batches (lists of dataset indices) of any global batch."""

    total_samples: Optional[int]
    """Samples the dataset holds; None for a source without end (DPO's epochs of records)."""
    micro_batch_size: int
    global_batch_size: int
    dp_rank: int
    dp_size: int

    def __post_init__(self):
        if self.total_samples is not None and self.total_samples <= 0:
            raise ValueError(f"the dataset has no samples ({self.total_samples}); check the data sources")
        if self.micro_batch_size <= 0 or self.dp_size <= 0 or not 0 <= self.dp_rank < self.dp_size:
            raise ValueError(f"bad sampler layout: micro_batch_size={self.micro_batch_size}, "
                             f"dp_rank={self.dp_rank}, dp_size={self.dp_size}")
        if self.global_batch_size % (self.micro_batch_size * self.dp_size):
            raise ValueError(f"global_batch_size {self.global_batch_size} is not a multiple of micro_batch_size "
                             f"{self.micro_batch_size} x data-parallel size {self.dp_size}")

    def micro_batches(self, consumed: int) -> list[list[int]]:
        """This rank's micro-batches of the global batch that starts at sample `consumed`."""
        if consumed < 0 or consumed % self.global_batch_size:
            raise ValueError(f"consumed_samples {consumed} is not a multiple of global_batch_size "
                             f"{self.global_batch_size}; the checkpoint was written with another batch size")
        if self.total_samples is not None and consumed + self.global_batch_size > self.total_samples:
            raise IndexError(f"global batch at {consumed} needs samples up to {consumed + self.global_batch_size} "
                             f"but the dataset has {self.total_samples}; build it with more train samples")
        per_rank = self.global_batch_size // self.dp_size
        start = consumed + self.dp_rank * per_rank
        return [list(range(i, min(i + self.micro_batch_size, start + per_rank)))
                for i in range(start, start + per_rank, self.micro_batch_size)]
