"""Tokenizers: our own byte-level BPE and SentencePiece, behind one small `Tokenizer` wrapper.

    tok = Tokenizer.from_pretrained("checkpoints/gpt2")   # tokenizer.json | vocab.json+merges.txt | tokenizer.model
    ids = tok.encode("Hello world")                       # never adds BOS/EOS: the caller appends tok.eos_id
    tok.decode(ids) == "Hello world"

Backends
- Byte-level BPE (GPT-2, GPT-J, Pythia, SmolLM2, Llama-3, Qwen2), written here from the files' contents:
  text -> split on added tokens -> normalizer (only NFC/NFD/NFKC/NFKD) -> pre-tokenizer regexes -> UTF-8
  bytes mapped to printable characters -> BPE merges (lowest rank first, leftmost first, as Hugging Face
  `tokenizers` does) -> ids. Decoding maps characters back to bytes and decodes UTF-8 (invalid bytes,
  e.g. a cut-off multi-byte character, become U+FFFD).
  Python's `re` has no \\p{L}, so the files' patterns are translated: \\p{..}, \\s, \\d become
  explicit character classes built from `unicodedata` plus a small table of the letters, marks and
  digits assigned in Unicode 15.0-16.0 (Python 3.11 ships Unicode 14.0), so a character is classed as
  Oniguruma (`tokenizers`) and Rust's regex (`tiktoken`) class it, up to Unicode 16.0. \\s is Unicode
  White_Space (Python's own \\s also matches U+001C..U+001F, which the reference engines do not).
- SentencePiece (Llama-2, Mistral, or one trained here with `train_sentencepiece`), through the
  `sentencepiece` package.

Special tokens. `encode(text)` treats EVERY character of `text` as text: "<|endoftext|>" inside a review
is encoded as the characters "<", "|", "endoftext", ... (as `tokenizers` with encode_special_tokens=True).
Pass `allow_special=True` to turn special-token strings into their ids. Non-special added tokens of a
tokenizer.json (e.g. GPT-NeoX's runs of spaces) are always matched first, as `tokenizers` does.
`eos_id` / `bos_id` / `pad_id` come from, in order: the constructor's arguments, tokenizer_config.json,
special_tokens_map.json, config.json's *_token_id (the first one when it is a list), then the first
common name present in the vocabulary (EOS_NAMES, BOS_NAMES, PAD_NAMES below); None when none applies.
pad never silently becomes eos: call `pad_id_or_eos()` when you want that fallback.

Round trip: decode(encode(s)) == s for every str s (lone surrogates aside), except (a) tokenizer.json
files with an NFC/NFKC normalizer (Pythia, Qwen2) give back the normalized text, (b) a SentencePiece
model without byte_fallback decodes characters it does not know as " \u2047 ", (c) SentencePiece turns
U+2581 ("\u2581") into a space.
Leading space with SentencePiece: models with a dummy prefix (Llama-2, Mistral) encode "hello" as
"\u2581hello", the same piece as the word " hello" inside a sentence, and decode drops that one "\u2581"
again, so a leading space survives the round trip (" hello" -> "\u2581", "\u2581hello" -> " hello").
The models `train_sentencepiece` writes have byte_fallback, no normalization and no dummy prefix, so
"hello" and " hello" stay distinct and round-trip exactly, like GPT-2's BPE (no stray "\u2581" appears
between a prompt and a response tokenized apart, as DPO does).

Unsupported (a clear error naming the file): other tokenizer.json models (WordPiece, Unigram, a BPE with
continuing_subword_prefix/end_of_word_suffix), pre-tokenizers other than ByteLevel/Split/Digits/Sequence,
regex constructs Python cannot run the same way (nested classes, \\w, \\G, \\K...).
Ignored on purpose: BPE dropout (we are deterministic), the post-processor (we never add BOS/EOS),
the lstrip/rstrip/single_word flags of added tokens.

CLI:  python -m dpo.tokenizer train --input FILE [FILE ...] --vocab-size N --out PREFIX [--model-type bpe]
"""
import argparse
import functools
import heapq
import itertools
import json
import os
import re
import sys
import unicodedata
from dataclasses import dataclass, field
from pathlib import Path

EOS_NAMES = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<|im_end|>", "<eos>", "<|eot_id|>")
BOS_NAMES = ("<|begin_of_text|>", "<s>", "<bos>", "<|startoftext|>", "<|endoftext|>")  # GPT-2: bos = eos
PAD_NAMES = ("<pad>", "<|padding|>", "[PAD]", "<|pad|>")
CONFIG_FILES = ("tokenizer_config.json", "special_tokens_map.json")  # copied along by save_pretrained

# Pre-tokenizer patterns, by the names `Tokenizer.from_bpe(pattern=...)` accepts.
GPT2_PATTERN = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"
LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_BYTE_LEVEL = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
_BYTES_ONLY = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}


def _split_spec(pattern: str) -> dict:
    return {"type": "Split", "pattern": {"Regex": pattern}, "behavior": "Isolated", "invert": False}


# name -> the tokenizer.json pre_tokenizer that name stands for (also llama.cpp's `tokenizer.ggml.pre`).
PRE_TOKENIZERS = {
    "gpt2": _BYTE_LEVEL,                                   # GPT-2, GPT-J, Pythia
    "llama3": {"type": "Sequence", "pretokenizers": [_split_spec(LLAMA3_PATTERN), _BYTES_ONLY]},
    "qwen2": {"type": "Sequence", "pretokenizers": [_split_spec(QWEN2_PATTERN), _BYTES_ONLY]},
    "smollm": {"type": "Sequence", "pretokenizers": [{"type": "Digits", "individual_digits": True}, _BYTE_LEVEL]},
}
PRE_TOKENIZERS["default"] = PRE_TOKENIZERS["gpt2"]
PRE_TOKENIZERS["llama-bpe"] = PRE_TOKENIZERS["llama3"]
PRE_TOKENIZERS["starcoder"] = PRE_TOKENIZERS["smollm"]


class TokenizerError(ValueError):
    """Bad or unsupported tokenizer files or arguments; the message names the file and what was expected."""


class UnsupportedTokenizer(TokenizerError):
    """A well-formed tokenizer.json of a kind our byte-level BPE does not implement (e.g. Llama-2's
    SentencePiece-style BPE); from_pretrained then falls back to a tokenizer.model beside it."""


# ----------------------------------------------------------------------------------------------------
# Unicode character classes for the pre-tokenizer regexes

