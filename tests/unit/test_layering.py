"""Lower layers never reach up or sideways: checked on the import statements of the package."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[2] / "megatron_emu3"


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
        elif isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
    return names


def _modules(package: str):
    return sorted((PACKAGE / package).rglob("*.py"))


def test_checkpoint_imports_nothing_from_training():
    for path in _modules("checkpoint"):
        bad = [m for m in _imports(path) if m.startswith("megatron_emu3.training")]
        assert not bad, f"{path.name} imports {bad}"


def test_batch_and_data_do_not_import_the_trainer_or_model():
    for package in ("batch", "data"):
        for path in _modules(package):
            bad = [m for m in _imports(path) if m.startswith(("megatron_emu3.training", "megatron_emu3.model",
                                                               "megatron_emu3.checkpoint"))]
            assert not bad, f"{package}/{path.name} imports {bad}"


def test_parallel_state_is_read_only_in_parallel_and_the_model_build():
    for path in PACKAGE.rglob("*.py"):
        if path.parent.name in ("parallel", "model"):
            continue
        assert "parallel_state" not in path.read_text(), f"{path.relative_to(PACKAGE)} reads parallel_state"


def test_planner_and_dry_run_do_not_import_megatron_core():
    code = ("import io, contextlib, sys\n"
            "from megatron_emu3.train import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    assert main(['--config', 'examples/recipes/emu3_8b_stage2.yaml', '--dry-run']) == 0\n"
            "from megatron_emu3.parallel.planner import suggest\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('megatron', 'torch')))\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=PACKAGE.parent, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.strip() == "[]", proc.stdout


def test_config_is_the_bottom_layer():
    for path in _modules("config"):
        bad = [m for m in _imports(path) if m.startswith("megatron_emu3.") and not m.startswith("megatron_emu3.config")]
        assert not bad, f"config/{path.name} imports {bad}"
