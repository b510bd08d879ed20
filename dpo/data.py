"""The data layer's plain parts: the JSON-lines reader, the generic readers (preference / SFT JSON lines, plain
text) and the summary a run prints. The paper's published formats and the table of every format are in
dpo/formats.py.

Every reader returns plain dicts (one per example) and never touches a tokenizer:

    preference       {"prompt", "chosen", "rejected", "source"}
    sft              {"prompt", "completion", "source"}     plain-text LM data: prompt "" and completion = text
                     or {"messages", "source"}              a conversation: the loss covers its assistant turns
    classification   {"text", "label", "source"}            sentiment: label 1 = positive, 0 = negative

Values are strings, or, in conversational data (TRL's format), lists of {"role", "content"} messages that
batching renders with the model's chat template (dpo/chat_template.py).

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


def read_records(path, counts: Counter | None = None):
    """Yield (line or row number, object) of a JSON-lines file, or of a parquet file (the hub's dataset
    files; read with pyarrow, imported only then)."""
    if Path(path).suffix != ".parquet":
        yield from read_jsonl(path, counts)
        return
    try:
        import pyarrow.parquet
    except ImportError:
        raise DataError(f"{path}: reading parquet files needs pyarrow (pip install pyarrow)") from None
    yield from enumerate(pyarrow.parquet.read_table(path).to_pylist(), 1)


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


ROLES = ("system", "user", "assistant")


def check_messages(value) -> str | None:
    """Why `value` is not a conversation (a non-empty list of {"role": system|user|assistant, "content": str}
    messages), or None when it is one."""
    if not isinstance(value, list) or not value:
        return "a conversation that is not a non-empty list of messages"
    for message in value:
        if not isinstance(message, dict) or not isinstance(message.get("content"), str) or "role" not in message:
            return "a message without a role or a string content"
        if message["role"] not in ROLES:
            return f"a message with an unknown role (expected one of {', '.join(ROLES)})"
    return None


def drop(counts: Counter, reason: str, where: str) -> None:
    """Count a record left out, naming the first place it happened."""
    key = next((k for k in counts if k.startswith(f"rows dropped: {reason} (first at ")),
               f"rows dropped: {reason} (first at {where})")
    counts[key] += 1


def conversation_pair(obj: dict) -> tuple[dict | None, str | None]:
    """TRL's conversational preference row -> ({"prompt", "chosen", "rejected"} message lists, None), or
    (None, why not). Without "prompt" (implicit prompt) the messages chosen and rejected share at the start
    are the prompt, and what follows are the two responses."""
    chosen, rejected, prompt = obj.get("chosen"), obj.get("rejected"), obj.get("prompt")
    if isinstance(prompt, str):  # HuggingFaceH4/ultrafeedback_binarized: the conversations hold the prompt too
        prompt = None
    for value in (chosen, rejected) + (() if prompt is None else (prompt,)):
        if (reason := check_messages(value)) is not None:
            return None, reason
    if prompt is None:
        shared = next((i for i, (c, r) in enumerate(zip(chosen, rejected)) if c != r), min(len(chosen), len(rejected)))
        if shared == 0:
            return None, "chosen and rejected share no prompt"
        prompt, chosen, rejected = chosen[:shared], chosen[shared:], rejected[shared:]
        if not chosen or not rejected:
            return None, "chosen and rejected are the same conversation"
    return {"prompt": prompt, "chosen": chosen, "rejected": rejected}, None


def read_preference_jsonl(path, counts: Counter | None = None) -> list[dict]:
    """Preference data, one object per line (JSON lines, or a parquet file's rows): {"prompt", "chosen",
    "rejected"} strings (prompt may be ""), or TRL's conversational rows whose values are lists of {"role",
    "content"} messages, with or without "prompt" (implicit prompt). Conversational rows that are malformed
    are dropped, counted and named."""
    examples, counts = [], Counter() if counts is None else counts
    for lineno, obj in read_records(path, counts):
        where = f"{path}:{lineno}"
        if isinstance(obj.get("chosen"), list) or isinstance(obj.get("prompt"), list):
            example, reason = conversation_pair(obj)
            if reason is not None:
                drop(counts, reason, where)
                continue
            examples.append({**example, "source": where})
            continue
        examples.append({"prompt": get_field(obj, "prompt", where),
                         "chosen": get_field(obj, "chosen", where, nonempty=True),
                         "rejected": get_field(obj, "rejected", where, nonempty=True), "source": where})
    return examples


def read_sft_jsonl(path, counts: Counter | None = None) -> list[dict]:
    """SFT data, one object per line: {"prompt", "completion"} strings (prompt may be ""), the same with
    message lists, or TRL's {"messages": [...]} conversations (the loss then covers every assistant turn)."""
    examples, counts = [], Counter() if counts is None else counts
    for lineno, obj in read_records(path, counts):
        where = f"{path}:{lineno}"
        if "messages" in obj or isinstance(obj.get("prompt"), list):
            parts = {"messages": obj.get("messages")} if "messages" in obj else \
                {"prompt": obj.get("prompt"), "completion": obj.get("completion")}
            reason = next((r for r in map(check_messages, parts.values()) if r is not None), None)
            if reason is None and not any(m["role"] == "assistant" for m in list(parts.values())[-1]):
                reason = "a conversation without an assistant turn to learn"
            if reason is not None:
                drop(counts, reason, where)
                continue
            examples.append({**parts, "source": where})
            continue
        examples.append({"prompt": get_field(obj, "prompt", where),
                         "completion": get_field(obj, "completion", where, nonempty=True), "source": where})
    return examples


def read_classification_jsonl(path, split: str = "train", counts: Counter | None = None) -> list[dict]:
    """Labelled text, one object per line: {"text": str, "label": 0 | 1} (1 = positive). `path` is a file, or
    a folder holding {split}.jsonl (e.g. Pang & Lee's sentence polarity as train.jsonl / test.jsonl)."""
    path = Path(path)
    if path.is_dir():
        path = path / f"{split}.jsonl"
    if not path.is_file():
        raise DataError(f"{path}: no such file (expected a JSON-lines file, or a folder with {split}.jsonl)")
    examples, counts = [], Counter() if counts is None else counts
    for lineno, obj in read_records(path, counts):
        where = f"{path}:{lineno}"
        label = get_field(obj, "label", where, kind=int)
        if label not in (0, 1):
            raise DataError(f"{where}: key 'label' must be 0 or 1, got {label}")
        examples.append({"text": get_field(obj, "text", where, nonempty=True), "label": label, "source": where})
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
