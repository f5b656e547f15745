"""Write a DPO preference shard from stored token sequences or generated samples.

    python tools/make_preferences.py --input pairs.jsonl --output runs/prefs/pairs [--vocab-size 184622]

Each JSONL line is one record with ``chosen`` and ``rejected``, each either a list of token ids or
the path of a sample written by ``tools/generate.py --save-tokens`` (JSON with ``ids`` and
``prompt_length``), and optionally ``prompt`` (ids or such a path). Without ``prompt``, the prompt is
the first ``prompt_length`` tokens of the chosen sample (both samples must share it). Relative paths
are read relative to the JSONL file. Records are checked (ids inside the vocabulary, chosen and
rejected extending the same prompt) and a bad record stops the tool naming its line.
Output: ``PREFIX.bin/.idx/.json`` (format: `megatron_emu3/dpo/shards.py`), used as ``dpo.data``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def _sequence(value, base: Path, where: str) -> tuple[list[int], int | None]:
    """(ids, prompt length if the value was a generated sample) from a list or a sample path."""
    if isinstance(value, list):
        return [int(v) for v in value], None
    if isinstance(value, str):
        path = Path(value) if Path(value).is_absolute() else base / value
        if not path.is_file():
            raise ValueError(f"{where}: sample file {path} does not exist")
        sample = json.loads(path.read_text())
        if "ids" not in sample:
            raise ValueError(f"{where}: {path} has no 'ids' (write samples with tools/generate.py --save-tokens)")
        return [int(v) for v in sample["ids"]], sample.get("prompt_length")
    raise ValueError(f"{where}: expected a list of token ids or a sample path, got {type(value).__name__}")


def read_records(path: Path) -> list[tuple]:
    """(prompt, chosen, rejected) id lists of every line of the JSONL file."""
    from megatron_emu3.dpo.shards import PreferenceFormatError

    out = []
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise PreferenceFormatError(f"{where}: not JSON ({err})") from None
        missing = [k for k in ("chosen", "rejected") if k not in record]
        if missing:
            raise PreferenceFormatError(f"{where}: missing {missing}; a record needs chosen and rejected")
        chosen, prompt_len = _sequence(record["chosen"], path.parent, where)
        rejected, _ = _sequence(record["rejected"], path.parent, where)
        if "prompt" in record:
            prompt, _ = _sequence(record["prompt"], path.parent, where)
        elif prompt_len:
            prompt = chosen[:prompt_len]
        else:
            raise PreferenceFormatError(f"{where}: no prompt: give 'prompt' or generated samples with prompt_length")
        out.append((prompt, chosen, rejected, where))
    return out


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--input", type=Path, required=True, help="JSONL of preference records")
    parser.add_argument("--output", type=Path, required=True, help="shard prefix (writes .bin/.idx/.json)")
    parser.add_argument("--vocab-size", type=int, default=None, help="ids must be below this (default: Emu3's 184,622)")
    args = parser.parse_args(argv)

    from megatron_emu3.data.tokens import VOCAB_SIZE
    from megatron_emu3.dpo.shards import PreferenceFormatError, check_triplet, write_preferences

    vocab = args.vocab_size or VOCAB_SIZE
    try:
        if not args.input.is_file():
            raise PreferenceFormatError(f"{args.input} does not exist")
        records = read_records(args.input)
        for prompt, chosen, rejected, where in records:
            check_triplet(prompt, chosen, rejected, vocab, where)  # name the JSONL line, not the record index
        meta = write_preferences(args.output, [r[:3] for r in records], vocab)
    except (PreferenceFormatError, ValueError) as err:
        print(f"make_preferences: {err}", file=sys.stderr)
        return 2
    print(f"wrote {meta['records']} preference records -> {args.output}.bin/.idx/.json (longest {meta['longest']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
