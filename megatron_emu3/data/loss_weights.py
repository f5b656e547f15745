"""Per-token loss weights from the document kind and the token class: one table, two policies.

Every label token falls in one class:
- ``TEXT``: any token outside a vision block (text, BOS/EOS, chat tokens, ...);
- ``BLOCK``: a structure token inside a vision block, from SOV to EOV inclusive (SOV, the meta text
  such as ``64*64``, SOT, EOL, EOF, EOV);
- ``CODE``: a vision code (id >= FIRST_VISION_CODE), wherever it is.

The weight of a label is ``table[kind of its document, class]``:

| policy / kind                          | TEXT | BLOCK | CODE |
|----------------------------------------|------|-------|------|
| pretrain: text, image/video generation | 1.0  | 1.0   | v    |
| pretrain: image/video understanding    | 1.0  | 0.0   | 0.0  |
| qft: image/video generation            | 0.0  | 0.0   | 1.0  |
| qft: text, image/video understanding   | 0.0  | 0.0   | 0.0  |

with v = ``vision_loss_weight`` (0.5 in Emu3). Structure tokens count as text in pretraining; an
understanding document has no loss on its whole vision block (its caption after EOV counts as text).
QFT trains vision codes only (EOL/EOF positions are forced at generation time, so they need no loss).
Positions whose label belongs to another document, and pads, get 0 (see `packing.assemble_sample`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from megatron_emu3.config.schema import LOSS_POLICIES
from megatron_emu3.data.tokens import EOV, FIRST_VISION_CODE, SOV, DocKind

TEXT, BLOCK, CODE = 0, 1, 2
POLICIES = LOSS_POLICIES
_UNDERSTANDING = (DocKind.IMAGE_UNDERSTANDING, DocKind.VIDEO_UNDERSTANDING)
_GENERATION = (DocKind.IMAGE_GENERATION, DocKind.VIDEO_GENERATION)


@dataclass(frozen=True)
class LossWeightTable:
    """``weights[kind, class]`` (float32 [5, 3]) plus the settings that made it."""

    policy: str = "pretrain"
    vision_loss_weight: float = 0.5

    def __post_init__(self):
        if self.policy not in POLICIES:
            raise ValueError(f"data.loss_policy={self.policy!r} is unknown; use one of {POLICIES}")
        if not (np.isfinite(self.vision_loss_weight) and self.vision_loss_weight >= 0):
            raise ValueError(f"data.vision_loss_weight must be a finite number >= 0, got {self.vision_loss_weight}")

    @property
    def weights(self) -> np.ndarray:
        table = np.zeros((len(DocKind), 3), dtype=np.float32)
        if self.policy == "pretrain":
            table[:, TEXT] = 1.0
            table[:, BLOCK] = 1.0
            table[:, CODE] = self.vision_loss_weight
            for kind in _UNDERSTANDING:
                table[kind, BLOCK] = table[kind, CODE] = 0.0
        else:  # qft
            for kind in _GENERATION:
                table[kind, CODE] = 1.0
        return table

    def token_weights(self, window: np.ndarray, token_kind: np.ndarray, segments: np.ndarray,
                      seg_start: np.ndarray) -> np.ndarray:
        """Weight of every token of a window as a label (float32), before cross-document masking."""
        classes = token_classes(window, segments, seg_start)
        kinds = np.asarray(token_kind, dtype=np.int64)
        if len(kinds) and (kinds.min() < 0 or kinds.max() >= len(DocKind)):
            raise ValueError(f"document kind {int(kinds.max())} is not a DocKind (0..{len(DocKind) - 1})")
        return self.weights[kinds, classes]


def token_classes(window: np.ndarray, segments: np.ndarray, seg_start: np.ndarray) -> np.ndarray:
    """Class (TEXT / BLOCK / CODE) of every token; vision-block depth restarts in each segment."""
    window = np.asarray(window)
    is_sov = (window == SOV).astype(np.int64)
    is_eov = (window == EOV).astype(np.int64)
    opened = np.cumsum(is_sov)
    closed_before = np.cumsum(is_eov) - is_eov  # EOV itself still belongs to the block
    depth = opened - closed_before
    # restart the count at every segment: subtract the depth carried in from earlier segments
    seg_start = np.asarray(seg_start, dtype=np.int64)
    carried = np.where(seg_start > 0, opened[seg_start - 1] - np.cumsum(is_eov)[seg_start - 1], 0)
    depth = depth - carried[segments]
    classes = np.where(depth > 0, BLOCK, TEXT)
    classes[window >= FIRST_VISION_CODE] = CODE
    return classes
