"""dpo/tokenizer.py against independent implementations: Hugging Face `tokenizers` (Rust, Oniguruma
regexes), `tiktoken` (Rust regex) and `sentencepiece` itself, on real text and a Unicode torture string.
The byte-level BPE's own pieces (pattern translation, merges) are tested in tests/interop/test_bpe.py."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers, trainers
from tokenizers import Tokenizer as HFTokenizer

from dpo.interop.bpe import LLAMA3_PATTERN, QWEN2_PATTERN, bytes_to_unicode
from dpo.tokenizer import Tokenizer, TokenizerError, train_sentencepiece
from dpo.tokenizer import main as tokenizer_main
from helpers import OUTPUT_CASES, bad_output_path, refused

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"  # as conftest's shared_data fixture (module-scoped fixtures need it)

TORTURE = (
    "Café naïveté résumé — cafe\u0301 nai\u0308ve (combining) Z\u0335\u0321a\u0362l\u0338g\u0334o\u0336 "
    "中文字符，日本語のひらがなとカタカナ、한국어 텍스트。 "
    "Emoji: 👍🏽 👨‍👩‍👧‍👦 🏳️‍🌈 🇫🇷🇯🇵 😀😃 ❤️ \u200d lone ZWJ, keycap 1️⃣ "
    "digits 1234567890 3.14159 1,000,000 ٣٤٥ ²³ Ⅻ ½ 0x1F "
    "spaces:  two   three    four\ttab\t\ttabs \n newline\n\n\nthree\r\nCRLF \r lone CR  \n  \n "
    "contractions it's we'll they're I'd can't you've I'm 'S 'LL ''s 'ſ O'Neil rock'n'roll "
    "mixed Ελληνικά русский עברית العربية हिन्दी ภาษาไทย ქართული "
    "symbols ©®™ $€£¥ ∑∫√∞ ≠≤ ← → ♠♣ ♪ «quotes» “curly” ‘single’ … "
    "odd spaces:\u00a0nbsp\u3000ideographic\u2028ls\u2029ps\u0085nel\u1680ogham\u202fnnbsp\u205fmmsp "
    "controls \x1c\x1d\x1e\x1f \x0b\x0c \x00 end "
    "astral letters 𝒜𝒷𝒸 𝟘𝟙 𐌰𐌱 newer Unicode \U00031350\U00031351 \U000105c0x \U00010d40 "
    "<|endoftext|> </s> <s> <|im_end|> trailing spaces   "
)
TEXTS_EXTRA = ["", " ", "  ", "\n", "a", " a", "a ", "\t\n \r\n", "x" * 3000, " " * 500, "1" * 50, TORTURE, TORTURE * 3]


def imdb_texts(shared_data: Path, limit: int | None = None) -> list[str]:
    files = sorted((shared_data / "aclImdb-mini").glob("*/*/*.txt"))
    assert len(files) > 1000, "expected the IMDB mini set in ../shared/data/aclImdb-mini"
    return [f.read_text(encoding="utf-8") for f in files[:limit]]


def hf_gpt2(gpt2_dir: Path, add_prefix_space: bool = False) -> HFTokenizer:
    ht = HFTokenizer(models.BPE.from_file(str(gpt2_dir / "vocab.json"), str(gpt2_dir / "merges.txt")))
    ht.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=add_prefix_space)
    ht.decoder = decoders.ByteLevel()
    return ht


def assert_same_ids(ours: Tokenizer, ref: HFTokenizer, texts, allow_special=False):
    ref_ids = [e.ids for e in ref.encode_batch(texts, add_special_tokens=False)]
    for k, (text, expected) in enumerate(zip(texts, ref_ids)):
        got = ours.encode(text, allow_special=allow_special)
        assert got == expected, f"text #{k} differs at token {next(i for i, (a, b) in enumerate(zip(got + [-1], expected + [-1])) if a != b)}: {text[:80]!r}"


@pytest.fixture(scope="module")
def gpt2(request):
    if not (SHARED_DATA / "gpt2").is_dir():
        pytest.skip("../shared/data is not present")
    return Tokenizer.from_pretrained(SHARED_DATA / "gpt2")


# ---------------------------------------------------------------------------------------------------
# GPT-2 (vocab.json + merges.txt) against tokenizers and tiktoken

def test_gpt2_matches_hf_tokenizers_on_every_imdb_review(shared_data, gpt2):
    texts = imdb_texts(shared_data) + TEXTS_EXTRA
    ref = hf_gpt2(shared_data / "gpt2")
    assert_same_ids(gpt2, ref, texts)
    for text in texts:
        assert gpt2.decode(gpt2.encode(text)) == text
    ids = gpt2.encode(TORTURE)
    assert gpt2.decode(ids) == ref.decode(ids, skip_special_tokens=False) == TORTURE


def test_gpt2_matches_tiktoken(shared_data, gpt2):
    tiktoken = pytest.importorskip("tiktoken")
    byte_of = {c: b for b, c in bytes_to_unicode().items()}
    vocab = json.loads((shared_data / "gpt2" / "vocab.json").read_text(encoding="utf-8"))
    ranks = {bytes(byte_of[c] for c in tok): i for tok, i in vocab.items() if tok != "<|endoftext|>"}
    enc = tiktoken.Encoding(name="gpt2_offline", pat_str=r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""",
                            mergeable_ranks=ranks, special_tokens={"<|endoftext|>": 50256})
    for text in imdb_texts(shared_data, 400) + TEXTS_EXTRA:
        assert gpt2.encode(text) == enc.encode_ordinary(text)
    assert gpt2.encode("a<|endoftext|>b", allow_special=True) == enc.encode("a<|endoftext|>b", allowed_special="all")


