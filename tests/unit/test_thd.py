"""THD micro-batches for Transformer Engine: documents padded to 2*cp at their ends, split per document
(chunks r and 2c-1-r of every document), and the sequence-parallel divisibility of each rank's share."""

from __future__ import annotations

import pytest
import torch

from megatron_emu3.data.tokens import PAD
from megatron_emu3.batch.thd import padded_lengths, thd_micro_batch, thd_partition_indices


def _batch():
    seg = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1], [0, 0, 0, 0, 0, 1, 2, 2]])
    tokens = torch.arange(16).view(2, 8) + 10
    return {"tokens": tokens, "labels": tokens + 1, "loss_weights": torch.ones(2, 8),
            "position_ids": torch.tensor([[0, 1, 2, 0, 1, 2, 3, 4], [0, 1, 2, 3, 4, 0, 0, 1]]), "segment_ids": seg}


def test_without_context_parallelism_the_row_is_the_samples_end_to_end():
    out = thd_micro_batch(_batch())
    assert out["cu_seqlens"].tolist() == [0, 3, 8, 13, 14, 16] and int(out["max_seqlen"]) == 5
    assert torch.equal(out["tokens"], _batch()["tokens"].reshape(1, -1))


def test_documents_are_padded_at_their_ends_and_split_per_document():
    out = [thd_micro_batch(_batch(), 2, r) for r in range(2)]
    # lengths 3, 5, 5, 1, 2 -> 4, 8, 8, 4, 4
    assert out[0]["cu_seqlens"].tolist() == [0, 4, 12, 20, 24, 28] and int(out[0]["max_seqlen"]) == 8
    # rank 0 keeps chunk 0 and 3 of each document, rank 1 chunks 1 and 2
    assert out[0]["tokens"][0].tolist() == [10, PAD, 13, 14, PAD, PAD, 18, 19, PAD, PAD, 23, PAD, 24, PAD]
    assert out[1]["tokens"][0].tolist() == [11, 12, 15, 16, 17, PAD, 20, 21, 22, PAD, PAD, PAD, 25, PAD]
    for part in out:
        pad = part["tokens"] == PAD
        assert torch.all(part["loss_weights"][pad] == 0) and torch.all(part["loss_weights"][~pad] == 1)
    # positions continue through the padding of the first document: 0 1 2 | 3
    assert out[0]["position_ids"][0, :2].tolist() == [0, 3] and out[1]["position_ids"][0, :2].tolist() == [1, 2]
    # every real token is on exactly one rank, with its label and segment
    real = torch.cat([p["tokens"][p["tokens"] != PAD] for p in out])
    assert sorted(real.tolist()) == list(range(10, 26))


@pytest.mark.parametrize("cp,tp", [(2, 1), (2, 2), (4, 1), (4, 2), (3, 4)])
def test_partition_covers_the_row_once_and_shares_divide_over_tp(cp, tp):
    padded = padded_lengths([3, 5, 5, 1, 2, 17], cp, tp)
    assert all(n % (2 * cp) == 0 for n in padded) and sum(padded) % (cp * tp) == 0
    cu = torch.tensor([0] + torch.tensor(padded).cumsum(0).tolist())
    parts = [thd_partition_indices(cu, cp, r) for r in range(cp)]
    assert sorted(torch.cat(parts).tolist()) == list(range(sum(padded)))
    assert len({len(p) for p in parts}) == 1 and len(parts[0]) % tp == 0


def test_an_unpadded_document_is_a_clear_error():
    with pytest.raises(ValueError, match="not a multiple of 2 x context_parallel_size"):
        thd_partition_indices(torch.tensor([0, 4, 9]), 2, 0)


def test_local_checkpoints_use_transformer_engine_names():
    """A local-spec model's sharded state dict names its norms as TE does (checkpoints move between
    GPU runs with TE and CPU runs), and the full layout maps TE parameter names back."""
    from megatron_emu3.model.full_state import canonical_name
    from tests.distributed.launcher import run_ranks
    from tests.distributed.scenarios import sharded_state_keys

    (keys,) = run_ranks(1, sharded_state_keys, [])
    assert "decoder.layers.self_attention.linear_qkv.layer_norm_weight" in keys
    assert "decoder.layers.mlp.linear_fc1.layer_norm_weight" in keys
    assert not any("input_layernorm" in k or "pre_mlp_layernorm" in k for k in keys)

    assert canonical_name("module.module.decoder.layers.3.self_attention.linear_qkv.layer_norm_weight") == \
        "decoder.layers.3.input_layernorm.weight"
    assert canonical_name("decoder.layers.0.mlp.linear_fc1.layer_norm_weight") == "decoder.layers.0.pre_mlp_layernorm.weight"
    assert canonical_name("decoder.layers.0.mlp.linear_fc1.weight") == "decoder.layers.0.mlp.linear_fc1.weight"
