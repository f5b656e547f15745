"""Checkpoint -> Hugging Face directory (`Emu3ForCausalLM`, or `Emu3ForConditionalGeneration` with a VQ).

Runs in one process: the checkpoint (any saved layout) is loaded into a TP=1 model on the CPU,
mapped to transformers' names, and written as safetensors shards + index, config, generation config
and tokenizer files. `verify_export` reloads the directory with transformers and compares logits.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import torch

from megatron_emu3.checkpoint.layout import resolve_checkpoint_path
from megatron_emu3.config.loading import resolve_config
from megatron_emu3.convert.hf_config import check_hf_representable, to_hf_text_config
from megatron_emu3.convert.hf_mapping import HF_TEXT_PREFIX, from_hf, to_hf
from megatron_emu3.convert.hf_tokenizer import write_tokenizer_files
from megatron_emu3.convert.safetensors_io import read_hf_state, write_sharded
from megatron_emu3.model.full_state import canonical_name

logger = logging.getLogger(__name__)

SINGLE_PROCESS = ["parallel.tp=1", "parallel.cp=1", "parallel.pp=1", "parallel.sequence_parallel=false",
                  "parallel.distributed_optimizer=false", "train.precision=fp32", "parallel.attention_backend=sdpa"]
CONDITIONAL_PREFIX = "model.text_model."
VQ_PREFIX = "model.vqmodel."
DTYPES = {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}


def load_checkpoint_model(checkpoint: str | Path, overrides=()):
    """(config, TP=1 GPTModel with the checkpoint's weights) in this single process."""
    from megatron_emu3.checkpoint.state import load_model_weights
    from megatron_emu3.model.build import build_model
    from megatron_emu3.parallel.env import DistEnv
    from megatron_emu3.parallel.setup import init_distributed

    path = resolve_checkpoint_path(checkpoint)
    cfg = resolve_config(str(path / "config.yaml"), [*SINGLE_PROCESS, *overrides])
    init_distributed(cfg, DistEnv(0, 1, 0))
    gpt = build_model(cfg)
    load_model_weights(gpt, path, cfg.model.vocab_size)
    return cfg, gpt, path


def export_to_hf(checkpoint: str | Path, output: str | Path, vq_dir: str | Path | None = None,
                 dtype: str = "bf16", vocab_size: int | None = None, max_shard_bytes: int = 5 * 2**30) -> dict:
    """Write the Hugging Face directory; returns a summary (paths, class, parameter count)."""
    path = resolve_checkpoint_path(checkpoint)
    cfg = resolve_config(str(path / "config.yaml"), SINGLE_PROCESS)
    check_hf_representable(cfg.model)  # these checks before the model is built and anything is written
    if vocab_size is not None and vocab_size != cfg.model.vocab_size:
        raise ValueError(f"--vocab-size {vocab_size} does not match the checkpoint's vocabulary "
                         f"{cfg.model.vocab_size} ({path}/config.yaml); leave it out to use the checkpoint's")
    cfg, gpt, path = load_checkpoint_model(path)
    facts = json.loads((path / "vocab.json").read_text()) if (path / "vocab.json").is_file() else {}
    full = {canonical_name(name): p.detach() for name, p in gpt.named_parameters()}
    prefix = CONDITIONAL_PREFIX if vq_dir else HF_TEXT_PREFIX
    state = {k: v.to(DTYPES[dtype]) for k, v in to_hf(full, cfg.model, prefix).items()}
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    vocab_map = write_tokenizer_files(out)
    text_config = to_hf_text_config(cfg.model, max_position_embeddings=max(cfg.data.seq_length, 9216))
    if vq_dir:
        from transformers import Emu3Config, Emu3VQVAE

        vq = Emu3VQVAE.from_pretrained(str(vq_dir)).eval()
        state.update({VQ_PREFIX + k: v.to(DTYPES[dtype]) for k, v in vq.state_dict().items()})
        config = Emu3Config(vq_config=vq.config.to_dict(), text_config=text_config.to_dict(),
                            vocabulary_map=vocab_map)
        config.architectures = ["Emu3ForConditionalGeneration"]
    else:
        config = text_config
        config.architectures = ["Emu3ForCausalLM"]
    config.dtype = {"bf16": "bfloat16", "fp32": "float32", "fp16": "float16"}[dtype]
    config.save_pretrained(str(out))
    _write_generation_config(out, text_config)
    files = write_sharded(state, out, max_shard_bytes)
    summary = {"checkpoint": str(path), "output": str(out), "class": config.architectures[0],
               "files": files, "parameters": sum(v.numel() for v in state.values()),
               "vocab_size": cfg.model.vocab_size, "padded_vocab_trimmed_from": facts.get("padded_vocab_size")}
    logger.info("exported %s -> %s as %s (%d tensors in %d file(s))", path, out, summary["class"], len(state),
                len(files))
    return summary


def _write_generation_config(out: Path, text_config) -> None:
    from transformers import GenerationConfig

    GenerationConfig(bos_token_id=text_config.bos_token_id, eos_token_id=text_config.eos_token_id,
                     pad_token_id=text_config.pad_token_id).save_pretrained(str(out))


def load_hf_model(hf_dir: str | Path):
    """The transformers model of an exported/released directory in fp32 eval mode, and its text prefix."""
    from megatron_emu3.convert.hf_config import check_emu3_directory

    # the model type from config.json itself: transformers' parse of an Emu3Config validates its
    # 184,622-entry vocabulary_map entry by entry (seconds), and from_pretrained does it once anyway
    model_type = check_emu3_directory(hf_dir)
    from transformers import Emu3ForCausalLM, Emu3ForConditionalGeneration

    if model_type == "emu3":
        return Emu3ForConditionalGeneration.from_pretrained(str(hf_dir), dtype=torch.float32).eval(), CONDITIONAL_PREFIX
    return Emu3ForCausalLM.from_pretrained(str(hf_dir), dtype=torch.float32).eval(), HF_TEXT_PREFIX


@torch.no_grad()
def max_logit_difference(gpt, hf_model, vocab_size: int, seq_len: int = 32, batch: int = 2, seed: int = 0) -> float:
    """Largest |logit| difference between our model and transformers' on the same random tokens."""
    generator = torch.Generator().manual_seed(seed)
    tokens_ = torch.randint(0, vocab_size, (batch, seq_len), generator=generator)
    positions = torch.arange(seq_len).expand(batch, seq_len)
    gpt.eval()
    ours = gpt(tokens_, positions, None)[..., :vocab_size].float()
    theirs = hf_model(input_ids=tokens_).logits[..., :vocab_size].float()
    return (ours - theirs).abs().max().item()


def verify_export(gpt, cfg, output: str | Path) -> float:
    """Load the export with transformers; compare it with our model holding the exported weights."""
    from megatron_emu3.config.validation import padded_vocab_size
    from megatron_emu3.model.full_state import load_full_state

    hf_model, prefix = load_hf_model(output)
    exported = from_hf(read_hf_state(output, prefix), cfg.model,
                       padded_vocab_size(cfg.model.vocab_size, cfg.model.make_vocab_size_divisible_by, 1), prefix)
    load_full_state(gpt, {k: v.float() for k, v in exported.items()}, 0, 1)
    return max_logit_difference(gpt, hf_model, cfg.model.vocab_size)


def report_verify(diff: float, tolerance: float) -> int:
    """Print the verification result; the exit code of a converter's --verify (1 above tolerance)."""
    import sys

    print(f"verify: max |logit difference| = {diff:.3e} (tolerance {tolerance:.0e})")
    if diff > tolerance:
        print("verify: FAILED", file=sys.stderr)
        return 1
    return 0
