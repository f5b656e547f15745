"""bench/report.py on recorded output of the device_run.sh steps (tests/bench/samples/device_run_cpu:
the real scripts, run on this CPU machine at tiny sizes), through its command line: the report's
summary and figure tables hold the recorded figures, the JSON holds every figures file as parsed,
the log every step's command and output; missing, unreadable and failed steps are reported, not
fatal; a real pytest JUnit file with a failure, a skip and a pass is counted right."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.bench.test_bench_scripts import table

REPO = Path(__file__).resolve().parents[2]
REPORT = REPO / "bench" / "report.py"
SAMPLES = Path(__file__).resolve().parent / "samples" / "device_run_cpu"
SUMMARY = "| # | step | result | s (limit) | figures |"


def report(work: Path, out_dir: Path, expect_rc: int = 0) -> subprocess.CompletedProcess:
    proc = subprocess.run([sys.executable, str(REPORT), "--work", str(work), "--out-dir", str(out_dir), "--command",
                           "bash bench/device_run.sh", "--commit", "abc123"], capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == expect_rc, proc.stdout + proc.stderr
    return proc


@pytest.fixture
def work(tmp_path) -> Path:
    copy = tmp_path / "work"
    shutil.copytree(SAMPLES, copy)
    return copy


def test_report_of_recorded_steps(work, tmp_path):
    out_dir = tmp_path / "out"
    proc = report(work, out_dir)
    rows = table(proc.stdout, SUMMARY)
    assert proc.stdout.rstrip().splitlines()[-1].startswith("| 6 | ")  # the summary is printed last
    steps = [line.split("\t") for line in (work / "steps.tsv").read_text().splitlines()]
    assert [r[:2] for r in rows] == [[str(i), s[2]] for i, s in enumerate(steps, 1)]
    assert [r[3] for r in rows] == [f"{s[6]} ({s[3]})" for s in steps]
    assert rows[0][2] == "**FAILED** (exit 3)" and all(r[2] == "ok" for r in rows[1:])

    machine = json.loads((work / "machine.json").read_text())
    train = json.loads((work / "train.json").read_text())
    attention = json.loads((work / "attention.json").read_text())
    ring = json.loads((work / "ring.json").read_text())
    metrics = [json.loads(line) for line in (work / "tiny_run" / "metrics.jsonl").read_text().splitlines()]
    assert rows[0][4] == (f"no CUDA device, python {machine['python']}, torch {machine['torch_build']} (CUDA None), "
                          f"megatron-core {machine['versions']['megatron-core']}, transformers "
                          f"{machine['versions']['transformers']}")
    assert rows[1][4] == "0 passed, 0 failed, 7 skipped"
    assert rows[2][4].startswith(f"loss {metrics[0]['loss']:.2f} -> {metrics[-1]['loss']:.2f} in {len(metrics)} steps")
    assert rows[3][4] == (f"{train['step_ms']:.0f} ms, {train['tokens_per_s']:,.0f} tokens/s, "
                          f"{train['model_tflops']:.3g} TFLOP/s, MFU {train['mfu']:.1%}")
    longest = [r for r in attention["rows"] if r["seq"] == 512]
    assert rows[4][4] == "at 512: " + "; ".join(f"{r['backend']} {r['module_tflops']:.3g} TFLOP/s (bare "
                                                f"{r['bare_tflops']:.3g})" for r in longest)
    assert rows[5][4].startswith(f"S 256 docs 1: SDPA {ring['rows'][0]['sdpa_ms']:.1f} ms, ring c=1 ")

    md = (out_dir / "device_run.md").read_text()
    assert md.startswith("# GPU check (bench/device_run.sh)\n\n- date: ") and "- commit: abc123" in md
    train_rows = table(md, "| backend | recompute | kernel | step ms | tokens/s | model TFLOP/s | matmul peak | MFU | "
                           "peak GiB | planner GiB | planner vs peak |")
    assert train_rows == [["sdpa", "none", train["attention_kernel"], f"{train['step_ms']:.1f}",
                           f"{train['tokens_per_s']:,.0f}", f"{train['model_tflops']:.1f}",
                           f"{train['matmul_peak_tflops']:.1f}", f"{train['mfu']:.1%}", "-", "-", "-"]]
    attention_rows = table(md, "| seq | backend | module ms | module TFLOP/s | bare ms | bare TFLOP/s | module / bare |")
    assert [(r[0], r[1], r[6]) for r in attention_rows] == [
        (f"{r['seq']:,}", r["backend"], f"{r['module_tflops'] / r['bare_tflops']:.0%}") for r in attention["rows"]]
    ring_rows = table(md, "| S | docs | SDPA full | ring c=1 | ring c=2 |")
    assert ring_rows[1] == ["256", "2", f"{ring['rows'][1]['sdpa_ms']:.1f}"] + [
        f"{ms:.1f} ({ring['rows'][1]['sdpa_ms'] / ms:.2f}x)" for ms in ring["rows"][1]["ring_ms"].values()]
    assert "torch sees no CUDA device" in md  # the failed step's stderr
    assert "```text\nnvidia-smi not found\n```" in md

    record = json.loads((out_dir / "device_run.json").read_text())
    assert record["meta"]["commit"] == "abc123"
    by_id = {s["id"]: s for s in record["steps"]}
    assert by_id["machine"]["figures"] == machine and by_id["train"]["figures"] == train
    assert by_id["attention"]["figures"] == attention and by_id["ring"]["figures"] == ring
    assert by_id["tiny_bf16"]["figures"]["first_loss"] == metrics[0]["loss"]
    assert by_id["gpu_tests"]["figures"]["skipped"] == 7 and by_id["machine"]["rc"] == "3"
    log = (out_dir / "device_run.log").read_text()
    for step_id in by_id:
        assert (work / f"{step_id}.cmd").read_text().strip() in log
    assert (work / "ring.out").read_text().strip() in log


def test_missing_unreadable_failed_and_skipped_steps(work, tmp_path):
    (work / "attention.json").unlink()
    (work / "ring.json").write_text('{"rows": [{"seq": 256')  # cut off, as a killed writer leaves it
    lines = (work / "steps.tsv").read_text().splitlines()
    fields = [line.split("\t") for line in lines]
    fields[3][4:6] = ["timeout", "124"]
    fields[2][4:6] = ["skipped", "-1"]
    (work / "steps.tsv").write_text("\n".join("\t".join(f) for f in fields) + "\n")
    out_dir = tmp_path / "out"
    rows = table(report(work, out_dir).stdout, SUMMARY)
    assert rows[2][2] == "**SKIPPED** (torch sees no CUDA device)"
    assert rows[3][2] == "**FAILED** (stopped at its 55 s limit)"
    assert rows[4][4] == f"no figures: {work / 'attention.json'} was not written"
    assert rows[5][4].startswith(f"unreadable figures in {work / 'ring.json'}: JSONDecodeError")
    record = json.loads((out_dir / "device_run.json").read_text())
    assert record["steps"][4]["figures"] is None and "was not written" in record["steps"][4]["figures_error"]


def test_bad_steps_file_is_named(work, tmp_path):
    with open(work / "steps.tsv", "a") as handle:
        handle.write("broken\tline\n")
    proc = report(work, tmp_path / "out", expect_rc=1)
    assert f"{work / 'steps.tsv'} line 7: 2 fields, expected 8" in proc.stderr
    proc = report(tmp_path / "nowhere", tmp_path / "out", expect_rc=2)
    assert "steps.tsv does not exist" in proc.stderr


def test_pytest_junit_counts(work, tmp_path):
    """A real JUnit file of pytest with one pass, one failure, one skip and one error."""
    suite = tmp_path / "suite"
    suite.mkdir()
    (suite / "test_mixed.py").write_text(
        "import pytest\n\n"
        "@pytest.fixture\ndef broken():\n    raise RuntimeError('fixture broke')\n\n"
        "def test_passes():\n    assert True\n\n"
        "def test_fails():\n    assert 1 == 2, 'one is not two'\n\n"
        "def test_skips():\n    pytest.skip('no CUDA here')\n\n"
        "def test_errors(broken):\n    pass\n")
    (suite / "pytest.ini").write_text("[pytest]\n")
    subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", f"--junitxml={work / 'gpu_tests.xml'}"],
                   cwd=suite, capture_output=True, text=True, timeout=120)
    out_dir = tmp_path / "out"
    rows = table(report(work, out_dir).stdout, SUMMARY)
    assert rows[1][4] == "1 passed, 2 failed, 1 skipped"
    figures = json.loads((out_dir / "device_run.json").read_text())["steps"][1]["figures"]
    assert (figures["tests"], figures["failures"], figures["errors"], figures["skipped"]) == (4, 1, 1, 1)
    assert [f["test"].split("::")[1] for f in figures["failed"]] == ["test_fails", "test_errors"]
    assert "one is not two" in figures["failed"][0]["message"]
    assert figures["skipped_tests"][0]["reason"] == "no CUDA here"
    md = (out_dir / "device_run.md").read_text()
    assert "- **failure** test_mixed::test_fails: " in md and "- skipped test_mixed::test_skips: no CUDA here" in md


def test_a_failed_attention_row_is_shown_as_failed(work, tmp_path):
    figures = json.loads((work / "attention.json").read_text())
    figures["rows"].append({"seq": 512, "backend": "torch varlen", "error": "512 torch varlen: OutOfMemoryError: CUDA"})
    (work / "attention.json").write_text(json.dumps(figures))
    out_dir = tmp_path / "out"
    rows = table(report(work, out_dir).stdout, SUMMARY)
    assert rows[4][4].startswith("at 512: torch SDPA ") and rows[4][4].endswith("; torch varlen failed")
    md_rows = table((out_dir / "device_run.md").read_text(),
                    "| seq | backend | module ms | module TFLOP/s | bare ms | bare TFLOP/s | module / bare |")
    assert md_rows[-1] == ["512", "torch varlen", "failed", "512 torch varlen: OutOfMemoryError: CUDA", "-", "-", "-"]
