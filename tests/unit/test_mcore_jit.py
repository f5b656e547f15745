"""megatron_emu3/mcore_jit.py: megatron-core's fusion functions stay uncompiled in a process without
CUDA (no TorchDynamo / Inductor loaded at start), are torch.compile'd where CUDA is present, and
EMU3_COMPILE_FUSIONS_ON_CPU=1 keeps the compile on a CPU."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

PROBE = """
import json, sys, torch
if sys.argv[1] == "cuda":
    torch.cuda.is_available = lambda: True  # what a GPU machine answers
import megatron_emu3
from megatron.core.fusions import fused_bias_swiglu
from megatron.core import jit
print(json.dumps({"compile": jit.jit_fuser is torch.compile, "dynamo": "torch._dynamo" in sys.modules,
                  "swiglu_compiled": hasattr(fused_bias_swiglu.bias_swiglu, "_torchdynamo_orig_callable")}))
"""


def probe(device: str, **env: str) -> dict:
    done = subprocess.run([sys.executable, "-c", PROBE, device], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env})
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("device,env,compiled", [
    ("cpu", {}, False),
    ("cuda", {}, True),
    ("cpu", {"EMU3_COMPILE_FUSIONS_ON_CPU": "1"}, True),
], ids=["cpu", "cuda", "cpu-kept"])
def test_fusions_compiled_only_where_they_run(device, env, compiled):
    got = probe(device, **env)
    assert got["compile"] is compiled and got["swiglu_compiled"] is compiled
    if not compiled:
        assert not got["dynamo"]  # the start-up cost is gone, not only the decorator
