"""The one configuration tree: every setting of a run, with a one-line docstring per field.

Resolution order (see `loading.py`): dataclass defaults < model preset < YAML recipe (with
``base:`` inheritance) < ``key=value`` overrides. Unknown keys are errors. `validation.py` checks
combinations; `to_mcore.py` is the only module that knows megatron-core's config classes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

# The allowed values of every choice field, in one place (validation and the modules that act on a
# choice read them from here).
DATA_SOURCES = ("synthetic", "shards")
LOSS_POLICIES = ("pretrain", "qft")
OVERSIZE_POLICIES = ("skip", "error")
ATTENTION_BACKENDS = ("auto", "sdpa", "te", "flash", "varlen")
RECOMPUTE_MODES = ("none", "selective", "full")
PRECISIONS = ("auto", "bf16", "fp32")
FUSED_KERNELS = ("auto", "fused", "unfused")
DECAY_STYLES = ("cosine", "linear", "constant")


def head_dim(m: "ModelConfig") -> int:
    """Width of one attention head: model.head_dim, else hidden_size / num_attention_heads."""
    return m.head_dim or m.hidden_size // m.num_attention_heads


def path_field(default=None, **kwargs):
    """A field holding a filesystem path: ``${VARS}`` are expanded when the config is resolved."""
    return field(default=default, metadata={"path": True}, **kwargs)


@dataclass
class ModelConfig:
    """Architecture of the decoder-only transformer."""

    num_layers: int = 2
    """Number of transformer layers."""
    hidden_size: int = 64
    """Model width."""
    ffn_hidden_size: int = 128
    """Inner width of the SwiGLU MLP (gate and up projections each)."""
    num_attention_heads: int = 4
    """Query heads."""
    num_query_groups: int = 2
    """Key/value heads (GQA groups); must divide num_attention_heads."""
    vocab_size: int = 184_622
    """Real vocabulary size (before padding); the Emu3 tokenizer has 184,622 ids."""
    make_vocab_size_divisible_by: int = 128
    """Embedding rows are padded to a multiple of this times lcm(8, tensor-parallel size): the same
    rows under any TP up to 8; the padding rows' logits are masked (model/build.py)."""
    rope_base: int = 1_000_000
    """RoPE base frequency (theta)."""
    norm_eps: float = 1e-5
    """RMSNorm epsilon."""
    hidden_dropout: float = 0.1
    """Dropout after attention and MLP, and on the embeddings (megatron-core applies it there too)."""
    attention_dropout: float = 0.1
    """Dropout on attention probabilities."""
    init_std: float = 0.02
    """Standard deviation of the normal weight initialisation."""
    untie_embeddings: bool = True
    """Separate input embedding and output projection (Emu3 does not tie them)."""
    head_dim: Optional[int] = None
    """Width of one attention head (megatron-core's kv_channels); None = hidden_size / num_attention_heads.
    Emu3.5 uses 128 with hidden 5120 and 64 heads (query width 8192 != hidden)."""
    qk_layernorm: bool = False
    """RMSNorm of every query and key head (over head_dim, eps norm_eps, one weight shared by all heads)
    before RoPE, as Emu3.5 / Qwen3. transformers' Emu3 classes have no such norm: HF export refuses it."""


