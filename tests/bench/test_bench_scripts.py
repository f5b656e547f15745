"""CPU smoke tests of the benchmark scripts in bench/ (bench/device_run.sh: tests/bench/test_device_run.py).

The benchmarks only run for real on a GPU machine, which this project rarely gets; these tests run
every script at the smallest size that still goes through its real code path (one process, fp32,
CUDA hidden) and check what it prints: the header and table rows, that every figure parses and is
finite and positive where it must be, the row counts and the internal consistency of derived figures.
No speed is asserted. Everything a script writes goes under pytest's tmp_path (TMPDIR points there;
scripts with a work or run directory get one inside it). Where a script writes --json, its figures
must be the ones it printed.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch


REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench"
SCRIPTS = sorted(p.name for p in BENCH.glob("bench_*.py"))
NUMBER = r"[0-9][0-9,]*(?:\.[0-9]+)?"

# bench_train_step.py at 1 layer of width 128 (the 8B width does not fit this machine); the
# vocabulary stays the preset's 184,622.
TRAIN_SMALL = ["--layers", "1", "--seq", "128", "--steps", "1", "model.hidden_size=128", "model.ffn_hidden_size=256",
               "model.num_attention_heads=4", "model.num_query_groups=2"]

COVERED = {"bench_attention.py", "bench_checkpoint.py", "bench_dataset.py", "bench_generation.py",
           "bench_preprocess.py", "bench_ring_attention.py", "bench_train_step.py"}


def bench_env(tmp_path: Path) -> dict:
    """One thread, the repository importable, temporary files in tmp_path, no GPU, no launcher vars."""
    tmp = tmp_path / "tmp"
    tmp.mkdir(exist_ok=True)
    env = {k: v for k, v in os.environ.items()
           if k not in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")}
    env.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", TMPDIR=str(tmp),
               CUDA_VISIBLE_DEVICES="", PYTHONWARNINGS="ignore")
    return env


def run_bench(tmp_path: Path, script: str, *args: str, timeout: float = 180, expect_rc: int = 0) -> str:
    proc = subprocess.run([sys.executable, str(BENCH / script), *args], cwd=REPO, env=bench_env(tmp_path),
                          capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == expect_rc, (f"{script} {' '.join(args)} exited {proc.returncode}\n"
                                          f"stdout:\n{proc.stdout}\nstderr:\n{proc.stderr[-6000:]}")
    return proc.stdout if expect_rc == 0 else proc.stderr


def num(text: str) -> float:
    value = float(text.replace(",", ""))
    assert math.isfinite(value), text
    return value


def table(out: str, header: str) -> list[list[str]]:
    """The rows (cells stripped) of the Markdown table whose header line is `header`."""
    lines = out.splitlines()
    assert header in lines, f"no table header {header!r} in:\n{out}"
    start = lines.index(header)
    columns = header.count("|") - 1
    assert re.fullmatch(r"\|(---\|){%d}" % columns, lines[start + 1]), lines[start + 1]
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        assert len(cells) == columns, f"row with {len(cells)} cells, header has {columns}: {line}"
        rows.append(cells)
    return rows


def test_every_bench_script_has_a_smoke_test():
    assert SCRIPTS == sorted(COVERED), (f"bench/ holds {SCRIPTS}; add a smoke test here for each new script "
                                        f"(and a step in bench/device_run.sh)")


@pytest.mark.parametrize("docs", [1, 2])
def test_bench_attention(tmp_path, docs):
    from megatron_emu3.model.flash_attention import flash_available, torch_varlen_available

    seqs, heads, kv_heads, dim = (256, 512), 4, 2, 32
    figures = tmp_path / "attention.json"
    out = run_bench(tmp_path, "bench_attention.py", "--seqs", ",".join(map(str, seqs)), "--heads", str(heads),
                    "--kv-heads", str(kv_heads), "--dim", str(dim), "--iters", "1", "--docs", str(docs),
                    "--json", str(figures))
    assert (f"device CPU | torch {torch.__version__} | torch.float32 | heads {heads}/{kv_heads} "
            f"dim {dim} | docs per sequence {docs}") in out.splitlines(), out
    rows = table(out, "| seq | backend | module ms | module TFLOP/s | bare kernel ms | bare TFLOP/s |")
    # CUDA hidden: torch SDPA always, the varlen kernels only where they run on the CPU, never TE
    backends = [r[1] for r in rows if num(r[0]) == seqs[0]]
    assert backends[0] == "torch SDPA" and set(backends) <= {"torch SDPA", "torch varlen", "flash-attn varlen"}
    if not torch.cuda.is_available():  # this process sees what the script saw
        assert backends == (["torch SDPA"] + ["torch varlen"] * torch_varlen_available()[0]
                            + ["flash-attn varlen"] * flash_available()[0])
    assert [(num(r[0]), r[1]) for r in rows] == [(s, b) for s in seqs for b in backends], out
    for seq, _, module_ms, module_tflops, bare_ms, bare_tflops in rows:
        flops = 3.5 * 4 * num(seq) ** 2 * heads * dim / 2 / docs  # the script's FLOP count
        for ms, tflops in ((module_ms, module_tflops), (bare_ms, bare_tflops)):
            ms, tflops = num(ms), num(tflops)
            assert ms > 0 and tflops >= 0
            # TFLOP/s is the FLOP count over the printed time (both rounded: 0.1 ms, 0.01 TFLOP/s)
            low, high = flops / (ms + 0.05) / 1e9, flops / max(ms - 0.05, 1e-9) / 1e9
            assert low - 0.005 <= tflops <= high + 0.005, (seq, ms, tflops, low, high)
    recorded = json.loads(figures.read_text())
    assert (recorded["heads"], recorded["kv_heads"], recorded["dim"], recorded["docs"]) == (heads, kv_heads, dim, docs)
    assert [(r["seq"], r["backend"]) for r in recorded["rows"]] == [(num(r[0]), r[1]) for r in rows]
    for row, printed in zip(recorded["rows"], rows):
        assert f"{row['module_ms']:.1f}" == printed[2] and f"{row['module_tflops']:.2f}" == printed[3]
        assert f"{row['bare_ms']:.1f}" == printed[4] and f"{row['bare_tflops']:.2f}" == printed[5]


@pytest.mark.parametrize("mode", ["sync", "async"])
def test_bench_checkpoint(tmp_path, mode):
    from megatron_emu3.config.loading import resolve_config
    from megatron_emu3.config.validation import padded_vocab_size
    from megatron_emu3.model.params import count_parameters

    # The tiny preset with a 1,100-token vocabulary (padded to 2,048 rows): the full vocabulary's 23.8M
    # parameters (290 MB with Adam's moments) only made the write and its fsync slower.
    extra = ["checkpoint.async_save=true"] if mode == "async" else []
    out = run_bench(tmp_path, "bench_checkpoint.py", "--repeat", "1", f"run_dir={tmp_path / 'run'}",
                    "model.vocab_size=1100", *extra)
    rows = [line for line in out.splitlines() if line.startswith("|")]
    assert len(rows) == 1, out
    match = re.fullmatch(rf"\| tiny \| ({NUMBER}) \| ({NUMBER}) MiB \| (async )?save ({NUMBER}) s"
                         rf"(?: \(({NUMBER}) s blocking\))? \| load ({NUMBER}) s \|", rows[0])
    assert match, rows[0]
    params, mib, is_async, save, blocking, load = match.groups()
    model = resolve_config(None, ["preset=tiny", "model.vocab_size=1100"]).model
    expected = count_parameters(model, padded_vocab_size(model.vocab_size, model.make_vocab_size_divisible_by, 1))
    assert num(params) == expected["total"] == 354_624  # 2,048 padded vocabulary rows
    # fp32 on the CPU: weights + Adam's two moments, 4 bytes each, at least
    assert num(mib) * 2**20 >= 0.99 * 3 * 4 * num(params)
    assert num(save) > 0 and num(load) > 0
    assert bool(is_async) == (mode == "async") and (blocking is not None) == (mode == "async")
    if blocking is not None:
        assert 0 <= num(blocking) <= num(save)
    assert not list((tmp_path / "tmp").glob("emu3-ckpt-bench-*")), "the checkpoint directory was left behind"


def test_bench_dataset(tmp_path):
    workdir = tmp_path / "work"
    out = run_bench(tmp_path, "bench_dataset.py", "--workdir", str(workdir), "--read", "40", "--docs", "1000")
    rows = table(out, "| measure | value |")
    assert len(rows) == 13, out  # loader, index build, 5 plans at 5,120, 3 mixes + 2 text_fill at 131,072, rate
    assert {p.name for p in workdir.glob("*.idx")} == {"text.idx", "image_gen.idx", "image_und.idx"}
    loader = re.fullmatch(rf"ours ({NUMBER}), GPTDataset ({NUMBER}), ratio ({NUMBER})", rows[0][1])
    assert loader and all(num(x) > 0 for x in loader.groups()), rows[0]
    build = re.fullmatch(rf"ours ({NUMBER}), GPTDataset ({NUMBER})", rows[1][1])
    assert build and all(num(x) >= 0 for x in build.groups()), rows[1]
    assert "stage-1 blend of 1,000 docs" in rows[2][0] and num(rows[2][1]) > 0
    fill = [num(x) for x in rows[4][1].split(" / ")]
    assert len(fill) == 3 and 0 <= fill[0] < 1 and fill[1] >= 0 and fill[2] > 0, rows[4]
    pads = [num(value) for name, value in rows if name.startswith(("pad fraction", "same with text_fill"))]
    assert len(pads) == 8 and all(0 <= p < 1 for p in pads), rows
    assert fill[0] <= num(rows[3][1]) + 1e-4  # text_fill only removes pads
    for i, (name, value) in enumerate(rows):
        if name.startswith("same with text_fill"):
            assert num(value) <= num(rows[i - 1][1]) + 1e-4, (rows[i - 1], rows[i])
    assert rows[-1][0].startswith("plan build, 131,072") and num(rows[-1][1]) > 0


def test_bench_generation(tmp_path):
    new, prompt = 6, 4
    out = run_bench(tmp_path, "bench_generation.py", "--prompt", str(prompt), "--new", str(new), "--device", "cpu")
    lines = out.splitlines()
    assert lines[0] == (f"model 2 layers x hidden 64, vocab 184622; device cpu fp32; batch 1, prompt {prompt}, new {new}; "
                        "threads 1"), out
    rates = {}
    for name in ("kv_cache", "no_cache"):
        match = re.fullmatch(rf"{name} +({NUMBER}) tokens/s  \(({NUMBER}) s\)", next(x for x in lines if
                                                                               x.startswith(name)))
        assert match, out
        rates[name], elapsed = num(match[1]), num(match[2])
        assert rates[name] > 0 and elapsed >= 0
    speedup = re.fullmatch(rf"speed-up ({NUMBER})x; same tokens: True", lines[-1])
    assert speedup, out  # cached and uncached greedy decoding agree
    assert num(speedup[1]) == pytest.approx(rates["kv_cache"] / rates["no_cache"], rel=0.05, abs=0.01)
    # --device names the device the figures come from; asking for one this process cannot use fails
    err = run_bench(tmp_path, "bench_generation.py", "--device", "cuda", expect_rc=2, timeout=60)
    assert "CUDA is not available" in err


def test_bench_preprocess(tmp_path):
    docs, images = 20, 2
    out = run_bench(tmp_path, "bench_preprocess.py", "--docs", str(docs), "--images", str(images), "--skip-gpu")
    assert f"torch threads 1, {docs} text docs, tiny VQ ~4.2M params" in out.splitlines(), out
    rows = table(out, "| what | figure |")
    assert [r[0].split(":")[0].split(",")[0] for r in rows] == [
        "plain loop", "ours", "ours", "VQ 64x64 images", "VQ 64x64 images", "VQ 4-frame 64x64 video"], out
    for what, figure in rows[:3]:
        match = re.match(rf"({NUMBER}) docs/s, ({NUMBER}) tokens/s", figure)
        assert match and num(match[1]) > 0 and num(match[2]) > num(match[1]), (what, figure)
    for what, figure in rows[3:]:
        assert f"batch {images}, cpu float32" in what or "video, cpu float32" in what, what
        match = re.match(rf"({NUMBER}) (images|clips)/s", figure)
        assert match and num(match[1]) > 0, (what, figure)


def test_bench_ring_attention(tmp_path):
    figures = tmp_path / "ring.json"
    out = run_bench(tmp_path, "bench_ring_attention.py", "--seq", "256", "--cp", "1,2", "--docs", "1,2",
                    "--heads", "4", "--groups", "2", "--head-dim", "32", "--iters", "1", "--json", str(figures))
    assert "fp32, b=1, H=4, G=2, d=32, 1 thread(s) per process, median of 1" in out, out
    rows = table(out, "| S | docs | SDPA full | ring c=1 | ring c=2 |")
    assert [(r[0], r[1]) for r in rows] == [("256", "1"), ("256", "2")], out
    for row in rows:
        sdpa = num(row[2])
        assert sdpa > 0
        for cell in row[3:]:
            match = re.fullmatch(rf"({NUMBER}) \(({NUMBER})x\)", cell)
            assert match, cell
            ring, ratio = num(match[1]), num(match[2])
            assert ring > 0 and ratio > 0
            assert ratio == pytest.approx(sdpa / ring, rel=0.2, abs=0.02)  # from the rounded figures
    recorded = json.loads(figures.read_text())
    assert recorded["device"] == "CPU" and recorded["precision"] == "fp32"
    for row, printed in zip(recorded["rows"], rows, strict=True):
        assert (str(row["seq"]), str(row["docs"]), f"{row['sdpa_ms']:.1f}") == tuple(printed[:3])
        assert [f"{row['ring_ms'][c]:.1f}" for c in ("1", "2")] == [cell.split()[0] for cell in printed[3:]]


def test_ring_attention_single_device_path():
    """The function --device cuda times (ring attention without a CP group against SDPA), here on the
    CPU; asking for CUDA where there is none, or for CP > 1 on one GPU, is refused."""
    spec = importlib.util.spec_from_file_location("bench_ring_attention", BENCH / "bench_ring_attention.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    for docs in (1, 4):
        ring_ms, sdpa_ms = bench.single_device_ms((128, docs, 4, 2, 16), 1, "cpu", torch.float32)
        assert ring_ms > 0 and sdpa_ms > 0


def test_bench_ring_attention_refuses_cuda_without_it(tmp_path):
    err = run_bench(tmp_path, "bench_ring_attention.py", "--device", "cuda", "--cp", "1", expect_rc=2, timeout=60)
    assert "CUDA is not available" in err or "--cp must be 1" in err


@pytest.mark.parametrize("recompute", ["none", "selective"])
def test_bench_train_step(tmp_path, recompute):
    from megatron_emu3.model.spec import decoder_spec

    figures = tmp_path / "train.json"
    out = run_bench(tmp_path, "bench_train_step.py", *TRAIN_SMALL, f"parallel.recompute={recompute}",
                    f"run_dir={tmp_path / 'run'}", "--json", str(figures))
    lines = out.splitlines()
    assert re.fullmatch(rf"device CPU \| torch \S+ \| layers 1 \| seq 128 \| fp32 \| recompute {recompute}",
                        lines[0]), out
    # the kernel behind the figures, and the input format that kernel takes
    spec = re.fullmatch(r"attention backend=auto: local layer spec with (torch SDPA|torch varlen|flash-attn varlen) "
                        r"attention \(auto: .+\) \| input format (mask|segments)", lines[1])
    assert spec and (spec[1] == "torch SDPA") == (spec[2] == "mask"), out
    if not torch.cuda.is_available():  # this process sees what the script saw: the same choice as build_run's
        choice = decoder_spec("auto", 1, 1, 0.0)
        assert lines[1] == f"attention backend=auto: {choice.why} | input format {choice.input_format}", out
    warmup = re.fullmatch(rf"warm-up step ({NUMBER}) s \(fused kernels off\)", lines[2])  # CPU: auto = unfused
    assert warmup and num(warmup[1]) > 0, out
    match = re.fullmatch(rf"step ({NUMBER}) ms \| ({NUMBER}) tokens/s \| model TFLOP/s ({NUMBER}) \| "
                         rf"matmul peak ({NUMBER}) TFLOP/s \| MFU ({NUMBER})% \(causal attention counted as half\)",
                         lines[3])
    assert match, out
    step_ms, tokens_s, model_tflops, peak, mfu = map(num, match.groups())
    assert step_ms > 0 and tokens_s > 0 and model_tflops >= 0 and peak >= 0 and mfu > 0
    assert tokens_s == pytest.approx(128 / (step_ms / 1e3), rel=0.01, abs=1)  # 1 sample x 128 tokens per step
    assert len(lines) == 4, out  # the peak-memory line is GPU only
    recorded = json.loads(figures.read_text())
    assert (recorded["layers"], recorded["seq"], recorded["recompute"], recorded["precision"]) == (1, 128, recompute,
                                                                                                    "fp32")
    assert lines[1].startswith(f"attention backend=auto: {recorded['attention_kernel']} | input format "
                               f"{recorded['input_format']}")
    assert (f"{recorded['step_ms']:.1f}", f"{recorded['tokens_per_s']:,.0f}", f"{recorded['mfu']:.1%}") == (
        f"{step_ms:.1f}", f"{tokens_s:,.0f}", f"{mfu:.1f}%")
    assert recorded["mfu"] == pytest.approx(recorded["model_tflops"] / recorded["matmul_peak_tflops"])
    assert recorded["peak_memory_gib"] is None and recorded["planner_memory_gib"] is None
    assert recorded["fused_kernels"] is False and f"{recorded['warmup_s']:.1f}" == warmup[1]
