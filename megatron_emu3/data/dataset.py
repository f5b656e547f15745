"""The packed shard dataset: blend -> pack -> cached plan -> samples (``build_datasets`` is the entry).

``build_datasets(data_cfg, seq_len, seed, train_samples, valid_samples)`` opens and checks every shard
set, drops (counts, logs) or rejects vision documents longer than ``seq_len + 1``, splits each source
into train/valid, and for each split builds (once, cached) the plan of as many blend epochs as the
requested samples need. Epoch e: documents blended by weight (`blend.py`), shuffled by (seed, e),
packed by windowed best-fit decreasing (`packing.py`), and the epoch's samples shuffled by (seed, e).
Sample i is a pure function of (inputs, seed, i): the order never depends on ranks or workers.

`PackedDataset[i]` reads the pieces of sample i from the memory-mapped shards and assembles the
sample of the contract in `sample.py` (token ids checked against the vocabulary on every read).
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Mapping, Sequence

import numpy as np

from megatron_emu3.config.schema import OVERSIZE_POLICIES, DataConfig
from megatron_emu3.data import index_cache
from megatron_emu3.data.blend import (SPLIT_NAMES, BlendSpec, DataSourceSpec, SourceStream, blend_epoch,
                                      normalise_weights, parse_split, split_documents)
from megatron_emu3.data.loss_weights import LossWeightTable
from megatron_emu3.data.packing import DEFAULT_WINDOW, PackingPlan, assemble_sample, concat_plans, pack_documents
from megatron_emu3.data.shards import ShardSet, common_layout, expand_prefixes
from megatron_emu3.data.tokens import EMU3_VISION, DocKind, VisionLayout

logger = logging.getLogger(__name__)

INDEX_VERSION = 1
_TAG_SAMPLES = 21


def blend_spec_from_config(data_cfg: DataConfig | BlendSpec) -> BlendSpec:
    """The `BlendSpec` of the config tree's data section (sources already typed and validated there;
    relative prefixes were resolved against their recipe when the config was loaded)."""
    if isinstance(data_cfg, BlendSpec):
        return data_cfg
    if not data_cfg.sources:
        raise ValueError("data.sources is empty; list at least one {prefix: PATH, weight: FLOAT}")
    sources = tuple(DataSourceSpec(tuple(map(os.fspath, src.prefix if isinstance(src.prefix, list) else [src.prefix])),
                                   float(src.weight), src.name) for src in data_cfg.sources)
    return BlendSpec(
        sources=sources,
        split=parse_split(data_cfg.split),
        vision_loss_weight=float(data_cfg.vision_loss_weight),
        loss_policy=data_cfg.loss_policy,
        cache_dir=os.fspath(data_cfg.cache_dir) if data_cfg.cache_dir else None,
        oversize_vision=data_cfg.oversize_vision,
        max_oversize_fraction=float(data_cfg.max_oversize_fraction),
        split_seed=int(data_cfg.split_seed),
        pack_window=int(data_cfg.pack_window),
        text_fill=bool(data_cfg.text_fill),
    )


@dataclass
class Corpus:
    """All shard sets of a blend, their documents numbered globally, and each source's documents."""

    shards: list[ShardSet]
    doc_offsets: np.ndarray  # int64 [n_shards + 1]: global id of each shard's first document
    lengths: np.ndarray  # int64 [n_docs]
    kinds: np.ndarray  # int8 [n_docs]
    source_docs: list[np.ndarray]  # global ids per source, all of them (the split is drawn over these)
    usable: np.ndarray  # bool [n_docs]: False for vision documents longer than the window
    skipped: list[int]  # oversize vision documents per source
    layout: VisionLayout = EMU3_VISION  # the vision token layout every shard shares

    def __getstate__(self):
        # reading samples needs only the shards and offsets; the per-document arrays are for building
        return dict(self.__dict__, lengths=None, kinds=None, source_docs=None, usable=None)

    def locate(self, doc: int) -> tuple[ShardSet, int]:
        s = int(np.searchsorted(self.doc_offsets, doc, side="right")) - 1
        return self.shards[s], int(doc - self.doc_offsets[s])


