"""Structure-constrained decoding of a vision block: every sample decodes to a valid grid.

After ``SOT`` the grid of t frames x h rows x w codes is laid out as ((code x w, EOL) x h, EOF) x t,
then ``EOV`` and ``EOS`` (ARCHITECTURE.md section 3). `allowed_tokens(k, ...)` says what the k-th
generated token of the grid may be; `VisionGridLogitsProcessor` applies it to a batch of logits, as a
transformers `LogitsProcessor` (usable with `generate`) or standalone.
"""

from __future__ import annotations

import torch

from megatron_emu3.data import tokens


def grid_length(frames: int, height: int, width: int) -> int:
    """Tokens from the first code to EOS inclusive: the grid, EOV and EOS."""
    return frames * (height * (width + 1) + 1) + 2


def forced_token(k: int, frames: int, height: int, width: int) -> int | None:
    """The token forced at grid position k (0 = right after SOT), or None where a code is free."""
    frame_len = height * (width + 1) + 1
    if k >= frames * frame_len:
        return tokens.EOV if k == frames * frame_len else tokens.EOS
    in_frame = k % frame_len
    if in_frame == frame_len - 1:
        return tokens.EOF
    if in_frame % (width + 1) == width:
        return tokens.EOL
    return None


class VisionGridLogitsProcessor:
    """Masks logits so that generation after a prompt ending in SOT fills a (frames, height, width) grid.

    `prompt_length` is the length of the prompt rows (left-padded batches share it); only the first
    `num_codes` vision codes of `layout` are allowed (default: the layout's whole codebook).
    """

    def __init__(self, prompt_length: int, frames: int, height: int, width: int,
                 num_codes: int | None = None, layout: tokens.VisionLayout = tokens.EMU3_VISION):
        if min(frames, height, width) < 1:
            raise ValueError(f"grid must be at least 1x1x1, got frames={frames} height={height} width={width}")
        num_codes = layout.codebook_size if num_codes is None else num_codes
        if not 1 <= num_codes <= layout.codebook_size:
            raise ValueError(f"num_codes must be in [1, {layout.codebook_size}] ({layout.tokenizer}), got {num_codes}")
        self.prompt_length, self.frames, self.height, self.width = prompt_length, frames, height, width
        self.num_codes, self.first_code = num_codes, layout.first_code

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        k = input_ids.shape[-1] - self.prompt_length
        masked = torch.full_like(scores, float("-inf"))
        forced = forced_token(k, self.frames, self.height, self.width)
        if forced is not None:
            if forced >= scores.shape[-1]:
                raise ValueError(f"the model's vocabulary ({scores.shape[-1]}) has no id {forced}")
            masked[:, forced] = 0.0
            return masked
        if self.first_code + self.num_codes > scores.shape[-1]:
            raise ValueError(f"the model's vocabulary ({scores.shape[-1]}) has no ids for codes up to "
                             f"{self.first_code + self.num_codes - 1}; it was not trained with this vision tokenizer")
        codes = slice(self.first_code, self.first_code + self.num_codes)
        masked[:, codes] = scores[:, codes]
        return masked


class TextOnlyLogitsProcessor:
    """Masks every vision token (SOT, SOV, EOV and the codes) so an answer stays text (image understanding)."""

    def __call__(self, input_ids: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
        return scores.index_fill(-1, torch.arange(tokens.SOT, scores.shape[-1], device=scores.device), float("-inf"))