def test_gpt2_special_tokens(gpt2):
    assert (gpt2.eos_id, gpt2.bos_id, gpt2.pad_id, gpt2.vocab_size) == (50256, 50256, None, 50257)
    assert gpt2.pad_id_or_eos() == 50256
    text = "end<|endoftext|>start"
    plain = gpt2.encode(text)
    assert 50256 not in plain and gpt2.decode(plain) == text  # text, not a control token, by default
    special = gpt2.encode(text, allow_special=True)
    assert special == gpt2.encode("end") + [50256] + gpt2.encode("start")
    assert gpt2.decode(special) == text
    assert gpt2.decode(special, skip_special_tokens=True) == "endstart"
    assert gpt2.token_to_id("Ġthe") == 262 and gpt2.id_to_token(262) == "Ġthe"
    assert gpt2.decode(gpt2.encode("😀")[:1]) == "\ufffd"  # a cut multi-byte character decodes to U+FFFD
    with pytest.raises(TokenizerError, match="50300"):
        gpt2.decode([50300])


# ---------------------------------------------------------------------------------------------------
# tokenizer.json files written by Hugging Face tokenizers

def _save(ht: HFTokenizer, folder: Path, edit=None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "tokenizer.json"
    ht.save(str(path))
    if edit is not None:
        spec = json.loads(path.read_text(encoding="utf-8"))
        edit(spec)
        path.write_text(json.dumps(spec, ensure_ascii=False), encoding="utf-8")
    return path


def test_tokenizer_json_gpt2_like(shared_data, tmp_path):
    ht = hf_gpt2(shared_data / "gpt2")
    ht.add_special_tokens(["<|endoftext|>"])
    # non-special added tokens, always matched (GPT-NeoX/Pythia has runs of spaces); leftmost-longest wins
    ht.add_tokens([AddedToken("  ", normalized=True), AddedToken("    ", normalized=True), "<think>"])
    _save(ht, tmp_path / "gpt2json")
    ours = Tokenizer.from_pretrained(tmp_path / "gpt2json")
    texts = imdb_texts(shared_data, 150) + TEXTS_EXTRA + ["a <think> b", "x<|endoftext|>y", "tabs\t\t     spaces"]
    ref = HFTokenizer.from_file(str(tmp_path / "gpt2json" / "tokenizer.json"))
    assert_same_ids(ours, ref, texts, allow_special=True)
    ref.encode_special_tokens = True  # tokenizers' own "special tokens are text" mode = our default
    assert_same_ids(ours, ref, texts)
    assert ours.eos_id == 50256 and ours.kind == "bpe"
    assert ours.encode("a     b") == [64, ref.token_to_id("    "), 275]  # "a", "    ", " b"
    assert repr(ours) == "Tokenizer(bpe, vocab_size=50260, eos='<|endoftext|>'/50256, bos='<|endoftext|>'/50256, pad=None/None)"
    for text in texts:
        ids = ours.encode(text)
        assert ours.decode(ids) == text == ref.decode(ids, skip_special_tokens=False)


def test_tokenizer_json_nfc_and_prefix_space(shared_data, tmp_path):
    """Pythia/Qwen2 normalise with NFC; RoBERTa-style files add a prefix space to each piece."""
    ht = hf_gpt2(shared_data / "gpt2", add_prefix_space=True)
    ht.normalizer = normalizers.NFC()
    ht.add_special_tokens(["<|endoftext|>"])
    _save(ht, tmp_path / "nfc")
    ours = Tokenizer.from_pretrained(tmp_path / "nfc")
    texts = imdb_texts(shared_data, 100) + TEXTS_EXTRA + ["a<|endoftext|>b"]
    assert_same_ids(ours, HFTokenizer.from_file(str(tmp_path / "nfc" / "tokenizer.json")), texts, allow_special=True)


def _train_hf(texts, pre_tokenizer, specials, vocab_size=1500) -> HFTokenizer:
    ht = HFTokenizer(models.BPE())
    ht.pre_tokenizer = pre_tokenizer
    ht.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    ht.train_from_iterator(texts, trainer)
    return ht


@pytest.mark.parametrize("style", ["llama3", "qwen2", "smollm"])
def test_tokenizer_json_split_styles(shared_data, tmp_path, style):
    """Llama-3 / Qwen2: Split(regex) + ByteLevel(use_regex=False), ignore_merges (Llama-3), NFC (Qwen2);
    SmolLM2: Digits(individual_digits) + ByteLevel. Merges freshly trained by tokenizers."""
    texts = imdb_texts(shared_data, 300)
    specials = ["<|begin_of_text|>", "<|end_of_text|>", "<|eot_id|>", "<|im_start|>", "<|im_end|>"]
    if style == "smollm":
        pre = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                       pre_tokenizers.ByteLevel(add_prefix_space=False)])
    else:
        pattern = LLAMA3_PATTERN if style == "llama3" else QWEN2_PATTERN
        pre = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
                                       pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    ht = _train_hf(texts[100:], pre, specials)

    def edit(spec):
        if style == "llama3":
            spec["model"]["ignore_merges"] = True
        if style == "qwen2":
            spec["normalizer"] = {"type": "NFC"}

    _save(ht, tmp_path / style, edit)
    (tmp_path / style / "tokenizer_config.json").write_text(json.dumps(
        {"bos_token": "<|begin_of_text|>", "eos_token": {"content": "<|eot_id|>", "special": True}, "pad_token": None}))
    ours = Tokenizer.from_pretrained(tmp_path / style)
    ref = HFTokenizer.from_file(str(tmp_path / style / "tokenizer.json"))
    check = texts[:100] + TEXTS_EXTRA + ["<|im_start|>user\nhi 12345<|im_end|>\n"]
    assert_same_ids(ours, ref, check, allow_special=True)
    ref.encode_special_tokens = True
    assert_same_ids(ours, ref, check)
    assert ours.eos_id == ref.token_to_id("<|eot_id|>") and ours.bos_id == ref.token_to_id("<|begin_of_text|>")
    assert ours.pad_id is None
    assert ours.encode("<|im_end|>", allow_special=True) == [ref.token_to_id("<|im_end|>")]
    if style != "qwen2":
        assert all(ours.decode(ours.encode(t)) == t for t in check)


