"""Shared fixtures of the preprocessing tests: the text tokenizer and a tiny random VQ directory."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def text_tokenizer():
    from megatron_emu3.data.text_tokenizer import Emu3TextTokenizer

    return Emu3TextTokenizer.from_default()


@pytest.fixture(scope="session")
def vq_dir(tmp_path_factory):
    from megatron_emu3.data.vision_tokenizer import save_tiny_vq

    return save_tiny_vq(tmp_path_factory.mktemp("vq") / "vq")


@pytest.fixture(scope="session")
def vision_tokenizer(vq_dir):
    import torch

    from megatron_emu3.data.vision_tokenizer import Emu3VisionTokenizer

    torch.set_num_threads(1)
    return Emu3VisionTokenizer.from_dir(vq_dir)
