"""The data layer's plain parts: the JSON-lines reader, the generic readers (preference / SFT JSON lines, plain
text) and the summary a run prints. The paper's published formats and the table of every format are in
dpo/formats.py.

Every reader returns plain dicts (one per example) and never touches a tokenizer:

    preference       {"prompt", "chosen", "rejected", "source"}
    sft              {"prompt", "completion", "source"}     plain-text LM data: prompt "" and completion = text
    classification   {"text", "label", "source"}            IMDB sentiment: label 1 = positive, 0 = negative

`source` ("file:line" or "archive:member") lets a later error name where an example came from.
Bad input raises `DataError` whose one-line message names the file and line (or archive member) and
what was expected. Records a reader leaves out on purpose are counted in a `collections.Counter` the
caller passes in (`counts`) and shown by `format_summary`; nothing is skipped silently.
"""
import gzip
import json
import sys
import zlib
from collections import Counter
from pathlib import Path

import torch

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