# Code points that Unicode 15.0-16.0 assigned to these categories (all unassigned in Python 3.11's
# Unicode 14.0 tables). Generated once by diffing `unicodedata` with Oniguruma's classes in `tokenizers`.
_NEWER_UNICODE = {
    "Lu": "1C89 A7CB-A7CC A7DA A7DC 10D50-10D65",
    "Ll": "1C8A A7CD A7DB 10D70-10D85 1DF25-1DF2A",
    "Lm": "10D4E 10D6F 16D40-16D42 16D6B-16D6C 1E030-1E06D 1E4EB",
    "Lo": "105C0-105F3 10D4A-10D4D 10D4F 10EC2-10EC4 1123F-11240 11380-11389 1138B 1138E 11390-113B5 113B7 "
          "113D1 113D3 11BC0-11BE0 11F02 11F04-11F10 11F12-11F33 1342F 13441-13446 13460-143FA 16100-1611D "
          "16D43-16D6A 18CFF 1B132 1B155 1E4D0-1E4EA 1E5D0-1E5ED 1E5F0 2B739 2EBF0-2EE5D 31350-323AF",
    "Mn": "897 ECE 10D69-10D6D 10EFC-10EFF 11241 113BB-113C0 113CE 113D0 113D2 113E1-113E2 11F00-11F01 "
          "11F36-11F3A 11F40 11F42 11F5A 13440 13447-13455 1611E-16129 1612D-1612F 1E08F 1E4EC-1E4EF 1E5EE-1E5EF",
    "Mc": "CF3 113B8-113BA 113C2 113C5 113C7-113CA 113CC-113CD 113CF 1171E 11F03 11F34-11F35 11F3E-11F3F 11F41 "
          "1612A-1612C",
    "Nd": "10D40-10D49 116D0-116E3 11BF0-11BF9 11F50-11F59 16130-16139 16D70-16D79 1CCF0-1CCF9 1E4F0-1E4F9 "
          "1E5F1-1E5FA",
    "No": "1D2C0-1D2D3",
}
# Unicode White_Space (what Oniguruma's and Rust regex's \s match).
_WHITE_SPACE = [(0x09, 0x0D), (0x20, 0x20), (0x85, 0x85), (0xA0, 0xA0), (0x1680, 0x1680), (0x2000, 0x200A),
                (0x2028, 0x2029), (0x202F, 0x202F), (0x205F, 0x205F), (0x3000, 0x3000)]
_GROUPS = {"L": ("Lu", "Ll", "Lt", "Lm", "Lo"), "M": ("Mn", "Mc", "Me"), "N": ("Nd", "Nl", "No"),
           "P": ("Pc", "Pd", "Ps", "Pe", "Pi", "Pf", "Po"), "S": ("Sm", "Sc", "Sk", "So"),
           "Z": ("Zs", "Zl", "Zp"), "C": ("Cc", "Cf", "Cs", "Co", "Cn"), "LC": ("Lu", "Ll", "Lt")}
_LONG_NAMES = {"Letter": "L", "Mark": "M", "Number": "N", "Punctuation": "P", "Symbol": "S",
               "Separator": "Z", "Other": "C", "Uppercase_Letter": "Lu", "Lowercase_Letter": "Ll",
               "Decimal_Number": "Nd"}


@functools.lru_cache(maxsize=1)
def _category_runs() -> dict[str, list[tuple[int, int]]]:
    """{general category: [(first, last) code point runs]} over all of Unicode, plus _NEWER_UNICODE."""
    runs: dict[str, list] = {}
    category, start = unicodedata.category("\0"), 0
    for cp in range(1, 0x110000):
        c = unicodedata.category(chr(cp))
        if c != category:
            runs.setdefault(category, []).append((start, cp - 1))
            category, start = c, cp
    runs.setdefault(category, []).append((start, 0x10FFFF))
    for cat, table in _NEWER_UNICODE.items():
        for item in table.split():
            first, _, last = item.partition("-")
            runs[cat].append((int(first, 16), int(last or first, 16)))
    return runs


def _merge_ranges(ranges) -> list[tuple[int, int]]:
    out: list[list[int]] = []
    for a, b in sorted(ranges):
        if out and a <= out[-1][1] + 1:
            out[-1][1] = max(out[-1][1], b)
        else:
            out.append([a, b])
    return [(a, b) for a, b in out]


def _complement(ranges) -> list[tuple[int, int]]:
    out, nxt = [], 0
    for a, b in ranges:
        if a > nxt:
            out.append((nxt, a - 1))
        nxt = b + 1
    if nxt <= 0x10FFFF:
        out.append((nxt, 0x10FFFF))
    return out


@functools.lru_cache(maxsize=None)
def _class_ranges(name: str) -> tuple[tuple[int, int], ...]:
    """Code point ranges of a class name: a general category ("L", "Lu", "N", ...) or "s", "d"."""
    if name == "s":
        return tuple(_WHITE_SPACE)
    if name == "d":  # Oniguruma's Unicode \d is Decimal_Number
        return _class_ranges("Nd")
    name = _LONG_NAMES.get(name, name)
    categories = _GROUPS.get(name, (name,))
    if any(c not in _GROUPS["C"] + _GROUPS["L"] + _GROUPS["M"] + _GROUPS["N"] + _GROUPS["P"] + _GROUPS["S"]
           + _GROUPS["Z"] for c in categories):
        raise KeyError(name)
    runs = _category_runs()
    return tuple(_merge_ranges([r for c in categories for r in runs.get(c, [])]))


def _class_body(ranges) -> str:
    """The inside of a [...] class for these ranges, every bound escaped (so ], ^, -, \\ are safe)."""
    return "".join(f"\\U{a:08x}" if a == b else f"\\U{a:08x}-\\U{b:08x}" for a, b in ranges)


_SIMPLE_ESCAPES = set("nrtfvax0123456789uU")  # same meaning in Oniguruma and Python