def open_corpus(spec: BlendSpec, seq_len: int) -> Corpus:
    """Open and check every shard set; filter vision documents that cannot fit a window."""
    if spec.oversize_vision not in OVERSIZE_POLICIES:
        raise ValueError(f"data.oversize_vision={spec.oversize_vision!r}; use one of {OVERSIZE_POLICIES}")
    if not spec.sources:
        raise ValueError("the blend has no sources; list at least one {prefix: PATH, weight: FLOAT}")
    capacity = seq_len + 1
    shards, per_source = [], []
    for src in spec.sources:
        sets = [ShardSet(p) for p in expand_prefixes(src.prefixes)]
        for shard in sets:
            shard.spot_check()
        per_source.append(range(len(shards), len(shards) + len(sets)))
        shards.extend(sets)
    layout = common_layout([(s.prefix, s.layout) for s in shards]) if shards else EMU3_VISION
    counts = np.array([len(s) for s in shards], dtype=np.int64)
    doc_offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    lengths = np.concatenate([s.lengths for s in shards]).astype(np.int64) if shards else np.zeros(0, np.int64)
    kinds = np.concatenate([s.kinds for s in shards]) if shards else np.zeros(0, np.int8)
    source_docs, skipped = [], []
    usable = ~((kinds != DocKind.TEXT) & (lengths > capacity))
    for src, members in zip(spec.sources, per_source):
        docs = np.concatenate([np.arange(doc_offsets[m], doc_offsets[m + 1]) for m in members]) \
            if len(members) else np.zeros(0, np.int64)
        if len(docs) == 0:
            raise ValueError(f"blend component {src.label!r} has no documents (shards: {list(src.prefixes)}); "
                             "remove it from data.sources or preprocess data into it")
        oversize = ~usable[docs]
        n_over = int(oversize.sum())
        if n_over:
            first = int(docs[oversize][0])
            s = int(np.searchsorted(doc_offsets, first, side="right")) - 1
            shard, local = shards[s], first - int(doc_offsets[s])
            message = (f"blend component {src.label!r}: {n_over} vision document(s) longer than the window of "
                       f"{capacity} tokens (first: {shard.prefix} document {local}, {int(lengths[first])} "
                       "tokens); vision blocks are never split")
            if spec.oversize_vision == "error":
                raise ValueError(message + ": raise seq_len, preprocess at a lower resolution, or set "
                                 "data.oversize_vision=skip")
            if n_over == len(docs):
                raise ValueError(f"blend component {src.label!r}: every document is longer than the window "
                                 f"of {capacity} tokens; this component is empty")
            if n_over > spec.max_oversize_fraction * len(docs):
                raise ValueError(
                    f"{message}: {n_over / len(docs):.1%} of its {len(docs)} documents, more than "
                    f"data.max_oversize_fraction={spec.max_oversize_fraction:g}. These shards were tokenized for "
                    "a longer context: re-run tools/preprocess_data.py with this stage's --stage / --max-seq-len "
                    "(documents are then made to fit), raise seq_len, or raise data.max_oversize_fraction")
            logger.warning("%s: skipped (data.oversize_vision=skip; %.2f%% of the component)", message,
                           100.0 * n_over / len(docs))
        source_docs.append(docs)
        skipped.append(n_over)
    return Corpus(shards, doc_offsets, lengths, kinds, source_docs, usable, skipped, layout)