# ---------------------------------------------------------------------------------------------------
# from_bpe (the GGUF reader's entry point) and save_pretrained

def test_from_bpe_and_save_pretrained_round_trip(shared_data, tmp_path):
    vocab = json.loads((shared_data / "gpt2" / "vocab.json").read_text(encoding="utf-8"))
    merges = [tuple(line.split(" ")) for line in
              (shared_data / "gpt2" / "merges.txt").read_text(encoding="utf-8").splitlines()[1:] if line]
    tok = Tokenizer.from_bpe(vocab, merges, "smollm", {"<|endoftext|>": 50256}, eos_token="<|endoftext|>")
    assert tok.eos_id == 50256 and tok.bos_id is None
    ht = HFTokenizer(models.BPE(vocab, merges))
    ht.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                pre_tokenizers.ByteLevel(add_prefix_space=False)])
    texts = imdb_texts(shared_data, 50) + TEXTS_EXTRA
    assert_same_ids(tok, ht, texts)
    # a raw regex string, and save_pretrained -> tokenizer.json that tokenizers itself loads
    raw = Tokenizer.from_bpe(vocab, merges, LLAMA3_PATTERN, {"<|endoftext|>": 50256}, eos_token="<|endoftext|>")
    written = raw.save_pretrained(tmp_path / "saved")
    assert sorted(p.name for p in written) == ["tokenizer.json", "tokenizer_config.json"]
    ref = HFTokenizer.from_file(str(tmp_path / "saved" / "tokenizer.json"))
    assert_same_ids(raw, ref, texts, allow_special=True)
    assert ref.token_to_id("<|endoftext|>") == 50256
    again = Tokenizer.from_pretrained(tmp_path / "saved")
    assert again.eos_id == 50256 and all(again.encode(t) == raw.encode(t) for t in texts)
    with pytest.raises(TokenizerError, match="pattern"):
        Tokenizer.from_bpe(vocab, merges, 42, {})


