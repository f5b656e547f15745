"""Initial weights that depend on the seed and the parameter's name only, never on the layout.

Every parameter is drawn as its full (TP=1, one-stage) tensor from a generator seeded by
(seed, full-layout name), and this rank keeps its tensor-parallel shard of it. So a seed builds the
same model under any tensor, pipeline, context or data-parallel layout (megatron-core's own
initialisation draws per TP rank on GPU and in stage order under pipeline parallelism). The draw
uses a generator of the parameter's own device, and CUDA's generator gives other numbers than the
CPU's for the same seed: a seed gives one model on every GPU layout and one on every CPU layout,
but not the same model on both (drawing on the CPU and moving would make them equal, at the cost of
generating all 8B values on the CPU at every start). To compare a GPU run with a CPU run, start both
from the same weights (`checkpoint.load_weights_from`, or a full state as the tests do).
The distributions are megatron-core's: normal(0, init_std) for the embedding, QKV, fc1 and output
layer, normal(0, init_std / sqrt(2 x layers)) for the attention output and fc2, ones for norms.
Tensors are drawn one at a time on the parameter's device (the largest, the embedding, is the only
full-size transient).
"""

from __future__ import annotations

import hashlib
import math
import re

import torch

from megatron_emu3.model.full_state import full_names, shard_full_tensor, split_dim

_NORM = re.compile(r"(norm|layer_norm)[^.]*\.weight$")
_SCALED = re.compile(r"(linear_proj|linear_fc2)\.weight$")


def name_seed(seed: int, name: str) -> int:
    """A 63-bit seed for the tensor `name` of a run seeded with `seed`."""
    return int.from_bytes(hashlib.sha256(f"{seed}:{name}".encode()).digest()[:8], "little") >> 1


@torch.no_grad()
def initialize_parameters(model: torch.nn.Module, seed: int, init_std: float, num_layers: int,
                          tp_rank: int, tp_size: int) -> None:
    """Draw every parameter of `model` (one chunk, unwrapped) from its full-layout tensor."""
    for name, param in full_names(model).items():
        if _NORM.search(name):
            param.fill_(1.0)
            continue
        if name.endswith(".bias"):
            param.zero_()
            continue
        std = init_std / math.sqrt(2.0 * num_layers) if _SCALED.search(name) else init_std
        shape = list(param.shape)
        dim = split_dim(name)
        if dim is not None:
            shape[dim] *= tp_size
        generator = torch.Generator(device=param.device).manual_seed(name_seed(seed, name))
        full = torch.empty(shape, dtype=torch.float32, device=param.device).normal_(0.0, std, generator=generator)
        param.copy_(shard_full_tensor(name, full, tp_rank, tp_size).to(param.dtype))