def translate_pattern(pattern: str, where: str = "pattern") -> str:
    """Rewrite an Oniguruma/Rust-style pre-tokenizer regex so Python's `re` matches the same strings.

    \\p{X} \\P{X} (general categories, e.g. L, Lu, N, Nd, M, P, S, Z), \\s \\S \\d \\D become explicit code
    point classes, inside or outside [...]. Everything else is passed through (Python 3.11 also knows
    (?i:...), lookarounds, atomic groups and possessive quantifiers). Raises TokenizerError for what it
    cannot translate faithfully: nested classes, \\w (Oniguruma's is Alphabetic-based, not a category
    union), \\G \\K \\h \\R \\X ..."""
    out, i, in_class, n = [], 0, False, len(pattern)
    class_start = -1

    def unsupported(what):
        return TokenizerError(f"{where}: unsupported regex construct {what} in pre-tokenizer pattern "
                              f"{pattern!r}; supported: \\p{{..}}, \\s, \\d, classes, groups, lookarounds")

    while i < n:
        ch = pattern[i]
        if ch == "\\" and i + 1 < n:
            esc = pattern[i + 1]
            if esc in "pP":
                if i + 2 < n and pattern[i + 2] == "{":
                    end = pattern.find("}", i + 3)
                    if end < 0:
                        raise unsupported(pattern[i:i + 3])
                    name, i_next = pattern[i + 3:end], end + 1
                else:
                    name, i_next = pattern[i + 2:i + 3], i + 3
                negated = esc == "P"
                if name.startswith("^"):
                    name, negated = name[1:], not negated
                try:
                    ranges = _class_ranges(name.replace(" ", "").replace("-", "_"))
                except KeyError:
                    raise unsupported(pattern[i:i_next]) from None
            elif esc in "sSdD":
                ranges, negated, i_next = _class_ranges(esc.lower()), esc.isupper(), i + 2
            elif esc.isalpha() and esc not in _SIMPLE_ESCAPES and not (esc in "bBAZ" and not in_class):
                raise unsupported("\\" + esc)
            else:
                out.append(pattern[i:i + 2])
                i += 2
                continue
            if negated:
                ranges = _complement(ranges)
            out.append(_class_body(ranges) if in_class else f"[{_class_body(ranges)}]")
            i = i_next
            continue
        if in_class:
            if ch == "[":
                raise unsupported("'[' inside a character class (nested class or set operation)")
            if ch == "]" and i > class_start:
                in_class = False
            out.append(ch)
            i += 1
            continue
        if ch == "[":
            in_class = True
            j = i + 1
            if j < n and pattern[j] == "^":
                j += 1
            out.append(pattern[i:j])
            if j < n and pattern[j] == "]":  # a ']' right after '[' or '[^' is a literal
                out.append("\\]")
                j += 1
            class_start = j
            i = j
            continue
        out.append(ch)
        i += 1
    if in_class:
        raise unsupported("an unclosed '['")
    return "".join(out)


@functools.lru_cache(maxsize=64)
def _compile(pattern: str, where: str) -> re.Pattern:
    translated = translate_pattern(pattern, where)
    try:
        return re.compile(translated)
    except re.error as e:
        raise TokenizerError(f"{where}: pre-tokenizer pattern {pattern!r} does not compile in Python: {e}") from None


def _split_isolated(regex: re.Pattern, pieces: list[str]) -> list[str]:
    """Split every piece into the regex's matches and the gaps between them (HF 'Isolated' behaviour)."""
    out = []
    for piece in pieces:
        found = regex.findall(piece)
        if sum(map(len, found)) == len(piece):  # matches tile the piece (always, for the usual patterns)
            out.extend(filter(None, found) if "" in found else found)
            continue
        pos = 0
        for m in regex.finditer(piece):
            start, end = m.span()
            if start == end:
                continue
            if start > pos:
                out.append(piece[pos:start])
            out.append(piece[start:end])
            pos = end
        if pos < len(piece):
            out.append(piece[pos:])
    return out


def pre_tokenize(text: str, pattern: str = GPT2_PATTERN) -> list[str]:
    """Split `text` the way a tokenizers Split(pattern, "isolated") pre-tokenizer does: the matches of the
    (tokenizers-syntax) pattern, and any gaps between them, in order."""
    return _split_isolated(_compile(pattern, "pattern"), [text])


def _prefix_space(pieces: list[str]) -> list[str]:
    return [p if p.startswith(" ") else " " + p for p in pieces]


# ----------------------------------------------------------------------------------------------------
# Byte-level BPE

@functools.lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table: printable Latin-1 bytes map to themselves, the other
    68 bytes to U+0100 onwards (so a space is "Ġ" and a newline "Ċ")."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


_BYTE_TRANSLATION = {b: c for b, c in bytes_to_unicode().items()}  # for str.translate over latin-1 text
_CHAR_TO_BYTE = {c: b for b, c in bytes_to_unicode().items()}


def _parse_pre_tokenizer(spec, where: str) -> tuple[list, bool]:
    """tokenizer.json "pre_tokenizer" -> ([step, ...], has_byte_level). A step maps list[str] -> list[str]."""
    if spec is None:
        return [], False
    if not isinstance(spec, dict) or "type" not in spec:
        raise TokenizerError(f"{where}: pre_tokenizer must be an object with a 'type', got {spec!r:.200}")
    kind = spec["type"]
    if kind == "Sequence":
        steps, byte_level = [], False
        for sub in spec.get("pretokenizers", []):
            sub_steps, sub_bl = _parse_pre_tokenizer(sub, where)
            steps += sub_steps
            byte_level |= sub_bl
        return steps, byte_level
    if kind == "ByteLevel":
        steps = [_prefix_space] if spec.get("add_prefix_space", False) else []
        if spec.get("use_regex", True):
            regex = _compile(GPT2_PATTERN, where)
            steps.append(functools.partial(_split_isolated, regex))
        return steps, True
    if kind == "Split":
        behavior = spec.get("behavior", "Isolated")
        if behavior != "Isolated" or spec.get("invert", False):
            raise TokenizerError(f"{where}: Split pre-tokenizer with behavior={behavior!r}, "
                                 f"invert={spec.get('invert')} is not supported (only Isolated, invert=false)")
        pattern = spec.get("pattern", {})
        if "Regex" in pattern:
            regex = _compile(pattern["Regex"], where)
        elif "String" in pattern:
            regex = re.compile(re.escape(pattern["String"]))
        else:
            raise TokenizerError(f"{where}: Split pre-tokenizer needs pattern.Regex or pattern.String, got {pattern!r}")
        return [functools.partial(_split_isolated, regex)], False
    if kind == "Digits":
        regex = _compile(r"\p{N}" if spec.get("individual_digits", False) else r"\p{N}+", where)
        return [functools.partial(_split_isolated, regex)], False
    raise UnsupportedTokenizer(f"{where}: pre-tokenizer type {kind!r} is not supported by our byte-level BPE "
                         f"(supported: ByteLevel, Split, Digits, Sequence)")


def _parse_normalizer(spec, where: str) -> list[str]:
    """tokenizer.json "normalizer" -> list of unicodedata.normalize forms."""
    if spec is None:
        return []
    kind = spec.get("type") if isinstance(spec, dict) else None
    if kind == "Sequence":
        return [form for sub in spec.get("normalizers", []) for form in _parse_normalizer(sub, where)]
    if kind in ("NFC", "NFD", "NFKC", "NFKD"):
        return [kind]
    raise UnsupportedTokenizer(f"{where}: normalizer {spec!r:.120} is not supported with byte-level BPE "
                         f"(supported: none, NFC, NFD, NFKC, NFKD)")