def test_save_pretrained_copies_sources(shared_data, tmp_path, gpt2):
    out = tmp_path / "ckpt"
    gpt2.save_pretrained(out)
    assert (out / "vocab.json").read_bytes() == (shared_data / "gpt2" / "vocab.json").read_bytes()
    assert (out / "merges.txt").read_bytes() == (shared_data / "gpt2" / "merges.txt").read_bytes()
    assert json.loads((out / "tokenizer_config.json").read_text())["eos_token"] == "<|endoftext|>"
    again = Tokenizer.from_pretrained(out)
    assert again.encode(TORTURE) == gpt2.encode(TORTURE) and again.eos_id == 50256
    again.save_pretrained(out)  # saving onto its own source files is harmless
    assert not list(out.glob(".*tmp*"))


# ---------------------------------------------------------------------------------------------------
# SentencePiece

@pytest.fixture(scope="module")
def sp_model(tmp_path_factory):
    if not (SHARED_DATA / "aclImdb-mini").is_dir():
        pytest.skip("../shared/data is not present")
    folder = tmp_path_factory.mktemp("sp")
    corpus = folder / "corpus.txt"
    corpus.write_text("\n".join(t.strip() for t in imdb_texts(SHARED_DATA, 300)) + "\n", encoding="utf-8")
    return train_sentencepiece([corpus], folder / "out" / "spm", vocab_size=400), corpus


def test_sentencepiece_matches_sentencepiece(shared_data, sp_model, tmp_path):
    import sentencepiece as spm

    model_path, _ = sp_model
    ref = spm.SentencePieceProcessor(model_file=str(model_path))
    tok = Tokenizer.from_pretrained(model_path)
    assert tok.kind == "sentencepiece" and tok.vocab_size == 400
    assert (tok.eos_id, tok.bos_id, tok.pad_id) == (2, 1, 3) and ref.unk_id() == 0
    for text in imdb_texts(shared_data, 200) + TEXTS_EXTRA:
        ids = tok.encode(text)
        assert ids == ref.encode(text)
        assert tok.decode(ids) == text  # byte_fallback, identity normalisation, no dummy prefix
    assert tok.encode("hello") != tok.encode(" hello")  # no dummy prefix: a leading space is kept as "▁"
    assert tok.decode(tok.encode(" hello")) == " hello"
    assert tok.encode("a</s>b", allow_special=True) == tok.encode("a") + [2] + tok.encode("b")
    assert 2 not in tok.encode("a</s>b")
    assert tok.decode([tok.bos_id] + tok.encode("hi") + [tok.eos_id]) == "<s>hi</s>"
    assert tok.decode([tok.bos_id] + tok.encode("hi") + [tok.eos_id], skip_special_tokens=True) == "hi"
    # from a folder, and saved along a checkpoint
    tok.save_pretrained(tmp_path / "ckpt")
    again = Tokenizer.from_pretrained(tmp_path / "ckpt")
    assert again.kind == "sentencepiece" and again.encode(TORTURE) == tok.encode(TORTURE)
    assert (again.eos_id, again.bos_id, again.pad_id) == (2, 1, 3)


