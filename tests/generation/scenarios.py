"""Functions that run inside a spawned rank for the generation tests (importable by spawn)."""

from __future__ import annotations

from pathlib import Path

import torch

RECIPE = str(Path(__file__).resolve().parents[2] / "examples" / "recipes" / "tiny.yaml")
# full vocabulary (vision codes start at 151,854); a larger init spreads the logits so greedy
# choices are not near-ties between two implementations
OVERRIDES = ["parallel.attention_backend=sdpa", "data.seq_length=64", "model.init_std=0.3"]
CAPTION = "a red circle"
TEXT_PROMPT = [151849, 64, 2518, 12671]  # BOS + "a red circle" (ids only need to be in the vocab)


def make_checkpoint(ckpt_dir: str) -> None:
    """A random tiny model saved as a model-only checkpoint (with config.yaml)."""
    from megatron_emu3.checkpoint.state import save_model_weights
    from megatron_emu3.config.loading import resolve_config
    from megatron_emu3.model.build import build_model
    from megatron_emu3.parallel.env import DistEnv
    from megatron_emu3.parallel.setup import destroy_distributed, init_distributed

    cfg = resolve_config(RECIPE, OVERRIDES + [f"run_dir={Path(ckpt_dir).parent}"])
    init_distributed(cfg, DistEnv(0, 1, 0))
    save_model_weights(build_model(cfg), cfg, ckpt_dir)
    destroy_distributed()


def generate_from_checkpoint(ckpt_dir: str, vq_dir: str, out_dir: str) -> dict:
    """Everything the tests compare, generated from our checkpoint in one process."""
    from megatron_emu3.data.documents import VisionMeta
    from megatron_emu3.data.text_tokenizer import Emu3TextTokenizer
    from megatron_emu3.generation.api import decode, generate_vision, load_generator
    from megatron_emu3.generation.sampling import SamplingConfig, generation_prompt
    from megatron_emu3.parallel.setup import destroy_distributed

    tokenizer = Emu3TextTokenizer.from_default()
    greedy = SamplingConfig(top_k=1, guidance_scale=1.0)
    lm, _ = load_generator(checkpoint=ckpt_dir)
    no_cache, _ = load_generator(checkpoint=ckpt_dir, use_cache=False)
    out = {"greedy_text": decode(lm, [TEXT_PROMPT], 12, greedy)[0],
           "greedy_text_no_cache": decode(no_cache, [TEXT_PROMPT], 12, greedy)[0]}
    # cache vs full forward, logits at every step of a left-padded batch
    from megatron_emu3.generation.api import left_pad

    ids, valid = left_pad([TEXT_PROMPT, [151849, 9]])  # row 2 has two pads on the left
    steps = [lm.start(ids, valid)]
    new = torch.tensor([[5, 6, 7], [8, 9, 10]])
    steps += [lm.step(new[:, k]) for k in range(new.shape[1])]
    full = no_cache.full_logits(torch.cat([ids, new], 1), torch.cat([valid, torch.ones_like(new, dtype=torch.bool)], 1))
    out["cache_vs_full"] = max((steps[k] - full[:, 3 + k]).abs().max().item() for k in range(len(steps)))
    alone = no_cache.full_logits(torch.tensor([[151849, 9, 8, 9, 10]]), torch.ones(1, 5, dtype=torch.bool))
    out["padded_vs_alone"] = (full[1, 2:] - alone[0]).abs().max().item()
    meta = VisionMeta(3, 4)
    codes, doc = generate_vision(lm, tokenizer, CAPTION, meta, greedy)
    out["greedy_codes"], out["greedy_doc"] = codes, doc
    # CFG with guidance 1.0 (unconditional prompt in the same batch) equals plain sampling
    sampled = SamplingConfig(top_k=50, temperature=1.0, guidance_scale=1.0, seed=3)
    prompt = generation_prompt(tokenizer.encode(CAPTION), meta, tokenizer)
    uncond = generation_prompt([], meta, tokenizer, with_caption=False)
    out["plain"] = decode(lm, [prompt], 20, sampled)[0]
    out["cfg1"] = decode(lm, [prompt], 20, sampled, negative_prompts=[uncond])[0]
    out["cfg3"] = decode(lm, [prompt], 20, SamplingConfig(top_k=50, guidance_scale=3.0, seed=3),
                         negative_prompts=[uncond])[0]
    # the CLI on our checkpoint: an image, a video, a description and the errors
    import importlib.util

    spec = importlib.util.spec_from_file_location("generate_cli", Path(__file__).resolve().parents[2] / "tools" / "generate.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)

    out["cli_image"] = cli.main(["--checkpoint", ckpt_dir, "--vq-dir", vq_dir, "--prompt", CAPTION, "--height", "2",
                                 "--width", "3", "--cfg", "2.0", "--top-k", "100", "--out", f"{out_dir}/img.png",
                                 "--save-tokens", f"{out_dir}/img.json"])
    out["cli_video"] = cli.main(["--checkpoint", ckpt_dir, "--vq-dir", vq_dir, "--prompt", CAPTION, "--height", "2",
                                 "--width", "2", "--frames", "2", "--out", f"{out_dir}/vid.mp4"])
    out["cli_too_big"] = cli.main(["--checkpoint", ckpt_dir, "--vq-dir", vq_dir, "--prompt", CAPTION,
                                   "--height", "8", "--width", "8", "--out", f"{out_dir}/no.png"])
    destroy_distributed()
    return out


def tp_greedy(ckpt_dir: str, tp: int) -> list[int]:
    """Greedy text tokens with the checkpoint loaded under tensor parallel `tp` (build_run layout)."""
    from megatron_emu3.checkpoint.state import load_model_weights
    from megatron_emu3.config.loading import resolve_config
    from megatron_emu3.generation.api import decode
    from megatron_emu3.model.build import unwrap
    from megatron_emu3.generation.decoding import MegatronLM
    from megatron_emu3.generation.sampling import SamplingConfig
    from megatron_emu3.parallel.setup import destroy_distributed
    from megatron_emu3.training.trainer import build_run

    cfg = resolve_config(RECIPE, OVERRIDES + [f"parallel.tp={tp}"])
    run = build_run(cfg)
    load_model_weights(unwrap(run.model), ckpt_dir, cfg.model.vocab_size)
    lm = MegatronLM(run.model, cfg.model.vocab_size, cfg.data.seq_length, ctx=run.ctx)
    tokens_ = decode(lm, [TEXT_PROMPT], 12, SamplingConfig(top_k=1, guidance_scale=1.0))[0]
    destroy_distributed()
    return tokens_
