"""The report of a bench/device_run.sh run: one Markdown file, one JSON file of every figure, one log.

    python bench/report.py --work WORK --out-dir DIR [--command "bash bench/device_run.sh"] [--commit SHA]

Reads WORK/steps.tsv (one line per step, written by device_run.sh: id, kind, title, time limit,
status, exit status, seconds, figures file) and each step's WORK/ID.out, .err and .cmd, and parses
each step's figures file by its kind: `machine` (bench/machine_info.py --json), `pytest` (JUnit
XML), `train_run` (the run's metrics.jsonl), `train_step` (bench/bench_train_step.py --json),
`attention` (bench/bench_attention.py --json), `ring` (bench/bench_ring_attention.py --json);
`install` and `text` steps have only their output. Writes DIR/device_run.md, DIR/device_run.json
and DIR/device_run.log (every step's command and output) and prints the summary table last.
Standard library only: it runs whatever broke in the steps. A figures file that is missing or
unreadable is reported as such for its step; it never stops the report.
"""

from __future__ import annotations

import argparse
import csv
import json
import platform
import statistics
import sys
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

MFU_GOAL = 0.55  # issue 13: model TFLOP/s at seq 5,120 over the measured bf16 matmul peak
BARE_GOAL = 0.90  # attention module within 10% of the bare kernel at 131k
PLANNER_GOAL = 0.10  # planner memory within 10% of the measured peak
TAIL_LINES = 40
LOG_CAP = 1 << 18  # characters of each step's stdout / stderr kept in the log (the device returns files <= 16 MiB)


@dataclass
class Step:
    number: int
    id: str
    kind: str
    title: str
    limit: int
    status: str
    rc: str
    seconds: int
    figures_path: str
    command: str = ""
    stdout: str = ""
    stderr: str = ""
    figures: object = None
    figures_error: str | None = None
    summary: str = ""
    sections: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# Parsing each kind of figures file


def read_machine(path: Path) -> dict:
    return json.loads(path.read_text())


def read_pytest(path: Path) -> dict:
    """Counts and the failed / skipped test names of a JUnit XML file."""
    root = ET.parse(path).getroot()
    suites = [root] if root.tag == "testsuite" else list(root.iter("testsuite"))
    counts = {"tests": 0, "failures": 0, "errors": 0, "skipped": 0}
    failed, skipped = [], []
    for suite in suites:
        for key in counts:
            counts[key] += int(suite.get(key, 0))
        for case in suite.iter("testcase"):
            name = f"{case.get('classname', '')}::{case.get('name', '')}"
            for tag in ("failure", "error"):
                node = case.find(tag)
                if node is not None:
                    failed.append({"test": name, "kind": tag, "message": (node.get("message") or "")[:300]})
            node = case.find("skipped")
            if node is not None:
                skipped.append({"test": name, "reason": (node.get("message") or "")[:300]})
    passed = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    return {**counts, "passed": passed, "failed": failed, "skipped_tests": skipped}


def read_train_run(path: Path) -> dict:
    """First and last loss, and the median speed after the first step, of a run's metrics.jsonl."""
    records = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    if not records:
        raise ValueError(f"{path} holds no records")
    later = records[1:] or records
    return {"steps": records[-1]["step"], "first_loss": records[0]["loss"], "last_loss": records[-1]["loss"],
            "median_step_ms": 1e3 * statistics.median(r["step_time_s"] for r in later),
            "median_tokens_per_s": statistics.median(r["tokens_per_s"] for r in later),
            "median_tflops_per_gpu": statistics.median(r["tflops_per_gpu"] for r in later)}


READERS = {"machine": read_machine, "pytest": read_pytest, "train_run": read_train_run,
           "train_step": lambda p: json.loads(p.read_text()), "attention": lambda p: json.loads(p.read_text()),
           "ring": lambda p: json.loads(p.read_text())}


# ---------------------------------------------------------------------------------------------
# One line of figures per step (the summary table) and the sections of the report