def test_sentencepiece_unigram_with_dummy_prefix_round_trips(sp_model, tmp_path):
    """Llama-2 / Mistral style models add a "▁" before the text; decode removes it again."""
    import sentencepiece as spm

    _, corpus = sp_model
    path = train_sentencepiece([corpus], tmp_path / "llama_like", 400, "unigram", add_dummy_prefix=True,
                               input_sentence_size=120)
    tok = Tokenizer.from_pretrained(path)
    ref = spm.SentencePieceProcessor(model_file=str(path))
    for text in ["hello", " hello", "  two  spaces ", TORTURE]:
        assert tok.encode(text) == ref.encode(text)
        assert tok.decode(tok.encode(text)) == text
    assert tok.id_to_token(tok.encode("hello")[0]).startswith("\u2581")  # the dummy prefix


def test_train_cli(sp_model, tmp_path):
    _, corpus = sp_model
    run = subprocess.run([sys.executable, "-m", "dpo.tokenizer", "train", "--input", str(corpus), "--vocab-size",
                          "350", "--out", str(tmp_path / "cli" / "tok")], cwd=REPO, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert str(tmp_path / "cli" / "tok.model") in run.stdout
    assert Tokenizer.from_pretrained(tmp_path / "cli" / "tok.model").vocab_size == 350
    assert sorted(p.name for p in (tmp_path / "cli").iterdir()) == ["tok.model", "tok.vocab"]  # no temporaries
    with pytest.raises(TokenizerError, match="vocab"):
        train_sentencepiece([corpus], tmp_path / "tiny", vocab_size=50)  # < 256 byte pieces
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".tiny")]  # a failed training leaves nothing


@pytest.mark.parametrize("case", [*OUTPUT_CASES, "missing input", "empty input", "bad --vocab-size",
                                  "bad --character-coverage", "vocab too large for the text"])
def test_train_cli_bad_input_is_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys, case):
    """--out is checked before training (--out under a file used to end in a traceback); bad inputs and
    options, and SentencePiece's own refusals, are one line naming the file or option."""
    corpus, out, extra = tmp_path / "corpus.txt", tmp_path / "tok", []
    corpus.write_text("the cat sat on the mat\n" * 20)
    named = [corpus]
    if case in OUTPUT_CASES:
        out = bad_output_path(tmp_path, case, monkeypatch)
        named = [f"error: --out {out}: "]  # refused by the check before any work, not by a failed write
        if case == "a file":  # a file is a fine prefix; its PREFIX.model must not be a folder
            out.with_name("file.model").mkdir()
            named = [f"error: --out {tmp_path / 'file.model'}: "]
    elif case == "missing input":
        corpus = named[0] = tmp_path / "nope.txt"
    elif case == "empty input":
        corpus.write_text("")
        named = [f"{corpus}: input file is empty"]
    elif case == "bad --vocab-size":
        extra, named = ["--vocab-size", 0], ["vocab_size must be >= 1, got 0"]
    elif case == "bad --character-coverage":
        extra, named = ["--character-coverage", 1.5], ["character_coverage must be in (0, 1], got 1.5"]
    else:
        extra, named = ["--vocab-size", 100_000], [corpus, "Vocabulary size too high (100000)"]
    refused(tokenizer_main, ["train", "--input", corpus, "--vocab-size", 270, "--out", out, *extra], capsys,
            tmp_path, *named)


