"""Every data format a run can read: the table FORMATS (format name -> kind, reader) and load_examples, the
readers of the paper's datasets in their published formats (IMDB, Reddit TL;DR, Anthropic HH) and the
built-in quickstart task. Readers return plain dicts (dpo/data.py lists the kinds) and never touch a tokenizer,
except imdb_prefix_prompts, which cuts review prefixes by tokens.

Published formats and the choices made here:
- IMDB: aclImdb/{train,test}/{pos,neg}/<id>_<rating>.txt (+ train/unsup), read from the folder or
  straight from aclImdb_v1.tar.gz. `<br />` tags: neither the paper nor its authors' code say what their
  (unreleased) IMDB pipeline did with them. We replace each `<br />` (also `<br>`, `<br/>`) by "\\n", so
  the published "<br /><br />" paragraph break becomes "\\n\\n", and strip the review. `br="space"` (one
  space) and `br="keep"` (raw text) are available.
- TL;DR: prompt "SUBREDDIT: r/{subreddit}\\nTITLE: {title}\\nPOST: {post}\\nTL;DR:", and the response is
  " " + summary.strip(): the comparisons' summaries start with a space and tldr_3_filtered's do not, and
  one leading space makes the response's first token the usual " word" token in both.
- TL;DR comparisons: chosen = summaries[choice]. CNN/DM items (batch0_cnndm, cnndm0, cnndm2: news
  articles, no post) are left out of this Reddit task and counted.
- Anthropic HH: prompt = the chosen transcript up to and including its last "\\n\\nAssistant:" (the
  reference code's rule); responses are the rest (they start with a space). A pair whose rejected
  transcript does not start with that prompt, or with an empty response, is dropped and counted (the
  published files are not ours to fix); the generic JSONL readers raise on an empty response instead.
"""
import re
import tarfile
import zlib
from collections import Counter
from pathlib import Path

from dpo import data, quickstart
from dpo.data import DataError


# --------------------------------------------------------------------------------------------------
# IMDB (aclImdb)

_IMDB_NAME = re.compile(r"(\d+)_(\d+)\.txt")
_BR = re.compile(r"<br\s*/?>", re.IGNORECASE)
_BR_REPLACEMENT = {"newline": "\n", "space": " "}


def clean_imdb_review(text: str, br: str = "newline") -> str:
    """Replace the published `<br />` tags (see the module docstring) and strip the review."""
    if br == "keep":
        return text
    if br not in _BR_REPLACEMENT:
        raise DataError(f"br must be one of newline, space, keep; got {br!r}")
    return _BR.sub(_BR_REPLACEMENT[br], text).strip()


def _imdb_review(raw: bytes, where: str, polarity: str, name: str, br: str) -> dict:
    match = _IMDB_NAME.fullmatch(name)
    if match is None:
        raise DataError(f"{where}: file name is not <id>_<rating>.txt")
    try:
        text = clean_imdb_review(raw.decode("utf-8"), br)
    except UnicodeDecodeError as e:
        raise DataError(f"{where}: not valid UTF-8 (byte {raw[e.start]:#04x} at offset {e.start})") from None
    if not text.strip():
        raise DataError(f"{where}: empty review")
    return {"text": text, "label": {"pos": 1, "neg": 0}.get(polarity), "id": int(match[1]),
            "rating": int(match[2]), "polarity": polarity, "source": where}


def _imdb_location(path) -> Path:
    """The aclImdb folder or the .tar.gz for `path`: either of them, or a folder holding one of them."""
    path = Path(path)
    for candidate in (path, path / "aclImdb", path / "aclImdb_v1.tar.gz"):
        if candidate.is_file() or (candidate / "train").is_dir() or (candidate / "test").is_dir():
            return candidate
    raise DataError(f"{path}: neither an aclImdb folder (train/, test/) nor aclImdb_v1.tar.gz; "
                    f"get it with: python -m dpo.interop.datasets download imdb --out DIR")