def build_plan(source_docs: Sequence[np.ndarray], lengths: np.ndarray, splittable: np.ndarray,
               weights: np.ndarray, seq_len: int, seed: int, num_samples: int | None,
               window: int = DEFAULT_WINDOW, labels: Sequence[str] | None = None, split_index: int = 0,
               text_fill: bool = False):
    """Plan arrays of as many blend epochs as `num_samples` needs (one epoch when None). Pure numpy."""
    capacity = seq_len + 1
    labels = list(labels or [f"source {i}" for i in range(len(source_docs))])
    streams = [SourceStream(d, lengths[d], (seed, split_index), i, lab)
               for i, (d, lab) in enumerate(zip(source_docs, labels))]
    budget = int(sum(int(lengths[d].sum()) for d in source_docs))
    plans, orders, epoch_offsets, total, packed = [], [], [0], 0, 0
    epoch = 0
    while True:
        src, pos = blend_epoch(streams, weights, budget, (seed, split_index), epoch)
        ids = np.empty(len(src), dtype=np.int64)
        for i, d in enumerate(source_docs):
            mask = src == i
            ids[mask] = d[pos[mask]]
        plan = pack_documents(ids, lengths[ids], splittable[ids], capacity, window, text_fill)
        packed += len(ids)
        rng = np.random.default_rng([seed, _TAG_SAMPLES, split_index, epoch])
        orders.append(rng.permutation(len(plan)).astype(np.int64) + total)
        plans.append(plan)
        total += len(plan)
        epoch_offsets.append(total)
        epoch += 1
        if num_samples is None or total >= num_samples:
            break
    plan = concat_plans(plans)
    arrays = {
        "sample_offsets": plan.sample_offsets, "piece_doc": plan.piece_doc, "piece_start": plan.piece_start,
        "piece_len": plan.piece_len, "sample_order": np.concatenate(orders),
        "epoch_offsets": np.asarray(epoch_offsets, dtype=np.int64),
    }
    info = {"epochs": epoch, "samples": total, "documents_packed": packed, "pieces": int(len(plan.piece_doc)),
            "extra_pieces": int(len(plan.piece_doc)) - packed,  # pieces beyond one per document (splits)
            "pad_tokens": plan.pad_tokens(capacity),
            "pad_fraction": plan.pad_tokens(capacity) / max(1, total * capacity)}
    return arrays, info


def data_metrics(info: Mapping) -> dict:
    """What a run records about its data once at the start: oversize vision documents left out."""
    return {"data_oversize_vision_skipped": int(sum(info.get("skipped_oversize_vision", {}).values())),
            "data_oversize_vision_fraction": float(info.get("oversize_vision_fraction", 0.0))}


class PackedDataset:
    """Packed samples of one split: ``len(ds)`` samples, ``ds[i]`` a sample dict (see `sample.py`)."""

    def __init__(self, corpus: Corpus, arrays: Mapping[str, np.ndarray], seq_len: int,
                 table: LossWeightTable, name: str = "train", info: Mapping | None = None):
        self.corpus, self.seq_len, self.table, self.name = corpus, seq_len, table, name
        self.plan = PackingPlan(arrays["sample_offsets"], arrays["piece_doc"], arrays["piece_start"],
                                arrays["piece_len"])
        self.sample_order = arrays["sample_order"]
        self.epoch_offsets = arrays["epoch_offsets"]
        self.info = dict(info or {})

    def __getstate__(self):
        # memory maps would be pickled as full copies: send the cache path and reopen it instead
        state = dict(self.__dict__)
        if self.info.get("cache"):
            for key in ("plan", "sample_order", "epoch_offsets"):
                state.pop(key)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        if "plan" not in state:
            loaded = index_cache.load_cached(self.info["cache"])
            if loaded is None:
                raise FileNotFoundError(f"the data index {self.info['cache']} is gone; rebuild the datasets")
            arrays = loaded[0]
            self.plan = PackingPlan(arrays["sample_offsets"], arrays["piece_doc"], arrays["piece_start"],
                                    arrays["piece_len"])
            self.sample_order, self.epoch_offsets = arrays["sample_order"], arrays["epoch_offsets"]

    def __len__(self) -> int:
        return len(self.sample_order)

    def epoch_of(self, idx: int) -> int:
        """The blend epoch sample `idx` belongs to."""
        return int(np.searchsorted(self.epoch_offsets, idx, side="right")) - 1

    def pieces(self, idx: int) -> list[tuple[int, int, int]]:
        """(global document id, start, length) of every piece of sample `idx`, in window order."""
        docs, starts, lens = self.plan.pieces(int(self.sample_order[idx]))
        return list(zip(docs.tolist(), starts.tolist(), lens.tolist()))

    def __getitem__(self, idx: int) -> dict[str, np.ndarray]:
        if not -len(self) <= idx < len(self):
            raise IndexError(f"{self.name} sample {idx} out of range: the dataset has {len(self)} samples "
                             "(built for the requested number of samples; rebuild with more)")
        idx = int(idx) % len(self)
        tokens, kinds = [], []
        for doc, start, length in self.pieces(idx):
            shard, local = self.corpus.locate(doc)
            piece = shard.read(local, start, length)
            shard.check_tokens(local, piece)
            tokens.append(piece)
            kinds.append(int(shard.kinds[local]))
        return assemble_sample(tokens, kinds, self.seq_len, self.table)


