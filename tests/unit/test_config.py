"""Config tree: resolution order, strict keys, one test per validation rule, saved config reloads."""

from __future__ import annotations

from pathlib import Path

import pytest

from megatron_emu3.config.loading import ConfigError, resolve_config, save_config
from megatron_emu3.config.presets import MODEL_PRESETS
from megatron_emu3.config.validation import padded_vocab_size, validate_config
from megatron_emu3.model.params import count_parameters

RECIPES = Path(__file__).resolve().parents[2] / "examples" / "recipes"
TINY = str(RECIPES / "tiny.yaml")


def test_emu3_8b_parameter_count_is_exact():
    cfg = resolve_config(None, ["preset=emu3_8b"])
    counts = count_parameters(cfg.model)
    assert counts["total"] == 8_492_011_520
    assert counts["per_layer"] == 218_112_000
    assert counts["embeddings"] == 2 * 184_622 * 4096


def test_emu3_8b_preset_is_the_paper_architecture():
    m = MODEL_PRESETS["emu3_8b"]
    assert (m["num_layers"], m["hidden_size"], m["ffn_hidden_size"]) == (32, 4096, 14336)
    assert (m["num_attention_heads"], m["num_query_groups"], m["vocab_size"]) == (32, 8, 184_622)
    assert m["rope_base"] == 1_000_000 and m["hidden_dropout"] == 0.1 and m["untie_embeddings"]


@pytest.mark.parametrize("tp,expected", [(1, 185_344), (2, 185_344), (4, 185_344), (8, 185_344), (16, 186_368)])
def test_padded_vocab_does_not_depend_on_tp_up_to_8(tp, expected):
    assert padded_vocab_size(184_622, 128, tp) == expected


def test_resolution_order_defaults_preset_recipe_overrides():
    cfg = resolve_config(TINY, ["model.num_layers=3", "seed=7"])
    assert cfg.model.hidden_size == MODEL_PRESETS["tiny"]["hidden_size"]  # preset
    assert cfg.data.seq_length == 64  # recipe
    assert cfg.model.num_layers == 3 and cfg.seed == 7  # overrides
    assert cfg.optimizer.adam_beta1 == 0.9  # default


def test_stage2_inherits_stage1_and_changes_what_differs():
    s1 = resolve_config(str(RECIPES / "emu3_8b_stage1.yaml"))
    s2 = resolve_config(str(RECIPES / "emu3_8b_stage2.yaml"))
    assert s2.data.seq_length == 131_072 and s2.parallel.cp > 1
    assert s2.checkpoint.load_weights_from and not s1.checkpoint.load_weights_from
    assert s2.optimizer.lr == s1.optimizer.lr == 5e-5
    assert any("video" in s.prefix for s in s2.data.sources)
    assert s2.model == s1.model


@pytest.mark.parametrize("recipe,world", [("emu3_8b_stage1.yaml", 64), ("emu3_8b_stage2.yaml", 128), ("tiny.yaml", 2)])
def test_recipes_validate(recipe, world):
    validate_config(resolve_config(str(RECIPES / recipe)), world)


def test_saved_config_reloads_identically(tmp_path):
    cfg = resolve_config(TINY, ["parallel.tp=2"])
    save_config(cfg, tmp_path / "config.yaml")
    assert resolve_config(str(tmp_path / "config.yaml")) == cfg


def test_unknown_key_names_the_key(tmp_path):
    with pytest.raises(ConfigError, match=r"unknown config key 'model.hiden_size'"):
        resolve_config(TINY, ["model.hiden_size=3"])
    bad = tmp_path / "bad.yaml"
    bad.write_text("base: " + TINY + "\ntrain:\n  itres: 3\n")
    with pytest.raises(ConfigError, match=r"train.itres.*bad.yaml"):
        resolve_config(str(bad))


def test_wrong_type_is_an_error():
    with pytest.raises(ConfigError, match=r"parallel.tp.*expected int"):
        resolve_config(TINY, ["parallel.tp=two"])


def test_override_without_equals_is_an_error():
    with pytest.raises(ConfigError, match="not key=value"):
        resolve_config(TINY, ["parallel.tp"])


def test_base_loop_is_an_error(tmp_path):
    (tmp_path / "a.yaml").write_text("base: b.yaml\n")
    (tmp_path / "b.yaml").write_text("base: a.yaml\n")
    with pytest.raises(ConfigError, match="loops"):
        resolve_config(str(tmp_path / "a.yaml"))


RULES = [
    (["model.num_query_groups=3"], 1, r"num_attention_heads=4 is not divisible by model.num_query_groups=3"),
    (["parallel.tp=8"], 8, r"num_attention_heads=4 is not divisible by parallel.tp=8"),
    (["parallel.cp=2", "data.seq_length=66"], 2, r"seq_length=66 is not divisible by 2\*parallel.cp=4"),
    (["parallel.tp=2"], 3, r"world size 3 is not divisible by parallel.tp\*cp\*pp"),
    (["data.global_batch_size=6", "data.micro_batch_size=4"], 1, r"global_batch_size=6 is not divisible"),
    (["parallel.sequence_parallel=true"], 1, r"sequence_parallel=true needs parallel.tp > 1"),
    (["parallel.pp=2", "model.num_layers=3"], 2, r"num_layers=3 is not divisible by parallel.pp=2"),
    (["parallel.pp=2", "parallel.vpp=2"], 2, r"num_layers=2 is not divisible by parallel.pp x parallel.vpp = 4"),
    (["parallel.pp=3", "model.num_layers=6", "parallel.first_stage_layers=1"], 3,
     r"the other 2 stage\(s\) must split the remaining 5"),
    (["parallel.vpp=2"], 1, r"parallel.vpp / first_stage_layers / last_stage_layers need parallel.pp > 1"),
    (["parallel.recompute=sometimes"], 1, r"parallel.recompute='sometimes' is not one of"),
    (["data.source=shards"], 1, r"data.source=shards needs data.sources"),
    (["optimizer.warmup_iters=100", "train.iters=10"], 1, r"warmup_iters=100 is longer than the schedule"),
    (["model.hidden_size=66"], 1, r"hidden_size=66 is not divisible by model.num_attention_heads"),
    (["data.synthetic_vocab=100000", "model.vocab_size=512"], 1, r"synthetic_vocab=100000 exceeds model.vocab_size"),
]


@pytest.mark.parametrize("overrides,world,message", RULES)
def test_each_invalid_combination_is_named(overrides, world, message):
    cfg = resolve_config(TINY, overrides)
    with pytest.raises(ConfigError, match=message):
        validate_config(cfg, world)


@pytest.mark.parametrize("choice,expected", [("auto", False), ("fused", True), ("unfused", False)])
def test_fused_kernels_translate_to_megatron_fusions(choice, expected):
    """auto means unfused on this CUDA-less machine; kernels needing TE or apex stay off without them."""
    from megatron_emu3.config.to_mcore import transformer_config

    tc = transformer_config(resolve_config(None, ["preset=tiny", f"train.fused_kernels={choice}"]))
    assert tc.bias_activation_fusion is expected and tc.bias_dropout_fusion is expected
    assert not tc.apply_rope_fusion and not tc.gradient_accumulation_fusion and not tc.cross_entropy_loss_fusion


def test_preset_vocabulary_is_the_tokenizers():
    from megatron_emu3.config.presets import EMU3_VOCAB_SIZE
    from megatron_emu3.data import tokens

    assert EMU3_VOCAB_SIZE == tokens.VOCAB_SIZE == tokens.EMU3_VISION.vocab_size
