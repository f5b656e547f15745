"""Near-duplicate pictures by perceptual hash: a 64-bit DCT pHash per picture, then one pass over all
kept pictures in manifest order that drops any within `max_distance` bits of an earlier one.

The pass runs once over the whole run (after every shard is complete), so which copy is kept does
not depend on sharding: the first in the order of --input, then row order. Candidates come from a
band index (the hash cut into max_distance + 1 bands: two hashes within the distance share a band).
"""

from __future__ import annotations

import numpy as np
from PIL import Image

HASH_SIDE, LOW = 32, 8


def _dct_matrix(n: int) -> np.ndarray:
    k = np.arange(n)[:, None]
    m = np.cos(np.pi * (2 * np.arange(n)[None, :] + 1) * k / (2 * n))
    m[0] /= np.sqrt(2)
    return m * np.sqrt(2 / n)


_DCT = _dct_matrix(HASH_SIDE)


def phash(img: Image.Image) -> str:
    """pHash as 16 hex digits: grey 32x32, 2-D DCT, the 8x8 lowest frequencies against their median."""
    grey = np.asarray(img.convert("L").resize((HASH_SIDE, HASH_SIDE), Image.Resampling.LANCZOS), dtype=np.float64)
    low = (_DCT @ grey @ _DCT.T)[:LOW, :LOW]
    bits = (low > np.median(low)).flatten()
    return f"{int(''.join('1' if b else '0' for b in bits), 2):016x}"


def distance(a: str, b: str) -> int:
    return (int(a, 16) ^ int(b, 16)).bit_count()


def near_duplicates(items: list[tuple[object, str]], max_distance: int) -> dict[object, tuple[object, int]]:
    """{key: (key of the earlier kept item, distance)} for every item within `max_distance` of an earlier
    kept one; `items` are (key, hash) in keep-priority order."""
    bands = max_distance + 1
    width = -(-64 // bands)
    index: list[dict[int, list[int]]] = [{} for _ in range(bands)]
    kept: list[tuple[object, int]] = []
    found = {}
    for key, digest in items:
        value = int(digest, 16)
        parts = [(value >> (b * width)) & ((1 << width) - 1) for b in range(bands)]
        best = None
        for b, part in enumerate(parts):
            for j in index[b].get(part, ()):
                d = (kept[j][1] ^ value).bit_count()
                if d <= max_distance and (best is None or (d, j) < best):
                    best = (d, j)
        if best is not None:
            found[key] = (kept[best[1]][0], best[0])
            continue
        for b, part in enumerate(parts):
            index[b].setdefault(part, []).append(len(kept))
        kept.append((key, value))
    return found
