"""Generation from our checkpoint: KV cache = full forward, greedy tokens = transformers' greedy
generation from the HF export, CFG 1.0 = plain sampling, TP=2 = TP=1, the CLI writes PNG/MP4, and a
resolution that does not fit the context is a clear error."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from megatron_emu3.data import tokens
from megatron_emu3.data.vision_tokenizer import save_tiny_vq
from tests.distributed.launcher import run_ranks
from tests.generation.scenarios import CAPTION, TEXT_PROMPT, generate_from_checkpoint, make_checkpoint, tp_greedy


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("gen")
    ckpt, vq = root / "run" / "checkpoints", save_tiny_vq(root / "vq")
    run_ranks(1, make_checkpoint, str(ckpt))
    out = run_ranks(1, generate_from_checkpoint, str(ckpt), str(vq), str(root))[0]
    from megatron_emu3.convert.export import export_to_hf, load_hf_model

    export_to_hf(ckpt, root / "hf", vq_dir=vq, dtype="fp32")
    hf, _ = load_hf_model(root / "hf")
    return {"root": root, "ckpt": ckpt, "out": out, "hf": hf}


def test_kv_cache_equals_full_forward(world):
    out = world["out"]
    assert out["cache_vs_full"] < 1e-4
    assert out["padded_vs_alone"] < 1e-4  # left padding does not change a row
    assert out["greedy_text"] == out["greedy_text_no_cache"]


def test_greedy_matches_transformers_generate(world):
    hf, out = world["hf"], world["out"]
    with torch.no_grad():
        theirs = hf.generate(torch.tensor([TEXT_PROMPT]), do_sample=False, max_new_tokens=12, min_new_tokens=12,
                             eos_token_id=None, pad_token_id=0)
    assert out["greedy_text"] == theirs[0, len(TEXT_PROMPT):].tolist()


def test_greedy_image_matches_transformers_and_our_hf_session(world):
    from transformers import LogitsProcessorList

    from megatron_emu3.data.documents import VisionMeta
    from megatron_emu3.data.text_tokenizer import Emu3TextTokenizer
    from megatron_emu3.generation.api import generate_vision
    from megatron_emu3.generation.constraints import VisionGridLogitsProcessor, grid_length
    from megatron_emu3.generation.decoding import HFLM
    from megatron_emu3.generation.sampling import SamplingConfig

    hf, out = world["hf"], world["out"]
    assert out["greedy_codes"].shape == (3, 4)
    prompt = out["greedy_doc"][: out["greedy_doc"].index(tokens.SOT) + 1]
    n = grid_length(1, 3, 4)
    with torch.no_grad():
        theirs = hf.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=n, min_new_tokens=n,
                             eos_token_id=None, pad_token_id=0,
                             logits_processor=LogitsProcessorList([VisionGridLogitsProcessor(len(prompt), 1, 3, 4)]))
    assert theirs[0].tolist() == out["greedy_doc"]
    codes, _ = generate_vision(HFLM(hf), Emu3TextTokenizer.from_default(), CAPTION, VisionMeta(3, 4),
                               SamplingConfig(top_k=1, guidance_scale=1.0))
    assert np.array_equal(codes, out["greedy_codes"])


def test_cfg_one_equals_plain_sampling(world):
    out = world["out"]
    assert out["plain"] == out["cfg1"]
    assert out["cfg3"] != out["plain"]  # guidance does change the draw (same seed)


def test_cli_outputs_and_errors(world):
    from PIL import Image

    out, root = world["out"], world["root"]
    assert out["cli_image"] == 0 and out["cli_video"] == 0
    assert Image.open(root / "img.png").size == (3 * 8, 2 * 8)
    assert (root / "vid.mp4").stat().st_size > 0
    saved = json.loads((root / "img.json").read_text())
    assert saved["ids"][saved["prompt_length"] - 1] == tokens.SOT and saved["ids"][-1] == tokens.EOS
    assert out["cli_too_big"] == 2 and not (root / "no.png").exists()


def test_understanding_and_bad_requests_from_hf(world):
    from megatron_emu3.data.text_tokenizer import Emu3TextTokenizer
    from megatron_emu3.generation.api import GenerationError, check_fits, decode, understand
    from megatron_emu3.generation.decoding import HFLM
    from megatron_emu3.generation.sampling import SamplingConfig

    lm = HFLM(world["hf"])
    text, new = understand(lm, Emu3TextTokenizer.from_default(), np.zeros((2, 2), dtype=np.int64),
                           SamplingConfig(top_k=1), max_new_tokens=6)
    assert len(new) <= 6 and all(i < tokens.SOT for i in new) and isinstance(text, str)
    with pytest.raises(GenerationError, match="longer than the model context"):
        decode(lm, [[1] * (lm.max_length + 1)], 1, SamplingConfig(top_k=1))
    with pytest.raises(GenerationError, match=r"a 64x64 grid .* exceeds the model context of 64; ask for a smaller"):
        check_fits(10, 64 * 65 + 3, 64, "a 64x64 grid")


@pytest.mark.slow
def test_tensor_parallel_greedy_equals_single_rank(world):
    ranks = run_ranks(2, tp_greedy, str(world["ckpt"]), 2)
    assert ranks[0] == ranks[1] == world["out"]["greedy_text"]