def merge_word(symbols: list[str], merge_ranks: dict[tuple[str, str], int]) -> list[str]:
    """Apply BPE merges to one pre-token: repeatedly merge the adjacent pair with the lowest rank, the
    leftmost one on ties, exactly as Hugging Face `tokenizers` (word.rs) does, in O(n log n)."""
    n = len(symbols)
    if n < 2:
        return symbols
    syms: list = list(symbols)
    nxt = list(range(1, n + 1))
    nxt[-1] = -1
    prv = list(range(-1, n - 1))
    heap = []
    for i in range(n - 1):
        rank = merge_ranks.get((syms[i], syms[i + 1]))
        if rank is not None:
            heap.append((rank, i, syms[i] + syms[i + 1]))
    heapq.heapify(heap)
    while heap:
        _, pos, merged = heapq.heappop(heap)
        left = syms[pos]
        if left is None or nxt[pos] == -1:
            continue
        j = nxt[pos]
        right = syms[j]
        if left + right != merged or (left, right) not in merge_ranks:  # a stale queue entry
            continue
        syms[pos], syms[j] = merged, None
        k = nxt[j]
        nxt[pos] = k
        if k != -1:
            prv[k] = pos
        p = prv[pos]
        if p != -1:
            rank = merge_ranks.get((syms[p], merged))
            if rank is not None:
                heapq.heappush(heap, (rank, p, syms[p] + merged))
        if k != -1:
            rank = merge_ranks.get((merged, syms[k]))
            if rank is not None:
                heapq.heappush(heap, (rank, pos, merged + syms[k]))
    return [s for s in syms if s is not None]


class ByteLevelBPE:
    """Byte-level BPE model: vocab {token: id}, merges [(a, b)] by rank, pre-tokenizer steps, and the
    added tokens (special or not) of the file. Use it through `Tokenizer`."""

    CACHE_SIZE = 200_000

    def __init__(self, vocab: dict[str, int], merges: list[tuple[str, str]], pre_tokenizer: dict,
                 added_tokens: list[dict] = (), normalizer=None, ignore_merges: bool = False,
                 unk_token: str | None = None, where: str = "tokenizer"):
        self.vocab = vocab
        self.merges = merges
        self.pre_tokenizer_spec = pre_tokenizer
        self.normalizer_spec = normalizer
        self.added_tokens = [dict(t) for t in added_tokens]
        self.ignore_merges = ignore_merges
        self.unk_token = unk_token
        self.steps, byte_level = _parse_pre_tokenizer(pre_tokenizer, where)
        if not byte_level:
            raise UnsupportedTokenizer(f"{where}: not a byte-level BPE (no ByteLevel pre-tokenizer); a "
                                       f"SentencePiece-style tokenizer.json needs its tokenizer.model instead")
        self.normal_forms = _parse_normalizer(normalizer, where)
        self.merge_ranks = {}
        for rank, (a, b) in enumerate(merges):
            if a + b not in vocab:
                raise TokenizerError(f"{where}: merge #{rank} {a!r} {b!r} makes {a + b!r}, which is not in the vocab")
            self.merge_ranks.setdefault((a, b), rank)
        self.id_to_str: dict[int, str] = {i: t for t, i in vocab.items()}
        for t in self.added_tokens:
            self.id_to_str[t["id"]] = t["content"]
        self.added_ids = {t["content"]: t["id"] for t in self.added_tokens}
        self.always_split = {t["content"]: t["id"] for t in self.added_tokens if not t.get("special", False)}
        self._cache: dict[str, tuple[int, ...]] = {}
        self._id_bytes: dict[int, bytes] | None = None

    @property
    def vocab_size(self) -> int:
        return max(self.id_to_str) + 1 if self.id_to_str else 0

    def token_to_id(self, token: str) -> int | None:
        i = self.added_ids.get(token)
        return self.vocab.get(token) if i is None else i

    def id_to_token(self, i: int) -> str | None:
        return self.id_to_str.get(i)

    def _bpe(self, piece: str) -> tuple[int, ...]:
        word = piece.encode("utf-8").decode("latin-1").translate(_BYTE_TRANSLATION)
        vocab = self.vocab
        if self.ignore_merges and word in vocab:
            return (vocab[word],)
        ids = []
        for sym in merge_word(list(word), self.merge_ranks):
            i = vocab.get(sym)
            if i is None:
                i = vocab.get(self.unk_token) if self.unk_token is not None else None
                if i is None:
                    raise TokenizerError(f"byte-level symbol {sym!r} of {piece!r} is not in the vocabulary "
                                         f"and the tokenizer has no unk_token")
            ids.append(i)
        return tuple(ids)

    def encode_ordinary(self, text: str) -> list[int]:
        """Ids of `text` with no added-token matching (the caller splits those off first)."""
        for form in self.normal_forms:
            text = unicodedata.normalize(form, text)
        pieces = [text] if text else []
        for step in self.steps:
            pieces = step(pieces)
        cache = self._cache  # pre-token -> ids; most words of a corpus repeat
        missing = set(pieces).difference(cache)
        if len(cache) + len(missing) > self.CACHE_SIZE:
            cache.clear()
            missing = set(pieces)
        for piece in missing:
            cache[piece] = self._bpe(piece)
        return list(itertools.chain.from_iterable(map(cache.__getitem__, pieces)))

    def decode_bytes(self, ids) -> bytes:
        if self._id_bytes is None:
            # As `tokenizers`' ByteLevel decoder: map each character back to its byte; a token with a
            # character outside the table (e.g. GPT-NeoX's added tokens made of real spaces) is UTF-8.
            table = {}
            for i, tok in self.id_to_str.items():
                try:
                    table[i] = bytes(_CHAR_TO_BYTE[c] for c in tok)
                except KeyError:
                    table[i] = tok.encode("utf-8")
            self._id_bytes = table
        try:
            return b"".join([self._id_bytes[i] for i in ids])
        except KeyError:
            bad = next(i for i in ids if i not in self._id_bytes)
            raise TokenizerError(f"token id {bad} is not in the vocabulary (size {self.vocab_size})") from None

    def to_tokenizer_json(self) -> dict:
        """This model as a Hugging Face tokenizer.json (loadable by `tokenizers` and by us)."""
        return {
            "version": "1.0", "truncation": None, "padding": None,
            "added_tokens": [{"id": t["id"], "content": t["content"], "single_word": False, "lstrip": False,
                              "rstrip": False, "normalized": False, "special": bool(t.get("special", False))}
                             for t in self.added_tokens],
            "normalizer": self.normalizer_spec, "pre_tokenizer": self.pre_tokenizer_spec, "post_processor": None,
            "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True},
            "model": {"type": "BPE", "dropout": None, "unk_token": self.unk_token, "continuing_subword_prefix": None,
                      "end_of_word_suffix": None, "fuse_unk": False, "byte_fallback": False,
                      "ignore_merges": self.ignore_merges, "vocab": self.vocab,
                      "merges": [f"{a} {b}" for a, b in self.merges]},
        }


