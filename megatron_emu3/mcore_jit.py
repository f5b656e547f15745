"""No torch.compile of megatron-core's fusion functions on a machine without CUDA.

megatron-core wraps its bias-activation and bias-dropout fusions in `jit_fuser` (torch.compile) when
their modules are imported, and that decoration alone loads TorchDynamo and Inductor: about 1.7 s of
every process start on a CPU, for kernels our CPU runs never call (`train.fused_kernels: auto` leaves
the fusions off without CUDA; `fused` on a CPU runs the same functions uncompiled, the same maths).

`install()` (called by the package's `__init__`) waits for megatron-core's own `megatron.core.jit`
module to load and then, only where `torch.cuda.is_available()` is false, calls its
`disable_jit_fuser()` before any fusion module is decorated. With CUDA nothing changes.
`EMU3_COMPILE_FUSIONS_ON_CPU=1` keeps torch.compile on a CPU too (a test checks those kernels there).
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import os
import sys

JIT_MODULE = "megatron.core.jit"
KEEP_ON_CPU = "EMU3_COMPILE_FUSIONS_ON_CPU"


class _DisableOnCpu(importlib.abc.Loader):
    def __init__(self, loader: importlib.abc.Loader):
        self.loader = loader

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module) -> None:
        self.loader.exec_module(module)
        import torch  # loaded already: megatron.core imports it before its jit module

        if not torch.cuda.is_available() and os.environ.get(KEEP_ON_CPU) != "1":
            module.disable_jit_fuser()


class _JitFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name != JIT_MODULE:
            return None
        spec = importlib.machinery.PathFinder.find_spec(name, path, target)
        if spec is not None and spec.loader is not None:
            spec.loader = _DisableOnCpu(spec.loader)
        return spec


def install() -> None:
    """Idempotent; a no-op once megatron-core's jit module is loaded (too late to matter)."""
    if JIT_MODULE in sys.modules or any(isinstance(f, _JitFinder) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _JitFinder())