@dataclass
class ParallelConfig:
    """How the model and data are split over ranks; data parallel = world / (tp * cp * pp)."""

    tp: int = 1
    """Tensor-parallel size."""
    cp: int = 1
    """Context-parallel size (sequence split into 2*cp zigzag chunks)."""
    pp: int = 1
    """Pipeline-parallel size: the layers split into pp stages (megatron-core's 1F1B schedule)."""
    vpp: Optional[int] = None
    """Virtual pipeline stages per rank (interleaved 1F1B): each rank holds vpp chunks of layers,
    which shrinks the pipeline bubble (pp - 1) / (vpp x micro-batches); None = plain 1F1B."""
    first_stage_layers: Optional[int] = None
    """Layers on the first pipeline stage (it also holds the embedding); None = an even split."""
    last_stage_layers: Optional[int] = None
    """Layers on the last pipeline stage (it also holds the output layer and loss); None = even."""
    sequence_parallel: bool = False
    """Shard activations along the sequence inside tensor-parallel regions (needs tp > 1)."""
    distributed_optimizer: bool = False
    """Shard optimizer states and fp32 master weights over data-parallel ranks."""
    overlap_param_gather: bool = True
    """With the distributed optimizer: all-gather the updated parameters bucket by bucket while the
    next forward runs (megatron-core forward pre-hooks) instead of right after the optimizer step."""
    overlap_grad_reduce: bool = True
    """Reduce gradient buckets over data-parallel ranks while the last micro-batch's backward still
    runs (megatron-core DDP hooks), instead of all at once after it."""
    attention_backend: str = "auto"
    """Core attention: auto | te | flash | varlen (torch's built-in, no dropout) | sdpa; auto picks the
    best available and logs why (model/spec.py)."""
    recompute: str = "none"
    """Activation recomputation: none | selective (core attention) | full (whole layers)."""
    recompute_num_layers: int = 1
    """With recompute=full: layers per recomputed chunk (uniform method)."""


@dataclass
class DataSource:
    """One component of the shard blend."""

    prefix: Any = path_field()
    """Shard prefix (PATH without .bin/.idx; globs like shard_* allowed), or a list of prefixes that
    form one source. Relative prefixes are relative to the recipe that names them."""
    weight: float = 1.0
    """Share of the blend's tokens (weights are normalised over the sources)."""
    name: str = ""
    """Label in logs and metrics (default: the prefix)."""


@dataclass
class DataConfig:
    """What the model reads."""

    source: str = "synthetic"
    """synthetic (learnable token stream, no files) | shards (preprocessed IndexedDataset blend)."""
    seq_length: int = 64
    """Tokens per sample (context length)."""
    micro_batch_size: int = 2
    """Samples per forward/backward on one data-parallel rank."""
    global_batch_size: int = 8
    """Samples per optimizer step over all data-parallel ranks (gradient accumulation fills it)."""
    sources: list[DataSource] = field(default_factory=list)
    """Blend components: list of {prefix: PATH, weight: FLOAT, name: STR} (see `DataSource`)."""
    vision_loss_weight: float = 0.5
    """Loss weight of vision-code tokens (text and structure tokens weigh 1.0)."""
    loss_policy: str = "pretrain"
    """pretrain (text 1, vision vision_loss_weight) | qft (vision tokens only)."""
    split: str = "98,2"
    """Train,valid split of every source in parts."""
    synthetic_vocab: int = 256
    """Synthetic source: token ids drawn from [0, synthetic_vocab)."""
    cache_dir: Optional[str] = path_field()
    """Where packing plans are cached (default: beside the first shard)."""
    oversize_vision: str = "skip"
    """A vision document longer than a sample: skip (counted, logged) | error."""
    max_oversize_fraction: float = 0.01
    """With oversize_vision=skip: refuse to start when a blend component would lose more than this
    fraction of its documents as oversize (shards tokenized for a longer context; see
    docs/preprocessing.md, --stage). 1.0 turns the check off."""
    split_seed: int = 1234
    """Seed of the train/valid document split (independent of `seed`, so stages keep their split)."""
    pack_window: int = 10000
    """Documents per best-fit packing window."""
    text_fill: bool = False
    """Cut text documents into the gaps beside images (fewer pads, splits text documents)."""


@dataclass
class TrainConfig:
    """Length of the run and numerics."""

    iters: int = 20
    """Optimizer steps to run (total, counting steps done before a resume)."""
    precision: str = "auto"
    """auto (bf16 on GPU, fp32 on CPU) | bf16 | fp32."""
    fused_kernels: str = "auto"
    """megatron-core's torch.compile'd SwiGLU and bias-dropout-add fusions: auto (on with CUDA, off on
    CPU, where compiling costs more than it saves) | fused | unfused. Same results as the unfused ops
    (with dropout > 0, other random masks)."""
    eval_interval: int = 0
    """Run validation every N steps (0 = never)."""
    eval_iters: int = 2
    """Validation batches per evaluation."""


