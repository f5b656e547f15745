"""The one training loop through the command line, as users run it: every layout logs one rank's
losses, DPO survives a SIGUSR1 like pretraining (async saves, the distributed optimizer) and evaluates
on held-out pairs, ranks die with a SIGKILLed launcher, a second launch into a live run's directory is
refused, and the relaunch resumes bit for bit (pipeline parallel, distributed optimizer)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from megatron_emu3.checkpoint import layout
from tests.distributed.launcher import free_port
from tests.distributed.runs import records, wait_for_checkpoint, wait_for_step

REPO = Path(__file__).resolve().parents[2]
TINY = str(REPO / "examples/recipes/tiny.yaml")
DPO = str(REPO / "examples/recipes/tiny_dpo.yaml")


def _cmd(module: str, ranks: int) -> list[str]:
    if ranks == 1:
        return [sys.executable, "-m", module]
    return [sys.executable, "-m", "torch.distributed.run", f"--nproc-per-node={ranks}",
            f"--master-port={free_port()}", "-m", module]


def _launch(module: str, ranks: int, *args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MASTER_PORT": str(free_port())}
    return subprocess.Popen([*_cmd(module, ranks), *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)


def _run(module: str, ranks: int, *args: str, timeout: float = 400) -> str:
    proc = _launch(module, ranks, *args)
    out, _ = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, out[-4000:]
    return out


# A vocabulary that needs padding (1,100 rows -> 2,048 at every TP size): the same padding, initialisation
# and logit masking as the full 184,622 (pinned in tests/unit/test_config.py), at a CPU cost the full
# vocabulary's 95M logits per step would multiply by thirty. Under the old 128 x TP rule, TP=1 padded
# it to 1,152 rows and TP=2 to 1,280, which this test caught.
LAYOUT_ARGS = ["--config", TINY, "train.iters=3", "checkpoint.save_at_end=false", "optimizer.warmup_iters=1",
               "model.vocab_size=1100"]


@pytest.mark.parametrize("ranks,layout_args", [
    (2, ["parallel.tp=2"]),
    (2, ["parallel.cp=2"]),
    (2, ["parallel.distributed_optimizer=true"]),  # data parallel 2, optimizer state sharded over it
    (4, ["parallel.tp=2", "parallel.cp=2"]),
    (2, ["parallel.pp=2"]),
], ids=["tp2", "cp2", "dp2", "tp2xcp2", "pp2"])
def test_layout_logs_the_same_losses_as_one_rank(tmp_path_factory, ranks, layout_args):
    """The tiny recipe gives one rank's losses under any layout: the padded vocabulary and the initial
    weights do not depend on TP, and padded logits are masked."""
    reference = tmp_path_factory.getbasetemp() / "one_rank"
    if not (reference / "COMPLETE").exists():
        _run("megatron_emu3.train", 1, *LAYOUT_ARGS, f"run_dir={reference}")
    run_dir = tmp_path_factory.mktemp("layout") / "run"
    _run("megatron_emu3.train", ranks, *LAYOUT_ARGS, *layout_args, f"run_dir={run_dir}")
    want, got = records(reference), records(run_dir)
    assert sorted(got) == [1, 2, 3]
    for step in want:
        assert got[step]["loss"] == pytest.approx(want[step]["loss"], rel=1e-5), (step, layout_args)


@pytest.fixture(scope="module")
def prefs(tmp_path_factory):
    from megatron_emu3.dpo.shards import write_preferences
    from tests.dpo.scenarios import VOCAB, synthetic_triplets

    prefix = tmp_path_factory.mktemp("prefs") / "pairs"
    write_preferences(prefix, synthetic_triplets(24), VOCAB)
    return str(prefix)


def _dpo_args(prefs: str, run_dir: Path, *extra: str) -> list[str]:
    return ["--config", DPO, f"dpo.data={prefs}", f"run_dir={run_dir}", "model.vocab_size=512",
            "data.seq_length=16", "data.global_batch_size=4", "data.micro_batch_size=2", "train.iters=8",
            "optimizer.lr=3e-3", "dpo.beta=0.5", "dpo.valid_fraction=0.25", "train.eval_interval=2",
            "train.eval_iters=1", "parallel.distributed_optimizer=true", *extra]


def test_dpo_sigusr1_saves_exits_and_resumes_bitwise_with_async_saves(prefs, tmp_path):
    straight = tmp_path / "straight"
    _run("megatron_emu3.dpo.train", 1, *_dpo_args(prefs, straight))
    want = records(straight)
    assert sorted(want) == list(range(1, 9))
    for step in (2, 4, 6, 8):  # held-out pairs scored at every evaluation
        assert {"valid_margin", "valid_accuracy", "valid_dpo_loss"} <= set(want[step]), want[step]
    assert "valid_margin" not in want[1]

    run_dir = tmp_path / "signalled"
    proc = _launch("megatron_emu3.dpo.train", 1, *_dpo_args(prefs, run_dir, "checkpoint.async_save=true"))
    wait_for_step(run_dir, 3, proc)
    os.kill(proc.pid, signal.SIGUSR1)
    out, _ = proc.communicate(timeout=300)
    assert proc.returncode == 0, out[-3000:]
    assert "saved checkpoint on signal" in out and "asynchronously" in out
    assert not (run_dir / "COMPLETE").exists(), "the run finished before the signal; raise train.iters"
    saved = layout.step_of(layout.find_latest(run_dir / "checkpoints"))
    assert 3 <= saved < 8
    out = _run("megatron_emu3.dpo.train", 1, *_dpo_args(prefs, run_dir, "checkpoint.async_save=true"))
    assert f"at step {saved}" in out
    got = records(run_dir)
    assert sorted(got) == list(range(1, 9))
    for step in range(1, 9):
        for key in ("loss", "margin", "accuracy", "grad_norm"):
            assert got[step][key] == want[step][key], (step, key)
    assert (run_dir / "COMPLETE").read_text().strip() == "8"


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    state = Path(f"/proc/{pid}/stat").read_text().split()[2] if Path(f"/proc/{pid}/stat").exists() else "X"
    return state not in ("Z", "X")


def test_launcher_sigkill_takes_its_ranks_and_a_live_run_dir_is_refused(tmp_path):
    """Under pipeline parallelism 2 with the distributed optimizer and dropout on: SIGKILL of torchrun
    alone takes its ranks, a second launch into the live run's directory is refused, and the relaunch
    resumes bit for bit (every step's loss and grad norm; a wrongly restored Adam state shows from the
    second step after the checkpoint)."""
    run_dir = tmp_path / "run"

    def args(iters: int, directory: Path = run_dir) -> list[str]:
        return ["--config", TINY, f"run_dir={directory}", f"train.iters={iters}", "checkpoint.interval=2",
                "model.vocab_size=512", "optimizer.decay_iters=400", "parallel.pp=2", "parallel.distributed_optimizer=true",
                "model.hidden_dropout=0.1", "model.attention_dropout=0.1"]

    proc = _launch("megatron_emu3.train", 2, *args(400))
    wait_for_step(run_dir, 2, proc)
    wait_for_checkpoint(run_dir, proc)
    ranks = _children(proc.pid)  # torchrun's workers
    assert len(ranks) == 2, ranks

    # The ranks hold still (alive, the lock held) while the second launch starts up, so that the run
    # is a few steps in when killed and the relaunch and the comparison run stay short.
    for rank in ranks:
        os.kill(rank, signal.SIGSTOP)
    second = _launch("megatron_emu3.train", 1, *args(400), "parallel.pp=1")  # any launch into the directory
    out, _ = second.communicate(timeout=300)
    assert second.returncode == 2, out[-3000:]
    assert f"run directory {run_dir} is in use by a live run" in out
    assert any(f"pid {rank}," in out for rank in ranks) and "host " in out, out[-2000:]
    for rank in ranks:
        os.kill(rank, signal.SIGCONT)
    time.sleep(0.5)  # back to training

    os.kill(proc.pid, signal.SIGKILL)  # the launcher alone
    proc.wait(timeout=30)
    deadline = time.time() + 20
    while time.time() < deadline and any(_alive(p) for p in ranks):
        time.sleep(0.1)
    survivors = {p: Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ")[:200] for p in ranks if _alive(p)}
    assert not survivors, f"ranks outlived their launcher: {survivors}"
    saved = layout.step_of(layout.find_latest(run_dir / "checkpoints"))
    out = _run("megatron_emu3.train", 2, *args(saved + 2))
    assert f"at step {saved}" in out  # the stale lock of the killed run did not block
    assert (run_dir / "COMPLETE").read_text().strip() == str(saved + 2)
    straight = tmp_path / "straight"
    _run("megatron_emu3.train", 2, *args(saved + 2, straight))
    resumed, want = records(run_dir), records(straight)
    assert sorted(resumed) == list(range(1, saved + 3))
    for step in want:
        for key in ("loss", "grad_norm"):
            assert resumed[step][key] == want[step][key], (step, key, resumed[step][key], want[step][key])

