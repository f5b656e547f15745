"""Transformer layer specs: Transformer Engine on GPU when installed, our local spec otherwise.

The local spec is megatron-core's own layer (SelfAttention + MLP with tensor-parallel linears)
with two modules swapped in: `SDPACoreAttention` (document masks, GQA without K/V copies, no
CUDA-only mask) and `RMSNorm` (supports sequence parallelism). Transformer Engine is imported
lazily; `te_available()` says whether the TE spec can be used and why not.
"""

from __future__ import annotations

import importlib.util
import logging
from dataclasses import dataclass

import torch
from megatron.core.fusions.fused_bias_dropout import get_bias_dropout_add
from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
from megatron.core.transformer.attention import SelfAttention, SelfAttentionSubmodules
from megatron.core.transformer.enums import AttnMaskType
from megatron.core.transformer.identity_op import IdentityOp
from megatron.core.transformer.mlp import MLP, MLPSubmodules
from megatron.core.transformer.spec_utils import ModuleSpec
from megatron.core.transformer.transformer_block import TransformerBlockSubmodules
from megatron.core.transformer.transformer_layer import TransformerLayer, TransformerLayerSubmodules

from megatron_emu3.model.attention import SDPACoreAttention
from megatron_emu3.model.flash_attention import (FlashVarlenCoreAttention, TorchVarlenCoreAttention, flash_available,
                                                 torch_varlen_available)
from megatron_emu3.model.ring_attention import RingCoreAttention
from megatron_emu3.model.norm import RMSNorm

logger = logging.getLogger(__name__)


TE_CHECKPOINT_KEYS = {"input_layernorm.": "self_attention.linear_qkv.layer_norm_",
                      "pre_mlp_layernorm.": "mlp.linear_fc1.layer_norm_"}


def te_available() -> tuple[bool, str]:
    """(usable, reason): TE needs CUDA and the transformer_engine package (the `[gpu]` extra)."""
    if not torch.cuda.is_available():
        return False, "no CUDA device"
    if importlib.util.find_spec("transformer_engine") is None:
        return False, "transformer_engine is not installed (pip install 'megatron-emu3[gpu]' or use an NGC image)"
    return True, "transformer_engine found"


def local_layer_spec(core_attention=SDPACoreAttention, qk_layernorm: bool = False) -> ModuleSpec:
    """megatron-core TransformerLayer built from local (non-TE) modules; with `qk_layernorm` every query
    and key head is RMS-normalised (our RMSNorm over head_dim; megatron-core all-reduces its gradient over
    tensor-parallel ranks, which hold different heads, when TransformerConfig.qk_layernorm is set)."""
    qk_norm = RMSNorm if qk_layernorm else IdentityOp
    return ModuleSpec(
        module=TransformerLayer,
        submodules=TransformerLayerSubmodules(
            input_layernorm=RMSNorm,
            self_attention=ModuleSpec(
                module=SelfAttention,
                params={"attn_mask_type": AttnMaskType.causal},
                submodules=SelfAttentionSubmodules(
                    linear_qkv=ColumnParallelLinear,
                    core_attention=core_attention,
                    linear_proj=RowParallelLinear,
                    q_layernorm=qk_norm,
                    k_layernorm=qk_norm,
                ),
            ),
            self_attn_bda=get_bias_dropout_add,
            pre_mlp_layernorm=RMSNorm,
            mlp=ModuleSpec(
                module=MLP,
                submodules=MLPSubmodules(linear_fc1=ColumnParallelLinear, linear_fc2=RowParallelLinear),
            ),
            mlp_bda=get_bias_dropout_add,
            # Checkpoints use Transformer Engine's names (its norms live inside the fused linears), so
            # a checkpoint moves between TE (GPU) and local (CPU) runs, as megatron-core's local spec does.
            sharded_state_dict_keys_map=TE_CHECKPOINT_KEYS,
        ),
    )


def te_layer_spec(qk_layernorm: bool = False) -> ModuleSpec:
    """megatron-core's Transformer Engine spec (fused norm+linear, TE fused attention, TE q/k norms)."""
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_with_transformer_engine_spec

    return get_gpt_layer_with_transformer_engine_spec(qk_layernorm=qk_layernorm)


