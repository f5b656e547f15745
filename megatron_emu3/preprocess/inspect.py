"""Looking inside shards: statistics, and documents decoded back to text, PNG images and MP4/GIF videos.

`open_shards(path)` accepts one shard prefix (`shards/demo_00003`) or a run prefix (`shards/demo`,
meaning every `shards/demo_NNNNN.idx`). Documents are numbered across the shards in name order.
Decoding goes through `megatron_emu3.data.documents.parse` and the VQ decoder, i.e. exactly what the
model will see turned back into something a person can look at.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from megatron_emu3.data import documents
from megatron_emu3.data.shards import common_layout, read_layout
from megatron_emu3.data.tokens import EMU3_VISION, DocKind, is_vision_code


def shard_prefixes(path: str | Path) -> list[Path]:
    path = Path(path)
    if Path(f"{path}.idx").is_file():
        return [path]
    found = sorted(p.with_suffix("") for p in path.parent.glob(f"{path.name}_[0-9]*.idx"))
    if not found:
        raise FileNotFoundError(f"no shard {path}.idx and no {path}_NNNNN.idx; pass a shard or run prefix")
    return found


class ShardSet:
    """Several IndexedDataset shards read as one list of (ids, kind) documents."""

    def __init__(self, path: str | Path):
        from megatron.core.datasets.indexed_dataset import IndexedDataset

        self.prefixes = shard_prefixes(path)
        self.datasets = [IndexedDataset(str(p), multimodal=True) for p in self.prefixes]
        self.layout = common_layout([(str(p), read_layout(str(p))) for p in self.prefixes]) if self.prefixes \
            else EMU3_VISION
        self.offsets = np.cumsum([0] + [len(d) for d in self.datasets])

    def __len__(self) -> int:
        return int(self.offsets[-1])

    def __getitem__(self, index: int) -> tuple[np.ndarray, DocKind]:
        if not 0 <= index < len(self):
            raise IndexError(f"document {index} is outside [0, {len(self)})")
        shard = int(np.searchsorted(self.offsets, index, side="right") - 1)
        ids, mode = self.datasets[shard][index - int(self.offsets[shard])]
        return np.asarray(ids, dtype=np.int64), DocKind(int(mode))

    def lengths(self) -> np.ndarray:
        return np.concatenate([d.sequence_lengths for d in self.datasets]).astype(np.int64)

    def kinds(self) -> np.ndarray:
        return np.concatenate([d.index.sequence_modes for d in self.datasets]).astype(np.int64)


def statistics(shards: ShardSet, bins: int = 10) -> dict:
    """Documents by kind, tokens (text / vision), and a length histogram."""
    lengths, kinds = shards.lengths(), shards.kinds()
    vision = sum(int(is_vision_code(shards[i][0], shards.layout).sum()) for i in range(len(shards)))
    counts, edges = np.histogram(lengths, bins=bins) if lengths.size else (np.zeros(0, int), np.zeros(1))
    return {
        "shards": [str(p) for p in shards.prefixes], "documents": len(shards),
        "documents_by_kind": {k.name.lower(): int((kinds == int(k)).sum()) for k in DocKind},
        "tokens": {"total": int(lengths.sum()), "text": int(lengths.sum()) - vision, "vision": vision},
        "length": {"min": int(lengths.min()) if lengths.size else 0, "max": int(lengths.max(initial=0)),
                   "mean": float(lengths.mean()) if lengths.size else 0.0},
        "length_histogram": [{"from": float(edges[i]), "to": float(edges[i + 1]), "documents": int(c)}
                             for i, c in enumerate(counts)],
    }


def format_statistics(stats: dict) -> str:
    lines = [f"{stats['documents']} documents in {len(stats['shards'])} shard(s)"]
    lines += [f"  {kind:<20} {n}" for kind, n in stats["documents_by_kind"].items() if n]
    t = stats["tokens"]
    lines.append(f"tokens: {t['total']} ({t['text']} text, {t['vision']} vision)")
    ln = stats["length"]
    lines.append(f"length: min {ln['min']}  mean {ln['mean']:.1f}  max {ln['max']}")
    peak = max([b["documents"] for b in stats["length_histogram"]] + [1])
    for b in stats["length_histogram"]:
        bar = "#" * round(40 * b["documents"] / peak)
        lines.append(f"  {b['from']:>9.0f} - {b['to']:<9.0f} {b['documents']:>7} {bar}")
    return "\n".join(lines)


def save_video(frames: np.ndarray, path: Path, fps: float) -> Path:
    """uint8 (T, H, W, 3) -> .gif (Pillow) or .mp4 (PyAV, h264)."""
    from PIL import Image

    if path.suffix == ".gif":
        images = [Image.fromarray(f) for f in frames]
        images[0].save(path, save_all=True, append_images=images[1:], duration=int(1000 / fps), loop=0)
        return path
    import av
    from fractions import Fraction

    with av.open(str(path), mode="w") as container:
        stream = container.add_stream("libx264", rate=Fraction(fps).limit_denominator(1000))
        stream.height, stream.width = frames.shape[1:3]
        stream.pix_fmt = "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def save_pixels(pixels: np.ndarray, path: Path, fps: float | None = None) -> Path:
    """Decoded VQ output to a file: uint8 (H, W, 3) -> image, or (T, H, W, 3) with `fps` -> video."""
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    if fps is not None:
        return save_video(pixels, path, fps)
    Image.fromarray(pixels).save(path)
    return path


def decode_document(shards: ShardSet, index: int, text_tokenizer, vision_tokenizer, out_dir: str | Path,
                    video_format: str = "mp4") -> dict:
    """Write document `index` as doc_NNNNN.json (+ .png / .mp4 / .gif); returns the JSON record."""
    ids, kind = shards[index]
    if vision_tokenizer is not None and vision_tokenizer.layout.ids() != shards.layout.ids():
        raise ValueError(f"the shards hold {shards.layout.describe()}, but the vision tokenizer given is "
                         f"{vision_tokenizer.layout.describe()}: pass the --vq-dir the shards were written with")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    stem = out_dir / f"doc_{index:05d}"
    if kind == DocKind.INTERLEAVED:
        return _decode_interleaved(ids, index, stem, text_tokenizer, vision_tokenizer, shards.layout, video_format)
    doc = documents.parse(ids, text_tokenizer, shards.layout)
    record = {"document": index, "kind": kind.name.lower(), "parsed_kind": doc.kind.name.lower(),
              "tokens": int(ids.size), "text": text_tokenizer.decode(doc.text_ids.tolist())}
    if doc.meta is not None:
        record["meta"] = doc.meta.text()
        record["codes_shape"] = list(doc.codes.shape)
        if vision_tokenizer is not None:
            pixels = vision_tokenizer.decode(doc.codes)
            if doc.meta.is_video:
                path = save_pixels(pixels, stem.with_suffix(f".{video_format}"), doc.meta.fps)
            else:
                path = save_pixels(pixels, stem.with_suffix(".png"))
            record["media"] = str(path)
    stem.with_suffix(".json").write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n")
    return record


def _decode_interleaved(ids, index: int, stem: Path, text_tokenizer, vision_tokenizer, layout,
                        video_format: str) -> dict:
    """doc_N.json listing every segment in order (text, or meta + the file of its pixels)."""
    segments = []
    for i, seg in enumerate(documents.parse_segments(ids, text_tokenizer, layout)):
        if seg.is_text:
            segments.append({"text": text_tokenizer.decode(seg.text_ids.tolist())})
            continue
        entry = {"video" if seg.meta.is_video else "image": None, "meta": seg.meta.text(),
                 "codes_shape": list(seg.codes.shape)}
        if vision_tokenizer is not None:
            pixels = vision_tokenizer.decode(seg.codes)
            suffix = f".{video_format}" if seg.meta.is_video else ".png"
            path = save_pixels(pixels, stem.with_name(f"{stem.name}_seg{i}{suffix}"), seg.meta.fps)
            entry["video" if seg.meta.is_video else "image"] = str(path)
        segments.append(entry)
    record = {"document": index, "kind": DocKind.INTERLEAVED.name.lower(), "tokens": int(len(ids)),
              "segments": segments}
    stem.with_suffix(".json").write_text(json.dumps(record, indent=1, ensure_ascii=False) + "\n")
    return record
