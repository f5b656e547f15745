"""Logits parity with transformers: a random tiny Emu3ForCausalLM, its weights mapped into our
megatron-core model (TP=1 and TP=2), the same tokens -> logits within 2e-5 (fp32; the two
implementations order the same sums differently). Also: ours -> HF -> ours is the identity."""

from __future__ import annotations

import pytest
import torch

from megatron_emu3.config.loading import resolve_config
from megatron_emu3.config.validation import padded_vocab_size
from megatron_emu3.convert.hf_config import from_hf_text_config, to_hf_text_config
from megatron_emu3.convert.hf_mapping import from_hf, to_hf
from tests.distributed.launcher import run_ranks
from tests.distributed.scenarios import RECIPE, logits_from_full_state

VOCAB = 500  # not a multiple of 128: exercises the padding rows


@pytest.fixture(scope="module")
def hf_model():
    from transformers import Emu3ForCausalLM

    torch.manual_seed(0)
    cfg = resolve_config(RECIPE, [f"model.vocab_size={VOCAB}"]).model
    model = Emu3ForCausalLM(to_hf_text_config(cfg, max_position_embeddings=256)).eval()
    return cfg, model


@pytest.mark.parametrize("tp", [1, 2])
def test_logits_match_transformers(tmp_path, hf_model, tp):
    model_cfg, hf = hf_model
    fields = from_hf_text_config(hf.config)
    overrides = [f"model.{k}={v}" for k, v in fields.items()]
    full = from_hf(hf.state_dict(), model_cfg, padded_vocab_size(VOCAB, 128, tp))
    torch.save(full, tmp_path / "full.pt")
    tokens = torch.randint(0, VOCAB, (2, 40), generator=torch.Generator().manual_seed(1))
    torch.save(tokens, tmp_path / "tokens.pt")
    with torch.no_grad():
        expected = hf(tokens).logits.float()
    with torch.no_grad():  # transformers' next-token loss, per token, over the real vocabulary
        hf_ce = torch.nn.functional.cross_entropy(hf(tokens[:, :-1]).logits.float().transpose(1, 2), tokens[:, 1:],
                                                  reduction="none")
    results = run_ranks(tp, logits_from_full_state, overrides + [f"parallel.tp={tp}"],
                        str(tmp_path / "full.pt"), str(tmp_path / "tokens.pt"))
    for got in results:
        assert (got["logits"] - expected).abs().max().item() < 2e-5
        assert got["padding_max"].item() == float("-inf")  # padding rows never take part in softmax
        assert (got["ce"] - hf_ce).abs().max().item() < 2e-5


def test_round_trip_is_identity(hf_model):
    model_cfg, hf = hf_model
    hf_state = hf.state_dict()
    ours = from_hf(hf_state, model_cfg, padded_vocab_size(VOCAB, 128, 1))
    back = to_hf(ours, model_cfg)
    assert set(back) == set(hf_state)
    for name, tensor in hf_state.items():
        assert torch.equal(back[name], tensor), name
    again = from_hf(back, model_cfg, padded_vocab_size(VOCAB, 128, 1))
    for name, tensor in ours.items():
        assert torch.equal(again[name], tensor), name


def test_config_round_trip(hf_model):
    model_cfg, hf = hf_model
    fields = from_hf_text_config(hf.config)
    for key, value in fields.items():
        assert getattr(model_cfg, key) == value, key
