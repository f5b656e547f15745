"""Loss weights are exactly the table: per kind and token class, for pretrain and QFT."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from megatron_emu3.data.loss_weights import LossWeightTable
from megatron_emu3.data.packing import assemble_sample
from megatron_emu3.data.tokens import EOV, FIRST_VISION_CODE, SOV, DocKind
from tests.data.shard_factory import generation_doc, random_doc, understanding_doc

K = DocKind


def test_table_values():
    pre = LossWeightTable("pretrain", 0.5).weights
    assert pre[K.TEXT].tolist() == [1.0, 1.0, 0.5]
    for kind in (K.IMAGE_GENERATION, K.VIDEO_GENERATION):
        assert pre[kind].tolist() == [1.0, 1.0, 0.5]
    for kind in (K.IMAGE_UNDERSTANDING, K.VIDEO_UNDERSTANDING):
        assert pre[kind].tolist() == [1.0, 0.0, 0.0]
    qft = LossWeightTable("qft").weights
    assert qft[K.IMAGE_GENERATION].tolist() == [0, 0, 1] and qft[K.VIDEO_GENERATION].tolist() == [0, 0, 1]
    for kind in (K.TEXT, K.IMAGE_UNDERSTANDING, K.VIDEO_UNDERSTANDING):
        assert qft[kind].tolist() == [0, 0, 0]
    assert LossWeightTable("pretrain", 0.25).weights[K.IMAGE_GENERATION, 2] == 0.25


def test_bad_policy_and_weight():
    with pytest.raises(ValueError, match="loss_policy='sft' is unknown"):
        LossWeightTable("sft")
    with pytest.raises(ValueError, match="vision_loss_weight must be a finite number >= 0"):
        LossWeightTable("pretrain", -1.0)


def reference_weights(doc: np.ndarray, kind: int, policy: str, v: float) -> list[float]:
    """Weight of every label inside one document, written out token by token."""
    out, in_block = [], False
    understanding = kind in (K.IMAGE_UNDERSTANDING, K.VIDEO_UNDERSTANDING)
    generation = kind in (K.IMAGE_GENERATION, K.VIDEO_GENERATION)
    block_flags = []
    for t in doc:
        if t == SOV:
            in_block = True
        block_flags.append(in_block)
        if t == EOV:
            in_block = False
    for t, blk in zip(doc[1:], block_flags[1:]):
        code = t >= FIRST_VISION_CODE
        if policy == "qft":
            out.append(1.0 if generation and code else 0.0)
        elif understanding and (blk or code):
            out.append(0.0)
        elif code:
            out.append(v)
        else:
            out.append(1.0)
    return out


@settings(max_examples=80, deadline=None)
@given(st.lists(st.sampled_from(list(DocKind)), min_size=1, max_size=5), st.integers(0, 2**31),
       st.sampled_from(["pretrain", "qft"]), st.sampled_from([0.5, 0.1]), st.integers(0, 30))
def test_sample_weights_are_exactly_the_table(kinds, seed, policy, v, pad):
    rng = np.random.default_rng(seed)
    docs = [random_doc(rng, int(k)) for k in kinds]
    seq_len = sum(len(d) for d in docs) + pad - 1
    s = assemble_sample(docs, kinds, seq_len, LossWeightTable(policy, v))
    expected = []
    for doc, kind in zip(docs, kinds):
        expected += reference_weights(doc, kind, policy, v) + [0.0]  # last token predicts the next doc
    expected = (expected + [0.0] * pad)[:seq_len]
    np.testing.assert_array_equal(s["loss_weights"], np.asarray(expected, dtype=np.float32))


def test_named_positions_of_generation_and_understanding_docs():
    rng = np.random.default_rng(0)
    gen = generation_doc(rng, caption=3, h=2, w=2)
    und = understanding_doc(rng, caption=3, h=2, w=2)
    s = assemble_sample([gen, und], [K.IMAGE_GENERATION, K.IMAGE_UNDERSTANDING], len(gen) + len(und) - 1,
                        LossWeightTable())
    w, labels = s["loss_weights"], s["labels"]
    g = slice(0, len(gen) - 1)
    assert np.all(w[g][labels[g] >= FIRST_VISION_CODE] == 0.5)
    assert np.all(w[g][labels[g] < FIRST_VISION_CODE] == 1.0)  # caption, SOV, meta, SOT, EOL, EOF, EOV, EOS
    assert w[len(gen) - 1] == 0.0  # EOS -> next document's BOS
    u = w[len(gen):]
    block_end = int(np.flatnonzero(und == EOV)[0])  # position of EOV in the document
    assert np.all(u[:block_end] == 0.0)  # SOV .. EOV as labels
    assert np.all(u[block_end:] == 1.0)  # caption and EOS
