"""The Emu3 vocabulary: every special and visual token id, in one place.

Text ids 0..151,642 are the Qwen BPE ranks; 211 special tokens follow, then the vision codes of the
vision tokenizer. Where the codes live is a `VisionLayout` (codebook size, spatial and temporal
factors, id of code 0), described by the vision tokenizer itself (`vision_tokenizer.py`); Emu3's VQ
(32,768 codes, 8x spatial, 4x temporal) is the default, `EMU3_VISION`, and the module constants below
are its ids. Everything else in the project asks this module for ids (ARCHITECTURE.md section 2).
"""

from __future__ import annotations

import dataclasses
import enum

import numpy as np

NUM_BPE_TOKENS = 151_643
NUM_EXTRA_TOKENS = 205

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
FIRST_CODE_ID = SOT + 3  # the first id after the text and special tokens: code 0 of any layout by default


@dataclasses.dataclass(frozen=True)
class VisionLayout:
    """Where a vision tokenizer's codes sit in the vocabulary (ids first_code .. first_code + codebook_size
    - 1, after every text and special id) and how much it downsamples (pixels per code, frames per
    latent frame). `tokenizer` names the tokenizer (class and weights); it is not part of the ids."""

    tokenizer: str
    codebook_size: int
    spatial_factor: int
    temporal_factor: int
    first_code: int = FIRST_CODE_ID

    def __post_init__(self):
        for name in ("codebook_size", "spatial_factor", "temporal_factor"):
            if getattr(self, name) < 1:
                raise ValueError(f"vision layout {self.tokenizer!r}: {name} must be positive, got {getattr(self, name)}")
        if self.first_code < FIRST_CODE_ID:
            raise ValueError(f"vision layout {self.tokenizer!r}: first_code {self.first_code} overlaps the text and "
                             f"special ids (< {FIRST_CODE_ID})")

    @property
    def vocab_size(self) -> int:
        """Ids a model needs for text + specials + these codes."""
        return self.first_code + self.codebook_size

    def ids(self) -> tuple[int, int, int, int]:
        """What makes two layouts' token ids interchangeable (the tokenizer's name aside)."""
        return (self.first_code, self.codebook_size, self.spatial_factor, self.temporal_factor)

    def describe(self) -> str:
        return (f"{self.tokenizer}: {self.codebook_size:,} codes at ids {self.first_code}..{self.vocab_size - 1}, "
                f"{self.spatial_factor}x spatial, {self.temporal_factor}x temporal")

    def record(self) -> dict:
        """The layout as written into shard records (`from_record` reads it back)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_record(cls, record: dict | None) -> "VisionLayout":
        """The layout of a shard record; records written before layouts existed are Emu3's."""
        return EMU3_VISION if not record else cls(**record)


EMU3_VISION = VisionLayout("Emu3-VisionTokenizer (VQ)", 32_768, 8, 4)
NUM_VISION_CODES = EMU3_VISION.codebook_size
FIRST_VISION_CODE = EMU3_VISION.first_code
VOCAB_SIZE = EMU3_VISION.vocab_size

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


def code_to_id(codes, layout: VisionLayout = EMU3_VISION):
    """Vision codebook indices -> token ids (works on ints and numpy arrays)."""
    return np.asarray(codes) + layout.first_code if not isinstance(codes, int) else codes + layout.first_code


def id_to_code(ids, layout: VisionLayout = EMU3_VISION):
    """Token ids of vision codes -> codebook indices."""
    return np.asarray(ids) - layout.first_code if not isinstance(ids, int) else ids - layout.first_code


def is_vision_code(ids, layout: VisionLayout = EMU3_VISION) -> np.ndarray:
    """Boolean mask of which ids are vision codes."""
    ids = np.asarray(ids)
    return (ids >= layout.first_code) & (ids < layout.vocab_size)


class DocKind(enum.IntEnum):
    """The kind of a document, stored per document in the shard's `.idx` modes (int8)."""

    TEXT = 0
    IMAGE_GENERATION = 1
    IMAGE_UNDERSTANDING = 2
    VIDEO_GENERATION = 3
    VIDEO_UNDERSTANDING = 4
    INTERLEAVED = 5  # text and several vision blocks in the order of a `segments` manifest row
