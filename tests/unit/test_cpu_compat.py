"""The CPU shim must fail loudly when megatron-core moves a name it patches (pin drift)."""

from __future__ import annotations

import pytest

from megatron_emu3.parallel import cpu_compat


def test_patched_names_exist_in_pinned_megatron_core():
    cpu_compat.check_patched_names()


def test_missing_name_is_reported(monkeypatch):
    from megatron.core.tensor_parallel import random as tp_random

    monkeypatch.delattr(tp_random, "_set_cuda_rng_state")
    with pytest.raises(RuntimeError, match="_set_cuda_rng_state is gone"):
        cpu_compat.check_patched_names()


def test_megatron_core_is_the_pinned_release():
    from importlib.metadata import version

    assert version("megatron-core") == "0.16.1", "cpu_compat was written for megatron-core 0.16.1"
