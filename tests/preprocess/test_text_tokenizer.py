"""The text tokenizer: exact ids (BPE and every special kind), vocabulary size, round trips."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from megatron_emu3.data import tokens
from megatron_emu3.data.text_tokenizer import Emu3TextTokenizer

MIXED = ("<|extra_203|>A red circle<|image start|>2*3<|image token|><|visual token 000000|>"
         "<|visual token 032767|><|visual token 012345|><|extra_200|><|visual token 000001|>"
         "<|visual token 000002|><|visual token 000003|><|extra_200|><|extra_201|><|image end|><|extra_204|>"
         "<|endoftext|><|im_start|>user Hi<|im_end|><|extra_0|><|extra_204|>")
MIXED_IDS = [151849, 32, 2518, 12671, 151852, 17, 9, 18, 151851, 151854, 184621, 164199, 151846, 151855, 151856,
             151857, 151846, 151847, 151853, 151850, 151643, 151644, 872, 21018, 151645, 151646, 151850]


def test_vocabulary_size_and_special_ids(text_tokenizer):
    assert text_tokenizer.vocab_size == tokens.VOCAB_SIZE == 184_622
    specials = text_tokenizer.special_tokens
    assert len(specials) == 211 + 32_768
    assert specials["<|endoftext|>"] == 151_643
    assert specials["<|im_start|>"] == 151_644 and specials["<|im_end|>"] == 151_645
    assert specials["<|extra_0|>"] == 151_646 and specials["<|extra_204|>"] == 151_850
    assert specials["<|extra_200|>"] == tokens.EOL == 151_846
    assert specials["<|extra_201|>"] == tokens.EOF == 151_847
    assert specials["<|extra_203|>"] == tokens.BOS and specials["<|extra_204|>"] == tokens.EOS
    assert (specials["<|image token|>"], specials["<|image start|>"], specials["<|image end|>"]) == (
        151_851, 151_852, 151_853)
    assert specials["<|visual token 000000|>"] == 151_854 and specials["<|visual token 032767|>"] == 184_621
    assert sorted(specials.values()) == list(range(tokens.NUM_BPE_TOKENS, tokens.VOCAB_SIZE))


def test_exact_ids_of_text_mixed_with_every_special_kind(text_tokenizer):
    assert text_tokenizer.encode(MIXED, allow_special=True) == MIXED_IDS
    assert text_tokenizer.decode(MIXED_IDS) == MIXED
    assert text_tokenizer.encode("Hello, world!") == [9707, 11, 1879, 0]
    assert text_tokenizer.encode("2*3") == [17, 9, 18]
    assert len(text_tokenizer.encode("64*64")) == 5  # the image meta of a 512x512 image


def test_specials_in_plain_text_stay_text(text_tokenizer):
    ids = text_tokenizer.encode("<|endoftext|><|visual token 000001|>")
    assert ids[:6] == [27, 91, 8691, 723, 427, 91]
    assert not any(i >= tokens.NUM_BPE_TOKENS for i in ids)
    assert text_tokenizer.decode(ids) == "<|endoftext|><|visual token 000001|>"


@pytest.mark.parametrize("text", [
    "", " ", "  leading and trailing  ", "\n\n\ttabs\r\nand CRLF\r\n", "Hello, world! 你好，世界。 Ça va?",
    "日本語のテキストと한국어 텍스트", "Здравствуй, мир", "مرحبا بالعالم", "emoji 👩‍👩‍👧 🚀 and ZWJ", "a\u00a0b\u2028c",
    "x" * 5000, "it's we're they'll I'd", "1234567890 3.14159", "\u0301combining first",
])
def test_round_trip(text_tokenizer, text):
    assert text_tokenizer.decode(text_tokenizer.encode(text)) == text


@settings(max_examples=60, deadline=None)
@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=200))
def test_round_trip_any_text(text_tokenizer, text):
    ids = text_tokenizer.encode(text)
    assert all(0 <= i < tokens.NUM_BPE_TOKENS for i in ids)
    assert text_tokenizer.decode(ids) == text


def test_from_dir_and_wrong_files(tmp_path, text_tokenizer):
    (tmp_path / "qwen.tiktoken").write_bytes(text_tokenizer.bpe_file.read_bytes())
    assert Emu3TextTokenizer.from_dir(tmp_path).encode("Hello") == [9707]
    with pytest.raises(FileNotFoundError, match="no qwen.tiktoken"):
        Emu3TextTokenizer.from_dir(tmp_path / "nowhere")
    other = tmp_path / "other" / "qwen.tiktoken"
    other.parent.mkdir()
    other.write_bytes(b"IQ== 0\n")
    with pytest.raises(ValueError, match="not the Qwen BPE"):
        Emu3TextTokenizer.from_dir(other.parent)