# ----------------------------------------------------------------------------------------------------
# SentencePiece

class SentencePiece:
    """A SentencePiece .model through the `sentencepiece` package. Use it through `Tokenizer`."""

    always_split: dict[str, int] = {}  # SentencePiece matches its user-defined symbols itself

    def __init__(self, path):
        import sentencepiece as spm

        self.path = Path(path)
        if not self.path.is_file():
            raise TokenizerError(f"{self.path}: SentencePiece model file not found")
        self.sp = spm.SentencePieceProcessor()
        try:
            self.sp.Load(str(self.path))
        except (OSError, RuntimeError) as e:
            raise TokenizerError(f"{self.path}: not a valid SentencePiece model ({e})") from None
        n = self.sp.get_piece_size()
        self.control_ids = {i for i in range(n) if self.sp.is_control(i)}  # bos, eos, pad, ...

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def token_to_id(self, token: str) -> int | None:
        i = self.sp.piece_to_id(token)
        return None if i == self.sp.unk_id() and token != self.sp.id_to_piece(i) else i

    def id_to_token(self, i: int) -> str | None:
        return self.sp.id_to_piece(i) if 0 <= i < self.vocab_size else None

    def encode_ordinary(self, text: str) -> list[int]:
        return self.sp.encode(text) if text else []

    def special_id(self, which: str) -> int | None:
        i = getattr(self.sp, f"{which}_id")()
        return None if i < 0 else i


# ----------------------------------------------------------------------------------------------------
# File helpers

def _read_json(path: Path):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise TokenizerError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except UnicodeDecodeError as e:
        raise TokenizerError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def _read_vocab(path: Path) -> dict[str, int]:
    vocab = _read_json(path)
    if not isinstance(vocab, dict) or not all(isinstance(v, int) for v in vocab.values()):
        raise TokenizerError(f"{path}: expected a JSON object mapping token strings to integer ids")
    return vocab


def _read_merges(path: Path) -> list[tuple[str, str]]:
    try:
        lines = path.read_text(encoding="utf-8").split("\n")  # not splitlines(): it also splits on U+0085...
    except UnicodeDecodeError as e:
        raise TokenizerError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None
    merges = []
    for lineno, line in enumerate(lines, 1):
        line = line.rstrip("\r")
        if (lineno == 1 and line.startswith("#version")) or not line:
            continue
        parts = line.split(" ")
        if len(parts) != 2 or not all(parts):
            raise TokenizerError(f"{path}:{lineno}: expected a merge 'left right' (two tokens, one space), "
                                 f"got {line!r:.80}")
        merges.append((parts[0], parts[1]))
    if not merges:
        raise TokenizerError(f"{path}: no merges found")
    return merges


def _parse_json_merges(merges, where: str) -> list[tuple[str, str]]:
    out = []
    for k, m in enumerate(merges):
        if isinstance(m, str):
            parts = m.split(" ")
        elif isinstance(m, (list, tuple)):
            parts = list(m)
        else:
            parts = []
        if len(parts) != 2 or not all(isinstance(p, str) and p for p in parts):
            raise TokenizerError(f"{where}: model.merges[{k}] must be 'left right' or [left, right], got {m!r:.80}")
        out.append((parts[0], parts[1]))
    return out


def _token_content(value):
    """A special token as written in tokenizer_config.json: a string, {"content": ...} or null."""
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


# ----------------------------------------------------------------------------------------------------
# The wrapper

