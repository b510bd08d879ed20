"""Our byte-level BPE (GPT-2, GPT-J, Pythia, SmolLM2, Llama-3, Qwen2), written from the files' contents, and
the readers of its files (vocab.json, merges.txt, tokenizer.json). Standard library only. Use it through
dpo.tokenizer.Tokenizer, which picks this backend or SentencePiece and handles special tokens.

Encoding: text -> normalizer (only NFC/NFD/NFKC/NFKD) -> pre-tokenizer regexes -> UTF-8 bytes mapped to
printable characters (`bytes_to_unicode`) -> BPE merges (lowest rank first, leftmost first, as Hugging
Face `tokenizers` does: `merge_word`) -> ids. Decoding maps characters back to bytes and decodes UTF-8
(invalid bytes, e.g. a cut-off multi-byte character, become U+FFFD). Added tokens are split off before
this by the Tokenizer.

The pre-tokenizer patterns. Python's `re` has no \\p{L}, so tokenizer.json's Oniguruma patterns are
translated (`translate_pattern`): \\p{..}, \\s, \\d become explicit character classes built from
`unicodedata` plus a small table of the letters, marks and digits assigned in Unicode 15.0-16.0
(NEWER_UNICODE; Python 3.11 ships Unicode 14.0), so a character is classed as Oniguruma (`tokenizers`)
and Rust's regex (`tiktoken`) class it, up to Unicode 16.0. \\s is Unicode White_Space (Python's own \\s
also matches U+001C..U+001F, which the reference engines do not). PRE_TOKENIZERS names the usual
pre-tokenizers (also llama.cpp's `tokenizer.ggml.pre` values).

Unsupported (a clear error naming the file): other tokenizer.json models (WordPiece, Unigram, a BPE with
continuing_subword_prefix/end_of_word_suffix), pre-tokenizers other than ByteLevel/Split/Digits/Sequence,
regex constructs Python cannot run the same way (nested classes, \\w, \\G, \\K...). Ignored on purpose: BPE
dropout (we are deterministic), the post-processor (we never add BOS/EOS), the lstrip/rstrip/single_word
flags of added tokens.
"""
import functools
import heapq
import itertools
import json
import re
import unicodedata
import warnings
from pathlib import Path

from dpo.errors import UserError


class TokenizerError(UserError, ValueError):
    """Bad or unsupported tokenizer files or arguments; the message names the file and what was expected."""


class UnsupportedTokenizer(TokenizerError):
    """A well-formed tokenizer.json of a kind our byte-level BPE does not implement (e.g. Llama-2's
    SentencePiece-style BPE); Tokenizer.from_pretrained then falls back to a tokenizer.model beside it."""


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


def pre_tokenizer_for(pattern, where: str = "pattern") -> dict:
    """The tokenizer.json pre_tokenizer for `pattern`: None or a name of PRE_TOKENIZERS; a regex string in
    tokenizers' syntax, or a list of them applied in turn (each splits the previous pieces, keeping the
    gaps), followed by the byte mapping."""
    if pattern is None:
        pattern = "gpt2"
    if isinstance(pattern, str) and pattern in PRE_TOKENIZERS:
        return PRE_TOKENIZERS[pattern]
    if isinstance(pattern, str):
        return {"type": "Sequence", "pretokenizers": [_split_spec(pattern), _BYTES_ONLY]}
    if isinstance(pattern, (list, tuple)) and all(isinstance(p, str) for p in pattern):
        return {"type": "Sequence", "pretokenizers": [_split_spec(p) for p in pattern] + [_BYTES_ONLY]}
    raise TokenizerError(f"{where}: pattern must be None, one of {sorted(PRE_TOKENIZERS)}, a regex "
                         f"string or a list of them; got {pattern!r:.100}")


# ----------------------------------------------------------------------------------------------------
# Unicode character classes for the pre-tokenizer regexes

# Code points that Unicode 15.0-16.0 assigned to these categories (all unassigned in Python 3.11's
# Unicode 14.0 tables). Generated once by diffing `unicodedata` with Oniguruma's classes in `tokenizers`.
NEWER_UNICODE = {
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
    """{general category: [(first, last) code point runs]} over all of Unicode, plus NEWER_UNICODE."""
    runs: dict[str, list] = {}
    category, start = unicodedata.category("\0"), 0
    for cp in range(1, 0x110000):
        c = unicodedata.category(chr(cp))
        if c != category:
            runs.setdefault(category, []).append((start, cp - 1))
            category, start = c, cp
    runs.setdefault(category, []).append((start, 0x10FFFF))
    for cat, table in NEWER_UNICODE.items():
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
        self.where, self.warned_dropped = where, False
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

    @classmethod
    def from_tokenizer_json(cls, path) -> "ByteLevelBPE":
        """The byte-level BPE of a Hugging Face tokenizer.json; UnsupportedTokenizer for other models."""
        path = Path(path)
        if not path.is_file():
            raise TokenizerError(f"{path}: file not found")
        spec = read_json(path)
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
        merges = parse_merges(model["merges"], str(path))
        added = spec.get("added_tokens") or []
        for k, t in enumerate(added):
            if not isinstance(t, dict) or not isinstance(t.get("id"), int) or not isinstance(t.get("content"), str):
                raise TokenizerError(f"{path}: added_tokens[{k}] needs an integer 'id' and a string 'content'")
        return cls(vocab, merges, spec.get("pre_tokenizer"), added, spec.get("normalizer"),
                   bool(model.get("ignore_merges", False)), model.get("unk_token"), str(path))


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
            if i is None:  # as Hugging Face tokenizers does: dropped (e.g. SmolLM2 has no symbol for byte 0x16)
                if not self.warned_dropped:
                    self.warned_dropped = True
                    warnings.warn(f"{self.where}: byte-level symbol {sym!r} of {piece!r} is not in the vocabulary and "
                                  f"there is no unk_token: dropped, as Hugging Face tokenizers does (warned once)")
                continue
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
# Reading vocab.json, merges.txt and tokenizer.json

def read_json(path: Path):
    """A JSON file, or a TokenizerError naming the file and the line of the fault."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise TokenizerError(f"{path}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}") from None
    except UnicodeDecodeError as e:
        raise TokenizerError(f"{path}: not UTF-8 text ({e.reason} at byte {e.start})") from None


def read_vocab(path: Path) -> dict[str, int]:
    """A vocab.json (or added_tokens.json): {token string: id}."""
    vocab = read_json(path)
    if not isinstance(vocab, dict) or not all(isinstance(v, int) for v in vocab.values()):
        raise TokenizerError(f"{path}: expected a JSON object mapping token strings to integer ids")
    return vocab


def read_merges(path: Path) -> list[tuple[str, str]]:
    """A merges.txt: one "left right" pair a line, in rank order (a first "#version" line is skipped)."""
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


def parse_merges(merges, where: str) -> list[tuple[str, str]]:
    """tokenizer.json's model.merges ("left right" strings or [left, right] pairs) as [(left, right)]."""
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

