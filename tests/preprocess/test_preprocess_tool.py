"""tools/preprocess_data.py end to end: the bad-input corpus, exit codes, Parquet, Slurm slices, the
inspector round trip (caption and code grid exact), and resume after a crash or a kill."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from megatron_emu3.data import documents, media
from megatron_emu3.preprocess import inspect
from megatron_emu3.preprocess.cli import main
from megatron_emu3.offline.plan import slurm_task

from tests.preprocess import corpus

REPO = Path(__file__).resolve().parents[2]
SMALL = ["--min-pixels", "1024", "--max-pixels", str(64 * 64), "--video-min-pixels", "1024",
         "--video-max-pixels", str(64 * 64), "--no-progress", "--threads", "1"]


def run(manifests, prefix, vq_dir, *extra):
    argv = ["--input", *map(str, manifests), "--output-prefix", str(prefix), "--vq-dir", str(vq_dir), *SMALL,
            *map(str, extra)]
    rc = main(argv)
    report_path = Path(f"{prefix}_report.json")
    return rc, (json.loads(report_path.read_text()) if report_path.is_file() else None)


def write_jsonl(path: Path, rows: list) -> Path:
    with open(path, "wb") as f:
        for row in rows:
            f.write(row if isinstance(row, bytes) else json.dumps(row).encode() + b"\n")
    return path


def all_docs(prefix, tokenizer):
    shards = inspect.ShardSet(prefix)
    return [(kind, documents.parse(ids, tokenizer)) for ids, kind in (shards[i] for i in range(len(shards)))]


# -- the bad-input corpus -------------------------------------------------------------------------

def build_bad_corpus(root: Path):
    m = root / "media"
    m.mkdir(parents=True)
    good_png = corpus.save_image(m / "good.png", 64, 64, seed=1)
    good_jpg = corpus.save_image(m / "good.jpg", 48, 64, seed=2)
    corpus.save_video(m / "good.mp4", frames=16, fps=8)
    (m / "empty.png").write_bytes(b"")
    corpus.truncated_copy(good_jpg, m / "trunc.jpg")
    corpus.truncated_copy(good_png, m / "trunc.png")
    (m / "text.jpg").write_text("I am a text file\n")
    corpus.save_image(m / "tiny.png", 6, 6)
    corpus.bomb_png(m / "bomb.png")
    for mode, name in (("CMYK", "cmyk.jpg"), ("P", "palette.png"), ("RGBA", "alpha.png"), ("I;16", "deep.png")):
        corpus.save_image(m / name, 64, 40, seed=3, mode=mode, fmt="JPEG" if mode == "CMYK" else "PNG")
    corpus.save_audio_only(m / "audio.mp4")
    corpus.truncated_copy(m / "good.mp4", m / "trunc.mp4", keep=0.6)
    corpus.save_video(m / "short.mp4", frames=3, fps=8)
    corpus.save_image(m / "big.png", 192, 192, seed=4)
    good = lambda i: {"text": f"good row {i}"}  # noqa: E731
    rows = [  # (row, expected: None = written, else (field, reason fragment))
        (good(1), None),
        ({"text": "a picture", "image": "media/good.png"}, None),
        ({"text": "understood", "image": "media/good.jpg", "task": "understanding"}, None),
        ({"text": "a clip", "video": "media/good.mp4"}, None),
        ({"text": "missing", "image": "media/nope.png"}, ("image", "does not exist")),
        ({"text": "zero bytes", "image": "media/empty.png"}, ("image", "empty")),
        ({"text": "cut jpeg", "image": "media/trunc.jpg"}, ("image", "truncated")),
        ({"text": "cut png", "image": "media/trunc.png"}, ("image", "truncated")),
        ({"text": "text named jpg", "image": "media/text.jpg"}, ("image", "not an image")),
        ({"text": "tiny", "image": "media/tiny.png"}, ("image", "at least 8")),
        ({"text": "bomb", "image": "media/bomb.png"}, ("image", "decompression bomb")),
        ({"text": "cmyk", "image": "media/cmyk.jpg"}, None),
        ({"text": "palette", "image": "media/palette.png"}, None),
        ({"text": "alpha", "image": "media/alpha.png"}, None),
        ({"text": "sixteen bit", "image": "media/deep.png"}, None),
        ({"text": "audio only", "video": "media/audio.mp4"}, ("video", "no video stream")),
        ({"text": "cut mp4", "video": "media/trunc.mp4"}, ("video", "cannot be decoded")),
        ({"text": "three frames", "video": "media/short.mp4"}, ("video", "at least 4")),
        ({"text": "", "image": "media/good.png"}, ("text", "empty")),
        ({"text": None, "image": "media/good.png"}, ("text", "null")),
        ({"text": 42}, ("text", "must be a string")),
        (b'{"text": "bad \xff\xfe bytes"}\n', (None, "not valid UTF-8")),
        ({"text": "lone \ud800 surrogate"}, ("text", "UTF-8")),
        ({"text": "both", "image": "media/good.png", "video": "media/good.mp4"}, ("image,video", "both")),
        ({"text": "a picture", "image": "media/good.png"}, (None, "duplicate of")),
        (b"{not json\n", (None, "not valid JSON")),
        (b"\n", (None, "blank line")),
        ({"text": "weird task", "task": "captioning"}, ("task", "must be one of")),
        ({"text": "shrunk to fit", "image": "media/big.png"}, None),
        ({"text": "caption " * 390, "image": "media/good.png"}, ("image", "--max-seq-len 400 even at the minimum")),
        (good(2), None),
    ]
    return write_jsonl(root / "manifest.jsonl", [r for r, _ in rows]), rows


def test_bad_input_corpus(tmp_path, vq_dir, text_tokenizer):
    manifest, rows = build_bad_corpus(tmp_path / "data")
    big = ["--min-pixels", "1024", "--max-pixels", str(192 * 192)]
    rc, report = run([manifest], tmp_path / "out" / "s", vq_dir, "--workers", "2", "--shard-size", "8",
                     "--max-seq-len", "400", *big)
    assert rc == 0
    expected_bad = {i + 1: exp for i, (_, exp) in enumerate(rows) if exp is not None}
    good_rows = [r for r, exp in rows if exp is None]
    assert report["inputs"] == len(rows)
    assert report["documents_written"] == len(good_rows)
    assert report["skipped_count"] == len(expected_bad) == len(report["skipped"])
    assert report["documents_written"] + report["skipped_count"] == report["inputs"]
    by_row = {s["row"]: s for s in report["skipped"]}
    assert set(by_row) == set(expected_bad)
    for row, (field, fragment) in expected_bad.items():
        entry = by_row[row]
        assert entry["manifest"] == str(manifest)
        assert entry["field"] == field, entry
        assert fragment in entry["reason"], entry
    assert "good.png" in by_row[25]["reason"] or "row 2" in by_row[25]["reason"]
    assert by_row[5]["path"].endswith("media/nope.png")
    docs = all_docs(tmp_path / "out" / "s", text_tokenizer)
    assert [text_tokenizer.decode(d.text_ids.tolist()) for _, d in docs] == [r["text"] for r in good_rows]
    kinds = [k.name for k, _ in docs]
    assert kinds[:4] == ["TEXT", "IMAGE_GENERATION", "IMAGE_UNDERSTANDING", "VIDEO_GENERATION"]
    assert all(k == d.kind for k, d in docs)
    assert report["documents_by_kind"]["image_generation"] == 6
    assert report["resized_to_fit"] == {"image": 1, "video": 0, "video_shortened": 0, "interleaved": 0}
    shrunk = docs[[text_tokenizer.decode(d.text_ids.tolist()) for _, d in docs].index("shrunk to fit")][1]
    assert shrunk.codes.shape[0] == shrunk.codes.shape[1] and shrunk.codes.size < (192 // 8) ** 2  # square kept
    assert max(len(ids) for ids, _ in (inspect.ShardSet(tmp_path / "out" / "s")[i] for i in range(len(docs)))) <= 400
    assert report["tokens"]["vision"] == sum(int(d.codes.size) for _, d in docs if d.codes is not None)


# -- argument errors: exit code 2 with a message ---------------------------------------------------

def test_unusable_arguments_exit_2(tmp_path, vq_dir, capsys):
    manifest = write_jsonl(tmp_path / "m.jsonl", [{"text": "hello"}])
    assert main(["--input", str(manifest), "--output-prefix", str(tmp_path / "o"), "--vq-dir",
                 str(tmp_path / "novq")]) == 2
    assert "--vq-dir" in capsys.readouterr().err
    assert main(["--input", str(tmp_path / "missing.jsonl"), "--output-prefix", str(tmp_path / "o")]) == 2
    assert "missing.jsonl does not exist" in capsys.readouterr().err
    pq.write_table(pa.table({"text": [1, 2]}), tmp_path / "bad.parquet")
    assert main(["--input", str(tmp_path / "bad.parquet"), "--output-prefix", str(tmp_path / "o")]) == 2
    assert "column 'text' has type int64" in capsys.readouterr().err
    (tmp_path / "m.csv").write_text("text\nhello\n")
    assert main(["--input", str(tmp_path / "m.csv"), "--output-prefix", str(tmp_path / "o")]) == 2
    assert "unknown format" in capsys.readouterr().err


def test_parquet_with_bytes_paths_and_nulls(tmp_path, vq_dir, text_tokenizer):
    corpus.save_image(tmp_path / "p.png", 64, 64, seed=7)
    table = pa.table({"text": ["from bytes", "from a path", None, "plain text"],
                      "image": [corpus.png_bytes(64, 64, 9), None, corpus.png_bytes(), None],
                      "task": [None, "understanding", None, None]})
    pq.write_table(table.set_column(1, "image", pa.array([corpus.png_bytes(64, 64, 9), b"", None, None])),
                   tmp_path / "m.parquet", row_group_size=2)
    rc, report = run([tmp_path / "m.parquet"], tmp_path / "o" / "p", vq_dir, "--shard-size", "3")
    assert rc == 0
    assert report["documents_written"] == 2 and report["inputs"] == 4
    assert {(s["row"], s["field"]) for s in report["skipped"]} == {(2, "image"), (3, "text")}
    docs = all_docs(tmp_path / "o" / "p", text_tokenizer)
    assert [text_tokenizer.decode(d.text_ids.tolist()) for _, d in docs] == ["from bytes", "plain text"]


# -- the inspector sees exactly what the VQ produced ------------------------------------------------

def test_inspector_decodes_caption_and_codes(tmp_path, vq_dir, vision_tokenizer, text_tokenizer):
    img = corpus.save_image(tmp_path / "a.png", 64, 48, seed=11)
    vid = corpus.save_video(tmp_path / "v.mp4", frames=8, fps=8, seed=3)
    manifest = write_jsonl(tmp_path / "m.jsonl", [{"text": "a gradient, 多彩", "image": "a.png"},
                                                  {"text": "a moving gradient", "video": "v.mp4"}])
    rc, _ = run([manifest], tmp_path / "o" / "x", vq_dir)
    assert rc == 0
    shards = inspect.ShardSet(tmp_path / "o" / "x")
    out = tmp_path / "inspect"
    rec = inspect.decode_document(shards, 0, text_tokenizer, vision_tokenizer, out)
    assert rec["text"] == "a gradient, 多彩" and rec["meta"] == "6*8" and rec["kind"] == "image_generation"
    expected = vision_tokenizer.encode_images(media.prepare_image(img, 1024, 64 * 64)[None])[0]
    np.testing.assert_array_equal(documents.parse(shards[0][0], text_tokenizer).codes, expected)
    from PIL import Image

    assert Image.open(rec["media"]).size == (64, 48)
    frames, _ = media.decode_video(vid, 8, 4, 1024, 64 * 64)
    video_codes = vision_tokenizer.encode_videos(media.to_pixel_values(frames)[None])[0]
    parsed = documents.parse(shards[1][0], text_tokenizer)
    np.testing.assert_array_equal(parsed.codes, video_codes)
    assert parsed.meta.text() == "8*8*2 8fps 1.00s"
    rec = inspect.decode_document(shards, 1, text_tokenizer, vision_tokenizer, out, video_format="gif")
    assert Image.open(rec["media"]).n_frames == 8
    stats = inspect.statistics(shards)
    assert stats["documents_by_kind"]["video_generation"] == 1 and stats["tokens"]["vision"] == 48 + 128
    cli = subprocess.run([sys.executable, str(REPO / "tools" / "inspect_data.py"), str(tmp_path / "o" / "x"),
                          "--json"], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert cli.returncode == 0, cli.stderr
    assert json.loads(cli.stdout[cli.stdout.index("{"):])["documents"] == 2


# -- resume: crash of one worker, kill of the whole run ---------------------------------------------

def resume_corpus(root: Path) -> Path:
    root.mkdir(parents=True)
    rows = []
    for i in range(14):
        corpus.save_image(root / f"{i}.png", 64, 64, seed=i)
        rows.append({"text": f"image {i}", "image": f"{i}.png"})
        rows.append({"text": f"text {i} " * (i + 1)})
    corpus.save_video(root / "v.mp4", frames=8)
    rows.insert(5, {"text": "a video", "video": "v.mp4"})
    rows.insert(9, {"text": None})
    return write_jsonl(root / "m.jsonl", rows)


def shard_bytes(directory: Path) -> dict[str, bytes]:
    files = {p.name: p.read_bytes() for p in sorted(directory.iterdir()) if p.suffix in (".bin", ".idx", ".json")
             and "report" not in p.name}
    assert not [p for p in directory.iterdir() if p.name.startswith(".")], "partial files left behind"
    return files


@pytest.fixture(scope="module")
def resume_setup(tmp_path_factory, vq_dir):
    root = tmp_path_factory.mktemp("resume")
    manifest = resume_corpus(root / "data")
    rc, report = run([manifest], root / "full" / "s", vq_dir, "--shard-size", "3", "--workers", "1")
    assert rc == 0 and report["documents_written"] == 29 and report["skipped_count"] == 1
    return root, manifest, shard_bytes(root / "full")


def test_worker_crash_keeps_other_shards_and_rerun_matches(resume_setup, vq_dir):
    root, manifest, full = resume_setup
    prefix = root / "crash" / "s"
    rc, report = run([manifest], prefix, vq_dir, "--shard-size", "3", "--workers", "2", "--debug-crash", "4",
                     "--batch-size", "2")
    assert rc == 1
    assert [f["shard"] for f in report["failed_shards"]] == [f"{prefix}_00004"]
    assert "died" in report["failed_shards"][0]["reason"]
    assert list((root / "crash").glob(".s_00004.partial.*")), "the crash should leave a partial shard"
    assert len(report["shards"]) == len([n for n in full if n.endswith(".json")]) - 1  # the other worker finished
    rc, report = run([manifest], prefix, vq_dir, "--shard-size", "3", "--workers", "1")
    assert rc == 0 and report["shards_resumed"] == 9 and not report["failed_shards"]
    assert shard_bytes(root / "crash") == full


def test_kill_mid_run_then_rerun_equals_uninterrupted(resume_setup, vq_dir):
    root, manifest, full = resume_setup
    prefix = root / "killed" / "s"
    cmd = [sys.executable, str(REPO / "tools" / "preprocess_data.py"), "--input", str(manifest), "--output-prefix",
           str(prefix), "--vq-dir", str(vq_dir), "--shard-size", "3", "--workers", "1", *SMALL]
    proc = subprocess.Popen(cmd, cwd=REPO, start_new_session=True, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    try:
        while not list((root / "killed").glob("s_*.json")) if (root / "killed").is_dir() else True:
            assert proc.poll() is None, "the run ended before it could be killed"
            assert time.time() < deadline, "no shard completed within 120 s"
            time.sleep(0.05)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    complete = len(list((root / "killed").glob("s_*.json")))
    assert 1 <= complete < 10
    rc, report = run([manifest], prefix, vq_dir, "--shard-size", "3", "--workers", "1")
    assert rc == 0 and report["shards_resumed"] >= complete
    assert shard_bytes(root / "killed") == full


def test_changed_settings_on_existing_shards_exit_2(resume_setup, vq_dir, tmp_path, capsys):
    root, manifest, _ = resume_setup
    rc, _ = run([manifest], root / "full" / "s", vq_dir, "--shard-size", "3", "--max-seq-len", "999")
    assert rc == 2 and "other manifests or settings" in capsys.readouterr().err


# -- Slurm: tasks split the shards -------------------------------------------------------------------

def test_slurm_tasks_split_shards(resume_setup, vq_dir):
    root, manifest, full = resume_setup
    prefix = root / "array" / "s"
    reports = []
    for task in (0, 1):
        rc = main(["--input", str(manifest), "--output-prefix", str(prefix), "--vq-dir", str(vq_dir), *SMALL,
                   "--shard-size", "3", "--task-index", str(task), "--task-count", "2",
                   "--report", str(root / "array" / f"report{task}.json")])
        assert rc == 0
        reports.append(json.loads((root / "array" / f"report{task}.json").read_text()))
    assert sum(r["documents_written"] for r in reports) == 29
    assert not set(reports[0]["shards"]) & set(reports[1]["shards"])
    assert shard_bytes(root / "array") == full


def test_slurm_environment():
    assert slurm_task({}) == (0, 1)
    assert slurm_task({"SLURM_ARRAY_TASK_ID": "5", "SLURM_ARRAY_TASK_MIN": "4", "SLURM_ARRAY_TASK_COUNT": "3"}) == (1, 3)
    assert slurm_task({"SLURM_NTASKS": "4", "SLURM_PROCID": "2"}) == (2, 4)
    with pytest.raises(ValueError, match="outside an array"):
        slurm_task({"SLURM_ARRAY_TASK_ID": "7", "SLURM_ARRAY_TASK_COUNT": "2"})
