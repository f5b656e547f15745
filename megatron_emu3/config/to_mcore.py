"""The only module that knows megatron-core's config classes: our `Config` -> theirs.

`transformer_config`, `ddp_config` and `optimizer_config` translate the resolved tree; nothing else
in the project constructs a megatron-core config object.
"""

from __future__ import annotations

import importlib.util

import torch
import torch.nn.functional as F
from megatron.core.distributed import DistributedDataParallelConfig
from megatron.core.optimizer import OptimizerConfig as McoreOptimizerConfig
from megatron.core.transformer import TransformerConfig

from megatron_emu3.config.schema import Config, head_dim


def _installed(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def uses_bf16(cfg: Config) -> bool:
    """precision=auto means bf16 on GPU and fp32 on CPU."""
    if cfg.train.precision == "auto":
        return torch.cuda.is_available()
    return cfg.train.precision == "bf16"


def fused_kernels_on(cfg: Config) -> bool:
    """train.fused_kernels resolved: auto means on with CUDA (torch.compile'd fusions), off on CPU."""
    return cfg.train.fused_kernels == "fused" or (cfg.train.fused_kernels == "auto" and torch.cuda.is_available())


def transformer_config(cfg: Config) -> TransformerConfig:
    """Model + parallel sections -> megatron-core TransformerConfig (Emu3: Llama-style blocks)."""
    m, p = cfg.model, cfg.parallel
    bf16 = uses_bf16(cfg)
    on_gpu = torch.cuda.is_available()
    fused = fused_kernels_on(cfg)
    recompute = {}
    if p.recompute == "selective":
        recompute = dict(recompute_granularity="selective", recompute_modules=["core_attn"])
    elif p.recompute == "full":
        recompute = dict(recompute_granularity="full", recompute_method="uniform",
                         recompute_num_layers=p.recompute_num_layers)
    return TransformerConfig(
        num_layers=m.num_layers,
        hidden_size=m.hidden_size,
        ffn_hidden_size=m.ffn_hidden_size,
        num_attention_heads=m.num_attention_heads,
        num_query_groups=m.num_query_groups,
        kv_channels=head_dim(m),
        qk_layernorm=m.qk_layernorm,
        normalization="RMSNorm",
        layernorm_epsilon=m.norm_eps,
        gated_linear_unit=True,
        activation_func=F.silu,
        add_bias_linear=False,
        add_qkv_bias=False,
        hidden_dropout=m.hidden_dropout,
        attention_dropout=m.attention_dropout,
        init_method_std=m.init_std,
        tensor_model_parallel_size=p.tp,
        context_parallel_size=p.cp,
        # Transformer Engine's CP over packed (THD) documents exists only as a KV ring (p2p); its
        # all-gather and all-to-all variants do not take THD, and without THD document masks are lost.
        cp_comm_type="p2p",
        pipeline_model_parallel_size=p.pp,
        virtual_pipeline_model_parallel_size=p.vpp,
        num_layers_in_first_pipeline_stage=p.first_stage_layers,
        num_layers_in_last_pipeline_stage=p.last_stage_layers,
        pipeline_dtype=torch.bfloat16 if bf16 else torch.float32,
        # Interleaved stages overlap their send/recv with compute (Megatron-LM's default), which uses
        # ordered point-to-point ops rather than one batched call: with pp = 2 the next and the
        # previous stage are the same rank, and only the ordered form pairs activations with
        # activations and gradients with gradients on every backend (gloo included).
        overlap_p2p_comm=p.vpp is not None,
        batch_p2p_comm=p.vpp is None,
        sequence_parallel=p.sequence_parallel,
        bf16=bf16,
        params_dtype=torch.bfloat16 if bf16 else torch.float32,
        # Per-token loss: DDP sums gradients over data-parallel ranks (no 1/dp scaling); the
        # trainer divides by the global loss-weight sum itself (see training/step.py).
        calculate_per_token_loss=True,
        # torch.compile'd fusions (megatron-core's jit_fuser), numerically the unfused ops.
        bias_activation_fusion=fused,
        bias_dropout_fusion=fused,
        # Kernel fusions from Transformer Engine (RoPE, incl. its THD + CP form) and apex (weight
        # gradient accumulated straight into main_grad) when those are installed, as Megatron-LM.
        apply_rope_fusion=fused and on_gpu and _installed("transformer_engine"),
        gradient_accumulation_fusion=fused and on_gpu and _installed("fused_weight_gradient_mlp_cuda"),
        # Off: our attention modules never use megatron's masked softmax, and megatron-core
        # 0.16.1's native fused cross entropy hard-codes a bf16 logits gradient (wrong in fp32
        # runs; no gain over the unfused one in bf16).
        masked_softmax_fusion=False,
        persist_layer_norm=False,
        cross_entropy_loss_fusion=False,
        # megatron-core still initialises (its init also marks tensor-parallel attributes on the
        # weights); model/init.py then overwrites every value with the layout-independent draw.
        use_cpu_initialization=not on_gpu,
        **recompute,
    )


def overlap_param_gather(cfg: Config) -> bool:
    """Parameter all-gathers overlap the next forward (only the distributed optimizer gathers)."""
    return cfg.parallel.overlap_param_gather and cfg.parallel.distributed_optimizer


def ddp_config(cfg: Config) -> DistributedDataParallelConfig:
    """Data-parallel wrapper settings: fp32 gradient reduction, optional distributed optimizer."""
    return DistributedDataParallelConfig(
        grad_reduce_in_fp32=True,
        overlap_grad_reduce=cfg.parallel.overlap_grad_reduce,
        overlap_param_gather=overlap_param_gather(cfg),
        use_distributed_optimizer=cfg.parallel.distributed_optimizer,
        check_for_nan_in_grad=True,
        bucket_size=None,
    )


def optimizer_config(cfg: Config) -> McoreOptimizerConfig:
    """Adam with fp32 master weights when training in bf16."""
    o = cfg.optimizer
    bf16 = uses_bf16(cfg)
    return McoreOptimizerConfig(
        optimizer="adam",
        lr=o.lr,
        min_lr=o.min_lr,
        weight_decay=o.weight_decay,
        adam_beta1=o.adam_beta1,
        adam_beta2=o.adam_beta2,
        adam_eps=o.adam_eps,
        clip_grad=o.clip_grad,
        bf16=bf16,
        params_dtype=torch.bfloat16 if bf16 else torch.float32,
        use_distributed_optimizer=cfg.parallel.distributed_optimizer,
        overlap_param_gather=overlap_param_gather(cfg),
    )
