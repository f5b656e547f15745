"""Checkpoint directory rules: latest pointer, fallbacks, retention, partial directories."""

from __future__ import annotations

import logging

import pytest

from megatron_emu3.checkpoint import layout


def _complete(root, step):
    d = root / layout.iter_dir_name(step)
    d.mkdir(parents=True)
    (d / layout.METADATA).write_text("{}")
    return d


def _save(root, step, keep_last=0):
    partial = layout.partial_dir(root, step)
    partial.mkdir(parents=True)
    (partial / layout.METADATA).write_text("{}")
    return layout.commit(root, step, keep_last)


def test_commit_publishes_and_moves_latest(tmp_path):
    _save(tmp_path, 5)
    assert (tmp_path / "latest").read_text().strip() == "iter_0000005"
    assert layout.find_latest(tmp_path) == tmp_path / "iter_0000005"
    assert not layout.partial_dir(tmp_path, 5).exists()


def test_retention_keeps_last_n(tmp_path):
    for step in (1, 2, 3, 4):
        _save(tmp_path, step, keep_last=2)
    assert [p.name for p in layout.complete_checkpoints(tmp_path)] == ["iter_0000003", "iter_0000004"]


def test_latest_pointing_nowhere_falls_back_with_warning(tmp_path, caplog):
    _complete(tmp_path, 2)
    (tmp_path / "latest").write_text("iter_0000009\n")
    with caplog.at_level(logging.WARNING):
        assert layout.find_latest(tmp_path).name == "iter_0000002"
    assert "missing" in caplog.text


def test_half_written_directory_is_ignored(tmp_path, caplog):
    _complete(tmp_path, 2)
    (tmp_path / "iter_0000004").mkdir()  # no metadata.json: the save died
    (tmp_path / "latest").write_text("iter_0000004\n")
    with caplog.at_level(logging.WARNING):
        assert layout.find_latest(tmp_path).name == "iter_0000002"
    assert "incomplete" in caplog.text


def test_missing_latest_uses_newest_complete(tmp_path):
    _complete(tmp_path, 3)
    _complete(tmp_path, 7)
    layout.partial_dir(tmp_path, 9).mkdir()
    assert layout.find_latest(tmp_path).name == "iter_0000007"


def test_empty_or_missing_dir_means_fresh_start(tmp_path):
    assert layout.find_latest(tmp_path / "nothing") is None
    assert layout.find_latest(tmp_path) is None


def test_resolve_checkpoint_path_errors_clearly(tmp_path):
    with pytest.raises(FileNotFoundError, match="no complete checkpoint"):
        layout.resolve_checkpoint_path(tmp_path)
    d = _complete(tmp_path, 1)
    assert layout.resolve_checkpoint_path(d) == d
    assert layout.resolve_checkpoint_path(tmp_path) == d
