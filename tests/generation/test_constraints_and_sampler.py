"""Grid-constrained decoding always yields the requested grid (property test over random logits), and
the sampler's rules (CFG, temperature, top-k, top-p, seeds) on plain tensors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from megatron_emu3.data import tokens
from megatron_emu3.data.documents import VisionMeta, parse
from megatron_emu3.generation.api import GenerationError, decode, left_pad
from megatron_emu3.generation.constraints import TextOnlyLogitsProcessor, VisionGridLogitsProcessor, grid_length
from megatron_emu3.generation.sampler import choose, filter_logits, guide
from megatron_emu3.generation.sampling import SamplingConfig


class RandomLM:
    """A stand-in session: logits drawn from a seeded generator, spiky so that forbidden tokens often win."""

    def __init__(self, seed: int, scale: float, vocab: int = tokens.VOCAB_SIZE, max_length: int = 4096):
        self.gen, self.scale, self.vocab, self.max_length = torch.Generator().manual_seed(seed), scale, vocab, max_length

    def _logits(self, n: int) -> torch.Tensor:
        logits = torch.randn(n, self.vocab, generator=self.gen) * self.scale
        spikes = [tokens.EOL, tokens.EOF, tokens.EOV, tokens.EOS, tokens.BOS, 0]
        logits[:, spikes] += torch.rand(n, len(spikes), generator=self.gen) * 10 * self.scale
        return logits

    def start(self, ids, valid):
        return self._logits(ids.shape[0])

    def step(self, next_ids):
        return self._logits(next_ids.shape[0])

    def agree(self, tokens_):
        return tokens_  # one process


class FakeTokenizer:
    def encode(self, text):
        return [ord(c) for c in text]

    def decode(self, ids):
        return "".join(chr(i) for i in ids)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), frames=st.integers(1, 2), height=st.integers(1, 3), width=st.integers(1, 4),
       scale=st.sampled_from([0.1, 1.0, 30.0]), top_k=st.sampled_from([0, 1, 5, 2048]),
       top_p=st.sampled_from([0.3, 1.0]), guidance=st.sampled_from([1.0, 3.0]), num_codes=st.sampled_from([8, 300]))
def test_constrained_decoding_always_yields_the_grid(seed, frames, height, width, scale, top_k, top_p, guidance,
                                                     num_codes):
    tok = FakeTokenizer()
    meta = VisionMeta(height, width, frames, 8.0, frames * 0.5) if frames > 1 else VisionMeta(height, width)
    prompt = [tokens.BOS, 97, tokens.SOV, *tok.encode(meta.text()), tokens.SOT]
    uncond = [tokens.BOS, tokens.SOV, *tok.encode(meta.text()), tokens.SOT]
    n = grid_length(frames, height, width)
    sampling = SamplingConfig(top_k=top_k, top_p=top_p, temperature=1.0, guidance_scale=guidance, seed=seed)
    grid = VisionGridLogitsProcessor(len(prompt), frames, height, width, num_codes)
    lm = RandomLM(seed, scale, vocab=tokens.FIRST_VISION_CODE + num_codes + 5)  # a few ids past the codebook
    new = decode(lm, [prompt], n, sampling, [grid], [uncond] if guidance != 1 else None)[0]
    doc = parse(prompt + new, tok)
    expected = (frames, height, width) if frames > 1 else (height, width)
    assert doc.codes.shape == expected
    assert doc.codes.min() >= 0 and doc.codes.max() < num_codes


def test_guidance_rules():
    cond, uncond = torch.randn(2, 50), torch.randn(2, 50)
    assert torch.equal(guide(cond, uncond, 1.0), torch.log_softmax(cond, -1))
    assert torch.equal(guide(cond, None, 3.0), torch.log_softmax(cond, -1))
    lc, lu = torch.log_softmax(cond, -1), torch.log_softmax(uncond, -1)
    assert torch.allclose(guide(cond, uncond, 3.0), lu + 3.0 * (lc - lu))


def test_top_k_top_p_temperature():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]])
    kept = torch.isfinite(filter_logits(logits, SamplingConfig(top_k=2, top_p=1.0)))
    assert kept.tolist() == [[True, True, False, False, False]]
    probs = torch.softmax(logits, -1)[0]
    p = float(probs[0] + probs[1]) - 1e-3  # the first two tokens carry just over p
    kept = torch.isfinite(filter_logits(logits, SamplingConfig(top_k=0, top_p=p)))
    assert kept.tolist() == [[True, True, False, False, False]]
    assert torch.allclose(filter_logits(logits, SamplingConfig(top_k=0, temperature=2.0)), logits / 2)
    assert choose(logits, SamplingConfig(top_k=1), None).tolist() == [0]
    draws = [choose(logits, SamplingConfig(top_k=0, seed=0), torch.Generator().manual_seed(s)).item() for s in range(50)]
    assert len(set(draws)) > 1
    same = [choose(logits, SamplingConfig(top_k=0), torch.Generator().manual_seed(7)).item() for _ in range(3)]
    assert len(set(same)) == 1
    with pytest.raises(ValueError, match="top_p"):
        filter_logits(logits, SamplingConfig(top_k=0, top_p=0.0))


def test_text_only_and_padding_and_bad_requests():
    scores = TextOnlyLogitsProcessor()(None, torch.zeros(1, tokens.VOCAB_SIZE))
    assert torch.isinf(scores[0, tokens.SOT:]).all() and torch.isfinite(scores[0, : tokens.SOT]).all()
    ids, valid = left_pad([[5, 6, 7], [8]])
    assert ids.tolist() == [[5, 6, 7], [0, 0, 8]] and valid.tolist() == [[True] * 3, [False, False, True]]
    lm = RandomLM(0, 1.0, max_length=10)
    with pytest.raises(GenerationError, match="11 tokens, longer than the model context of 10"):
        decode(lm, [[1] * 11], 1, SamplingConfig(top_k=1))
    with pytest.raises(GenerationError, match="exceeds the model context of 10"):
        decode(lm, [[1] * 5], 6, SamplingConfig(top_k=1))
    with pytest.raises(ValueError, match="grid must be at least"):
        VisionGridLogitsProcessor(3, 1, 0, 4)
    np.testing.assert_equal(grid_length(2, 3, 4), 2 * (3 * 5 + 1) + 2)
