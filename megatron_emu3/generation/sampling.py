"""Sample pictures and videos from a Hugging Face export (transformers' Emu3 classes).

The prompt is a generation document up to SOT: ``BOS caption SOV meta SOT``; decoding is constrained
to the grid (`constraints.py`), with top-k / top-p / temperature sampling and classifier-free guidance
(transformers' guidance over an unconditional prompt without the caption). The codes are parsed with
`documents.parse` and decoded to pixels by the VQ.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from megatron_emu3.data import tokens
from megatron_emu3.data.documents import VisionMeta, parse
from megatron_emu3.generation.constraints import VisionGridLogitsProcessor, grid_length


@dataclass
class SamplingConfig:
    """How to draw the vision tokens."""

    top_k: int = 2048
    top_p: float = 1.0
    temperature: float = 1.0
    guidance_scale: float = 3.0
    seed: int = 0


def generation_prompt(caption_ids, meta: VisionMeta, tokenizer, with_caption: bool = True) -> list[int]:
    """``BOS caption SOV meta SOT`` (the unconditional prompt drops the caption)."""
    caption = [int(i) for i in caption_ids] if with_caption else []
    return [tokens.BOS, *caption, tokens.SOV, *tokenizer.encode(meta.text()), tokens.SOT]


@torch.no_grad()
def sample_vision(model, tokenizer, caption: str, meta: VisionMeta, cfg: SamplingConfig,
                  num_codes: int = tokens.NUM_VISION_CODES) -> np.ndarray:
    """Codes (h, w) for an image meta or (t, h, w) for a video meta, sampled from `model`."""
    from transformers import LogitsProcessorList

    frames = meta.frames or 1
    prompt = generation_prompt(tokenizer.encode(caption), meta, tokenizer)
    unconditional = generation_prompt([], meta, tokenizer, with_caption=False)
    length = grid_length(frames, meta.height, meta.width)
    context = getattr(model.config, "max_position_embeddings", None) or \
        getattr(getattr(model.config, "text_config", None), "max_position_embeddings", None)
    if context is not None and len(prompt) + length > context:
        raise ValueError(f"prompt ({len(prompt)} tokens) + grid ({length}) exceeds the model context {context}; "
                         "ask for a smaller resolution or fewer frames")
    torch.manual_seed(cfg.seed)
    device = next(model.parameters()).device
    input_ids = torch.tensor([prompt], device=device)
    kwargs = dict(do_sample=True, top_k=cfg.top_k, top_p=cfg.top_p, temperature=cfg.temperature)
    if cfg.guidance_scale != 1.0:
        kwargs.update(guidance_scale=cfg.guidance_scale, negative_prompt_ids=torch.tensor([unconditional], device=device))
    output = model.generate(
        input_ids, max_new_tokens=length, min_new_tokens=length, eos_token_id=None, pad_token_id=tokens.PAD,
        logits_processor=LogitsProcessorList([VisionGridLogitsProcessor(len(prompt), frames, meta.height,
                                                                        meta.width, num_codes)]),
        **kwargs)
    document = parse(output[0].tolist(), tokenizer)
    return document.codes