def read_imdb(path, split: str = "train", br: str = "newline") -> list[dict]:
    """IMDB reviews of one split ("train" and "test": labelled pos/neg; "unsup": 50k unlabelled train
    reviews) from the aclImdb folder or aclImdb_v1.tar.gz. Returns {"text", "label", "id", "rating",
    "polarity", "source"} dicts sorted by (polarity, id), the same order from folder and archive.
    ("train" reads only pos/neg; ask for "unsup" separately.)"""
    if split not in ("train", "test", "unsup"):
        raise DataError(f"IMDB split must be train, test or unsup; got {split!r}")
    folders = ("unsup",) if split == "unsup" else ("neg", "pos")
    top = "train" if split == "unsup" else split
    location = _imdb_location(path)
    reviews = []
    if location.is_dir():
        for polarity in folders:
            folder = location / top / polarity
            if not folder.is_dir():
                raise DataError(f"{folder}: missing folder (expected aclImdb/{top}/{polarity}/<id>_<rating>.txt)")
            for file in folder.iterdir():
                reviews.append(_imdb_review(file.read_bytes(), str(file), polarity, file.name, br))
    else:
        wanted = {f"{top}/{p}" for p in folders}
        member_name = "(archive header)"
        try:
            with tarfile.open(location, "r|gz") as tar:  # streamed: one pass, no random access needed
                for member in tar:
                    member_name = member.name
                    folder, _, name = member.name.removeprefix("./").removeprefix("aclImdb/").rpartition("/")
                    if member.isfile() and folder in wanted:
                        raw = tar.extractfile(member).read()
                        if len(raw) != member.size:
                            raise tarfile.ReadError("member shorter than its header says")
                        where = f"{location}:{member.name}"
                        reviews.append(_imdb_review(raw, where, folder.rpartition("/")[2], name, br))
        except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
            raise DataError(f"{location}:{member_name}: truncated or corrupt archive ({e})") from None
    if not reviews:
        raise DataError(f"{location}: no reviews found for split {split!r}")
    reviews.sort(key=lambda r: (r["polarity"], r["id"]))
    return reviews


def imdb_sft_examples(reviews: list[dict]) -> list[dict]:
    """Whole reviews as SFT completions with an empty prompt (the paper's IMDB SFT model)."""
    return [{"prompt": "", "completion": r["text"], "source": r["source"]} for r in reviews]


def imdb_classification_examples(reviews: list[dict]) -> list[dict]:
    return [{"text": r["text"], "label": r["label"], "source": r["source"]} for r in reviews]


def imdb_prefix_prompts(reviews: list[dict], tokenizer, seed: int, min_tokens: int = 2,
                        max_tokens: int = 8, counts: Counter | None = None) -> list[dict]:
    """Generation prompts: the first L tokens of each review, L uniform in [min_tokens, max_tokens] drawn
    from a generator seeded by `seed`. Returns {"prompt" (decoded text), "prompt_input_ids", "label",
    "source"}. Only the review's head is tokenized (cut at a whitespace, which BPE and SentencePiece never
    merge across, so its ids are a prefix of the whole review's ids)."""
    import torch

    lengths = torch.randint(min_tokens, max_tokens + 1, (len(reviews),),
                            generator=torch.Generator().manual_seed(seed)).tolist()
    prompts = []
    for review, n in zip(reviews, lengths):
        text = review["text"]
        cut = re.compile(r"\s").search(text, 32 * max_tokens)
        ids = tokenizer.encode(text[:cut.start()] if cut else text)
        if len(ids) <= n and cut:
            ids = tokenizer.encode(text)
        if len(ids) < n:
            if counts is not None:
                counts[f"review shorter than its {n}-token prefix"] += 1
            continue
        prompts.append({"prompt": tokenizer.decode(ids[:n]), "prompt_input_ids": ids[:n],
                        "label": review["label"], "source": review["source"]})
    return prompts


# --------------------------------------------------------------------------------------------------
# Reddit TL;DR (Stiennon et al. 2020)

TLDR_TEMPLATE = "SUBREDDIT: r/{subreddit}\nTITLE: {title}\nPOST: {post}\nTL;DR:"
TLDR_SFT_SPLITS = ("train", "valid", "test")
TLDR_COMPARISON_SPLITS = ("train", "valid1", "valid2")
# The files of summarize-from-feedback/dataset/comparisons/ as published (no batch1, 2 or 21).
TLDR_COMPARISON_FILES = tuple(f"batch{i}.json" for i in range(3, 21)) + (
    "batch22.json", "batch0_cnndm.json", "cnndm0.json", "cnndm2.json", "edit_b2_eval_test.json")