def summarise(step: Step) -> str:
    f = step.figures
    if f is None:
        return step.figures_error or ""
    if step.kind == "machine":
        v = f.get("versions", {})
        device = f.get("device") or "no CUDA device"
        return (f"{device}, python {f.get('python')}, torch {f.get('torch_build') or v.get('torch')} "
                f"(CUDA {f.get('torch_cuda')}), megatron-core {v.get('megatron-core')}, "
                f"transformers {v.get('transformers')}")
    if step.kind == "pytest":
        return f"{f['passed']} passed, {f['failures'] + f['errors']} failed, {f['skipped']} skipped"
    if step.kind == "train_run":
        return (f"loss {f['first_loss']:.2f} -> {f['last_loss']:.2f} in {f['steps']} steps, "
                f"{f['median_tokens_per_s']:,.0f} tokens/s")
    if step.kind == "train_step":
        text = (f"{f['step_ms']:.0f} ms, {f['tokens_per_s']:,.0f} tokens/s, {f['model_tflops']:.3g} TFLOP/s, "
                f"MFU {f['mfu']:.1%}")
        if f.get("peak_memory_gib") is not None:
            text += f", {f['peak_memory_gib']:.1f} GiB (planner {f['planner_memory_gib']:.1f})"
        if f.get("warmup_s") is not None:  # untimed first step; with fused kernels it includes their compile
            text += f", warm-up {f['warmup_s']:.1f} s ({'fused' if f.get('fused_kernels') else 'unfused'})"
        return text
    if step.kind == "attention":
        rows = f.get("rows", [])
        if not rows:
            return "no rows"
        longest = max(r["seq"] for r in rows)
        return f"at {longest:,}: " + "; ".join(attention_cell(r) for r in rows if r["seq"] == longest)
    if step.kind == "ring":
        return "; ".join(f"S {r['seq']:,} docs {r['docs']}: SDPA {r['sdpa_ms']:.1f} ms, " + ", ".join(
            f"ring c={c} {ms:.1f} ms" for c, ms in r["ring_ms"].items()) for r in f.get("rows", []))
    return ""


def attention_cell(row: dict) -> str:
    if row.get("error"):
        return f"{row['backend']} failed"
    bare = f" (bare {row['bare_tflops']:.3g})" if row.get("bare_tflops") else ""
    return f"{row['backend']} {row['module_tflops']:.3g} TFLOP/s{bare}"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def fmt(value, spec: str = ".1f", missing: str = "-") -> str:
    """`value` formatted by `spec`, or `missing` for None."""
    return missing if value is None else format(value, spec)


def machine_section(steps: list[Step]) -> str:
    f = next((s.figures for s in steps if s.kind == "machine" and s.figures), None)
    if f is None:
        return ""
    rows = [[k, fmt(f.get(k), "")] for k in ("device", "capability", "device_memory_gib", "multiprocessors", "python",
                                    "torch_build", "torch_cuda", "cudnn", "megatron_core_from", "platform")]
    rows += [[name, version or "not installed"] for name, version in f.get("versions", {}).items()]
    smi = f.get("nvidia_smi", "")
    return ("## Machine and versions\n\n" + table(["what", "value"], rows) + "\n\n```text\n" + smi.rstrip()
            + "\n```\n")


def train_section(steps: list[Step]) -> str:
    rows = []
    for s in steps:
        if s.kind != "train_step" or not s.figures:
            continue
        f = s.figures
        planner_off = None
        if f.get("peak_memory_gib"):
            planner_off = f["planner_memory_gib"] / f["peak_memory_gib"] - 1
        rows.append([f["attention_backend"], f["recompute"], f["attention_kernel"], f"{f['step_ms']:.1f}",
                     f"{f['tokens_per_s']:,.0f}", f"{f['model_tflops']:.1f}", f"{f['matmul_peak_tflops']:.1f}",
                     f"{f['mfu']:.1%}", fmt(f.get("peak_memory_gib")), fmt(f.get("planner_memory_gib")),
                     fmt(planner_off, "+.0%")])
    if not rows:
        return ""
    return (f"## Emu3-8B layer shape: train step\n\nMFU = model TFLOP/s (causal attention counted as half) over the "
            f"measured bf16 matmul peak; goal {MFU_GOAL:.0%}. Planner vs measured peak memory: goal within "
            f"{PLANNER_GOAL:.0%}.\n\n" + table(["backend", "recompute", "kernel", "step ms", "tokens/s",
                                                "model TFLOP/s", "matmul peak", "MFU", "peak GiB", "planner GiB",
                                                "planner vs peak"], rows) + "\n")


