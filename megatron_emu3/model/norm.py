"""RMSNorm for the local (non-Transformer-Engine) layer spec.

megatron-core's ``WrappedTorchNorm`` refuses sequence parallelism. Under sequence parallelism each
tensor-parallel rank normalises a different slice of the sequence, so the norm weight's gradient is
partial per rank; megatron-core all-reduces the gradients of parameters flagged
``sequence_parallel = True`` over the TP group (as it does for TE and apex norms). This module sets
that flag, which is all the local spec needs for TP + SP.
"""

from __future__ import annotations

import torch
from megatron.core.transformer.transformer_config import TransformerConfig


class RMSNorm(torch.nn.Module):
    """y = weight * (x / rms(x)); the normalisation runs in fp32 (as transformers' Emu3RMSNorm)."""

    def __init__(self, config: TransformerConfig, hidden_size: int, eps: float = 1e-5, **unused):
        super().__init__()
        self.eps = eps
        self.weight = torch.nn.Parameter(torch.ones(hidden_size, dtype=config.params_dtype))
        self.weight.sequence_parallel = config.sequence_parallel

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        h = hidden.float()
        h = h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * h.to(hidden.dtype)
