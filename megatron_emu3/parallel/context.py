"""The parallel context of one rank: where it sits in every parallel dimension, and its groups.

Built once, after megatron-core's model-parallel groups exist (`parallel/setup.py::init_distributed`),
and passed explicitly to the data feed, the training step, DPO, checkpoints and generation (nanotron's
habit). Outside `parallel/` and the model build nothing reads megatron-core's `parallel_state`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class ParallelContext:
    """Ranks, sizes and process groups of this process (data parallel = world / (tp x cp x pp))."""

    rank: int
    world_size: int
    local_rank: int
    tp_rank: int = 0
    tp_size: int = 1
    cp_rank: int = 0
    cp_size: int = 1
    dp_rank: int = 0
    dp_size: int = 1
    pp_rank: int = 0
    pp_size: int = 1
    tp_group: Optional[Any] = None
    cp_group: Optional[Any] = None
    dp_group: Optional[Any] = None
    dp_cp_group: Optional[Any] = None
    """Data- and context-parallel ranks together: the group over which loss sums are added up."""
    pp_group: Optional[Any] = None

    @property
    def is_first_stage(self) -> bool:
        return self.pp_rank == 0

    @property
    def is_last_stage(self) -> bool:
        return self.pp_rank == self.pp_size - 1

    @property
    def device(self) -> torch.device:
        """The GPU of this rank, or the CPU."""
        return torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")

    def sum_over_dp_cp(self, tensor: torch.Tensor) -> torch.Tensor:
        """All-reduce (sum) `tensor` in place over data- and context-parallel ranks; returns it."""
        if dist.is_initialized() and self.dp_cp_group is not None:
            dist.all_reduce(tensor, group=self.dp_cp_group)
        return tensor

    def sum_over_pp(self, tensor: torch.Tensor) -> torch.Tensor:
        """All-reduce (sum) over pipeline stages (metrics computed on the last stage only)."""
        if self.pp_size > 1:
            dist.all_reduce(tensor, group=self.pp_group)
        return tensor

    def describe(self) -> str:
        return (f"world {self.world_size} = tp {self.tp_size} x cp {self.cp_size} x pp {self.pp_size} x "
                f"dp {self.dp_size}")


def context_from_megatron(rank: int, world_size: int, local_rank: int) -> ParallelContext:
    """Read megatron-core's initialised parallel state once into a ParallelContext."""
    from megatron.core import parallel_state as ps

    return ParallelContext(
        rank=rank, world_size=world_size, local_rank=local_rank,
        tp_rank=ps.get_tensor_model_parallel_rank(), tp_size=ps.get_tensor_model_parallel_world_size(),
        cp_rank=ps.get_context_parallel_rank(), cp_size=ps.get_context_parallel_world_size(),
        dp_rank=ps.get_data_parallel_rank(), dp_size=ps.get_data_parallel_world_size(),
        pp_rank=ps.get_pipeline_model_parallel_rank(), pp_size=ps.get_pipeline_model_parallel_world_size(),
        tp_group=ps.get_tensor_model_parallel_group(), cp_group=ps.get_context_parallel_group(),
        dp_group=ps.get_data_parallel_group(), dp_cp_group=ps.get_data_parallel_group(with_context_parallel=True),
        pp_group=ps.get_pipeline_model_parallel_group(),
    )