def attention_section(steps: list[Step]) -> str:
    parts = []
    for s in steps:
        if s.kind != "attention" or not s.figures:
            continue
        f = s.figures
        rows = [[f"{r['seq']:,}", r["backend"], "failed", r["error"].replace("|", "/"), "-", "-", "-"] if r.get("error")
                else [f"{r['seq']:,}", r["backend"], f"{r['module_ms']:.1f}", f"{r['module_tflops']:.1f}",
                      fmt(r.get("bare_ms")), fmt(r.get("bare_tflops")),
                      fmt(r["module_tflops"] / r["bare_tflops"] if r.get("bare_tflops") else None, ".0%")]
                for r in f.get("rows", [])]
        parts.append(f"### {s.title}\n\n{f.get('device')}, {f.get('dtype')}, heads {f.get('heads')}/"
                     f"{f.get('kv_heads')}, dim {f.get('dim')}, {f.get('docs')} document(s) per sequence; "
                     f"goal: module within {1 - BARE_GOAL:.0%} of the bare kernel at 131k.\n\n"
                     + table(["seq", "backend", "module ms", "module TFLOP/s", "bare ms", "bare TFLOP/s",
                              "module / bare"], rows) + "\n")
    return "## Attention forward + backward\n\n" + "\n".join(parts) if parts else ""


def ring_section(steps: list[Step]) -> str:
    parts = []
    for s in steps:
        if s.kind != "ring" or not s.figures:
            continue
        f = s.figures
        rows = [[f"{r['seq']:,}", r["docs"], f"{r['sdpa_ms']:.1f}"] + [
            f"{ms:.1f} ({r['sdpa_ms'] / ms:.2f}x)" for ms in r["ring_ms"].values()] for r in f.get("rows", [])]
        cps = list(f["rows"][0]["ring_ms"]) if f.get("rows") else []
        parts.append(f"### {s.title}\n\n{f.get('device')} {f.get('precision')}, H={f.get('heads')}, G={f.get('groups')}, "
                     f"d={f.get('head_dim')}; full: {f.get('reference')}; forward+backward ms (SDPA / ring)\n\n"
                     + table(["S", "docs", "SDPA full"] + [f"ring c={c}" for c in cps], rows) + "\n")
    return "## Ring attention\n\n" + "\n".join(parts) if parts else ""


def tail(text: str, lines: int = TAIL_LINES) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def step_section(step: Step) -> str:
    text = (f"### {step.number}. {step.title}\n\n`{step.command}`\n\n{result(step)} in {step.seconds} s "
            f"(limit {step.limit} s)\n")
    if step.kind == "pytest" and step.figures:
        for failure in step.figures["failed"]:
            text += f"\n- **{failure['kind']}** {failure['test']}: {failure['message']}"
        for skip in step.figures["skipped_tests"]:
            text += f"\n- skipped {skip['test']}: {skip['reason']}"
        text += "\n"
    if step.figures_error:
        text += f"\nfigures: {step.figures_error}\n"
    if step.stdout.strip():
        text += f"\nstdout (last {TAIL_LINES} lines):\n\n```text\n{tail(step.stdout)}\n```\n"
    if (step.status != "ok" or not step.stdout.strip()) and step.stderr.strip():  # failures, and programs that log
        text += f"\nstderr (last {TAIL_LINES} lines):\n\n```text\n{tail(step.stderr)}\n```\n"
    return text


def result(step: Step) -> str:
    if step.status == "ok":
        return "ok"
    if step.status == "timeout":
        return f"**FAILED** (stopped at its {step.limit} s limit)"
    if step.status == "skipped":
        return "**SKIPPED** (torch sees no CUDA device)"
    return f"**FAILED** (exit {step.rc})"


# ---------------------------------------------------------------------------------------------


