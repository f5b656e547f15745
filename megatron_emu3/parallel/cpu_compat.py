"""Let megatron-core run on a machine without CUDA (CPU tensors, gloo process groups).

megatron-core 0.16 hard-codes CUDA in a few places of its forward, optimizer and RNG paths. Rather
than fork it, `install()` patches exactly these, and only when CUDA is absent; the GPU path never
calls it. What each patch is for (found with megatron-core 0.16.1 and torch 2.13 CPU):

1. `torch.cuda.current_device()` answers ``"cpu"``: RoPE, the embedding, linear layers and the
   distributed optimizer allocate on ``torch.cuda.current_device()``.
2. A `TorchFunctionMode` maps ``device="cuda"`` in tensor factories / ``Tensor.to`` to the CPU, makes
   ``Tensor.cuda()`` a no-op and reports ``Tensor.type()`` with the ``torch.cuda.`` prefix: grad
   clipping and the distributed optimizer hard-code ``device='cuda'`` and compare type strings.
3. The tensor-parallel RNG tracker keeps "CUDA" RNG states; they are backed by the CPU generator
   (``torch.cuda.{get,set}_rng_state``/``manual_seed`` and the tracker's private setter/getter).
4. ``torch.cuda.synchronize`` is a no-op (checkpoint saving and timers call it).
5. ``pin_memory=True`` is dropped (RoPE's context-parallel split asks for pinned index tensors).

Megatron-core's local ``DotProductAttention`` builds its causal mask on CUDA; we never use it (our
own core attention, `megatron_emu3.model.attention`, replaces it in the layer spec).
`check_patched_names()` fails loudly when a name patched here moves in a new megatron-core.
"""

from __future__ import annotations

import logging

import torch
from torch.overrides import TorchFunctionMode

logger = logging.getLogger(__name__)

_INSTALLED = False


def _is_cuda_device(device) -> bool:
    if isinstance(device, torch.device):
        return device.type == "cuda"
    if isinstance(device, str):
        return device.startswith("cuda")
    return isinstance(device, int) and not isinstance(device, bool)


class _CudaToCpuMode(TorchFunctionMode):
    """Rewrites CUDA device requests to the CPU while active."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if func is torch.Tensor.cuda:
            return args[0]
        if func is torch.Tensor.type and len(args) == 1 and not kwargs:
            return func(*args).replace("torch.", "torch.cuda.", 1)
        if _is_cuda_device(kwargs.get("device")):
            kwargs["device"] = "cpu"
        if kwargs.get("pin_memory"):  # RoPE's context-parallel split pins; CPU-only torch cannot
            kwargs["pin_memory"] = False
        if func is torch.Tensor.to and len(args) > 1 and _is_cuda_device(args[1]):
            args = (args[0], "cpu", *args[2:])
        return func(*args, **kwargs)


def _cpu_rng_state(device=None, *args, **kwargs) -> torch.Tensor:
    return torch.get_rng_state()


def _set_cpu_rng_state(new_state, device=None, *args, **kwargs) -> None:
    torch.set_rng_state(new_state)


def check_patched_names() -> None:
    """Raise if a megatron-core name this module patches no longer exists (pin moved)."""
    from megatron.core.tensor_parallel import random as tp_random

    for name in ("_get_cuda_rng_state", "_set_cuda_rng_state", "CudaRNGStatesTracker"):
        if not hasattr(tp_random, name):
            raise RuntimeError(
                f"megatron.core.tensor_parallel.random.{name} is gone: megatron_emu3.parallel."
                "cpu_compat was written for megatron-core 0.16.1; update the shim or the pin"
            )


def install() -> bool:
    """Patch torch/megatron-core for CPU-only execution. Returns True when patches are active.

    Does nothing (and returns False) when CUDA is available.
    """
    global _INSTALLED
    if torch.cuda.is_available():
        return False
    if _INSTALLED:
        return True
    check_patched_names()
    from megatron.core.tensor_parallel import random as tp_random

    torch.cuda.current_device = lambda: "cpu"
    torch.cuda.synchronize = lambda *a, **k: None
    torch.cuda.get_rng_state = _cpu_rng_state
    torch.cuda.random.get_rng_state = _cpu_rng_state
    torch.cuda.set_rng_state = _set_cpu_rng_state
    torch.cuda.manual_seed = torch.manual_seed
    tp_random._get_cuda_rng_state = _cpu_rng_state
    tp_random._set_cuda_rng_state = _set_cpu_rng_state
    _CudaToCpuMode().__enter__()  # stays active for the life of the process
    _INSTALLED = True
    logger.info("CUDA not available: megatron-core runs on CPU through megatron_emu3.parallel.cpu_compat")
    return True
