"""Tiny Emu3 shard sets for tests, written with megatron-core's IndexedDatasetBuilder (int32, kinds).

Documents follow ARCHITECTURE.md section 3 with random text ids (< 151,643) and random vision codes:
- text:           BOS text EOS
- generation:     BOS caption SOV meta SOT (codes EOL)*h EOF [... per frame] EOV EOS
- understanding:  BOS SOV meta SOT (codes EOL)*h EOF EOV caption EOS
"""

from __future__ import annotations

import numpy as np
import torch
from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder

from megatron_emu3.data.tokens import BOS, EOF, EOL, EOS, EOV, FIRST_VISION_CODE, NUM_BPE_TOKENS, SOT, SOV, DocKind

META = [21, 19, 9, 21, 19]  # stands for the BPE of "64*64" (any text ids work)


def text_doc(rng, n_text: int) -> np.ndarray:
    return np.concatenate([[BOS], rng.integers(0, NUM_BPE_TOKENS, n_text), [EOS]]).astype(np.int64)


def vision_block(rng, h: int, w: int, frames: int = 1) -> np.ndarray:
    rows = []
    for _ in range(frames):
        for _ in range(h):
            rows.append(FIRST_VISION_CODE + rng.integers(0, 32768, w))
            rows.append([EOL])
        rows.append([EOF])
    return np.concatenate([[SOV], META, [SOT], *rows, [EOV]]).astype(np.int64)


def generation_doc(rng, caption: int, h: int, w: int, frames: int = 1) -> np.ndarray:
    return np.concatenate([[BOS], rng.integers(0, NUM_BPE_TOKENS, caption), vision_block(rng, h, w, frames),
                           [EOS]]).astype(np.int64)


def understanding_doc(rng, caption: int, h: int, w: int, frames: int = 1) -> np.ndarray:
    return np.concatenate([[BOS], vision_block(rng, h, w, frames), rng.integers(0, NUM_BPE_TOKENS, caption),
                           [EOS]]).astype(np.int64)


def random_doc(rng, kind: int, scale: int = 1) -> np.ndarray:
    """A random document of `kind`; `scale` multiplies the sizes."""
    if kind == DocKind.TEXT:
        return text_doc(rng, int(rng.integers(0, 40 * scale)))
    h, w = int(rng.integers(1, 4 * scale + 1)), int(rng.integers(1, 4 * scale + 1))
    frames = int(rng.integers(1, 4)) if kind in (DocKind.VIDEO_GENERATION, DocKind.VIDEO_UNDERSTANDING) else 1
    caption = int(rng.integers(0, 8 * scale))
    if kind in (DocKind.IMAGE_GENERATION, DocKind.VIDEO_GENERATION):
        return generation_doc(rng, caption, h, w, frames)
    return understanding_doc(rng, caption, h, w, frames)


def write_shard(prefix: str, docs, kinds, dtype=np.int32, multimodal: bool = True) -> str:
    """Write documents (one item each) with their kinds; returns the prefix."""
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=dtype, multimodal=multimodal)
    for doc, kind in zip(docs, kinds):
        builder.add_item(torch.as_tensor(np.asarray(doc, dtype=np.int64)), int(kind))
        builder.end_document()
    builder.finalize(prefix + ".idx")
    return prefix


def random_shard(prefix: str, n_docs: int, kinds=(0, 1, 2), seed: int = 0, scale: int = 1):
    """A shard of `n_docs` random documents of the given kinds; returns (prefix, docs, kinds)."""
    rng = np.random.default_rng(seed)
    doc_kinds = rng.choice(np.asarray(kinds), n_docs)
    docs = [random_doc(rng, int(k), scale) for k in doc_kinds]
    write_shard(prefix, docs, doc_kinds)
    return prefix, docs, doc_kinds
