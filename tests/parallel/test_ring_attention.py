"""Ring attention over real gloo ranks (CP = 2 and 4) against full-sequence document-masked attention.

One call on the rank pool per CP size runs every case (`ring_scenarios.run_all`); the tests below
assert on its results. Tolerances (max absolute difference, inputs and upstream gradients ~N(0, 1),
reference in fp64): fp64 ring 1e-12 (the algorithm is exact; only summation order differs), fp32 ring 1e-5, bf16
ring 6e-2 (bf16 has 8 mantissa bits). Model level (fp32 GPTModel, RingCoreAttention at CP=c vs
SDPACoreAttention on the whole sequence, same weights): per-token loss within 1e-5, every parameter
gradient (summed over CP ranks, as DDP does) within 1e-5 with the largest gradient ~10.
"""

from __future__ import annotations

import pytest

from tests.distributed.launcher import run_ranks
from tests.parallel import ring_scenarios

TOLERANCE = {"float64": 1e-12, "float32": 1e-5, "bfloat16": 6e-2}
LAYOUTS = ("one_doc", "many_docs", "spanning", "pads", "singletons", "mixed_batch")

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module", params=[2, 4], ids=lambda cp: f"cp{cp}")
def spawned(request):
    cp = request.param
    return cp, run_ranks(cp, ring_scenarios.run_all, cp, timeout=300)


def _check(results: list[dict], case: str, key: str = "ring") -> None:
    tolerance = TOLERANCE[case.split("/")[2]]
    for rank, result in enumerate(results):
        errors = result[key][case]
        assert set(errors) == {"out", "dq", "dk", "dv"}
        bad = {k: e for k, e in errors.items() if not e <= tolerance}
        assert not bad, f"{key} {case} on rank {rank}: max |ring - reference| {bad} > {tolerance}"


@pytest.mark.parametrize("layout", LAYOUTS)
def test_ring_matches_full_attention(spawned, layout):
    """Outputs and dq/dk/dv for H/G = 1, 2, 4 in fp64 and fp32."""
    _, results = spawned
    for heads, groups in ring_scenarios.GQA:
        for dtype in ("float64", "float32"):
            _check(results, f"{layout}/{heads}x{groups}/{dtype}")


def test_ring_bf16_and_row_tiles(spawned):
    _, results = spawned
    _check(results, "spanning/4x2/bfloat16")
    _check(results, "spanning/4x2/float64/tiled")


@pytest.mark.parametrize("spawned", [4], indirect=True, ids=["cp4"])
def test_ring_over_non_adjacent_ranks(spawned):
    """CP=2 groups {0, 2} and {1, 3} (the TP x CP layout): peers are looked up as global ranks."""
    _, results = spawned
    cases = [c for c in results[0]["ring_strided"] if c.endswith("float64") or c.endswith("float32")]
    assert len(cases) == len(LAYOUTS) * len(ring_scenarios.GQA) * 2
    for case in cases:
        _check(results, case, key="ring_strided")


def test_ring_core_attention_in_gpt_model(spawned):
    cp, results = spawned
    for rank, result in enumerate(results):
        errors = dict(result["model"])
        assert errors.pop("max |ref grad|") > 1.0  # the gradients compared are not trivially small
        assert len(errors) > 10 and "grad decoder.layers.0.self_attention.linear_qkv.weight" in errors
        bad = {k: e for k, e in errors.items() if not e <= 1e-5}
        assert not bad, f"CP={cp} rank {rank}: GPTModel with RingCoreAttention differs: {bad}"
