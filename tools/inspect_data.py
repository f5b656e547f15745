"""Inspect preprocessed shards: statistics, and chosen documents decoded back to text + images/videos.

    python tools/inspect_data.py runs/demo/shards/demo                       # statistics of every shard
    python tools/inspect_data.py runs/demo/shards/demo --decode 0 5 --vq-dir runs/demo/data/vq \
        --out runs/demo/inspect                                             # doc_00000.json/.png, ...

PATH is a shard prefix (demo_00003) or a run prefix (demo = every demo_NNNNN shard).
"""

import argparse
import json
import sys
from pathlib import Path


def main(argv=None) -> int:
    from megatron_emu3.preprocess import inspect

    p = argparse.ArgumentParser(description="Statistics of Emu3 shards; decode documents back to text/PNG/MP4.")
    p.add_argument("path", help="shard prefix (PREFIX_00000) or run prefix (PREFIX)")
    p.add_argument("--decode", type=int, nargs="*", default=[], metavar="N", help="document numbers to decode")
    p.add_argument("--vq-dir", help="vision tokenizer directory, to turn codes back into pixels")
    p.add_argument("--tokenizer-dir", help="directory holding qwen.tiktoken (default: the package's)")
    p.add_argument("--out", default="inspect", help="where decoded documents go (default ./inspect)")
    p.add_argument("--video-format", choices=("mp4", "gif"), default="mp4")
    p.add_argument("--bins", type=int, default=10, help="length histogram bins")
    p.add_argument("--json", action="store_true", help="print statistics as JSON")
    args = p.parse_args(argv)
    try:
        shards = inspect.ShardSet(args.path)
    except FileNotFoundError as err:
        print(f"inspect_data.py: error: {err}", file=sys.stderr)
        return 2
    stats = inspect.statistics(shards, args.bins)
    print(json.dumps(stats, indent=1) if args.json else inspect.format_statistics(stats))
    if not args.decode:
        return 0
    from megatron_emu3.data.text_tokenizer import Emu3TextTokenizer

    text = Emu3TextTokenizer.from_dir(args.tokenizer_dir) if args.tokenizer_dir else Emu3TextTokenizer.from_default()
    vision = None
    if args.vq_dir:
        from megatron_emu3.data.vision_tokenizer import load_vision_tokenizer

        vision = load_vision_tokenizer(args.vq_dir)
    for index in args.decode:
        try:
            record = inspect.decode_document(shards, index, text, vision, args.out, args.video_format)
        except (IndexError, ValueError) as err:
            print(f"inspect_data.py: error: document {index}: {err}", file=sys.stderr)
            return 2
        if "segments" in record:  # interleaved: one line per segment
            print(f"document {index} ({record['kind']}, {record['tokens']} tokens, {len(record['segments'])} segments)")
            for i, seg in enumerate(record["segments"]):
                shown = repr(seg["text"]) if "text" in seg else \
                    f"[{seg['meta']}] -> {seg.get('image') or seg.get('video') or '(pass --vq-dir to decode)'}"
                print(f"  segment {i}: {shown}")
            continue
        media = f" -> {record['media']}" if "media" in record else ""
        meta = f" [{record['meta']}]" if "meta" in record else ""
        print(f"document {index} ({record['kind']}, {record['tokens']} tokens){meta}: {record['text']!r}{media}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without install
    sys.exit(main())