@dataclass
class OptimizerConfig:
    """Adam(W) and the learning-rate schedule."""

    lr: float = 1e-3
    """Peak learning rate."""
    min_lr: float = 0.0
    """Learning rate at the end of the decay."""
    warmup_iters: int = 2
    """Linear warmup steps."""
    decay_style: str = "cosine"
    """cosine | linear | constant."""
    decay_iters: Optional[int] = None
    """Steps of warmup + decay (default: train.iters)."""
    weight_decay: float = 0.1
    """Decoupled weight decay (norms and biases excluded)."""
    adam_beta1: float = 0.9
    """Adam beta1."""
    adam_beta2: float = 0.95
    """Adam beta2."""
    adam_eps: float = 1e-8
    """Adam epsilon."""
    clip_grad: float = 1.0
    """Global gradient-norm clipping threshold (0 disables)."""


@dataclass
class CheckpointConfig:
    """Saving and loading."""

    interval: int = 0
    """Save every N steps (0 = only at the end and on signals)."""
    keep_last: int = 3
    """Keep the newest N checkpoints (0 keeps all)."""
    save_at_end: bool = True
    """Save after the last step."""
    load_weights_from: Optional[str] = path_field()
    """Start from the model weights of this checkpoint dir only (new optimizer, schedule, step 0)."""
    async_save: bool = False
    """Save in the background: tensors staged to host memory, written by a separate process, published when all ranks finished."""


@dataclass
class LoggingConfig:
    """What a run reports."""

    log_interval: int = 1
    """Write metrics every N steps."""
    tensorboard: bool = False
    """Also write TensorBoard event files under RUN_DIR/tensorboard."""


@dataclass
class LaunchConfig:
    """Cluster shape the recipe is written for (used by launch/ and the planner)."""

    nodes: int = 1
    """Number of nodes."""
    gpus_per_node: int = 8
    """GPUs (ranks) per node."""
    gpu_memory_gib: float = 80.0
    """Memory of one GPU, for the planner."""


@dataclass
class DPOConfig:
    """Preference optimisation (`python -m megatron_emu3.dpo.train`); ignored by pretraining."""

    data: Optional[str] = path_field()
    """Preference shard prefix written by tools/make_preferences.py (required by the DPO trainer)."""
    beta: float = 0.1
    """DPO temperature: scale of the policy-vs-reference log-ratio margin."""
    sft_weight: float = 0.1
    """Weight of the next-token (CE) loss on the chosen completions added to the DPO loss."""
    valid_fraction: float = 0.0
    """Share of the preference records held out (seeded by data.split_seed) and scored at every
    evaluation (train.eval_interval): reward margin, accuracy of chosen over rejected, losses."""


@dataclass
class Config:
    """A whole run."""

    run_dir: str = path_field("runs/default")
    """Everything the run writes goes here (metrics, config, checkpoints)."""
    seed: int = 1234
    """Seed of weights, dropout and data order."""
    preset: Optional[str] = None
    """Model preset name from `presets.py` (applied before the recipe's model section)."""
    model: ModelConfig = field(default_factory=ModelConfig)
    """Architecture."""
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    """Parallel layout."""
    data: DataConfig = field(default_factory=DataConfig)
    """Data."""
    train: TrainConfig = field(default_factory=TrainConfig)
    """Run length and numerics."""
    optimizer: OptimizerConfig = field(default_factory=OptimizerConfig)
    """Optimizer and LR schedule."""
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    """Checkpoints."""
    logging: LoggingConfig = field(default_factory=LoggingConfig)
    """Logging."""
    launch: LaunchConfig = field(default_factory=LaunchConfig)
    """Cluster shape."""
    dpo: DPOConfig = field(default_factory=DPOConfig)
    """Preference optimisation (DPO trainer only)."""