def read_steps(work: Path) -> list[Step]:
    steps = []
    with open(work / "steps.tsv", newline="") as handle:
        for number, row in enumerate(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE), 1):
            if len(row) != 8:
                raise SystemExit(f"{work / 'steps.tsv'} line {number}: {len(row)} fields, expected 8: {row}")
            step_id, kind, title, limit, status, rc, seconds, figures = row
            step = Step(number, step_id, kind, title, int(limit), status, rc, int(seconds), figures)
            for attr, suffix in (("command", "cmd"), ("stdout", "out"), ("stderr", "err")):
                path = work / f"{step_id}.{suffix}"
                setattr(step, attr, path.read_text(errors="replace").strip("\n") if path.exists() else "")
            load_figures(step, work)
            step.summary = summarise(step)
            steps.append(step)
    return steps


def load_figures(step: Step, work: Path) -> None:
    if step.figures_path in ("", "-") or step.kind not in READERS:
        return
    path = Path(step.figures_path)
    if not path.is_absolute():
        path = work / path
    if not path.exists():
        step.figures_error = f"no figures: {path} was not written"
        return
    try:
        step.figures = READERS[step.kind](path)
    except (ValueError, KeyError, TypeError, ET.ParseError) as err:
        step.figures_error = f"unreadable figures in {path}: {type(err).__name__}: {err}"


def summary_table(steps: list[Step]) -> str:
    return table(["#", "step", "result", "s (limit)", "figures"],
                 [[s.number, s.title, result(s), f"{s.seconds} ({s.limit})", s.summary.replace("|", "/")]
                  for s in steps])


def write_report(steps: list[Step], out_dir: Path, meta: dict) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    bad = [s for s in steps if s.status != "ok"]
    head = "# GPU check (bench/device_run.sh)\n\n" + "\n".join(f"- {k}: {v}" for k, v in meta.items())
    head += f"\n- steps: {len(steps)}, ok {len(steps) - len(bad)}, failed, stopped or skipped {len(bad)}"
    body = [head, "## Summary\n\n" + summary_table(steps), machine_section(steps), train_section(steps),
            attention_section(steps), ring_section(steps), "## Steps", *(step_section(s) for s in steps)]
    (out_dir / "device_run.md").write_text("\n\n".join(x.strip("\n") for x in body if x) + "\n")
    record = {"meta": meta, "steps": [
        {"number": s.number, "id": s.id, "title": s.title, "kind": s.kind, "status": s.status, "rc": s.rc,
         "seconds": s.seconds, "limit": s.limit, "command": s.command, "summary": s.summary, "figures": s.figures,
         "figures_error": s.figures_error} for s in steps]}
    (out_dir / "device_run.json").write_text(json.dumps(record, indent=1))
    with open(out_dir / "device_run.log", "w") as log:
        for s in steps:
            log.write(f"===== {s.number}. {s.title}: {s.status} (exit {s.rc}) in {s.seconds} s\n$ {s.command}\n")
            for name, text in (("stdout", s.stdout), ("stderr", s.stderr)):
                if len(text) > LOG_CAP:
                    text = f"[first {len(text) - LOG_CAP} characters left out]\n" + text[-LOG_CAP:]
                log.write(f"----- {name}\n{text}\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work", type=Path, required=True, help="device_run.sh's WORK folder (steps.tsv)")
    parser.add_argument("--out-dir", type=Path, required=True)
    parser.add_argument("--command", default="bash bench/device_run.sh")
    parser.add_argument("--commit", default="unknown")
    args = parser.parse_args(argv)
    if not (args.work / "steps.tsv").exists():
        parser.error(f"{args.work / 'steps.tsv'} does not exist: is {args.work} a device_run.sh WORK folder?")
    steps = read_steps(args.work)
    meta = {"date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()), "host": platform.node(),
            "commit": args.commit, "command": f"`{args.command}`"}
    write_report(steps, args.out_dir, meta)
    print(f"report: {args.out_dir / 'device_run.md'}, figures: {args.out_dir / 'device_run.json'}, "
          f"log: {args.out_dir / 'device_run.log'}\n")
    print(summary_table(steps))
    return 0


if __name__ == "__main__":
    sys.exit(main())
