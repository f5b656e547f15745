"""Tokenizer files for a Hugging Face export, so `AutoTokenizer` gives exactly our ids.

The Qwen BPE is a tiktoken rank file; transformers wants a byte-level BPE (`tokenizer.json`: vocab of
byte-level strings and ordered merges). Each token's merge is recovered by running BPE on its bytes
with merges limited to ranks below its own (the last merge that produces it). The Emu3 special and
visual tokens are added tokens with their fixed ids (`megatron_emu3.data.tokens`).
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from megatron_emu3.data.text_tokenizer import QWEN_SPLIT_PATTERN, Emu3TextTokenizer, all_special_tokens


@lru_cache(maxsize=1)
def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable unicode map used by byte-level BPE files."""
    printable = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + \
        list(range(ord("®"), ord("ÿ") + 1))
    chars = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            chars.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, chars)))


def _to_unicode(token: bytes) -> str:
    table = _byte_to_unicode()
    return "".join(table[b] for b in token)


def _last_merge(ranks: dict[bytes, int], token: bytes) -> tuple[bytes, bytes]:
    """The pair whose merge creates `token` under BPE restricted to ranks below the token's."""
    limit = ranks[token]
    parts = [bytes([b]) for b in token]
    while len(parts) > 2:
        best, best_rank = None, None
        for i in range(len(parts) - 1):
            rank = ranks.get(parts[i] + parts[i + 1])
            if rank is not None and rank < limit and (best_rank is None or rank < best_rank):
                best, best_rank = i, rank
        if best is None:
            break
        parts[best:best + 2] = [parts[best] + parts[best + 1]]
    if len(parts) != 2:
        raise ValueError(f"BPE rank file is inconsistent: token {token!r} has no two-part merge")
    return parts[0], parts[1]


def added_tokens(vocab_size: int | None = None) -> dict[str, int]:
    """Special and visual tokens with their ids (only those below `vocab_size` when given)."""
    return {name: i for name, i in all_special_tokens().items() if vocab_size is None or i < vocab_size}


def write_tokenizer_files(out_dir: str | Path, tokenizer: Emu3TextTokenizer | None = None) -> dict[str, int]:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json; returns the vocabulary map."""
    ranks = (tokenizer or Emu3TextTokenizer.from_default()).mergeable_ranks
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    vocab = {_to_unicode(tok): rank for tok, rank in ranks.items()}
    merges = []
    for tok, _ in sorted(ranks.items(), key=lambda item: item[1]):
        if len(tok) > 1:
            left, right = _last_merge(ranks, tok)
            merges.append(f"{_to_unicode(left)} {_to_unicode(right)}")
    specials = added_tokens()
    tokenizer = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": [
            {"id": i, "content": name, "single_word": False, "lstrip": False, "rstrip": False,
             "normalized": False, "special": True}
            for name, i in sorted(specials.items(), key=lambda item: item[1])
        ],
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": QWEN_SPLIT_PATTERN}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        ]},
        "post_processor": None,
        "decoder": {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": False, "use_regex": False},
        "model": {"type": "BPE", "dropout": None, "unk_token": None, "continuing_subword_prefix": "",
                  "end_of_word_suffix": "", "fuse_unk": False, "byte_fallback": False,
                  "ignore_merges": False, "vocab": vocab, "merges": merges},
    }
    (out / "tokenizer.json").write_text(json.dumps(tokenizer, ensure_ascii=False))
    special_map = {"bos_token": "<|extra_203|>", "eos_token": "<|extra_204|>", "pad_token": "<|endoftext|>"}
    (out / "tokenizer_config.json").write_text(json.dumps(
        {**special_map, "tokenizer_class": "PreTrainedTokenizerFast", "clean_up_tokenization_spaces": False,
         "model_max_length": 131072}, indent=2))
    (out / "special_tokens_map.json").write_text(json.dumps(special_map, indent=2))
    return {**vocab, **specials}