def tldr_prompt(info: dict, where: str) -> str:
    return TLDR_TEMPLATE.format(subreddit=data.get_field(info, "subreddit", where), title=data.get_field(info, "title", where),
                                post=data.get_field(info, "post", where, nonempty=True))


def read_tldr_sft(path, split: str = "train", counts: Counter | None = None) -> list[dict]:
    """tldr_3_filtered/{train,valid,test}.jsonl ({id, subreddit, title, post, summary}) as SFT examples;
    `path` is that folder or one of its files."""
    path = Path(path)
    if path.is_dir():
        if split not in TLDR_SFT_SPLITS:
            raise DataError(f"TL;DR SFT split must be one of {', '.join(TLDR_SFT_SPLITS)}; got {split!r}")
        path = path / f"{split}.jsonl"
    examples = []
    for lineno, obj in data.read_jsonl(path, counts):
        where = f"{path}:{lineno}"
        examples.append({"prompt": tldr_prompt(obj, where),
                         "completion": " " + data.get_field(obj, "summary", where, nonempty=True).strip(),
                         "id": data.get_field(obj, "id", where), "source": where})
    return examples


def _comparison_files(path) -> list[Path]:
    path = Path(path)
    if path.is_file():
        return [path]
    if not path.is_dir():
        raise DataError(f"{path}: no such file or folder (get the comparisons with: "
                        f"python -m dpo.interop.datasets download tldr-comparisons --out DIR)")
    missing = [name for name in TLDR_COMPARISON_FILES if not (path / name).is_file()]
    if missing:
        raise DataError(f"{path}: missing {', '.join(missing)} of the published comparison files "
                        f"(pass one file to read only that one)")
    return [path / name for name in TLDR_COMPARISON_FILES]


def read_tldr_comparisons(path, split: str | None = "train", counts: Counter | None = None) -> list[dict]:
    """Human comparisons (comparisons/batchN.json, JSON lines) as preference pairs, chosen =
    summaries[choice]; `split` selects train / valid1 / valid2 (None = all). `path` is the comparisons
    folder (all published files must be there) or one file."""
    if split is not None and split not in TLDR_COMPARISON_SPLITS:
        raise DataError(f"TL;DR comparison split must be one of {', '.join(TLDR_COMPARISON_SPLITS)}; got {split!r}")
    counts = Counter() if counts is None else counts
    examples = []
    for file in _comparison_files(path):
        for lineno, obj in data.read_jsonl(file, counts):
            where = f"{file}:{lineno}"
            info = data.get_field(obj, "info", where, dict)
            summaries = data.get_field(obj, "summaries", where, list)
            if len(summaries) != 2 or not all(isinstance(s, dict) for s in summaries):
                raise DataError(f"{where}: key 'summaries' must be a list of two objects")
            texts = [data.get_field(s, "text", f"{where}: summaries[{i}]", nonempty=True) for i, s in enumerate(summaries)]
            choice = data.get_field(obj, "choice", where, int)
            if choice not in (0, 1):
                raise DataError(f"{where}: key 'choice' must be 0 or 1, got {choice}")
            if split is not None and data.get_field(obj, "split", where) != split:
                counts["comparisons of other splits (not selected)"] += 1
                continue
            if "post" not in info:
                counts["CNN/DM news comparisons (no Reddit post)"] += 1
                continue
            examples.append({"prompt": tldr_prompt(info, f"{where}: info"),
                             "chosen": " " + texts[choice].strip(), "rejected": " " + texts[1 - choice].strip(),
                             "id": info.get("id"), "source": where})
    return examples


# --------------------------------------------------------------------------------------------------
# Anthropic HH

HH_SUBSETS = ("helpful-base", "harmless-base", "helpful-online", "helpful-rejection-sampled")
HH_ASSISTANT = "\n\nAssistant:"


def split_hh_transcript(transcript: str) -> tuple[str, str]:
    """(prompt up to and including the last "\\n\\nAssistant:", the response after it); prompt "" if none."""
    cut = transcript.rfind(HH_ASSISTANT)
    if cut < 0:
        return "", transcript
    cut += len(HH_ASSISTANT)
    return transcript[:cut], transcript[cut:]