def local_block_spec(num_layers: int, core_attention=SDPACoreAttention,
                     qk_layernorm: bool = False) -> TransformerBlockSubmodules:
    """All layers local, and the final norm our RMSNorm too (megatron-core would pick its torch norm)."""
    return TransformerBlockSubmodules(layer_specs=[local_layer_spec(core_attention, qk_layernorm)] * num_layers,
                                      layer_norm=RMSNorm)


@dataclass(frozen=True)
class DecoderChoice:
    """The decoder spec picked for a run, why, and the input format its attention wants."""

    spec: ModuleSpec | TransformerBlockSubmodules
    why: str
    input_format: str  # mask | segments | thd (see batch/inputs.py)


def decoder_spec(backend: str, num_layers: int, cp: int = 1, attention_dropout: float = 0.0,
                 qk_layernorm: bool = False) -> DecoderChoice:
    """The decoder for attention backend `backend` (auto | te | flash | varlen | sdpa).

    auto: Transformer Engine when usable (fused attention, its own context parallelism); else with
    cp == 1 flash-attn varlen, then torch's built-in varlen kernel (only without attention dropout,
    which it lacks), then torch SDPA with a document mask; without Transformer Engine, context
    parallelism (cp > 1) uses our ring attention. `qk_layernorm` adds the per-head q/k RMSNorm to
    every choice.
    """
    te_ok, te_reason = te_available()
    flash_ok, flash_reason = flash_available()
    varlen_ok, varlen_reason = torch_varlen_available()
    if backend == "te" and not te_ok:
        raise RuntimeError(f"parallel.attention_backend=te but Transformer Engine cannot be used: {te_reason}")
    if backend == "flash" and not flash_ok:
        raise RuntimeError(f"parallel.attention_backend=flash but flash-attn cannot be used: {flash_reason}")
    if backend == "varlen" and not varlen_ok:
        raise RuntimeError(f"parallel.attention_backend=varlen but torch's varlen attention cannot be used: {varlen_reason}")
    if backend in ("flash", "varlen") and cp > 1:
        raise RuntimeError(f"parallel.attention_backend={backend} has no context parallelism; use te, or sdpa (ring attention)")
    if backend == "te" or (backend == "auto" and te_ok):
        return DecoderChoice(te_layer_spec(qk_layernorm), f"Transformer Engine layer spec ({te_reason})", "thd")
    if cp > 1:
        why = "requested" if backend == "sdpa" else f"auto: Transformer Engine unusable, {te_reason}"
        return DecoderChoice(local_block_spec(num_layers, RingCoreAttention, qk_layernorm),
                             f"local layer spec with ring attention over context parallel {cp} ({why})", "segments")
    if backend == "flash" or (backend == "auto" and flash_ok):
        why = "requested" if backend == "flash" else f"auto: Transformer Engine unusable ({te_reason}), {flash_reason}"
        return DecoderChoice(local_block_spec(num_layers, FlashVarlenCoreAttention, qk_layernorm),
                             f"local layer spec with flash-attn varlen attention ({why})", "segments")
    if backend == "varlen" or (backend == "auto" and varlen_ok and attention_dropout == 0):
        why = ("requested" if backend == "varlen" else
               f"auto: Transformer Engine unusable ({te_reason}), flash-attn: {flash_reason}, {varlen_reason}")
        return DecoderChoice(local_block_spec(num_layers, TorchVarlenCoreAttention, qk_layernorm),
                             f"local layer spec with torch varlen attention ({why})", "segments")
    why = "requested" if backend == "sdpa" else f"auto: {te_reason}; flash-attn: {flash_reason}; torch varlen: " + (
        f"no attention dropout (model.attention_dropout={attention_dropout})" if varlen_ok else varlen_reason)
    return DecoderChoice(local_block_spec(num_layers, qk_layernorm=qk_layernorm), f"local layer spec with torch SDPA attention ({why})", "mask")
