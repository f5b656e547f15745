"""The HF converters as users run them: export loads in transformers and generates, AutoTokenizer
gives our ids, HF -> ours -> HF is bitwise identical, --verify passes, bad inputs exit 2 clearly."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from megatron_emu3.data import tokens

REPO = Path(__file__).resolve().parents[2]
TINY = str(REPO / "examples/recipes/tiny.yaml")


def _run(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=timeout)


def _tiny_text_config(vocab: int = 512):
    from megatron_emu3.config.loading import resolve_config
    from megatron_emu3.convert.hf_config import to_hf_text_config

    return to_hf_text_config(resolve_config(TINY, [f"model.vocab_size={vocab}"]).model, 256)


@pytest.fixture(scope="module")
def trained_checkpoint(tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("train") / "run"
    proc = _run("-m", "megatron_emu3.train", "--config", TINY, f"run_dir={run_dir}", "train.iters=2",
                "model.vocab_size=512", "optimizer.warmup_iters=1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return run_dir / "checkpoints"


def test_export_loads_generates_and_verifies(tmp_path, trained_checkpoint):
    from transformers import AutoTokenizer, Emu3ForCausalLM

    out = tmp_path / "hf"
    proc = _run("tools/convert_to_hf.py", "--checkpoint", str(trained_checkpoint), "--output", str(out),
                "--verify", "--dtype", "fp32")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "verify: max |logit difference|" in proc.stdout
    config = json.loads((out / "config.json").read_text())
    assert config["architectures"] == ["Emu3ForCausalLM"] and config["vocab_size"] == 512
    assert config["rope_parameters"]["rope_theta"] == 1_000_000
    model = Emu3ForCausalLM.from_pretrained(out).eval()
    prompt = torch.tensor([[5, 28, 23, 58]])
    generated = model.generate(prompt, max_new_tokens=6, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert generated.shape == (1, 10) and torch.equal(generated[:, :4], prompt)
    tokenizer = AutoTokenizer.from_pretrained(out)
    ids = tokenizer("<|extra_203|>a red circle<|image start|><|visual token 000005|><|extra_204|>",
                    add_special_tokens=False)["input_ids"]
    assert ids[0] == tokens.BOS and ids[-3:] == [tokens.SOV, tokens.FIRST_VISION_CODE + 5, tokens.EOS]
    assert len(tokenizer) == tokens.VOCAB_SIZE


def test_hf_to_ours_to_hf_is_identical(tmp_path):
    from safetensors.torch import load_file
    from transformers import Emu3ForCausalLM

    torch.manual_seed(0)
    original = Emu3ForCausalLM(_tiny_text_config(500))
    original.save_pretrained(tmp_path / "orig")
    ckpt = tmp_path / "ckpt"
    proc = _run("tools/convert_from_hf.py", "--hf", str(tmp_path / "orig"), "--output", str(ckpt), "--verify",
                "--tp", "2")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (ckpt / "latest").read_text().strip() == "iter_0000000"
    assert "parallel:\n  tp: 2" in (ckpt / "iter_0000000" / "config.yaml").read_text()
    proc = _run("tools/convert_to_hf.py", "--checkpoint", str(ckpt), "--output", str(tmp_path / "back"),
                "--dtype", "fp32")
    assert proc.returncode == 0, proc.stderr[-3000:]
    before = load_file(tmp_path / "orig" / "model.safetensors")
    after = load_file(tmp_path / "back" / "model.safetensors")
    assert set(before) == set(after)
    for name in before:
        assert torch.equal(before[name], after[name]), name


def test_export_with_vq_is_a_conditional_generation_model(tmp_path, trained_checkpoint):
    from transformers import Emu3ForConditionalGeneration, Emu3VQVAE

    from megatron_emu3.data.vision_tokenizer import save_tiny_vq

    vq = Emu3VQVAE.from_pretrained(save_tiny_vq(tmp_path / "vq"))
    out = tmp_path / "hf"
    proc = _run("tools/convert_to_hf.py", "--checkpoint", str(trained_checkpoint), "--output", str(out),
                "--vq-dir", str(tmp_path / "vq"), "--verify", "--dtype", "fp32")
    assert proc.returncode == 0, proc.stderr[-3000:]
    model = Emu3ForConditionalGeneration.from_pretrained(out).eval()
    assert model.config.vocabulary_map["<|visual token 000000|>"] == tokens.FIRST_VISION_CODE
    for name, tensor in vq.state_dict().items():
        assert torch.equal(model.model.vqmodel.state_dict()[name], tensor), name


def test_other_architecture_is_refused(tmp_path):
    from transformers import LlamaConfig

    LlamaConfig(vocab_size=64, hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                num_attention_heads=2).save_pretrained(tmp_path / "llama")
    proc = _run("tools/convert_from_hf.py", "--hf", str(tmp_path / "llama"), "--output", str(tmp_path / "o"))
    assert proc.returncode == 2
    assert "holds a 'llama' model" in proc.stderr and "Emu3" in proc.stderr


def test_wrong_vocab_size_is_refused(tmp_path, trained_checkpoint):
    proc = _run("tools/convert_to_hf.py", "--checkpoint", str(trained_checkpoint), "--output", str(tmp_path / "o"),
                "--vocab-size", "184622")
    assert proc.returncode == 2
    assert "--vocab-size 184622 does not match the checkpoint's vocabulary 512" in proc.stderr


def test_missing_checkpoint_is_refused(tmp_path):
    proc = _run("tools/convert_to_hf.py", "--checkpoint", str(tmp_path / "none"), "--output", str(tmp_path / "o"))
    assert proc.returncode == 2
    assert "no complete checkpoint" in proc.stderr


def test_export_of_a_pipeline_checkpoint_verifies(tmp_path):
    """A checkpoint trained under PP=2 (torchrun) exports to HF in one process and passes --verify;
    the same one-process loader serves tools/generate.py."""
    from tests.distributed.launcher import free_port

    run_dir = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc-per-node=2",
                           f"--master-port={free_port()}", "-m", "megatron_emu3.train", "--config", TINY,
                           f"run_dir={run_dir}", "train.iters=2", "model.vocab_size=512", "optimizer.warmup_iters=1",
                           "parallel.pp=2"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = _run("tools/convert_to_hf.py", "--checkpoint", str(run_dir / "checkpoints"), "--output",
                str(tmp_path / "hf"), "--verify", "--dtype", "fp32")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "verify: max |logit difference|" in proc.stdout