def read_hh(path, split: str = "train", counts: Counter | None = None) -> list[dict]:
    """Anthropic HH pairs: `path` is one {train,test}.jsonl.gz file or the hh-rlhf folder, in which case
    the four subsets (HH_SUBSETS, what the `Anthropic/hh-rlhf` hub set combines) are read in that order."""
    path = Path(path)
    if path.is_dir():
        if split not in ("train", "test"):
            raise DataError(f"HH split must be train or test; got {split!r}")
        files = [path / subset / f"{split}.jsonl.gz" for subset in HH_SUBSETS]
    else:
        files = [path]
    counts = Counter() if counts is None else counts
    examples = []
    for file in files:
        for lineno, obj in data.read_jsonl(file, counts):
            where = f"{file}:{lineno}"
            prompt, chosen = split_hh_transcript(data.get_field(obj, "chosen", where))
            if not prompt:
                raise DataError(f"{where}: chosen transcript has no '\\n\\nAssistant:' turn")
            rejected_transcript = data.get_field(obj, "rejected", where)
            if not rejected_transcript.startswith(prompt):
                counts["HH pairs whose rejected transcript has another prompt"] += 1
                continue
            rejected = rejected_transcript[len(prompt):]
            if not chosen.strip() or not rejected.strip():
                counts["HH pairs with an empty response"] += 1
                continue
            examples.append({"prompt": prompt, "chosen": chosen, "rejected": rejected, "source": where})
    return examples


# --------------------------------------------------------------------------------------------------
# One entry point for the training loop: format name -> (kind, reader)

def _quickstart_size(split: str) -> tuple[int, int]:
    """(number of examples, seed) of a quickstart split."""
    return (4000, 0) if split == "train" else (400, 1)


FORMATS = {  # name -> (kind, reader(path, split, counts))
    "preference_jsonl": ("preference", lambda path, split, counts: data.read_preference_jsonl(path, counts)),
    "sft_jsonl": ("sft", lambda path, split, counts: data.read_sft_jsonl(path, counts)),
    "text": ("sft", lambda path, split, counts: data.read_text(path, counts)),
    "imdb": ("sft", lambda path, split, counts: imdb_sft_examples(read_imdb(path, split))),
    "imdb_sentiment": ("classification",
                       lambda path, split, counts: imdb_classification_examples(read_imdb(path, split))),
    "classification_jsonl": ("classification", data.read_classification_jsonl),
    "tldr": ("sft", read_tldr_sft),
    "tldr_comparisons": ("preference", read_tldr_comparisons),
    "tldr_comparisons_sft": ("sft", lambda *args: data.preference_to_sft(read_tldr_comparisons(*args))),
    "hh": ("preference", read_hh),
    "hh_sft": ("sft", lambda *args: data.preference_to_sft(read_hh(*args))),
    # The quickstart's built-in task with a known ground truth (dpo/quickstart.py): generated, so `path` is
    # unused; split "train" and any other split draw from different seeds.
    "quickstart_sft": ("sft", lambda path, split, counts: quickstart.sft_examples(*_quickstart_size(split))),
    "quickstart_preference": ("preference",
                              lambda path, split, counts: quickstart.preference_examples(*_quickstart_size(split))),
}
# HH prompts are dialogues whose latest turns matter: cut them from the start (the reference code's choice).
DEFAULT_PROMPT_TRUNCATION_SIDE = {"hh": "keep_end", "hh_sft": "keep_end"}


def load_examples(fmt: str, path, split: str = "train") -> tuple[str, list[dict], Counter]:
    """Read a dataset in format `fmt` (a key of FORMATS). Returns (kind, examples, read counts) with
    kind "preference", "sft" or "classification"; the counts hold "read" and any records left out."""
    if fmt not in FORMATS:
        raise DataError(f"unknown data format {fmt!r}; valid: {', '.join(FORMATS)}")
    kind, reader = FORMATS[fmt]
    counts = Counter()
    examples = reader(path, split, counts)
    counts["read"] = len(examples) + sum(v for k, v in counts.items() if k != "blank lines (ignored)")
    return kind, examples, counts
