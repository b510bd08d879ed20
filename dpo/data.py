"""Readers for the paper's datasets in their published formats, the JSON-lines reader, and the data summary.

Every reader returns plain dicts (one per example) and never touches a tokenizer:

    preference       {"prompt", "chosen", "rejected", "source"}
    sft              {"prompt", "completion", "source"}     plain-text LM data: prompt "" and completion = text
    classification   {"text", "label", "source"}            IMDB sentiment: label 1 = positive, 0 = negative

`source` ("file:line" or "archive:member") lets a later error name where an example came from.
Bad input raises `DataError` whose one-line message names the file and line (or archive member) and
what was expected. Records a reader leaves out on purpose are counted in a `collections.Counter` the
caller passes in (`counts`) and shown by `format_summary`; nothing is skipped silently.

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
import gzip
import json
import re
import sys
import tarfile
import zlib
from collections import Counter
from pathlib import Path

import torch

from dpo import quickstart
from dpo.errors import UserError


class DataError(UserError, ValueError):
    """Bad input data; the message names the file and line (or archive member) and what was expected."""


# --------------------------------------------------------------------------------------------------
# JSON lines


def _lines(path):
    """Yield (line number, text) of a UTF-8 text file, gunzipped when the name ends in .gz."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    lineno = 0
    try:
        with (gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb")) as f:
            for lineno, raw in enumerate(f, 1):
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    raise DataError(f"{path}:{lineno}: not valid UTF-8 (byte {raw[e.start]:#04x} at "
                                    f"column {e.start + 1})") from None
                yield lineno, (text.removeprefix("\ufeff") if lineno == 1 else text)
    except (EOFError, OSError, zlib.error) as e:
        raise DataError(f"{path}: truncated or unreadable after line {lineno} ({e})") from None


def read_jsonl(path, counts: Counter | None = None, *, resumable: bool = False, truncate: bool = True):
    """Yield (line number, object) for each non-blank line of a JSON-lines file (.gz allowed).

    resumable: a file that runs append to (samples, labels). A missing file holds no rows, and a last line
    without its newline (a write cut by a kill) is not read. With `truncate` it is also said on stderr and
    cut off the file, so that this process's next append starts on a clean line; truncate=False leaves the
    file as it is (another process may still be writing that line)."""
    path = Path(path)
    complete = None  # how many lines end in a newline (None: read them all)
    if resumable and not path.is_file():
        return
    if resumable and path.suffix != ".gz":  # nothing appends to a .gz file
        raw = path.read_bytes()
        complete, end = raw.count(b"\n"), raw.rfind(b"\n") + 1
        if end < len(raw) and truncate:
            print(f"{path}: dropping an incomplete last line ({len(raw) - end} bytes, cut by an interrupted "
                  f"write); it will be redone", file=sys.stderr)
            with open(path, "r+b") as f:
                f.truncate(end)
    for lineno, line in _lines(path):
        if complete is not None and lineno > complete:
            return
        if not line.strip():
            if counts is not None:
                counts["blank lines (ignored)"] += 1
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"{path}:{lineno}: invalid JSON ({e.msg} at column {e.colno})") from None
        if not isinstance(obj, dict):
            raise DataError(f"{path}:{lineno}: expected a JSON object, got {type(obj).__name__}")
        yield lineno, obj


def get_field(obj: dict, key: str, where: str, kind=str, nonempty: bool = False):
    """obj[key], checked: present, of type `kind`, and (for strings) not blank when `nonempty`."""
    if key not in obj:
        raise DataError(f"{where}: missing key '{key}'")
    value = obj[key]
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise DataError(f"{where}: key '{key}' must be {kind.__name__}, got {type(value).__name__}")
    if nonempty and not value.strip():
        raise DataError(f"{where}: key '{key}' is empty")
    return value


def read_preference_jsonl(path, counts: Counter | None = None) -> list[dict]:
    """Generic preference data: one {"prompt", "chosen", "rejected"} object per line (prompt may be "")."""
    examples = []
    for lineno, obj in read_jsonl(path, counts):
        where = f"{path}:{lineno}"
        examples.append({"prompt": get_field(obj, "prompt", where),
                         "chosen": get_field(obj, "chosen", where, nonempty=True),
                         "rejected": get_field(obj, "rejected", where, nonempty=True), "source": where})
    return examples


def read_sft_jsonl(path, counts: Counter | None = None) -> list[dict]:
    """SFT data: one {"prompt", "completion"} object per line (prompt may be "")."""
    examples = []
    for lineno, obj in read_jsonl(path, counts):
        where = f"{path}:{lineno}"
        examples.append({"prompt": get_field(obj, "prompt", where),
                         "completion": get_field(obj, "completion", where, nonempty=True), "source": where})
    return examples


def read_text(path, counts: Counter | None = None) -> list[dict]:
    """Plain UTF-8 text for language modelling: one SFT example (prompt "") per document, documents being
    separated by blank lines."""
    examples, doc, start = [], [], 0
    for lineno, line in list(_lines(path)) + [(None, "")]:
        if line.strip():
            doc.append(line)
            start = start or lineno
        elif doc:
            examples.append({"prompt": "", "completion": "".join(doc).strip(), "source": f"{path}:{start}"})
            doc, start = [], 0
    if not examples:
        raise DataError(f"{path}: no text found")
    return examples


