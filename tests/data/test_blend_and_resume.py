"""Blend token shares follow the weights; the sampler resumes exactly from consumed_samples."""

import numpy as np
import pytest

from megatron_emu3.data.blend import BlendSpec, DataSourceSpec, SourceStream, blend_epoch, split_documents
from megatron_emu3.data.dataset import build_datasets
from megatron_emu3.data.sampler import BatchSampler
from tests.data.shard_factory import random_shard


def test_blend_token_shares_follow_the_weights():
    rng = np.random.default_rng(0)
    lengths = rng.integers(1, 500, 3000)
    groups = [np.arange(0, 1000), np.arange(1000, 1500), np.arange(1500, 3000)]
    weights = np.array([0.3, 0.5, 0.2])
    streams = [SourceStream(g, lengths[g], 1, i, f"s{i}") for i, g in enumerate(groups)]
    budget = int(lengths.sum())
    for epoch in range(3):
        src, pos = blend_epoch(streams, weights, budget, 1, epoch)
        tokens = np.array([lengths[groups[s][p]] for s, p in zip(src, pos)])
        shares = np.bincount(src, weights=tokens) / tokens.sum()
        np.testing.assert_allclose(shares, weights, atol=500 / budget * 3)


def test_source_stream_repeats_a_small_source_epoch_by_epoch():
    lengths = np.arange(1, 11)
    stream = SourceStream(np.arange(10), lengths, 3, 0, "small")
    taken = stream.take(int(lengths.sum()) * 3)
    assert len(taken) == 30
    for k in range(3):  # each source epoch is a permutation of all documents
        assert sorted(taken[10 * k:10 * k + 10].tolist()) == list(range(10))
    assert taken[:10].tolist() != taken[10:20].tolist()


def test_blend_is_deterministic_for_a_seed():
    lengths = np.arange(1, 101)

    def run(seed):
        streams = [SourceStream(np.arange(50), lengths[:50], seed, 0, "a"),
                   SourceStream(np.arange(50, 100), lengths[50:], seed, 1, "b")]
        return blend_epoch(streams, np.array([0.4, 0.6]), 5050, seed, 0)

    assert all(np.array_equal(x, y) for x, y in zip(run(4), run(4)))
    assert not np.array_equal(run(4)[1], run(5)[1])


def test_split_documents_partitions():
    train, valid = split_documents(101, (0.9, 0.1), 1234, 0)
    assert len(train) == 91 and len(valid) == 10
    assert sorted(np.concatenate([train, valid]).tolist()) == list(range(101))


def test_sampler_layout_matches_global_batches():
    sampler = BatchSampler(100, micro_batch_size=2, global_batch_size=8, dp_rank=1, dp_size=2)
    assert sampler.micro_batches(0) == [[4, 5], [6, 7]]
    assert sampler.micro_batches(8) == [[12, 13], [14, 15]]
    ranks = [BatchSampler(100, 1, 8, r, 4).micro_batches(16) for r in range(4)]
    assert sorted(i for r in ranks for mb in r for i in mb) == list(range(16, 24))
    assert BatchSampler(None, 2, 8, 0, 1).micro_batches(8 * 10**6)[0] == [8 * 10**6, 8 * 10**6 + 1]


def test_sampler_errors():
    with pytest.raises(ValueError, match="not a multiple of micro_batch_size 3 x data-parallel size 2"):
        BatchSampler(100, 3, 8, 0, 2)
    with pytest.raises(ValueError, match="consumed_samples 5 is not a multiple of global_batch_size 8"):
        BatchSampler(100, 2, 8, 0, 2).micro_batches(5)
    with pytest.raises(IndexError, match="build it with more train samples"):
        BatchSampler(10, 2, 8, 0, 1).micro_batches(8)


@pytest.mark.parametrize("k", [1, 3])
def test_resume_after_k_steps_sees_the_same_next_samples(tmp_path, k):
    prefix, _, _ = random_shard(str(tmp_path / "a"), 60, seed=11)
    blend = BlendSpec(sources=(DataSourceSpec((prefix,), 1.0),), split=(1.0, 0.0), max_oversize_fraction=1.0)
    gbs, mbs, dp, steps = 8, 2, 2, 6
    train, _ = build_datasets(blend, 40, seed=3, train_samples=gbs * steps)

    def run(dataset, sampler, first_step, n_steps):
        return [[dataset[i] for i in micro] for step in range(first_step, first_step + n_steps)
                for micro in sampler.micro_batches(step * gbs)]

    full = [run(train, BatchSampler(len(train), mbs, gbs, r, dp), 0, steps) for r in range(dp)]
    for r in range(dp):
        # a new process after k steps: dataset rebuilt (from the cache), position = the checkpointed
        # consumed_samples (k x gbs)
        train_again, _ = build_datasets(blend, 40, seed=3, train_samples=gbs * steps)
        assert train_again.info["cache"] == train.info["cache"]
        rest = run(train_again, BatchSampler(len(train_again), mbs, gbs, r, dp), k, steps - k)
        per_step = gbs // (mbs * dp)
        assert len(rest) == len(full[r][k * per_step:])
        for got, want in zip(rest, full[r][k * per_step:]):
            for a, b in zip(got, want):
                for key in a:
                    np.testing.assert_array_equal(a[key], b[key])


def test_dataset_batches_feed_cp_split_and_loss_sums(tmp_path):
    """End to end on the data side: dataset -> sampler -> collate -> CP split -> loss sums add up."""
    import torch

    from megatron_emu3.batch.context_parallel import split_for_cp
    from megatron_emu3.data.sample import collate
    from megatron_emu3.training.loss import loss_sums, stack_sums

    prefix, _, _ = random_shard(str(tmp_path / "a"), 40, kinds=(0, 1, 2, 3, 4), seed=5)
    blend = BlendSpec(sources=(DataSourceSpec((prefix,), 1.0),), split=(1.0, 0.0), max_oversize_fraction=1.0)
    train, _ = build_datasets(blend, 48, seed=0, train_samples=8)
    micro = BatchSampler(len(train), 4, 8, 0, 1).micro_batches(0)[0]
    batch = collate([train[i] for i in micro])
    ce = torch.rand(batch["labels"].shape, generator=torch.Generator().manual_seed(0))
    batch["ce"] = ce
    whole = stack_sums(loss_sums(ce, batch["labels"], batch["loss_weights"]))
    parts = [split_for_cp(batch, 4, r) for r in range(4)]
    split = sum(stack_sums(loss_sums(p["ce"], p["labels"], p["loss_weights"])) for p in parts)
    torch.testing.assert_close(split, whole, rtol=1e-12, atol=0)
    assert float(whole[1]) > 0 and float(whole[5]) > 0  # some weight, some vision labels
