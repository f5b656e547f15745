"""The datasets a run reads: the synthetic stream or the packed shard blend, train and validation.

Global batch k covers samples [consumed, consumed + global_batch_size) of the dataset's order; which of
them a rank reads is `data/sampler.py`'s business, how they are laid out for its attention backend
`batch/layout.py`'s. The only state is `consumed_samples`, saved in checkpoints.
"""

from __future__ import annotations

from megatron_emu3.config.schema import Config


def build_datasets(cfg: Config):
    """(train, valid or None) datasets named by `data.source`; every rank must call this.

    For shards, the packing plan covers exactly the samples the run consumes (train.iters x global
    batch) and, with evaluation on, the validation batches; it is built once and cached.
    """
    if cfg.data.source == "synthetic":
        from megatron_emu3.data.synthetic import SyntheticDataset

        train = SyntheticDataset(cfg.data.seq_length, cfg.data.synthetic_vocab, cfg.seed)
        valid = SyntheticDataset(cfg.data.seq_length, cfg.data.synthetic_vocab, cfg.seed + 1)
        return train, valid
    from megatron_emu3.data.dataset import build_datasets as build_shard_datasets

    train_samples = cfg.train.iters * cfg.data.global_batch_size
    evaluations = cfg.train.iters // cfg.train.eval_interval if cfg.train.eval_interval else 0
    valid_samples = (evaluations + 1) * cfg.train.eval_iters * cfg.data.global_batch_size if evaluations else None
    train, valid = build_shard_datasets(cfg.data, cfg.data.seq_length, cfg.seed, train_samples, valid_samples)
    _check_vocabulary(cfg, train.corpus.layout)
    return train, valid


def check_sources(cfg: Config) -> None:
    """Before the model is built (minutes at scale): every shard of `data.sources` exists, they share
    one vision token layout, and `model.vocab_size` covers its ids. Reads file names and the small
    ``PREFIX.json`` records only; `build_datasets` checks the shards themselves."""
    if cfg.data.source == "synthetic":
        return
    from megatron_emu3.data.dataset import blend_spec_from_config
    from megatron_emu3.data.shards import common_layout, expand_prefixes, read_layout, require_shard_files

    named = []
    for source in blend_spec_from_config(cfg.data).sources:
        for prefix in expand_prefixes(source.prefixes):
            require_shard_files(prefix, " of data.sources")
            named.append((prefix, read_layout(prefix)))
    if named:
        _check_vocabulary(cfg, common_layout(named))


def _check_vocabulary(cfg: Config, layout) -> None:
    if layout.vocab_size > cfg.model.vocab_size:
        raise ValueError(f"the data's token ids reach {layout.vocab_size - 1} ({layout.describe()}) but "
                         f"model.vocab_size={cfg.model.vocab_size}; set model.vocab_size={layout.vocab_size} "
                         "(or preprocess with the vision tokenizer this model was built for)")


def build_train_dataset(cfg: Config):
    """The training dataset alone."""
    return build_datasets(cfg)[0]
