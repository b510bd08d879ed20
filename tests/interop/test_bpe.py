"""dpo/interop/bpe.py's own pieces: the pre-tokenizer patterns against Oniguruma (Hugging Face `tokenizers`)
over all of Unicode, the pattern translator's refusals, the merge order, and a byte-level BPE built from
its parts. The whole tokenizer against `tokenizers` and `tiktoken` on real files: tests/test_tokenizer.py."""
import json
import unicodedata

import pytest
from tokenizers import Regex, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

from dpo.interop.bpe import (GPT2_PATTERN, LLAMA3_PATTERN, NEWER_UNICODE, PRE_TOKENIZERS, ByteLevelBPE, TokenizerError,
                             UnsupportedTokenizer, _compile, _split_isolated, bytes_to_unicode, merge_word,
                             pre_tokenizer_for, translate_pattern)

# ---------------------------------------------------------------------------------------------------
# The pre-tokenizer regexes, character by character over all of Unicode

@pytest.fixture(scope="module")
def every_character() -> str:
    """Every assigned code point of Python's Unicode tables, every one that Unicode 15-16 added to the
    letter/mark/number classes, and a sample of the rest (unassigned, private use), with separators."""
    newer = [int(c, 16) for table in NEWER_UNICODE.values() for item in table.split()
             for c in ([item] if "-" not in item else [f"{i:x}" for i in range(int(item.split("-")[0], 16),
                                                                            int(item.split("-")[1], 16) + 1)])]
    cps = [c for c in range(0x110000) if unicodedata.category(chr(c)) not in ("Cn", "Co", "Cs") or c % 97 == 0]
    cps = sorted(set(cps + newer) - set(range(0xD800, 0xE000)))
    seps = [" ", "  ", "'s", "\n", "1", "\r\n ", "\t", "'LL", "\u00a0"]
    return "".join("".join(map(chr, cps[i:i + 5])) + seps[(i // 5) % len(seps)] for i in range(0, len(cps), 5))


@pytest.mark.parametrize("pattern", [GPT2_PATTERN, LLAMA3_PATTERN, r"\p{N}", r"\d+|\p{Lu}\p{Ll}*|\P{L}+|[\p{Lm}\p{Lo}\p{M}]"])
def test_pre_tokenizer_matches_oniguruma_on_every_character(pattern, every_character):
    ref = pre_tokenizers.Split(Regex(pattern), behavior="isolated").pre_tokenize_str(every_character)
    assert _split_isolated(_compile(pattern, "pattern"), [every_character]) == [piece for piece, _ in ref]


def test_translate_pattern_rejects_what_it_cannot_translate():
    for bad in [r"\p{Foo}", r"[a[b]]", r"\Gx", r"\K", r"[\p{L}", r"\w+"]:
        with pytest.raises(TokenizerError, match="unsupported"):
            translate_pattern(bad, "x.json")
    assert translate_pattern(r"[]a]") == r"[\]a]"


def test_pre_tokenizer_for_names_regexes_and_lists():
    assert pre_tokenizer_for(None) is PRE_TOKENIZERS["gpt2"] is pre_tokenizer_for("default")
    assert pre_tokenizer_for("llama-bpe") is PRE_TOKENIZERS["llama3"]
    spec = pre_tokenizer_for([r"\p{N}", r"\s+"])
    assert [p["type"] for p in spec["pretokenizers"]] == ["Split", "Split", "ByteLevel"]
    with pytest.raises(TokenizerError, match="from_bpe: pattern must be"):
        pre_tokenizer_for(42, "from_bpe")


# ---------------------------------------------------------------------------------------------------
# Bytes, merges, and a model built from its parts

def test_bytes_to_unicode_is_gpt2s_table():
    table = bytes_to_unicode()
    assert len(set(table.values())) == 256 and all(c.isprintable() for c in table.values())
    assert (table[ord(" ")], table[ord("\n")], table[ord("A")], table[0xFF]) == ("Ġ", "Ċ", "A", "ÿ")


def test_merge_word_lowest_rank_first_leftmost_on_ties():
    assert merge_word(list("aaa"), {("a", "a"): 0}) == ["aa", "a"]
    assert merge_word(list("abc"), {("a", "b"): 1, ("b", "c"): 0}) == ["a", "bc"]
    assert merge_word(list("abcd"), {("a", "b"): 0, ("c", "d"): 1, ("ab", "cd"): 2}) == ["abcd"]
    assert merge_word(["x"], {}) == ["x"]


def _tiny_bpe(**kw) -> ByteLevelBPE:
    chars = list(bytes_to_unicode().values())
    merges = [("Ġ", "t"), ("h", "e"), ("Ġt", "he"), ("Ġ", "a")]
    vocab = {c: i for i, c in enumerate(chars)} | {a + b: 256 + k for k, (a, b) in enumerate(merges)}
    return ByteLevelBPE(vocab, merges, PRE_TOKENIZERS["gpt2"], **kw)


def test_byte_level_bpe_round_trips_and_writes_a_tokenizer_json_that_tokenizers_reads(tmp_path):
    bpe = _tiny_bpe(added_tokens=[{"id": 260, "content": "<|endoftext|>", "special": True}])
    text = "the cat, the hat\n  naïve 👍 Ελληνικά"
    ids = bpe.encode_ordinary(text)
    assert bpe.decode_bytes(ids).decode("utf-8") == text
    assert bpe.encode_ordinary(" the") == [258] and bpe.id_to_token(258) == "Ġthe"
    assert bpe.decode_bytes(bpe.encode_ordinary("👍")[:2]).decode("utf-8", errors="replace") == "\ufffd"
    with pytest.raises(TokenizerError, match="token id 999"):
        bpe.decode_bytes([999])
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(bpe.to_tokenizer_json(), ensure_ascii=False), encoding="utf-8")
    assert HFTokenizer.from_file(str(path)).encode(text, add_special_tokens=False).ids == ids
    again = ByteLevelBPE.from_tokenizer_json(path)
    assert again.encode_ordinary(text) == ids and again.vocab_size == 261
    assert again.token_to_id("<|endoftext|>") == 260


def test_a_byte_missing_from_the_vocabulary_is_dropped_as_tokenizers_does(tmp_path):
    """SmolLM2's vocabulary has no symbol for some control bytes (0x16 in a real review): tokenizers drops
    such a symbol when there is no unk_token; so do we, with one warning instead of nothing."""
    bpe = _tiny_bpe()
    missing = bytes_to_unicode()[0x16]
    spec = bpe.to_tokenizer_json()
    del spec["model"]["vocab"][missing]
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    ours = ByteLevelBPE.from_tokenizer_json(path)
    text = "the \x16 hat\x16\x16 the"
    with pytest.warns(UserWarning, match=r"tokenizer.json: byte-level symbol 'Ė' .* dropped"):
        ids = ours.encode_ordinary(text)
    assert ids == HFTokenizer.from_file(str(path)).encode(text, add_special_tokens=False).ids
    assert ours.decode_bytes(ids).decode("utf-8") == text.replace("\x16", "")


def test_from_tokenizer_json_refuses_what_it_does_not_implement(tmp_path):
    path = tmp_path / "tokenizer.json"
    spec = _tiny_bpe().to_tokenizer_json()
    path.write_text(json.dumps({**spec, "pre_tokenizer": {"type": "Metaspace"}}), encoding="utf-8")
    with pytest.raises(UnsupportedTokenizer, match="pre-tokenizer type 'Metaspace'"):
        ByteLevelBPE.from_tokenizer_json(path)
    path.write_text(json.dumps({**spec, "model": {**spec["model"], "merges": [["Ġ", "zz"]]}}), encoding="utf-8")
    with pytest.raises(TokenizerError, match=r"merge #0 'Ġ' 'zz' makes 'Ġzz', which is not in the vocab"):
        ByteLevelBPE.from_tokenizer_json(path)
    with pytest.raises(TokenizerError, match="file not found"):
        ByteLevelBPE.from_tokenizer_json(tmp_path / "missing.json")
