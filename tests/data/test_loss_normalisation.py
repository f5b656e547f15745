"""sum(w*CE)/sum(w) over the global batch does not depend on micro-batching or data-parallel ranks."""

import numpy as np
import pytest
import torch

from megatron_emu3.training.loss import STAT_KEYS, global_loss, loss_sums, stack_sums
from megatron_emu3.data.tokens import FIRST_VISION_CODE, VOCAB_SIZE
from tests.data.test_context_parallel import packed_sample


def global_batch(seed=0, batch=8, seq_len=64):
    samples = [packed_sample(seed * 100 + i, seq_len) for i in range(batch)]
    labels = torch.from_numpy(np.stack([s["labels"] for s in samples]))
    weights = torch.from_numpy(np.stack([s["loss_weights"] for s in samples]))
    ce = torch.rand(batch, seq_len, generator=torch.Generator().manual_seed(seed), dtype=torch.float32) * 12
    return ce, labels, weights


def run_layout(ce, labels, weights, dp: int, micro: int):
    """Metrics when `dp` ranks each run their slice of the batch as micro-batches of `micro` samples."""
    per_rank = ce.shape[0] // dp
    locals_ = []
    for r in range(dp):
        sl = slice(r * per_rank, (r + 1) * per_rank)
        parts = [loss_sums(ce[sl][i:i + micro], labels[sl][i:i + micro], weights[sl][i:i + micro])
                 for i in range(0, per_rank, micro)]
        locals_.append(sum(stack_sums(p) for p in parts))

    def all_reduce(t):  # what torch.distributed.all_reduce(SUM) over the dp ranks gives
        return torch.stack(locals_).sum(0)

    return [global_loss(loc, all_reduce) for loc in locals_]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_loss_is_the_same_for_every_layout(seed):
    ce, labels, weights = global_batch(seed)
    w = weights.double()
    direct = float((ce.double() * w).sum() / w.sum())
    results = [m for dp in (1, 2) for micro in (1, 2, 4, 8) if micro * dp <= 8
               for m in run_layout(ce, labels, weights, dp, micro)]
    for m in results:
        assert m["loss"] == pytest.approx(direct, rel=1e-7)
        assert m["loss"] == pytest.approx(results[0]["loss"], rel=1e-12)
        assert m["text_loss"] == results[0]["text_loss"] and m["vision_loss"] == results[0]["vision_loss"]
    # the wrong way (mean of micro-batch means) differs: the test can tell
    means = [float((ce[i:i + 1].double() * w[i:i + 1]).sum() / w[i:i + 1].sum()) for i in range(8)]
    assert abs(np.mean(means) - direct) > 1e-6


def test_gradients_are_the_same_for_every_layout():
    ce0, labels, weights = global_batch(3)
    grads = []
    for micro in (1, 2, 8):
        logits_scale = torch.ones(8, 64, requires_grad=True)
        total = weights.double().sum()
        for i in range(0, 8, micro):
            ce = ce0[i:i + micro] * logits_scale[i:i + micro]  # a stand-in model: d(loss)/d(scale) = w*ce/W
            sums = loss_sums(ce, labels[i:i + micro], weights[i:i + micro])
            (sums["weighted_ce"] / total).backward()
        grads.append(logits_scale.grad.clone())
    for g in grads[1:]:
        torch.testing.assert_close(g, grads[0], rtol=1e-6, atol=0)


def test_text_and_vision_split_by_label_and_weight():
    labels = torch.tensor([[5, FIRST_VISION_CODE, FIRST_VISION_CODE + 3, 7, VOCAB_SIZE - 1]])
    weights = torch.tensor([[1.0, 0.5, 0.0, 0.0, 0.5]])
    ce = torch.tensor([[1.0, 2.0, 4.0, 8.0, 16.0]])
    s = loss_sums(ce, labels, weights)
    assert float(s["weighted_ce"]) == 1.0 + 1.0 + 8.0 and float(s["weight"]) == 2.0
    assert (float(s["text_ce"]), float(s["text_count"])) == (1.0, 1.0)
    assert (float(s["vision_ce"]), float(s["vision_count"])) == (18.0, 2.0)
    m = global_loss(stack_sums(s))
    assert m["loss"] == 5.0 and m["text_loss"] == 1.0 and m["vision_loss"] == 9.0
    assert len(STAT_KEYS) == 6


def test_no_weight_is_an_error():
    s = loss_sums(torch.ones(1, 3), torch.ones(1, 3, dtype=torch.long), torch.zeros(1, 3))
    with pytest.raises(RuntimeError, match="no token with loss weight > 0"):
        global_loss(stack_sums(s))
