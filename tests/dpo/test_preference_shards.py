"""Preference shards: round trip, and every bad input gives an error naming the file/record."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from megatron_emu3.dpo.loss import dpo_pair_losses, sequence_logps
from megatron_emu3.dpo.shards import PreferenceFormatError, PreferenceShard, check_triplet, write_preferences
from megatron_emu3.dpo.batches import preference_batch, sequence_sample
from tests.dpo.scenarios import VOCAB, synthetic_triplets

ROOT = Path(__file__).resolve().parents[2]


def test_round_trip_keeps_exact_sequences(tmp_path):
    triplets = synthetic_triplets(5)
    meta = write_preferences(tmp_path / "p", triplets, VOCAB)
    shard = PreferenceShard(tmp_path / "p", VOCAB)
    assert meta["records"] == len(shard) == 5
    for (prompt, chosen, rejected), pref in zip(triplets, shard.records):
        assert np.array_equal(pref.prompt, prompt) and np.array_equal(pref.chosen, chosen)
        assert np.array_equal(pref.rejected, rejected)


@pytest.mark.parametrize("triplet, message", [
    (([1, 2], [1, 2, 600], [1, 2, 4]), "outside the vocabulary"),
    (([1, 2], [1, 2, 3], [9, 2, 4]), "rejected does not start with the prompt"),
    (([1, 2], [1, 3, 3], [1, 2, 4]), "chosen does not start with the prompt"),
    (([1, 2], [1, 2], [1, 2, 4]), "no completion"),
    (([], [1, 2], [1, 3]), "prompt is empty"),
    (([1], [1, 2], [1, 2]), "identical"),
])
def test_bad_records_are_named(tmp_path, triplet, message):
    good = synthetic_triplets(2)
    with pytest.raises(PreferenceFormatError, match=rf"record 2: .*{message}"):
        write_preferences(tmp_path / "p", [*good, triplet], VOCAB)


def test_bad_files(tmp_path):
    with pytest.raises(PreferenceFormatError, match="does not exist.*make_preferences"):
        PreferenceShard(tmp_path / "missing", VOCAB)
    write_preferences(tmp_path / "p", synthetic_triplets(3), VOCAB)
    with pytest.raises(PreferenceFormatError, match=r"record \d+: .* outside the vocabulary \[0, 100\)"):
        PreferenceShard(tmp_path / "p", 100)  # read with a smaller vocabulary
    meta = json.loads((tmp_path / "p.json").read_text())
    (tmp_path / "p.json").write_text(json.dumps({**meta, "records": 7}))
    with pytest.raises(PreferenceFormatError, match="3 sequences"):
        PreferenceShard(tmp_path / "p", VOCAB)
    (tmp_path / "p.json").write_text(json.dumps({**meta, "format": "something"}))
    with pytest.raises(PreferenceFormatError, match="not 'emu3-preferences'"):
        PreferenceShard(tmp_path / "p", VOCAB)


def test_sequence_longer_than_context_is_an_error():
    with pytest.raises(ValueError, match="record 7 .* 10 tokens .* data.seq_length=4"):
        sequence_sample(np.arange(10), 3, 4, "record 7")


def test_batch_marks_completion_labels_only():
    pref = check_triplet([5, 6, 7], [5, 6, 7, 8, 9], [5, 6, 7, 10], VOCAB, "r")
    batch = preference_batch([pref], 8, "cpu")
    assert batch["tokens"].shape == (2, 8)
    # labels 8, 9 of chosen and 10 of rejected are the completion
    assert batch["labels"][0, :4].tolist() == [6, 7, 8, 9]
    assert batch["loss_weights"][0].tolist() == [0, 0, 1, 1, 0, 0, 0, 0]
    assert batch["loss_weights"][1].tolist() == [0, 0, 1, 0, 0, 0, 0, 0]


def test_dpo_loss_formula():
    import torch

    pc, pr, rc, rr = (torch.tensor([v], dtype=torch.float64) for v in (-3.0, -5.0, -4.0, -4.5))
    loss, margin = dpo_pair_losses(pc, pr, rc, rr, beta=0.2)
    assert margin.item() == pytest.approx(1.5)
    assert loss.item() == pytest.approx(np.log1p(np.exp(-0.3)))
    ce = torch.tensor([[1.0, 2.0, 4.0]])
    assert sequence_logps(ce, torch.tensor([[0.0, 1.0, 1.0]])).item() == -6.0


def test_make_preferences_tool(tmp_path):
    sample = {"ids": [1, 2, 3, 40, 41], "prompt_length": 3}
    (tmp_path / "a.json").write_text(json.dumps(sample))
    (tmp_path / "b.json").write_text(json.dumps({**sample, "ids": [1, 2, 3, 50]}))
    lines = [{"chosen": "a.json", "rejected": "b.json"}, {"prompt": [7, 8], "chosen": [7, 8, 9], "rejected": [7, 8, 1]}]
    (tmp_path / "pairs.jsonl").write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    tool = [sys.executable, str(ROOT / "tools" / "make_preferences.py"), "--vocab-size", str(VOCAB)]
    ok = subprocess.run([*tool, "--input", str(tmp_path / "pairs.jsonl"), "--output", str(tmp_path / "out")],
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stderr
    shard = PreferenceShard(tmp_path / "out", VOCAB)
    assert shard[0].prompt.tolist() == [1, 2, 3] and shard[0].rejected.tolist() == [1, 2, 3, 50]
    (tmp_path / "bad.jsonl").write_text(json.dumps({"prompt": [7, 8], "chosen": [7, 8, 9], "rejected": [6, 8, 1]}))
    bad = subprocess.run([*tool, "--input", str(tmp_path / "bad.jsonl"), "--output", str(tmp_path / "x")],
                         capture_output=True, text=True)
    assert bad.returncode == 2
    assert "bad.jsonl:1: rejected does not start with the prompt" in bad.stderr
