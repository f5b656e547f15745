"""Load embedding-sized tensors across layouts whose padded vocabularies differ.

megatron-core pads the vocabulary to a multiple of 128 x TP (Emu3: 184,704 rows at TP 1, 184,832 at
TP 2/4, 185,344 at TP 8), so a checkpoint saved under one TP has a different global shape for the
input embedding and output layer (and their optimizer states) than a model built under another.
Only the first `vocab_size` rows mean anything. For such tensors the request asks for the whole
saved tensor, and this rank's rows are cut from it afterwards; rows past the saved ones are zero.
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from megatron.core.dist_checkpointing.mapping import ShardedTensor

VOCAB_TENSORS = ("embedding.word_embeddings.weight", "output_layer.weight")


def is_vocab_tensor(key: str) -> bool:
    return key.endswith(VOCAB_TENSORS)


def vocab_rows_differ(wanted: ShardedTensor, saved_shape: tuple, vocab_size: int) -> bool:
    """True when only the padded vocabulary dimension differs and both keep the real vocabulary."""
    wanted_shape = tuple(wanted.global_shape)
    return (is_vocab_tensor(wanted.key) and wanted_shape != saved_shape and len(saved_shape) == len(wanted_shape)
            and wanted_shape[1:] == saved_shape[1:] and min(saved_shape[0], wanted_shape[0]) >= vocab_size)


def request_whole_vocab_tensors(sharded: dict, saved_meta: dict, vocab_size: int) -> list[tuple]:
    """Swap resized vocab tensors in the request for whole-tensor requests; returns what to cut later."""
    swaps = []

    def walk(node, path):
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for slot, value in list(items):
            if isinstance(value, ShardedTensor) and value.key in saved_meta:
                saved_shape = tuple(saved_meta[value.key].global_shape)
                if vocab_rows_differ(value, saved_shape, vocab_size):
                    whole = torch.empty(saved_shape, dtype=value.data.dtype, device=value.data.device)
                    # every rank reads the whole tensor: rank 0 is its main replica, the others copies
                    replica = dist.get_rank() if dist.is_initialized() else 0
                    node[slot] = ShardedTensor.from_rank_offsets(value.key, whole, replica_id=replica)
                    swaps.append((path + (slot,), value))
            elif isinstance(value, (dict, list)):
                walk(value, path + (slot,))

    walk(sharded, ())
    return swaps


@torch.no_grad()
def cut_local_rows(loaded: dict, swaps: list[tuple]) -> None:
    """Replace each loaded whole tensor by this rank's rows (zero past the saved rows)."""
    for path, wanted in swaps:
        node = loaded
        for part in path[:-1]:
            node = node[part]
        whole = node[path[-1]]
        local = torch.zeros_like(wanted.data)
        start = wanted.global_offset[0]
        rows = local.shape[0]
        available = max(0, min(rows, whole.shape[0] - start))
        if available:
            local[:available].copy_(whole[start:start + available])
        node[path[-1]] = local
