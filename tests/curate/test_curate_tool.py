"""tools/curate.py end to end on real media: the expected kept/dropped sets with the rule named, three
clips from a video with two cuts, a SIGKILLed run re-run to identical outputs, Slurm tasks, and the
kept manifest through tools/preprocess_data.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from megatron_emu3.curate.cli import main
from megatron_emu3.curate.video import probe

from tests.curate import corpus

REPO = Path(__file__).resolve().parents[2]
RULES = REPO / "examples" / "curation" / "rules.yaml"


def curate_cmd(manifest, prefix, *extra):
    return [sys.executable, str(REPO / "tools" / "curate.py"), "--input", str(manifest), "--output-prefix", str(prefix),
            "--config", str(RULES), "--no-progress", "--threads", "1", *map(str, extra)]


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()]


def outputs(out_dir: Path) -> dict[str, bytes]:
    """Every output that must not depend on how the run went (reports hold timings; shards are internal)."""
    files = {p.relative_to(out_dir).as_posix(): p.read_bytes() for p in out_dir.rglob("*")
             if p.is_file() and (p.suffix == ".mp4" or p.name.endswith(("_kept.jsonl", "_dropped.jsonl")))}
    assert any(name.endswith("_kept.jsonl") for name in files)
    return files


@pytest.fixture(scope="module")
def curated(tmp_path_factory):
    root = tmp_path_factory.mktemp("curate")
    manifest, expected = corpus.build(root)
    prefix = root / "full" / "c"
    proc = subprocess.run(curate_cmd(manifest, prefix, "--shard-size", "4"), cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr
    return root, manifest, expected, prefix


def test_expected_kept_and_dropped_with_the_rule_named(curated):
    root, manifest, expected, prefix = curated
    kept = read_jsonl(Path(f"{prefix}_kept.jsonl"))
    dropped = read_jsonl(Path(f"{prefix}_dropped.jsonl"))
    got: dict[int, list[str]] = {}
    for row in kept:
        got.setdefault(row["source"]["row"], []).append("kept")
    for row in dropped:
        got.setdefault(row["row"], []).append(row["rule"])
        assert row["reason"], row
    want = {i + 1: (e if isinstance(e, list) else [e]) for i, (_, e) in enumerate(expected)}
    assert {r: sorted(v) for r, v in got.items()} == {r: sorted(v) for r, v in want.items()}
    by_row = {row["row"]: row for row in dropped}
    assert by_row[4]["duplicate_of"]["row"] == 1 and by_row[4]["value"] <= 6  # the resized copy of row 1
    assert by_row[6]["value"] > 0.15 and by_row[6]["scores"]["chroma"] > 1.0  # colourful enough: OCR dropped it
    assert by_row[7]["value"] == "451x300"
    assert "does not exist" in by_row[9]["reason"] and "truncated" in by_row[8]["reason"]
    assert by_row[12]["scores"]["motion"] < 0.01 and by_row[13]["scores"]["flow_residual"] > 20
    assert by_row[14]["value"] == 1.0 and by_row[14]["clip"]["seconds"] == 1.0
    assert "cannot be decoded" in by_row[15]["reason"] and "no video stream" in by_row[16]["reason"]
    assert by_row[17]["field"] == "text" and "caption is empty" in by_row[17]["reason"]
    images = [r for r in kept if "image" in r]
    assert all(r["scores"]["phash"] and r["scores"]["text_area"] <= 0.15 for r in images)
    assert all((prefix.parent / r["image"]).is_file() for r in images)


def test_two_cuts_become_three_clip_files(curated):
    _, _, _, prefix = curated
    clips = [r for r in read_jsonl(Path(f"{prefix}_kept.jsonl")) if "video" in r]
    assert len(clips) == 3 and all(c["source"]["row"] == 11 for c in clips)
    assert [(c["clip"]["start"], c["clip"]["end"]) for c in clips] == [(0.0, 3.0), (3.0, 6.0), (6.0, 9.0)]
    for c in clips:
        path = prefix.parent / c["video"]
        info = probe(path)
        assert info.frames == 24 and abs(info.seconds - 3.0) < 1e-6
        assert c["clip"]["method"] == "copy"  # the cuts fall on keyframes
        assert c["sample_frames"] == 4 and len(c["sample_times"]) == 4  # the sampling rule: <= 10 s -> 4 frames
        assert 0.01 <= c["scores"]["motion"] <= 1.0
    assert len(list(Path(f"{prefix}_clips").glob("*.mp4"))) == 3  # dropped clips are not left on disk


def test_report(curated):
    _, _, expected, prefix = curated
    report = json.loads(Path(f"{prefix}_report.json").read_text())
    assert report["inputs"]["rows"] == len(expected) and report["inputs"]["videos"] == 4
    assert report["kept"] == 7 and report["kept_by_kind"] == {"image": 3, "text": 1, "video": 3}
    assert report["dropped_by_rule"] == {"colour.monochrome": 1, "image.near_duplicate": 1, "image.ocr": 1,
                                         "image.size": 1, "input.invalid_row": 2, "input.unreadable": 4,
                                         "video.length.short": 1, "video.motion.static": 1,
                                         "video.motion.too_fast": 1}
    assert len(report["unreadable"]) == 6 and all(u["reason"] for u in report["unreadable"])
    assert any("aesthetics rules are OFF" in n for n in report["notes"])
    assert report["timings_seconds"]["ocr"] > 0 and report["timings_seconds"]["motion"] > 0
    for png in report["histograms"].values():
        assert Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {"image.text_area", "video.motion"} <= set(report["histograms"])
    assert "image.ocr" in Path(f"{prefix}_report.md").read_text()


@pytest.mark.slow
def test_killed_then_rerun_as_slurm_tasks_gives_identical_outputs(curated):
    """SIGKILL mid-run, then the same command as two Slurm tasks (the second with two worker processes):
    complete shards are kept, the task that completes the run merges, and every output is identical."""
    root, manifest, _, full = curated
    prefix = root / "killed" / "c"
    proc = subprocess.Popen(curate_cmd(manifest, prefix, "--shard-size", "1"), cwd=REPO, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shards = Path(f"{prefix}_shards")
    deadline = time.time() + 120
    try:
        while len(list(shards.glob("*.json"))) < 2 if shards.is_dir() else True:
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.time() < deadline, "no shard completed within 120 s"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    done = len(list(shards.glob("*.json")))
    assert 2 <= done < len(manifest.read_text().splitlines()) and not Path(f"{prefix}_kept.jsonl").exists()
    for task, workers in ((0, 1), (1, 2)):
        rerun = subprocess.run(curate_cmd(manifest, prefix, "--shard-size", "1", "--task-index", task, "--task-count",
                                          2, "--workers", workers), cwd=REPO, capture_output=True, text=True, timeout=300)
        assert rerun.returncode == 0, rerun.stderr
        assert Path(f"{prefix}_kept.jsonl").exists() == (task == 1)  # the task that completes the run merges
    assert outputs(prefix.parent) == outputs(full.parent)


@pytest.mark.slow
def test_kept_manifest_goes_through_preprocessing(curated, tmp_path):
    from megatron_emu3.data.vision_tokenizer import save_tiny_vq

    _, _, _, prefix = curated
    vq = save_tiny_vq(tmp_path / "vq")
    out = tmp_path / "shards" / "s"
    proc = subprocess.run(
        [sys.executable, str(REPO / "tools" / "preprocess_data.py"), "--input", f"{prefix}_kept.jsonl",
         "--output-prefix", str(out), "--vq-dir", str(vq), "--min-pixels", "1024", "--max-pixels", str(64 * 64),
         "--video-min-pixels", "1024", "--video-max-pixels", str(64 * 64), "--no-progress", "--threads", "1"],
        cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(Path(f"{out}_report.json").read_text())
    assert report["skipped"] == [] and report["documents_written"] == 7
    assert report["documents_by_kind"]["video_generation"] == 3
    assert report["documents_by_kind"]["image_understanding"] == 1  # the row's task is kept


def test_unusable_rules_exit_2(tmp_path, capsys, curated):
    _, manifest, _, _ = curated
    bad = tmp_path / "bad.yaml"
    bad.write_text("image:\n  colour: {enabeld: true}\n")
    assert main(["--input", str(manifest), "--output-prefix", str(tmp_path / "x"), "--config", str(bad)]) == 2
    assert "unknown key(s) ['enabeld']" in capsys.readouterr().err
    bad.write_text("models: {clip_dir: /nowhere}\n")
    assert main(["--input", str(manifest), "--output-prefix", str(tmp_path / "x"), "--config", str(bad)]) == 2
    assert "go together" in capsys.readouterr().err
    if not __import__("torch").cuda.is_available():
        assert main(["--input", str(manifest), "--output-prefix", str(tmp_path / "x"), "--devices", "cuda:0"]) == 2
        assert "torch sees no GPU" in capsys.readouterr().err
