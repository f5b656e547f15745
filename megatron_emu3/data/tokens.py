"""The Emu3 vocabulary: every special and visual token id, in one place.

Text ids 0..151,642 are the Qwen BPE ranks; 211 special tokens follow, then 32,768 vision codes.
Everything else in the project asks this module for ids (ARCHITECTURE.md section 2 is the source).
"""

from __future__ import annotations

import enum

import numpy as np

NUM_BPE_TOKENS = 151_643
NUM_EXTRA_TOKENS = 205
NUM_VISION_CODES = 32_768

PAD = 151_643  # <|endoftext|>
IM_START = 151_644
IM_END = 151_645
EXTRA_0 = 151_646
EOL = EXTRA_0 + 200  # <|extra_200|>: end of a row of vision codes
EOF = EXTRA_0 + 201  # <|extra_201|>: end of a (latent) frame
BOS = EXTRA_0 + 203  # <|extra_203|>
EOS = EXTRA_0 + 204  # <|extra_204|>
SOT = EXTRA_0 + NUM_EXTRA_TOKENS  # <|image token|>: start of vision tokens
SOV = SOT + 1  # <|image start|>
EOV = SOT + 2  # <|image end|>
FIRST_VISION_CODE = SOT + 3
VOCAB_SIZE = FIRST_VISION_CODE + NUM_VISION_CODES

assert (PAD, EOL, EOF, BOS, EOS, SOT, SOV, EOV, FIRST_VISION_CODE, VOCAB_SIZE) == (
    151643, 151846, 151847, 151849, 151850, 151851, 151852, 151853, 151854, 184622
)


def special_token_strings() -> dict[str, int]:
    """All special tokens (not the vision codes) as the strings the Qwen/Emu3 tokenizer uses."""
    names = {"<|endoftext|>": PAD, "<|im_start|>": IM_START, "<|im_end|>": IM_END}
    names.update({f"<|extra_{i}|>": EXTRA_0 + i for i in range(NUM_EXTRA_TOKENS)})
    names.update({"<|image token|>": SOT, "<|image start|>": SOV, "<|image end|>": EOV})
    return names


def vision_token_string(code: int) -> str:
    """The token string of vision code `code` (0..32767)."""
    return f"<|visual token {code:06d}|>"


def code_to_id(codes):
    """Vision codebook indices -> token ids (works on ints and numpy arrays)."""
    return np.asarray(codes) + FIRST_VISION_CODE if not isinstance(codes, int) else codes + FIRST_VISION_CODE


def id_to_code(ids):
    """Token ids of vision codes -> codebook indices."""
    return np.asarray(ids) - FIRST_VISION_CODE if not isinstance(ids, int) else ids - FIRST_VISION_CODE


def is_vision_code(ids) -> np.ndarray:
    """Boolean mask of which ids are vision codes."""
    ids = np.asarray(ids)
    return (ids >= FIRST_VISION_CODE) & (ids < VOCAB_SIZE)


class DocKind(enum.IntEnum):
    """The kind of a document, stored per document in the shard's `.idx` modes (int8)."""

    TEXT = 0
    IMAGE_GENERATION = 1
    IMAGE_UNDERSTANDING = 2
    VIDEO_GENERATION = 3
    VIDEO_UNDERSTANDING = 4