def _split_dataset(spec: BlendSpec, corpus: Corpus, weights: np.ndarray, split_index: int, seq_len: int,
                   seed: int, num_samples: int | None, is_builder) -> PackedDataset | None:
    name = SPLIT_NAMES[split_index]
    fractions = spec.split
    docs, keep_weights, labels = [], [], []
    for i, (src, source_docs) in enumerate(zip(spec.sources, corpus.source_docs)):
        # the split is drawn over all documents, so it does not move when seq_len changes what fits
        part = source_docs[split_documents(len(source_docs), fractions, spec.split_seed, i)[split_index]]
        part = part[corpus.usable[part]]
        if len(part) == 0:
            if split_index == 0:
                raise ValueError(f"blend component {src.label!r} has no training documents with "
                                 f"data.split={fractions}; give it more data or change the split")
            logger.warning("blend component %r has no %s documents (%d in total): left out of the %s blend",
                           src.label, name, len(source_docs), name)
            continue
        docs.append(part)
        keep_weights.append(weights[i])
        labels.append(src.label)
    if not docs:
        logger.warning("no %s documents in any blend component with data.split=%s: no %s dataset",
                       name, fractions, name)
        return None
    w = np.asarray(keep_weights) / np.sum(keep_weights)
    description = {
        "version": INDEX_VERSION, "split": name, "split_fractions": list(fractions), "split_seed": spec.split_seed,
        "shards": [s.fingerprint() for s in corpus.shards],
        "sources": [[list(src.prefixes), float(wt)] for src, wt in zip(spec.sources, weights)],
        "seq_len": seq_len, "seed": seed, "num_samples": num_samples, "window": spec.pack_window,
        "oversize_vision": spec.oversize_vision, "text_fill": spec.text_fill,
    }
    cache_root = spec.cache_dir or os.path.join(os.path.dirname(os.path.abspath(corpus.shards[0].prefix)),
                                                "index_cache")
    splittable = corpus.kinds == DocKind.TEXT

    def build():
        arrays, info = build_plan(docs, corpus.lengths, splittable, w, seq_len, seed, num_samples,
                                  spec.pack_window, labels, split_index, spec.text_fill)
        info["documents"] = int(sum(len(d) for d in docs))
        return arrays, info

    arrays, meta = index_cache.load_or_build(cache_root, f"emu3-{name}", description, build, is_builder)
    info = dict(meta["info"], skipped_oversize_vision=dict(zip([s.label for s in spec.sources], corpus.skipped)),
                oversize_vision_fraction=max(n / len(d) for n, d in zip(corpus.skipped, corpus.source_docs)),
                cache=index_cache.cache_path(cache_root, f"emu3-{name}", description),
                vision_layout=corpus.layout.record())
    logger.info("%s data: %d samples of %d tokens, %d epoch(s), pad fraction %.4f, index %s", name,
                info["samples"], seq_len, info["epochs"], info["pad_fraction"], info["cache"])
    return PackedDataset(corpus, arrays, seq_len, LossWeightTable(spec.loss_policy, spec.vision_loss_weight),
                         name, info)


def build_datasets(data_cfg: DataConfig | BlendSpec, seq_len: int, seed: int, train_samples: int | None,
                   valid_samples: int | None = None, *, is_builder: bool | None = None,
                   ) -> tuple[PackedDataset, PackedDataset | None]:
    """Train and valid `PackedDataset` of a blend (valid is None when the split gives it nothing).

    `data_cfg`: a `BlendSpec`, or the config tree's data section (see `blend_spec_from_config`).
    `train_samples` / `valid_samples`: samples the run will read (None: one blend epoch); the dataset
    holds at least that many. Every rank must call this (rank 0 builds the index, see `index_cache`).
    """
    spec = blend_spec_from_config(data_cfg)
    LossWeightTable(spec.loss_policy, spec.vision_loss_weight)  # fail early on a bad policy
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    corpus = open_corpus(spec, seq_len)
    weights = normalise_weights([s.weight for s in spec.sources], [s.label for s in spec.sources])
    train = _split_dataset(spec, corpus, weights, 0, seq_len, seed, train_samples, is_builder)
    valid = None
    if spec.split[1] > 0:
        valid = _split_dataset(spec, corpus, weights, 1, seq_len, seed, valid_samples, is_builder)
    return train, valid