def preference_to_sft(examples: list[dict]) -> list[dict]:
    """Preferred-FT / SFT on the chosen responses (the paper's HH reference model)."""
    return [{"prompt": ex["prompt"], "completion": ex["chosen"], "source": ex["source"]} for ex in examples]


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
    return TLDR_TEMPLATE.format(subreddit=get_field(info, "subreddit", where), title=get_field(info, "title", where),
                                post=get_field(info, "post", where, nonempty=True))


def read_tldr_sft(path, split: str = "train", counts: Counter | None = None) -> list[dict]:
    """tldr_3_filtered/{train,valid,test}.jsonl ({id, subreddit, title, post, summary}) as SFT examples;
    `path` is that folder or one of its files."""
    path = Path(path)
    if path.is_dir():
        if split not in TLDR_SFT_SPLITS:
            raise DataError(f"TL;DR SFT split must be one of {', '.join(TLDR_SFT_SPLITS)}; got {split!r}")
        path = path / f"{split}.jsonl"
    examples = []
    for lineno, obj in read_jsonl(path, counts):
        where = f"{path}:{lineno}"
        examples.append({"prompt": tldr_prompt(obj, where),
                         "completion": " " + get_field(obj, "summary", where, nonempty=True).strip(),
                         "id": get_field(obj, "id", where), "source": where})
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
        for lineno, obj in read_jsonl(file, counts):
            where = f"{file}:{lineno}"
            info = get_field(obj, "info", where, dict)
            summaries = get_field(obj, "summaries", where, list)
            if len(summaries) != 2 or not all(isinstance(s, dict) for s in summaries):
                raise DataError(f"{where}: key 'summaries' must be a list of two objects")
            texts = [get_field(s, "text", f"{where}: summaries[{i}]", nonempty=True) for i, s in enumerate(summaries)]
            choice = get_field(obj, "choice", where, int)
            if choice not in (0, 1):
                raise DataError(f"{where}: key 'choice' must be 0 or 1, got {choice}")
            if split is not None and get_field(obj, "split", where) != split:
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
        for lineno, obj in read_jsonl(file, counts):
            where = f"{file}:{lineno}"
            prompt, chosen = split_hh_transcript(get_field(obj, "chosen", where))
            if not prompt:
                raise DataError(f"{where}: chosen transcript has no '\\n\\nAssistant:' turn")
            rejected_transcript = get_field(obj, "rejected", where)
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
    "preference_jsonl": ("preference", lambda path, split, counts: read_preference_jsonl(path, counts)),
    "sft_jsonl": ("sft", lambda path, split, counts: read_sft_jsonl(path, counts)),
    "text": ("sft", lambda path, split, counts: read_text(path, counts)),
    "imdb": ("sft", lambda path, split, counts: imdb_sft_examples(read_imdb(path, split))),
    "imdb_sentiment": ("classification",
                       lambda path, split, counts: imdb_classification_examples(read_imdb(path, split))),
    "tldr": ("sft", read_tldr_sft),
    "tldr_comparisons": ("preference", read_tldr_comparisons),
    "tldr_comparisons_sft": ("sft", lambda *args: preference_to_sft(read_tldr_comparisons(*args))),
    "hh": ("preference", read_hh),
    "hh_sft": ("sft", lambda *args: preference_to_sft(read_hh(*args))),
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


# --------------------------------------------------------------------------------------------------
# Summary printed before training


def seeded_subset(n_total: int, n: int, seed: int) -> list[int]:
    """Indices of a random subset of n of range(n_total), drawn by torch.randperm seeded by `seed`, in
    increasing (file) order; all of range(n_total) when n <= 0 or n >= n_total."""
    if n <= 0 or n >= n_total:
        return list(range(n_total))
    return sorted(torch.randperm(n_total, generator=torch.Generator().manual_seed(seed))[:n].tolist())


def percentiles(values: list[int]) -> dict:
    """p50 / p90 / p99 (nearest rank) and max of a list of lengths."""
    if not values:
        return {}
    ordered = sorted(values)
    rank = lambda p: ordered[max(0, -(-p * len(ordered) // 100) - 1)]
    return {"p50": rank(50), "p90": rank(90), "p99": rank(99), "max": ordered[-1]}


def format_summary(name: str, read_counts: Counter, token_stats: dict | None = None) -> str:
    """A few lines a researcher reads before spending GPU hours: what was read, kept, dropped and why,
    and token-length percentiles (`token_stats` from batching.tokenize_dataset)."""
    lines = [f"data {name}: read {read_counts.get('read', 0)} records"]
    lines += [f"  left out by the reader: {n} {reason}"
              for reason, n in sorted(read_counts.items()) if reason != "read"]
    if token_stats:
        s = token_stats
        lines.append(f"  tokenized {s['examples']}: kept {s['kept']}, dropped {s['examples'] - s['kept']}"
                     f" (truncation={s['truncation']}, max_length={s['max_length']}, "
                     f"max_prompt_length={s['max_prompt_length']}, {s['prompt_truncation_side']})")
        lines += [f"  dropped: {n} {reason}" for reason, n in sorted(s["dropped"].items())]
        lines.append(f"  prompts cut: {s['prompts_truncated']}; responses cut: {s['responses_truncated']} "
                     f"(of which lost their EOS: {s['eos_removed']})")
        for field, stats in s["lengths"].items():
            if stats:
                lines.append(f"  {field} tokens before truncation: " + " ".join(f"{k} {v}" for k, v in stats.items()))
        if s.get("boundary_checked"):
            lines.append(f"  prompt|response tokenized apart != together in {s['boundary_differs']} "
                         f"of {s['boundary_checked']} checked (we use the ids tokenized apart)")
    return "\n".join(lines)
