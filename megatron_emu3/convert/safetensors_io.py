"""Read and write Hugging Face weight directories (safetensors shards + index)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import save_file

INDEX = "model.safetensors.index.json"


def write_sharded(state: dict[str, torch.Tensor], out_dir: str | Path, max_shard_bytes: int = 5 * 2**30) -> list[str]:
    """Write `state` as safetensors shards of at most `max_shard_bytes` plus the index; returns files."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name in sorted(state):
        nbytes = state[name].numel() * state[name].element_size()
        if shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = state[name].contiguous()
        size += nbytes
    if len(shards) == 1:
        names = ["model.safetensors"]
    else:
        names = [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    weight_map = {}
    for name, shard in zip(names, shards):
        save_file(shard, str(out / name), metadata={"format": "pt"})
        weight_map.update({key: name for key in shard})
    total = sum(t.numel() * t.element_size() for t in state.values())
    (out / INDEX).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map}, indent=2))
    return names


def read_hf_state(hf_dir: str | Path, prefix_filter: str | None = None) -> dict[str, torch.Tensor]:
    """All tensors of a Hugging Face directory (optionally only names starting with `prefix_filter`)."""
    root = Path(hf_dir)
    if (root / INDEX).is_file():
        files = sorted(set(json.loads((root / INDEX).read_text())["weight_map"].values()))
    elif (root / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise FileNotFoundError(f"{root} holds no model.safetensors or {INDEX}: is it a Hugging Face model directory?")
    state = {}
    for name in files:
        with safe_open(str(root / name), framework="pt") as f:
            for key in f.keys():
                if prefix_filter is None or key.startswith(prefix_filter) or key == "lm_head.weight":
                    state[key] = f.get_tensor(key)
    return state
