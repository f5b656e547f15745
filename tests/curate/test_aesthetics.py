"""The aesthetics rules with a tiny randomly initialised CLIP + MLP saved locally (named random: its
scores mean nothing, the test checks the plumbing): scores on images and on a clip's sampled frames,
the threshold dropping exactly the rows below it, and changed rules on existing shards refused."""

from __future__ import annotations

import json
from pathlib import Path

import yaml

from megatron_emu3.curate.aesthetics import save_random_aesthetic_model
from megatron_emu3.curate.cli import main

from tests.media_samples import pan_video, save_photo


def rules_file(path: Path, clip_dir: Path, mlp: Path, min_score: float) -> Path:
    rules = {"image": {"ocr": {"enabled": False}, "aesthetics": {"min_score": min_score}},
             "video": {"ocr": {"enabled": False}, "aesthetics": {"min_score": min_score}},
             "models": {"clip_dir": str(clip_dir), "aesthetic_mlp": str(mlp)}}
    path.write_text(yaml.safe_dump(rules))
    return path


def test_aesthetic_scores_and_threshold(tmp_path, capsys):
    clip_dir, mlp = save_random_aesthetic_model(tmp_path / "models")
    names = ("astronaut", "hubble", "retina", "ihc")
    rows = [{"text": n, "image": str(save_photo(tmp_path / f"{n}.jpg", n))} for n in names]
    rows.append({"text": "a pan", "video": str(pan_video(tmp_path / "pan.mp4", "coffee", frames=24))})
    manifest = tmp_path / "m.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))

    def run(prefix, min_score):
        rules = rules_file(tmp_path / f"rules{min_score}.yaml", clip_dir, mlp, min_score)
        return main(["--input", str(manifest), "--output-prefix", str(prefix), "--config", str(rules), "--no-progress",
                     "--threads", "1"])

    assert run(tmp_path / "all" / "c", -1e9) == 0
    kept = [json.loads(line) for line in Path(tmp_path / "all" / "c_kept.jsonl").read_text().splitlines()]
    assert len(kept) == 5 and all(isinstance(r["scores"]["aesthetic"], float) for r in kept)
    report = json.loads(Path(tmp_path / "all" / "c_report.json").read_text())
    assert not any("aesthetics" in n for n in report["notes"]) and report["timings_seconds"]["aesthetics"] > 0
    image_scores = sorted(r["scores"]["aesthetic"] for r in kept if "image" in r)
    assert image_scores[1] < image_scores[2], image_scores
    threshold = (image_scores[1] + image_scores[2]) / 2
    video_score = next(r["scores"]["aesthetic"] for r in kept if "video" in r)

    assert run(tmp_path / "all" / "c", threshold) == 2  # other rules on the same shards: refused, not mixed
    assert "other manifests or rules" in capsys.readouterr().err
    assert run(tmp_path / "cut" / "c", threshold) == 0
    dropped = [json.loads(line) for line in Path(tmp_path / "cut" / "c_dropped.jsonl").read_text().splitlines()]
    below = {r["text"] for r in kept if r["scores"]["aesthetic"] < threshold}
    assert {d["record"]["text"] for d in dropped} == below and len(below) == 2 + (video_score < threshold)
    assert {d["rule"] for d in dropped} <= {"image.aesthetics", "video.aesthetics"}
    assert all(d["value"] < threshold for d in dropped)