# ---------------------------------------------------------------------------------------------------
# Choosing the backend, and clear errors on bad files

def test_from_pretrained_picks_backend_and_explains_missing_files(shared_data, sp_model, tmp_path):
    model_path, _ = sp_model
    # a Llama-2-style folder: a SentencePiece-shaped tokenizer.json (not byte-level) next to tokenizer.model
    llama2 = tmp_path / "llama2"
    llama2.mkdir()
    ht = HFTokenizer(models.BPE({"a": 0, "b": 1, "ab": 2}, [("a", "b")]))
    ht.pre_tokenizer = pre_tokenizers.Metaspace()
    ht.save(str(llama2 / "tokenizer.json"))
    with pytest.raises(TokenizerError, match="pre-tokenizer type 'Metaspace' is not supported"):
        Tokenizer.from_pretrained(llama2)
    (llama2 / "tokenizer.model").write_bytes(model_path.read_bytes())
    assert Tokenizer.from_pretrained(llama2).kind == "sentencepiece"
    (llama2 / "tokenizer.json").write_text("{oops")  # a broken file is an error, never skipped for another
    with pytest.raises(TokenizerError, match="llama2/tokenizer.json: invalid JSON"):
        Tokenizer.from_pretrained(llama2)
    assert Tokenizer.from_pretrained(shared_data / "gpt2").kind == "bpe"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(TokenizerError, match="tokenizer.json, vocab.json \\+ merges.txt, or tokenizer.model"):
        Tokenizer.from_pretrained(empty)
    with pytest.raises(TokenizerError, match="no such"):
        Tokenizer.from_pretrained(tmp_path / "missing")


def test_malformed_files_name_the_file(shared_data, tmp_path):
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "vocab.json").write_text('{"a": 0,')
    (bad / "merges.txt").write_text("#version: 0.2\na b\n")
    with pytest.raises(TokenizerError, match=r"vocab.json: invalid JSON at line 1"):
        Tokenizer.from_pretrained(bad)
    (bad / "vocab.json").write_text('{"a": 0, "b": 1, "ab": 2}')
    (bad / "merges.txt").write_text("#version: 0.2\na b\nab\n")
    with pytest.raises(TokenizerError, match=r"merges.txt:3: expected a merge"):
        Tokenizer.from_pretrained(bad)
    (bad / "merges.txt").write_text("a c\n")
    with pytest.raises(TokenizerError, match=r"not in the vocab"):
        Tokenizer.from_pretrained(bad)

    wp = tmp_path / "wordpiece"
    ht = HFTokenizer(models.WordPiece({"[UNK]": 0, "a": 1}, unk_token="[UNK]"))
    _save(ht, wp)
    with pytest.raises(TokenizerError, match=r"wordpiece/tokenizer.json: model type 'WordPiece'"):
        Tokenizer.from_pretrained(wp)

    gpt2_like = hf_gpt2(shared_data / "gpt2")
    gpt2_like.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(r"\G\p{L}+"), behavior="isolated"),
                                                       pre_tokenizers.ByteLevel(use_regex=False)])
    _save(gpt2_like, tmp_path / "regex")
    with pytest.raises(TokenizerError, match=r"regex/tokenizer.json: unsupported regex construct \\G"):
        Tokenizer.from_pretrained(tmp_path / "regex")

    _save(gpt2_like, tmp_path / "nomerges", lambda spec: spec["model"].pop("merges"))
    with pytest.raises(TokenizerError, match=r"nomerges/tokenizer.json: model.merges is missing"):
        Tokenizer.from_pretrained(tmp_path / "nomerges")

    (bad / "merges.txt").write_text("a b\n")
    (bad / "tokenizer_config.json").write_text('{"eos_token": "<|nope|>"}')
    with pytest.raises(TokenizerError, match=r"tokenizer_config.json: eos_token '<\|nope\|>' is not in the vocabulary"):
        Tokenizer.from_pretrained(bad)
