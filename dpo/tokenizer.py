"""Tokenizers: one small `Tokenizer` over our byte-level BPE and SentencePiece; SentencePiece training.

The wrapper chooses the backend from the files present, encodes and decodes, resolves the special tokens
and saves its files along a checkpoint; `train_sentencepiece` (and the CLI below) trains the tokenizer of
a model trained from scratch.

    tok = Tokenizer.from_pretrained("checkpoints/gpt2")   # tokenizer.json | vocab.json+merges.txt | tokenizer.model
    ids = tok.encode("Hello world")                       # never adds BOS/EOS: the caller appends tok.eos_id
    tok.decode(ids) == "Hello world"

Backends
- Byte-level BPE (GPT-2, GPT-J, Pythia, SmolLM2, Llama-3, Qwen2): ours, in dpo/interop/bpe.py, with the
  readers of vocab.json, merges.txt and tokenizer.json, the translation of their pre-tokenizer regexes to
  Python's `re`, and what of tokenizer.json is supported.
- SentencePiece (Llama-2, Mistral, or one trained here with `train_sentencepiece`), through the
  `sentencepiece` package (below).

Special tokens. `encode(text)` treats EVERY character of `text` as text: "<|endoftext|>" inside a review
is encoded as the characters "<", "|", "endoftext", ... (as `tokenizers` with encode_special_tokens=True).
Pass `allow_special=True` to turn special-token strings into their ids. Non-special added tokens of a
tokenizer.json (e.g. GPT-NeoX's runs of spaces) are always matched first, as `tokenizers` does.
`eos_id` / `bos_id` / `pad_id` come from, in order: the constructor's arguments, tokenizer_config.json,
special_tokens_map.json, config.json's *_token_id (the first one when it is a list), then the first
common name present in the vocabulary (EOS_NAMES, BOS_NAMES, PAD_NAMES below); None when none applies.
pad never silently becomes eos: call `pad_id_or_eos()` when you want that fallback.
`chat_template`: the model's Jinja chat template as transformers finds it (chat_template.jinja, else
tokenizer_config.json's "chat_template": a string, or the "default" of a list of {name, template}), or None;
dpo/chat_template.py renders it. save_pretrained keeps it.

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

A tokenizer.json that is not byte-level BPE (e.g. Llama-2's) raises UnsupportedTokenizer; from_pretrained
then uses the tokenizer.model beside it, if any.

CLI:  python -m dpo.tokenizer train --input FILE [FILE ...] --vocab-size N --out PREFIX [--model-type bpe]
"""
import argparse
import json
import os
import re
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from dpo.errors import entry_point
from dpo.files import atomic_write, check_writable
from dpo.interop.bpe import (PRE_TOKENIZERS, ByteLevelBPE, TokenizerError, UnsupportedTokenizer, parse_merges,
                             pre_tokenizer_for, read_json, read_merges, read_vocab)


EOS_NAMES = ("<|endoftext|>", "</s>", "<|end_of_text|>", "<|im_end|>", "<eos>", "<|eot_id|>")
BOS_NAMES = ("<|begin_of_text|>", "<s>", "<bos>", "<|startoftext|>", "<|endoftext|>")  # GPT-2: bos = eos
PAD_NAMES = ("<pad>", "<|padding|>", "[PAD]", "<|pad|>")
CONFIG_FILES = ("tokenizer_config.json", "special_tokens_map.json")  # copied along by save_pretrained


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
# The wrapper

def _token_content(value):
    """A special token as written in tokenizer_config.json: a string, {"content": ...} or null."""
    if isinstance(value, dict):
        return value.get("content")
    return value if isinstance(value, str) else None


