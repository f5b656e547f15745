"""Generation API: text-to-image, text-to-video and image understanding over any decoding session.

    lm, vq = load_generator(checkpoint="runs/x/checkpoints")        # or hf="hf/x"
    codes, ids = generate_vision(lm, tokenizer, "a red circle", VisionMeta(8, 8), SamplingConfig())
    text, ids = understand(lm, tokenizer, codes, SamplingConfig(top_k=1), max_new_tokens=32)

`decode` is the one loop: left-padded prompts (and, for classifier-free guidance, their
unconditional prompts in the **same batch**, rows n..2n-1), logits processors (the grid constraint
of `constraints.py`), the sampler of `sampler.py`, and a stop token. Every session (`decoding.py`:
our model with or without KV cache, any TP layout; transformers) goes through it, so the same seed
gives the same tokens on all of them up to float rounding. Prompts (documents section 3):

    generation     BOS caption SOV meta SOT   -> the grid, EOV, EOS (constrained)
    unconditional  BOS SOV meta SOT            (the caption dropped)
    understanding  BOS SOV meta SOT grid EOV   -> caption, EOS (text tokens only)
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from megatron_emu3.data import tokens
from megatron_emu3.data.documents import VisionMeta, parse, parse_segments, video_meta, vision_block
from megatron_emu3.generation.constraints import TextOnlyLogitsProcessor, VisionGridLogitsProcessor, grid_length
from megatron_emu3.generation.decoding import HFLM, MegatronLM
from megatron_emu3.generation.sampler import choose, guide
from megatron_emu3.generation.sampling import SamplingConfig, generation_prompt


class GenerationError(ValueError):
    """A request that cannot be generated (prompt or grid too long, bad sizes); the message says what to change."""


def left_pad(rows: Sequence[Sequence[int]], pad_id: int = 0, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """(ids [n, s], valid [n, s]) with every row right-aligned; pads (never attended) hold `pad_id`."""
    width = max(len(r) for r in rows)
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    valid = torch.zeros((len(rows), width), dtype=torch.bool)
    for i, row in enumerate(rows):
        if len(row):
            ids[i, width - len(row):] = torch.as_tensor(list(row), dtype=torch.long)
            valid[i, width - len(row):] = True
    return ids.to(device), valid.to(device)


def check_fits(prompt_len: int, new_tokens: int, context: int, what: str = "the output") -> None:
    """Raise GenerationError when the prompt, or the prompt plus `new_tokens`, exceeds `context`."""
    if prompt_len > context:
        raise GenerationError(f"the prompt has {prompt_len} tokens, longer than the model context of {context}; "
                              "shorten the prompt")
    if prompt_len + new_tokens > context:
        raise GenerationError(f"prompt ({prompt_len} tokens) + {what} ({new_tokens} tokens) = "
                              f"{prompt_len + new_tokens} exceeds the model context of {context}; {_HINT}")


_HINT = "ask for a smaller resolution (--height/--width), fewer frames or fewer new tokens"


@torch.no_grad()
def decode(lm, prompts: Sequence[Sequence[int]], max_new_tokens: int, sampling: SamplingConfig,
           processors: Sequence = (), negative_prompts: Sequence[Sequence[int]] | None = None,
           stop_id: int | None = None, device=None) -> list[list[int]]:
    """New tokens for each prompt (stopping after `stop_id`, inclusive); CFG when negative prompts are given.

    With negative prompts, the batch is ``prompts + negative_prompts`` (one forward per step) and the
    next token of row i is drawn from ``guide(logits[i], logits[n + i], sampling.guidance_scale)``; the
    chosen token is appended to both rows.
    """
    n = len(prompts)
    if negative_prompts is not None and len(negative_prompts) != n:
        raise GenerationError(f"{len(negative_prompts)} unconditional prompts for {n} prompts; give one each")
    rows = list(prompts) + list(negative_prompts or [])
    ids, valid = left_pad(rows, device=device)
    check_fits(ids.shape[1], max_new_tokens, lm.max_length)
    generator = torch.Generator().manual_seed(sampling.seed)
    logits = lm.start(ids, valid)
    history = ids[:n]  # processors see the (padded) conditional rows; prompt length = ids.shape[1]
    out: list[list[int]] = [[] for _ in range(n)]
    done = torch.zeros(n, dtype=torch.bool, device=ids.device)
    for k in range(max_new_tokens):
        scores = guide(logits[:n], logits[n:] if negative_prompts is not None else None, sampling.guidance_scale)
        for processor in processors:
            scores = processor(history, scores)
        chosen = lm.agree(choose(scores, sampling, generator).to(ids.device))
        chosen = torch.where(done, torch.zeros_like(chosen), chosen)  # finished rows: filler, not returned
        for i in range(n):
            if not done[i]:
                out[i].append(int(chosen[i]))
        if stop_id is not None:
            done |= chosen == stop_id
        history = torch.cat([history, chosen[:, None]], dim=1)
        if bool(done.all()) or k == max_new_tokens - 1:
            break
        logits = lm.step(chosen.repeat(2) if negative_prompts is not None else chosen)
    return out


def continuation_prompt(context, caption: str, meta: VisionMeta, tokenizer) -> list[int]:
    """``context caption SOV meta SOT``: an interleaved document so far (BOS segment ..., its EOS dropped)
    continued by a text segment and the start of the next vision block."""
    ids = [int(i) for i in context]
    if not ids or ids[0] != tokens.BOS:
        raise GenerationError("an interleaved context starts with BOS (a document's ids, e.g. from a shard)")
    if ids[-1] == tokens.EOS:
        ids = ids[:-1]
    if (np.asarray(ids) == tokens.SOV).sum() != (np.asarray(ids) == tokens.EOV).sum():
        raise GenerationError("the interleaved context ends inside a vision block; cut it between segments")
    return [*ids, *tokenizer.encode(caption), tokens.SOV, *tokenizer.encode(meta.text()), tokens.SOT]


def generate_vision(lm, tokenizer, caption: str, meta: VisionMeta, sampling: SamplingConfig,
                    num_codes: int | None = None, device=None, context=None,
                    layout: tokens.VisionLayout = tokens.EMU3_VISION) -> tuple[np.ndarray, list[int]]:
    """(codes (h, w) or (t, h, w), the whole document ids) for one caption; CFG when guidance != 1.
    With `context` (ids of an interleaved document so far) the picture continues that document: the
    caption becomes its next text segment (see `continuation_prompt`). Codes are those of `layout`
    (the vision tokenizer's; the first `num_codes` of them when given)."""
    frames = meta.frames or 1
    if min(frames, meta.height, meta.width) < 1:
        raise GenerationError(f"grid {frames}x{meta.height}x{meta.width} must be at least 1x1x1")
    prompt = generation_prompt(tokenizer.encode(caption), meta, tokenizer) if context is None \
        else continuation_prompt(context, caption, meta, tokenizer)
    length = grid_length(frames, meta.height, meta.width)
    check_fits(len(prompt), length, lm.max_length,
               f"a {frames}x{meta.height}x{meta.width} grid" if meta.is_video else f"a {meta.height}x{meta.width} grid")
    negative = [generation_prompt([], meta, tokenizer, with_caption=False)] if sampling.guidance_scale != 1.0 else None
    grid = VisionGridLogitsProcessor(len(prompt), frames, meta.height, meta.width, num_codes, layout)
    new = decode(lm, [prompt], length, sampling, [grid], negative, device=device)[0]
    ids = prompt + new
    if context is None:
        return parse(ids, tokenizer, layout).codes, ids
    return parse_segments(ids, tokenizer, layout)[-1].codes, ids


def understanding_prompt(codes: np.ndarray, tokenizer, question: str = "", fps: float | None = None,
                         layout: tokens.VisionLayout = tokens.EMU3_VISION) -> list[int]:
    """``BOS SOV meta SOT grid EOV [question]`` for codes (h, w) or (t, h, w) of `layout`."""
    codes = np.asarray(codes)
    meta = video_meta(*codes.shape, fps or 8.0, layout) if codes.ndim == 3 else VisionMeta(*codes.shape)
    block = vision_block(codes, tokenizer.encode(meta.text()), layout)
    return [tokens.BOS, *block.tolist(), *tokenizer.encode(question)]


def understand(lm, tokenizer, codes: np.ndarray, sampling: SamplingConfig, max_new_tokens: int = 64,
               question: str = "", device=None,
               layout: tokens.VisionLayout = tokens.EMU3_VISION) -> tuple[str, list[int]]:
    """(text, generated ids) describing a code grid of `layout`: text tokens only, stops at EOS."""
    prompt = understanding_prompt(codes, tokenizer, question, layout=layout)
    new = decode(lm, [prompt], max_new_tokens, sampling, [TextOnlyLogitsProcessor()], stop_id=tokens.EOS,
                 device=device)[0]
    text_ids = [i for i in new if i != tokens.EOS]
    return tokenizer.decode(text_ids), new


def load_generator(checkpoint: str | Path | None = None, hf: str | Path | None = None, vq_dir: str | Path | None = None,
                   use_cache: bool = True, max_length: int | None = None):
    """(decoding session, Emu3VisionTokenizer or None) from our checkpoint (any saved TP layout,
    loaded at TP=1 in this process) or from a Hugging Face export; the VQ comes from `vq_dir` or
    the export's bundled ``vqmodel``."""
    from megatron_emu3.data.vision_tokenizer import Emu3VisionTokenizer

    if (checkpoint is None) == (hf is None):
        raise GenerationError("give exactly one of a checkpoint (--checkpoint) or a Hugging Face export (--hf)")
    vq = Emu3VisionTokenizer.from_dir(vq_dir) if vq_dir else None
    if checkpoint is not None:
        from megatron_emu3.convert.export import load_checkpoint_model

        cfg, gpt, _ = load_checkpoint_model(checkpoint)
        lm = MegatronLM(gpt, cfg.model.vocab_size, max_length or cfg.data.seq_length, use_cache)
    else:
        from megatron_emu3.convert.export import load_hf_model

        model, _ = load_hf_model(hf)
        lm = HFLM(model, use_cache=use_cache)
        if max_length:
            lm.max_length = max_length
        if vq is None and hasattr(getattr(model, "model", None), "vqmodel"):
            vq = Emu3VisionTokenizer(model.model.vqmodel)
    return lm, vq
