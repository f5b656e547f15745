"""The curation report: counts per rule, kept rows by kind, every unreadable input with its reason,
score histograms (PNG: matplotlib when installed, else drawn with Pillow) and timings; as JSON and
as Markdown next to the outputs (`P_report.json`, `P_report.md`, `P_hist_<score>.png`)."""

from __future__ import annotations

import json
import os
from collections import Counter, defaultdict
from pathlib import Path

import numpy as np

HISTOGRAM_SCORES = ("chroma", "saturation", "luma_std", "text_area", "aesthetic", "motion", "flow_residual")


def _scores(d: dict) -> dict:
    return d["kept_row"].get("scores", {}) if d["status"] == "kept" else d.get("scores", {})


def build_report(job, decisions: list[dict], records: list[dict], seconds: float) -> dict:
    rules = job.rules
    kept = [d for d in decisions if d["status"] == "kept"]
    dropped = [d for d in decisions if d["status"] != "kept"]
    videos = {(d["manifest"], d["row"]) for d in decisions if d.get("kind") == "video" and "clip" in
              (d if d["status"] != "kept" else d["kept_row"])}
    timings: dict[str, float] = defaultdict(float)
    for rec in records:
        for k, v in rec.get("timings", {}).items():
            timings[k] += v
    notes = []
    if not rules.aesthetics_available():
        notes.append("aesthetics rules are OFF: models.clip_dir and models.aesthetic_mlp are not set in the rules file")
    for kind in ("image", "video"):
        for name in ("size", "colour", "ocr", "aesthetics", "dedup", "scenes", "length", "motion"):
            section = getattr(getattr(rules, kind), name, None)
            if section is not None and not section.enabled:
                notes.append(f"{kind}.{name} is disabled in the rules file")
    return {
        "inputs": {"manifests": job.manifest_paths, "rows": sum(r["rows"] for r in records),
                   "videos": len(videos)},
        "kept": len(kept), "dropped": len(dropped),
        "kept_by_kind": dict(sorted(Counter(d.get("kind", "text") for d in kept).items())),
        "dropped_by_rule": dict(sorted(Counter(d["rule"] for d in dropped).items())),
        "clips": {"written": sum(1 for d in kept if "clip" in d["kept_row"] and "method" in d["kept_row"]["clip"]),
                  "methods": dict(Counter(d["kept_row"]["clip"]["method"] for d in kept
                                          if "method" in d["kept_row"].get("clip", {})))},
        "unreadable": [{k: d.get(k) for k in ("manifest", "row", "field", "path", "rule", "reason")}
                       for d in dropped if d["rule"].startswith("input.")],
        "rules": rules.content(), "notes": notes,
        "timings_seconds": {"wall_this_run": seconds, **{k: round(v, 3) for k, v in sorted(timings.items())}},
        "shards": len(records),
    }


def _histogram_png(values: dict[str, list[float]], title: str, path: Path) -> None:
    """One histogram of kept vs dropped values."""
    everything = np.concatenate([np.asarray(v, dtype=float) for v in values.values() if v])
    lo, hi = float(everything.min()), float(everything.max())
    edges = np.linspace(lo, hi if hi > lo else lo + 1.0, 21)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3), dpi=100)
        for label, vals in values.items():
            if vals:
                ax.hist(vals, bins=edges, alpha=0.6, label=f"{label} ({len(vals)})")
        ax.set_title(title)
        ax.legend()
        fig.tight_layout()
        fig.savefig(path)
        plt.close(fig)
        return
    except ImportError:
        pass
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (500, 300), "white")
    draw = ImageDraw.Draw(img)
    draw.text((10, 5), f"{title}  [{lo:.3g}, {hi:.3g}]", fill="black")
    colours = {"kept": (40, 120, 200), "dropped": (220, 90, 40)}
    counts = {k: np.histogram(v, bins=edges)[0] for k, v in values.items() if v}
    top = max(c.max() for c in counts.values())
    for j, (label, c) in enumerate(counts.items()):
        for i, n in enumerate(c):
            x0 = 20 + i * 23 + j * 11
            draw.rectangle([x0, 280 - int(250 * n / top), x0 + 10, 280], fill=colours.get(label, "grey"))
        draw.text((380, 20 + 15 * j), f"{label} ({len(values[label])})", fill=colours.get(label, "grey"))
    img.save(path)


def write_report(report: dict, decisions: list[dict], prefix: str) -> dict:
    """P_report.json, P_report.md and one histogram PNG per measured score; returns their paths."""
    prefix = str(prefix)
    pngs = {}
    for score in HISTOGRAM_SCORES:
        for kind in ("image", "video"):
            values = {"kept": [], "dropped": []}
            for d in decisions:
                s = _scores(d)
                if d.get("kind") == kind and isinstance(s.get(score), (int, float)):
                    values["kept" if d["status"] == "kept" else "dropped"].append(float(s[score]))
            if values["kept"] or values["dropped"]:
                path = Path(f"{prefix}_hist_{kind}_{score}.png")
                _histogram_png(values, f"{kind} {score}", path)
                pngs[f"{kind}.{score}"] = str(path)
    report["histograms"] = pngs
    json_path, md_path = Path(f"{prefix}_report.json"), Path(f"{prefix}_report.md")
    for path, text in ((json_path, json.dumps(report, indent=1) + "\n"), (md_path, markdown(report, md_path.parent))):
        tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
        tmp.write_text(text)
        os.replace(tmp, path)
    return {"report": str(json_path), "report_md": str(md_path)}


def markdown(report: dict, base: Path) -> str:
    lines = ["# Curation report", "",
             f"{report['inputs']['rows']} input rows ({report['inputs']['videos']} videos) from "
             f"{len(report['inputs']['manifests'])} manifest(s): **{report['kept']} kept**, {report['dropped']} dropped.",
             ""]
    lines += [f"- note: {n}" for n in report["notes"]] + [""]
    lines += ["| kept by kind | rows |", "|---|---|"] + [f"| {k} | {v} |" for k, v in report["kept_by_kind"].items()]
    lines += ["", "| dropped by rule | rows |", "|---|---|"]
    lines += [f"| `{k}` | {v} |" for k, v in report["dropped_by_rule"].items()]
    if report["unreadable"]:
        lines += ["", "## Unreadable inputs", "", "| manifest | row | path | reason |", "|---|---|---|---|"]
        lines += [f"| {u['manifest']} | {u['row']} | {u['path']} | {u['reason']} |" for u in report["unreadable"]]
    lines += ["", "## Timings (s, summed over workers)", ""]
    lines += [f"- {k}: {v}" for k, v in report["timings_seconds"].items()]
    lines += ["", "## Score histograms", ""]
    lines += [f"![{k}]({os.path.relpath(v, base)})" for k, v in report["histograms"].items()]
    return "\n".join(lines) + "\n"