def _config_chat_template(config: dict, folder=None) -> str | None:
    """tokenizer_config.json's chat_template: a string, or the "default" of a list of {name, template}."""
    template = config.get("chat_template")
    if isinstance(template, list):
        template = next((t.get("template") for t in template if isinstance(t, dict) and t.get("name") == "default"),
                        None)
    if template is not None and not isinstance(template, str):
        raise TokenizerError(f"{folder or '.'}/tokenizer_config.json: chat_template must be a string or a list of "
                             "{name, template} objects")
    return template


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
    chat_template: str | None = None                         # the Jinja chat template (see the module docstring)

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
        backend = ByteLevelBPE.from_tokenizer_json(path)
        special = {t["content"]: t["id"] for t in backend.added_tokens if t.get("special", False)}
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
        vocab = read_vocab(vocab_path)
        merges = read_merges(merges_path)
        folder = vocab_path.parent
        files = {"vocab.json": vocab_path, "merges.txt": merges_path}
        added = []
        if (folder / "added_tokens.json").is_file():
            extra = read_vocab(folder / "added_tokens.json")
            added = [{"id": i, "content": t, "special": False} for t, i in extra.items()]
            files["added_tokens.json"] = folder / "added_tokens.json"
        backend = ByteLevelBPE(vocab, merges, PRE_TOKENIZERS["gpt2"], added, where=str(merges_path))
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
        pre = pre_tokenizer_for(pattern, "from_bpe")
        merges = parse_merges(list(merges), "from_bpe")
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
                    data = read_json(folder / name)
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
                model_config = read_json(folder / "config.json")
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
        if folder is not None and (folder / "chat_template.jinja").is_file():  # as transformers: it wins
            chat_template = (folder / "chat_template.jinja").read_text(encoding="utf-8")
        else:
            chat_template = _config_chat_template(config, folder)
        return cls(backend, special, files=files, config=config, chat_template=chat_template, **resolved)

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
                atomic_write(dest, source.read_bytes())
            else:
                atomic_write(dest, json.dumps(source, ensure_ascii=False, indent=2))
            written.append(dest)
        config = dict(self.config)
        if self.chat_template is not None and _config_chat_template(config) != self.chat_template:
            config["chat_template"] = self.chat_template
        for key in ("eos_token", "bos_token", "pad_token"):  # null too: reloading must not guess a name
            ours = getattr(self, key)
            if key not in config or _token_content(config[key]) != ours:
                config[key] = ours
        dest = directory / "tokenizer_config.json"
        atomic_write(dest, json.dumps(config, ensure_ascii=False, indent=2))
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
    The model and its .vocab are written atomically, each (trained in a temporary folder, then written
    with dpo.files.atomic_write).
    `options` go to SentencePieceTrainer as they are (e.g. user_defined_symbols, seed_sentencepiece_size)."""
    import sentencepiece as spm

    if model_type not in ("bpe", "unigram"):
        raise TokenizerError(f"model_type must be 'bpe' or 'unigram', got {model_type!r}")
    for name, value, ok, expected in (("vocab_size", vocab_size, vocab_size >= 1, ">= 1"),
                                      ("character_coverage", character_coverage, 0 < character_coverage <= 1,
                                       "in (0, 1]"),
                                      ("input_sentence_size", input_sentence_size, input_sentence_size >= 0,
                                       ">= 0 (0: every line)")):
        if not ok:
            raise TokenizerError(f"{name} must be {expected}, got {value}")
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
    args = dict(input=",".join(map(str, files)), vocab_size=vocab_size,
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
        with tempfile.TemporaryDirectory(prefix=f".{prefix.name}.tmp", dir=prefix.parent) as tmp:
            args["model_prefix"] = f"{tmp}/spm"
            spm.SentencePieceTrainer.train(**args)
            for ext in (".model", ".vocab"):
                atomic_write(f"{prefix}{ext}", Path(f"{tmp}/spm{ext}").read_bytes())
    except (RuntimeError, ValueError, OSError) as e:  # SentencePiece: "INTERNAL: file.cc(N) [check] what"
        reason = " ".join(str(e).split()) or type(e).__name__
        check = re.fullmatch(r"[A-Z_]+: \S+\(\d+\) \[(.*?)\]\s*(.*)", reason)
        if check:
            reason = check.group(2) or f"its check {check.group(1)} failed"
        raise TokenizerError(f"SentencePiece training on {', '.join(map(str, files))} failed: {reason}") from None
    return Path(f"{prefix}.model")


@entry_point
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
    for path in (args.out, f"{args.out}.model", f"{args.out}.vocab"):
        check_writable(path, "--out")
    path = train_sentencepiece(args.input, args.out, args.vocab_size, args.model_type,
                               character_coverage=args.character_coverage,
                               input_sentence_size=args.input_sentence_size, verbose=args.verbose)
    tok = Tokenizer.from_sentencepiece(path)
    print(f"wrote {path} (vocab {tok.vocab_size}, eos {tok.eos_id}, bos {tok.bos_id}, pad {tok.pad_id})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