@dataclass(repr=False)
class Tokenizer:
    """Text <-> token ids over one backend (ByteLevelBPE or SentencePiece). Build it with a from_* method."""

    backend: object
    special_tokens: dict[str, int]          # strings `encode(..., allow_special=True)` turns into one id
    eos_token: str | None = None
    bos_token: str | None = None
    pad_token: str | None = None
    files: dict[str, object] = field(default_factory=dict)   # saved-dir name -> source Path | JSON dict
    config: dict = field(default_factory=dict)               # tokenizer_config.json as read (if any)

    def __post_init__(self):
        self._split_re = {}
        for allow_special in (False, True):
            tokens = dict(self.backend.always_split)
            if allow_special:
                tokens.update(self.special_tokens)
            # longest first, so "<|im_end|>x" prefers the longer of two overlapping tokens (leftmost-longest)
            alternatives = sorted(tokens, key=len, reverse=True)
            self._split_re[allow_special] = (re.compile("|".join(map(re.escape, alternatives))), tokens) \
                if alternatives else None

    def __repr__(self) -> str:
        return (f"Tokenizer({self.kind}, vocab_size={self.vocab_size}, eos={self.eos_token!r}/{self.eos_id}, "
                f"bos={self.bos_token!r}/{self.bos_id}, pad={self.pad_token!r}/{self.pad_id})")

    # -- constructors ------------------------------------------------------------------------------

    @classmethod
    def from_pretrained(cls, path, *, eos_token=None, bos_token=None, pad_token=None) -> "Tokenizer":
        """Load from a directory (or a single tokenizer.json / vocab.json / *.model file), choosing by files:
        tokenizer.json (byte-level BPE) -> ours; else vocab.json + merges.txt -> ours; else
        tokenizer.model (or *.model) -> SentencePiece. A directory whose tokenizer.json is not byte-level
        (Llama-2, Mistral) but which has tokenizer.model uses SentencePiece."""
        path = Path(path)
        kw = dict(eos_token=eos_token, bos_token=bos_token, pad_token=pad_token)
        if path.is_file():
            if path.suffix == ".model":
                return cls.from_sentencepiece(path, **kw)
            if path.name == "vocab.json":
                return cls.from_vocab_merges(path, path.with_name("merges.txt"), **kw)
            if path.suffix == ".json":
                return cls.from_tokenizer_json(path, **kw)
            raise TokenizerError(f"{path}: not a tokenizer file (expected tokenizer.json, vocab.json or a .model)")
        if not path.is_dir():
            raise TokenizerError(f"{path}: no such tokenizer directory or file")
        sp_models = [path / "tokenizer.model"] if (path / "tokenizer.model").is_file() else sorted(path.glob("*.model"))
        if (path / "tokenizer.json").is_file():
            try:
                return cls.from_tokenizer_json(path / "tokenizer.json", **kw)
            except UnsupportedTokenizer:
                if not sp_models:
                    raise
        elif (path / "vocab.json").is_file() and (path / "merges.txt").is_file():
            return cls.from_vocab_merges(path / "vocab.json", path / "merges.txt", **kw)
        if sp_models:
            return cls.from_sentencepiece(sp_models[0], **kw)
        raise TokenizerError(f"{path}: no tokenizer files found; expected tokenizer.json, vocab.json + merges.txt, "
                             f"or tokenizer.model (SentencePiece); found {sorted(p.name for p in path.iterdir())[:20]}")

    @classmethod
    def from_tokenizer_json(cls, path, *, eos_token=None, bos_token=None, pad_token=None) -> "Tokenizer":
        """A Hugging Face tokenizer.json with a byte-level BPE model (GPT-2/J, Pythia, SmolLM2, Llama-3, Qwen2)."""
        path = Path(path)
        if not path.is_file():
            raise TokenizerError(f"{path}: file not found")
        spec = _read_json(path)
        model = spec.get("model") if isinstance(spec, dict) else None
        if not isinstance(model, dict) or "vocab" not in model:
            raise TokenizerError(f"{path}: expected a tokenizer.json object with a 'model' holding a 'vocab'")
        kind = model.get("type", "BPE" if "merges" in model else None)
        if kind != "BPE":
            raise UnsupportedTokenizer(f"{path}: model type {kind!r} is not supported (only byte-level BPE)")
        for key in ("continuing_subword_prefix", "end_of_word_suffix"):
            if model.get(key):
                raise UnsupportedTokenizer(f"{path}: BPE with {key}={model[key]!r} is not supported")
        vocab = model["vocab"]
        if not isinstance(vocab, dict) or not all(isinstance(v, int) for v in vocab.values()):
            raise TokenizerError(f"{path}: model.vocab must map token strings to integer ids")
        if not isinstance(model.get("merges"), list):
            raise TokenizerError(f"{path}: model.merges is missing or not a list")
        merges = _parse_json_merges(model["merges"], str(path))
        added = spec.get("added_tokens") or []
        for k, t in enumerate(added):
            if not isinstance(t, dict) or not isinstance(t.get("id"), int) or not isinstance(t.get("content"), str):
                raise TokenizerError(f"{path}: added_tokens[{k}] needs an integer 'id' and a string 'content'")
        backend = ByteLevelBPE(vocab, merges, spec.get("pre_tokenizer"), added, spec.get("normalizer"),
                               bool(model.get("ignore_merges", False)), model.get("unk_token"), str(path))
        special = {t["content"]: t["id"] for t in added if t.get("special", False)}
        return cls._assemble(backend, special, path.parent, {"tokenizer.json": path},
                             eos_token=eos_token, bos_token=bos_token, pad_token=pad_token)

    @classmethod
    def from_vocab_merges(cls, vocab_path, merges_path, *, eos_token=None, bos_token=None,
                          pad_token=None) -> "Tokenizer":
        """GPT-2-style vocab.json + merges.txt (GPT-2 pre-tokenizer, no prefix space). An added_tokens.json
        beside them ({token: id}, as transformers' slow tokenizers write) is read too."""
        vocab_path, merges_path = Path(vocab_path), Path(merges_path)
        for p in (vocab_path, merges_path):
            if not p.is_file():
                raise TokenizerError(f"{p}: file not found (a GPT-2-style tokenizer needs vocab.json and merges.txt)")
        vocab = _read_vocab(vocab_path)
        merges = _read_merges(merges_path)
        folder = vocab_path.parent
        files = {"vocab.json": vocab_path, "merges.txt": merges_path}
        added = []
        if (folder / "added_tokens.json").is_file():
            extra = _read_vocab(folder / "added_tokens.json")
            added = [{"id": i, "content": t, "special": False} for t, i in extra.items()]
            files["added_tokens.json"] = folder / "added_tokens.json"
        backend = ByteLevelBPE(vocab, merges, _BYTE_LEVEL, added, where=str(merges_path))
        return cls._assemble(backend, {}, folder, files, eos_token=eos_token, bos_token=bos_token,
                             pad_token=pad_token)

    @classmethod
    def from_bpe(cls, vocab: dict[str, int], merges, pattern=None, special_tokens: dict[str, int] | None = None,
                 eos_token=None, bos_token=None, pad_token=None, *, ignore_merges: bool = False,
                 added_tokens: dict[str, int] | None = None) -> "Tokenizer":
        """A byte-level BPE from its parts (e.g. read from a GGUF file).

        vocab: {byte-level token string: id}, special tokens included or not. merges: [(left, right)] or
        ["left right"], in rank order. pattern: None or "gpt2" (GPT-2/J, Pythia), "llama3" / "llama-bpe"
        (Llama-3, cl100k-style: ignore_merges=True for Llama-3), "qwen2", "smollm" / "starcoder" (each
        digit alone, then GPT-2's pattern), "default" (= gpt2); or a regex string in tokenizers' syntax,
        or a list of them applied in turn (each splits the previous pieces, keeping the gaps).
        special_tokens: {string: id} matched only with allow_special=True; added_tokens: {string: id}
        always matched. save_pretrained writes all of it as a tokenizer.json."""
        if pattern is None:
            pattern = "gpt2"
        if isinstance(pattern, str) and pattern in PRE_TOKENIZERS:
            pre = PRE_TOKENIZERS[pattern]
        elif isinstance(pattern, str):
            pre = {"type": "Sequence", "pretokenizers": [_split_spec(pattern), _BYTES_ONLY]}
        elif isinstance(pattern, (list, tuple)) and all(isinstance(p, str) for p in pattern):
            pre = {"type": "Sequence", "pretokenizers": [_split_spec(p) for p in pattern] + [_BYTES_ONLY]}
        else:
            raise TokenizerError(f"from_bpe: pattern must be None, one of {sorted(PRE_TOKENIZERS)}, a regex "
                                 f"string or a list of them; got {pattern!r:.100}")
        merges = _parse_json_merges(list(merges), "from_bpe")
        special_tokens = dict(special_tokens or {})
        added = [{"id": i, "content": t, "special": True} for t, i in special_tokens.items()]
        added += [{"id": i, "content": t, "special": False} for t, i in (added_tokens or {}).items()
                  if t not in special_tokens]
        backend = ByteLevelBPE(dict(vocab), merges, pre, added, None, ignore_merges, where="from_bpe")
        tok = cls._assemble(backend, special_tokens, None, {}, defaults=dict(eos=eos_token, bos=bos_token, pad=pad_token))
        tok.files = {"tokenizer.json": backend.to_tokenizer_json()}
        return tok

    @classmethod
    def from_sentencepiece(cls, path, *, eos_token=None, bos_token=None, pad_token=None) -> "Tokenizer":
        """A SentencePiece .model. eos/bos/pad default to the model's own eos/bos/pad ids (None when -1)."""
        path = Path(path)
        backend = SentencePiece(path)
        special = {backend.sp.id_to_piece(i): i for i in sorted(backend.control_ids | {backend.sp.unk_id()})}
        defaults = {}
        for name in ("eos", "bos", "pad"):
            i = backend.special_id(name)
            defaults[name] = backend.sp.id_to_piece(i) if i is not None else None
        return cls._assemble(backend, special, path.parent, {"tokenizer.model": path}, defaults=defaults,
                             eos_token=eos_token, bos_token=bos_token, pad_token=pad_token)

    @classmethod
    def _assemble(cls, backend, special: dict[str, int], folder: Path | None, files: dict, *, defaults=None,
                  **explicit) -> "Tokenizer":
        """Resolve eos/bos/pad (see the module docstring for the order) and register them as special."""
        config, sources = {}, []  # sources: (file name, {key: value}) in priority order
        if folder is not None:
            for name in CONFIG_FILES:
                if (folder / name).is_file():
                    data = _read_json(folder / name)
                    if not isinstance(data, dict):
                        raise TokenizerError(f"{folder / name}: expected a JSON object")
                    sources.append((folder / name, data))
                    files[name] = folder / name
                    if name == "tokenizer_config.json":
                        config = data
                        for i, t in (data.get("added_tokens_decoder") or {}).items():
                            if isinstance(t, dict) and t.get("special") and isinstance(t.get("content"), str):
                                special.setdefault(t["content"], int(i))
            if (folder / "config.json").is_file():
                model_config = _read_json(folder / "config.json")
                ids = {}
                for name in ("eos", "bos", "pad"):
                    i = model_config.get(f"{name}_token_id") if isinstance(model_config, dict) else None
                    i = i[0] if isinstance(i, list) and i else i
                    if isinstance(i, int) and backend.id_to_token(i) is not None:
                        ids[f"{name}_token"] = backend.id_to_token(i)
                sources.append((folder / "config.json", ids))
        resolved = {}
        for name, names in (("eos", EOS_NAMES), ("bos", BOS_NAMES), ("pad", PAD_NAMES)):
            key = f"{name}_token"
            where, token = "argument", explicit.get(key)
            if token is None:
                where, data = next(((w, d) for w, d in sources if key in d), (None, None))
                if data is not None:
                    token = _token_content(data[key])
                elif defaults is not None:
                    token = defaults[name]
                else:
                    token = next((t for t in names if backend.token_to_id(t) is not None), None)
            if token is not None and backend.token_to_id(token) is None:
                raise TokenizerError(f"{where}: {key} {token!r} is not in the vocabulary")
            resolved[key] = token
        for _, data in sources:  # every token the configs name (unk, additional_special_tokens...) is special
            for key, value in data.items():
                if key.endswith("_token") or key == "additional_special_tokens":
                    for v in (value if isinstance(value, list) else [value]):
                        t = _token_content(v)
                        if t is not None and backend.token_to_id(t) is not None:
                            special.setdefault(t, backend.token_to_id(t))
        for t in resolved.values():
            if t is not None:
                special.setdefault(t, backend.token_to_id(t))
        return cls(backend, special, files=files, config=config, **resolved)

    # -- encoding ----------------------------------------------------------------------------------

    def encode(self, text: str, *, allow_special: bool = False) -> list[int]:
        """Token ids of `text`. Never adds BOS/EOS. Special-token strings in `text` are plain text unless
        allow_special=True (then they become their ids)."""
        if not isinstance(text, str):
            raise TypeError(f"encode expects a str, got {type(text).__name__}")
        split = self._split_re[allow_special]
        if split is None:
            return self.backend.encode_ordinary(text)
        regex, tokens = split
        ids, pos = [], 0
        for m in regex.finditer(text):
            if m.start() > pos:
                ids += self.backend.encode_ordinary(text[pos:m.start()])
            ids.append(tokens[m.group()])
            pos = m.end()
        if pos < len(text):
            ids += self.backend.encode_ordinary(text[pos:])
        return ids

    def encode_batch(self, texts, *, allow_special: bool = False) -> list[list[int]]:
        return [self.encode(t, allow_special=allow_special) for t in texts]

    def decode(self, ids, skip_special_tokens: bool = False) -> str:
        """Text of `ids` (a list of ints or a 1-D tensor). skip_special_tokens drops eos/bos/pad and the
        other special tokens. SentencePiece: a special token splits the ids into runs decoded on their own."""
        ids = ids.tolist() if hasattr(ids, "tolist") else [int(i) for i in ids]
        special_ids = set(self.special_tokens.values())
        if skip_special_tokens:
            ids = [i for i in ids if i not in special_ids]
        if isinstance(self.backend, ByteLevelBPE):
            return self.backend.decode_bytes(ids).decode("utf-8", errors="replace")
        sp = self.backend.sp
        n = sp.get_piece_size()
        bad = next((i for i in ids if not 0 <= i < n), None)
        if bad is not None:
            raise TokenizerError(f"token id {bad} is not in the vocabulary (size {n})")
        parts, run = [], []
        for i in ids:  # sentencepiece's decode drops control pieces: write them out ourselves
            if i in self.backend.control_ids:
                parts += [sp.decode(run), sp.id_to_piece(i)]
                run = []
            else:
                run.append(i)
        parts.append(sp.decode(run))
        return "".join(parts)

    # -- vocabulary --------------------------------------------------------------------------------

    @property
    def vocab_size(self) -> int:
        """Largest id + 1 (added tokens included): the smallest embedding table these ids fit."""
        return self.backend.vocab_size

    def token_to_id(self, token: str) -> int | None:
        return self.special_tokens.get(token, self.backend.token_to_id(token))

    def id_to_token(self, i: int) -> str | None:
        return self.backend.id_to_token(i)

    @property
    def eos_id(self) -> int | None:
        return None if self.eos_token is None else self.token_to_id(self.eos_token)

    @property
    def bos_id(self) -> int | None:
        return None if self.bos_token is None else self.token_to_id(self.bos_token)

    @property
    def pad_id(self) -> int | None:
        return None if self.pad_token is None else self.token_to_id(self.pad_token)

    def pad_id_or_eos(self) -> int:
        """pad_id, or eos_id when the tokenizer has no pad token (GPT-2). Padding positions must be masked
        out (labels -100, attention_mask 0) either way."""
        i = self.pad_id if self.pad_id is not None else self.eos_id
        if i is None:
            raise TokenizerError("the tokenizer has neither a pad nor an eos token")
        return i

    @property
    def kind(self) -> str:
        return "sentencepiece" if isinstance(self.backend, SentencePiece) else "bpe"

    # -- saving ------------------------------------------------------------------------------------

    def save_pretrained(self, directory) -> list[Path]:
        """Write this tokenizer's files into `directory` (each atomically): the source files it was loaded
        from (tokenizer.json, vocab.json + merges.txt, tokenizer.model, special_tokens_map.json) and a
        tokenizer_config.json (the source's, if any) that names our eos/bos/pad tokens, null for none, so
        the folder loads back with the same ids. Returns the paths written."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        written = []
        for name, source in self.files.items():
            if name == "tokenizer_config.json":
                continue
            dest = directory / name
            if isinstance(source, Path):
                if dest.exists() and os.path.samefile(source, dest):
                    written.append(dest)
                    continue
                _write_atomic(dest, source.read_bytes())
            else:
                _write_atomic(dest, json.dumps(source, ensure_ascii=False, indent=2).encode("utf-8"))
            written.append(dest)
        config = dict(self.config)
        for key in ("eos_token", "bos_token", "pad_token"):  # null too: reloading must not guess a name
            ours = getattr(self, key)
            if key not in config or _token_content(config[key]) != ours:
                config[key] = ours
        dest = directory / "tokenizer_config.json"
        _write_atomic(dest, json.dumps(config, ensure_ascii=False, indent=2).encode("utf-8"))
        written.append(dest)
        return written


# ----------------------------------------------------------------------------------------------------
# SentencePiece training (for from-scratch models) and the CLI

def train_sentencepiece(input_files, model_prefix, vocab_size: int, model_type: str = "bpe", *,
                        character_coverage: float = 0.9995, input_sentence_size: int = 2_000_000,
                        max_sentence_length: int = 65536, user_defined_symbols=(), num_threads: int | None = None,
                        verbose: bool = False, **options) -> Path:
    """Train a SentencePiece model on text files (one sentence/document per line) and return the .model path.

    Defaults for a small GPT trained from scratch:
    - byte_fallback: any UTF-8 text encodes (unknown characters become byte pieces <0xNN>), so
      decode(encode(s)) == s; newlines and tabs, which training never sees (it reads lines), too.
    - ids: unk 0, bos 1, eos 2, pad 3 (encode never adds bos/eos; the caller does).
    - normalization_rule_name="identity", remove_extra_whitespaces=False: no NFKC, spaces kept as is.
    - add_dummy_prefix=False: no "\u2581" is added before the text, so encode("hello") differs from
      encode(" hello") and a response tokenized apart from its prompt concatenates correctly (as GPT-2).
    - split_digits=True (each digit one piece), allow_whitespace_only_pieces=True (runs of spaces).
    - input_sentence_size: at most this many lines are sampled (shuffled) from the inputs; lines longer
      than max_sentence_length bytes are skipped by SentencePiece.
    The model and its .vocab are written atomically (trained under a temporary prefix, then renamed).
    `options` go to SentencePieceTrainer as they are (e.g. user_defined_symbols, seed_sentencepiece_size)."""
    import sentencepiece as spm

    if model_type not in ("bpe", "unigram"):
        raise TokenizerError(f"model_type must be 'bpe' or 'unigram', got {model_type!r}")
    files = [Path(f) for f in ([input_files] if isinstance(input_files, (str, Path)) else input_files)]
    if not files:
        raise TokenizerError("train_sentencepiece: no input files given")
    for f in files:
        if not f.is_file():
            raise TokenizerError(f"{f}: input file not found")
        if f.stat().st_size == 0:
            raise TokenizerError(f"{f}: input file is empty")
        if "," in str(f):
            raise TokenizerError(f"{f}: SentencePiece cannot read a file whose path contains a comma")
    prefix = Path(model_prefix)
    prefix.parent.mkdir(parents=True, exist_ok=True)
    tmp_prefix = prefix.with_name(f".{prefix.name}.tmp{os.getpid()}")
    args = dict(input=",".join(map(str, files)), model_prefix=str(tmp_prefix), vocab_size=vocab_size,
                model_type=model_type, byte_fallback=True, split_digits=True, add_dummy_prefix=False,
                remove_extra_whitespaces=False, normalization_rule_name="identity",
                allow_whitespace_only_pieces=True, unk_id=0, bos_id=1, eos_id=2, pad_id=3,
                character_coverage=character_coverage, input_sentence_size=input_sentence_size,
                shuffle_input_sentence=True, max_sentence_length=max_sentence_length,
                num_threads=num_threads or os.cpu_count() or 1, minloglevel=0 if verbose else 2)
    if user_defined_symbols:
        args["user_defined_symbols"] = list(user_defined_symbols)
    args.update(options)
    try:
        spm.SentencePieceTrainer.train(**args)
        for ext in (".model", ".vocab"):
            os.replace(f"{tmp_prefix}{ext}", f"{prefix}{ext}")
    except (RuntimeError, OSError) as e:
        raise TokenizerError(f"SentencePiece training on {[str(f) for f in files]} failed: "
                             f"{str(e).strip().splitlines()[-1] if str(e).strip() else e}") from None
    finally:
        for ext in (".model", ".vocab"):
            Path(f"{tmp_prefix}{ext}").unlink(missing_ok=True)
    return Path(f"{prefix}.model")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dpo.tokenizer", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    train = sub.add_parser("train", help="train a SentencePiece model on text files")
    train.add_argument("--input", nargs="+", required=True, help="text files, one sentence/document per line")
    train.add_argument("--vocab-size", type=int, required=True)
    train.add_argument("--out", required=True, help="output prefix: writes PREFIX.model and PREFIX.vocab")
    train.add_argument("--model-type", choices=("bpe", "unigram"), default="bpe")
    train.add_argument("--character-coverage", type=float, default=0.9995)
    train.add_argument("--input-sentence-size", type=int, default=2_000_000)
    train.add_argument("--verbose", action="store_true", help="show SentencePiece's training log")
    args = parser.parse_args(argv)
    try:
        path = train_sentencepiece(args.input, args.out, args.vocab_size, args.model_type,
                                   character_coverage=args.character_coverage,
                                   input_sentence_size=args.input_sentence_size, verbose=args.verbose)
        tok = Tokenizer.from_sentencepiece(path)
    except TokenizerError as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print(f"wrote {path} (vocab {tok.vocab_size}, eos {tok.eos_id}, bos {tok.bos_id}, pad {tok.pad_id})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
