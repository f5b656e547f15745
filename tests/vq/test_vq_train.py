"""The VQ trainer through its command line, on real photographs and a real-content video:
it learns (reconstruction loss falls >= 30%, held-out PSNR rises), a SIGKILLed run resumes bit for
bit, DP=2 over torchrun/gloo equals one rank, and the trained directory goes through
preprocess_data.py, inspect_data.py --decode and eval_vq.py unchanged."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from megatron_emu3.checkpoint import layout
from tests.media_samples import pan_video, photo, save_photo

REPO = Path(__file__).resolve().parents[2]
RECIPE = REPO / "examples/recipes/tiny_vq.yaml"
STEPS = 12
TRAIN_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "hubble")
HELD_OUT_PHOTOS = ("camera", "ihc")


def _small_photo(directory: Path, name: str) -> str:
    """The photograph with its long side at 160 pixels (aspect kept): cheap to decode every step."""
    w, h = photo(name).size
    scale = 160 / max(w, h)
    return save_photo(directory / f"{name}.jpg", name, mode="RGB", size=(round(w * scale), round(h * scale))).name


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from megatron_emu3.vq.lpips import save_random_weights

    d = tmp_path_factory.mktemp("vq_corpus")
    train = [{"text": n, "image": _small_photo(d, n)} for n in TRAIN_PHOTOS]
    train.append({"text": "a pan across a rocket", "video": pan_video(d / "pan.mp4", "rocket", frames=16,
                                                                      size=(64, 48)).name})
    train.append({"text": "a caption without media"})
    held_out = [{"text": n, "image": _small_photo(d, n)} for n in HELD_OUT_PHOTOS]
    held_out.append({"text": "a pan across coffee", "video": pan_video(d / "held_out.mp4", "coffee", frames=8,
                                                                        size=(64, 48)).name})
    for name, rows in (("train", train), ("eval", held_out)):
        (d / f"{name}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return {"dir": d, "lpips": save_random_weights(d / "random_lpips_vgg16")}


def _args(corpus, run_dir: Path, *extra: str) -> list[str]:
    d = corpus["dir"]
    return ["--config", str(RECIPE), f"run_dir={run_dir}", f"data.manifests=[{d / 'train.jsonl'}]",
            f"data.eval_manifests=[{d / 'eval.jsonl'}]", "data.eval_items=3", "data.eval_resolution=32",
            "data.micro_batch_size=2", f"loss.lpips_weights={corpus['lpips']}", f"train.steps={STEPS}",
            "train.log_interval=1", "train.eval_interval=0", "train.ema_decay=0.5", "loss.disc_start=6",
            "train.dead_code_restart_interval=4", "checkpoint.interval=4", *extra]


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO)}


def _train(args: list[str], wait: bool = True, launcher=(sys.executable, "-m", "megatron_emu3.vq.train")):
    proc = subprocess.Popen([*launcher, *args], cwd=REPO, env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    if not wait:
        return proc
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-4000:]
    return out


def _records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]


def _train_records(run_dir: Path) -> dict[int, dict]:
    """The last record of each trained step (a resumed run re-logs the steps it redoes)."""
    return {r["step"]: r for r in _records(run_dir) if "loss" in r}


@pytest.fixture(scope="module")
def trained(corpus, tmp_path_factory):
    run_dir = tmp_path_factory.mktemp("vq_run") / "run"
    _train(_args(corpus, run_dir))
    return run_dir


def test_tiny_recipe_learns_on_real_photos_and_video(trained):
    steps = _train_records(trained)
    assert sorted(steps) == list(range(1, STEPS + 1))
    first, last = steps[1]["train/l2"], min(steps[s]["train/l2"] for s in range(STEPS - 2, STEPS + 1))
    assert last <= 0.7 * first, f"reconstruction loss {first:.4f} -> {last:.4f}: fell by less than 30%"
    evals = {r["step"]: r for r in _records(trained) if "eval/psnr" in r}
    assert sorted(evals) == [0, STEPS]
    assert evals[STEPS]["eval/psnr"] > evals[0]["eval/psnr"] + 1.0, evals
    assert evals[STEPS]["eval/items"] == 3  # two held-out photographs and a clip
    assert all(steps[s]["gan_active"] == (s > 6) for s in steps)  # the discriminator starts at step 6
    assert steps[STEPS]["train/gan_weight"] > 0 and "train/disc_loss" in steps[STEPS]
    assert {"codebook/perplexity", "codebook/dead_codes", "codebook/restarted"} <= set(steps[4])
    assert steps[4]["codebook/restarted"] > 0  # 1024 codes, few latents: most are dead and restarted
    grids = trained / "eval" / f"step_{STEPS:07d}"
    assert (grids / "images.png").stat().st_size > 0 and (grids / "clip_00.mp4").stat().st_size > 0
    assert (trained / "COMPLETE").read_text().strip() == str(STEPS)
    assert (trained / "vq" / "config.json").is_file()


def test_sigkill_then_resume_continues_bit_for_bit(corpus, trained, tmp_path):
    run_dir = tmp_path / "run"
    proc = _train(_args(corpus, run_dir), wait=False)
    deadline = time.time() + 500
    while not ((run_dir / "metrics.jsonl").exists() and max(_train_records(run_dir), default=0) >= 6):
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.time() < deadline, "step 6 not reached"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert layout.step_of(layout.find_latest(run_dir / "checkpoints")) == 4
    out = _train(_args(corpus, run_dir))
    assert "resumed from" in out and "at step 4" in out
    expected, resumed = _train_records(trained), _train_records(run_dir)
    assert sorted(resumed) == sorted(expected)
    for step in expected:
        for key in ("loss", "train/l2", "train/lpips", "train/gan", "grad_norm", "codebook/dead_codes"):
            assert resumed[step].get(key) == expected[step].get(key), (step, key)
    a = torch.load(run_dir / "checkpoints" / f"iter_{STEPS:07d}" / "state.pt", weights_only=False)["model"]
    b = torch.load(trained / "checkpoints" / f"iter_{STEPS:07d}" / "state.pt", weights_only=False)["model"]
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_two_data_parallel_ranks_equal_one_rank(corpus, tmp_path):
    common = ["train.steps=1", "loss.disc_start=0", "data.eval_manifests=[]", "data.holdout=0", "train.ema_decay=0",
              "train.dead_code_restart_interval=1"]  # restarts run (rank 0 chooses) but come after the step
    one, two = tmp_path / "one", tmp_path / "two"
    _train(_args(corpus, one, *common, "data.micro_batch_size=2"))
    _train(_args(corpus, two, *common, "data.micro_batch_size=1", "data.workers=1"),  # + a loader process
           launcher=(sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                     "-m", "megatron_emu3.vq.train"))
    r1, r2 = _train_records(one)[1], _train_records(two)[1]
    for key in ("loss", "train/l2", "train/lpips", "train/gan", "train/gan_weight", "train/disc_loss", "grad_norm"):
        assert r2[key] == pytest.approx(r1[key], rel=1e-5, abs=1e-7), key
    s1 = torch.load(one / "checkpoints" / "iter_0000001" / "state.pt", weights_only=False)
    s2 = torch.load(two / "checkpoints" / "iter_0000001" / "state.pt", weights_only=False)
    # The gradients, from Adam's first moment (exp_avg = (1 - beta1) * grad after one step). The weights
    # themselves are no test: Adam's first step is lr * g / (|g| + eps), which turns the ~1e-10 noise
    # on the gradient of a conv bias followed by GroupNorm (exactly 0 in theory) into +-lr.
    for opt in ("opt_g", "opt_d"):
        scale = max(float(state["exp_avg"].abs().max()) for state in s1[opt]["state"].values())
        for index, state in s1[opt]["state"].items():
            g1, g2 = state["exp_avg"], s2[opt]["state"][index]["exp_avg"]
            torch.testing.assert_close(g2, g1, rtol=1e-4, atol=1e-6 * scale, msg=f"{opt} parameter {index}")


def test_trained_tokenizer_goes_through_the_tools(corpus, trained, tmp_path):
    d, vq = corpus["dir"], trained / "vq"

    def tool(*args):
        res = subprocess.run([sys.executable, *args], cwd=REPO, env=_env(), capture_output=True, text=True,
                             timeout=600)
        assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
        return res.stdout

    prefix = tmp_path / "shards" / "photos"
    tool("tools/preprocess_data.py", "--input", str(d / "eval.jsonl"), "--output-prefix", str(prefix),
         "--vq-dir", str(vq), "--workers", "1", "--min-pixels", "1024", "--max-pixels", "4096",
         "--video-min-pixels", "1024", "--video-max-pixels", "4096", "--no-progress")
    out = tool("tools/inspect_data.py", str(prefix), "--decode", "0", "2", "--vq-dir", str(vq),
               "--out", str(tmp_path / "inspect"))
    assert (tmp_path / "inspect" / "doc_00000.png").is_file() and (tmp_path / "inspect" / "doc_00002.mp4").is_file(), out
    report = tmp_path / "eval.json"
    out = tool("tools/eval_vq.py", "--vq-dir", str(vq), "--input", str(d / "eval.jsonl"), "--resolutions", "32", "64",
               "--lpips-weights", str(corpus["lpips"]), "--json", str(report))
    rows = json.loads(report.read_text())["rows"]
    assert [(r["resolution"], r["kind"], r["frames"]) for r in rows] == [
        ("32x32", "image", 1), ("32x32", "video", 4), ("64x64", "image", 1), ("64x64", "video", 4)]
    assert all(5 < r["psnr"] < 60 and 0 < r["ssim"] <= 1 and r["lpips"] >= 0 and r["codes_used"] > 0 for r in rows)
    assert "PSNR" in out and "SSIM" in out and "64x64" in out


def test_finetune_from_a_released_directory_and_lpips_weights_are_required(corpus, tmp_path):
    from megatron_emu3.data.vision_tokenizer import save_tiny_vq

    released = save_tiny_vq(tmp_path / "released_vq")  # stands in for a converted Emu3-VisionTokenizer
    run_dir = tmp_path / "run"
    args = _args(corpus, run_dir, f"model.init_from={released}", "model.codebook_size=null",
                 "model.base_channels=null", "train.steps=2", "data.eval_manifests=[]", "data.holdout=0")
    out = _train(args)
    assert f"VQ model from {released}" in out
    from transformers import Emu3VQVAE

    assert Emu3VQVAE.from_pretrained(str(run_dir / "vq")).config.codebook_size == 32768
    # a perceptual term without its weights stops before anything runs, naming the key
    proc = _train([a for a in args if not a.startswith("loss.lpips_weights=")] + [f"run_dir={tmp_path / 'r2'}"],
                  wait=False)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 2 and "loss.lpips_weights" in out and "nothing is downloaded" in out


def test_gradient_accumulation_equals_a_bigger_micro_batch(corpus, tmp_path):
    """Without the GAN (whose adaptive weight is per micro-batch) two accumulated micro-batches of 1
    are one micro-batch of 2: same loss and gradients."""
    common = ["train.steps=1", "loss.disc_start=5", "data.eval_manifests=[]", "data.holdout=0"]
    big, accumulated = tmp_path / "big", tmp_path / "accumulated"
    _train(_args(corpus, big, *common, "data.micro_batch_size=2"))
    _train(_args(corpus, accumulated, *common, "data.micro_batch_size=1", "train.grad_accum=2"))
    r1, r2 = _train_records(big)[1], _train_records(accumulated)[1]
    for key in ("loss", "train/l2", "train/lpips", "train/codebook", "grad_norm"):
        assert r2[key] == pytest.approx(r1[key], rel=1e-5, abs=1e-7), key
    s1, s2 = (torch.load(d / "checkpoints" / "iter_0000001" / "state.pt", weights_only=False) for d in (big, accumulated))
    scale = max(float(state["exp_avg"].abs().max()) for state in s1["opt_g"]["state"].values())
    for index, state in s1["opt_g"]["state"].items():
        torch.testing.assert_close(s2["opt_g"]["state"][index]["exp_avg"], state["exp_avg"], rtol=1e-4,
                                   atol=1e-6 * scale, msg=f"parameter {index}")


def test_sigusr1_saves_and_exits(corpus, tmp_path):
    run_dir = tmp_path / "run"
    proc = _train(_args(corpus, run_dir, "train.steps=1000", "checkpoint.interval=0"), wait=False)
    deadline = time.time() + 300
    while not ((run_dir / "metrics.jsonl").exists() and max(_train_records(run_dir), default=0) >= 2):
        assert proc.poll() is None, proc.stdout.read()[-3000:]
        assert time.time() < deadline, "step 2 not reached"
        time.sleep(0.05)
    proc.send_signal(signal.SIGUSR1)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    saved = layout.step_of(layout.find_latest(run_dir / "checkpoints"))
    assert saved >= 2 and "stopped by signal" in out and not (run_dir / "COMPLETE").exists()
    assert max(_train_records(run_dir)) == saved
