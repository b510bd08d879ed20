"""dpo/data.py: the JSON-lines reader (resumable files included), the generic readers, checked fields, the
seeded subset and the summary. The published formats: tests/test_formats.py; the download / summary CLI:
tests/interop/test_datasets.py."""
import gzip
import json
from collections import Counter

import numpy as np
import pytest
import torch

from dpo import data, formats
from dpo.data import DataError


def write_jsonl(path, rows, raw_lines=()):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "".join(raw_lines))
    return path


# ---------------------------------------------------------------------------------------------- JSONL


def test_preference_jsonl_fields_counts_and_sources(tmp_path):
    path = tmp_path / "pairs.jsonl"
    path.write_text(json.dumps({"prompt": "Q: 2+2?", "chosen": " 4", "rejected": " 5", "extra": 1}) + "\n\n"
                    + json.dumps({"prompt": "", "chosen": "yes", "rejected": "no"}) + "\n")
    counts = Counter()
    examples = data.read_preference_jsonl(path, counts)
    assert examples == [
        {"prompt": "Q: 2+2?", "chosen": " 4", "rejected": " 5", "source": f"{path}:1"},
        {"prompt": "", "chosen": "yes", "rejected": "no", "source": f"{path}:3"}]
    assert counts == {"blank lines (ignored)": 1}
    kind, same, read_counts = formats.load_examples("preference_jsonl", path)
    assert kind == "preference" and same == examples and read_counts["read"] == 2


def test_classification_jsonl_file_or_folder_and_bad_rows(tmp_path):
    folder = tmp_path / "polarity"
    folder.mkdir()
    (folder / "test.jsonl").write_text('{"text": "a gem .", "label": 1}\n\n{"text": "a mess .", "label": 0}\n')
    kind, rows, counts = formats.load_examples("classification_jsonl", folder, "test")
    assert kind == "classification" and [(r["text"], r["label"]) for r in rows] == [("a gem .", 1), ("a mess .", 0)]
    assert rows[1]["source"] == f"{folder / 'test.jsonl'}:3" and counts["read"] == 2
    assert formats.load_examples("classification_jsonl", folder / "test.jsonl", "train")[1] == rows  # a file: as is
    with pytest.raises(DataError, match=r"polarity/train.jsonl: no such file \(expected a JSON-lines file, or a folder with train.jsonl\)"):
        formats.load_examples("classification_jsonl", folder, "train")
    for line, error in (('{"text": "x", "label": 2}', r"bad.jsonl:1: key 'label' must be 0 or 1, got 2"),
                        ('{"text": "x", "label": true}', r"bad.jsonl:1: key 'label' must be int, got bool"),
                        ('{"text": " ", "label": 1}', r"bad.jsonl:1: key 'text' is empty"),
                        ('{"label": 1}', r"bad.jsonl:1: missing key 'text'")):
        (tmp_path / "bad.jsonl").write_text(line + "\n")
        with pytest.raises(DataError, match=error):
            formats.load_examples("classification_jsonl", tmp_path / "bad.jsonl")


def test_sft_jsonl_and_plain_text(tmp_path):
    sft = write_jsonl(tmp_path / "sft.jsonl", [{"prompt": "a", "completion": " b"}] * 3)
    assert [e["completion"] for e in data.read_sft_jsonl(sft)] == [" b"] * 3
    text = tmp_path / "corpus.txt"
    text.write_text("first doc\nstill first\n\n\nsecond doc\n\nthird\n")
    docs = data.read_text(text)
    assert [(d["prompt"], d["completion"], d["source"]) for d in docs] == [
        ("", "first doc\nstill first", f"{text}:1"), ("", "second doc", f"{text}:5"), ("", "third", f"{text}:7")]


GOOD = '{"prompt": "p", "chosen": "c", "rejected": "r"}\n'


@pytest.mark.parametrize("bad_line, expected", [
    (b'{"prompt": "p", "chosen": "c", "rejected": "r"\n', r"invalid JSON \(Expecting ',' delimiter"),
    (b'{"prompt": "p", "chosen": "c"}\n', "missing key 'rejected'"),
    (b'{"prompt": "p", "chosen": 3, "rejected": "r"}\n', "key 'chosen' must be str, got int"),
    (b'{"prompt": "p", "chosen": "c", "rejected": "  "}\n', "key 'rejected' is empty"),
    (b'{"prompt": "p\xff", "chosen": "c", "rejected": "r"}\n', r"not valid UTF-8 \(byte 0xff at column 14\)"),
    (b'["p", "c", "r"]\n', "expected a JSON object, got list"),
])
def test_bad_jsonl_line_names_file_and_line(tmp_path, bad_line, expected):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(GOOD.encode() * 2 + bad_line + GOOD.encode())
    with pytest.raises(DataError, match=rf"^{path}:3: {expected}"):
        data.read_preference_jsonl(path)


def test_truncated_gzip_names_file(tmp_path):
    blob = gzip.compress(("".join(GOOD for _ in range(2000))).encode())
    path = tmp_path / "pairs.jsonl.gz"
    path.write_bytes(blob[: len(blob) // 2])
    with pytest.raises(DataError, match=rf"^{path}: truncated or unreadable after line \d+"):
        data.read_preference_jsonl(path)


def test_resumable_jsonl_drops_a_cut_last_line_and_truncates_it_off(tmp_path, capsys):
    path = tmp_path / "samples.jsonl"
    assert list(data.read_jsonl(path, resumable=True)) == []  # not written yet: no rows
    with pytest.raises(DataError, match="no such file"):
        list(data.read_jsonl(path))
    complete = b'{"a": 1}\n\n{"a": 2}\n'
    path.write_bytes(complete + b'{"a": 3, "b"')  # a write cut by a kill
    with pytest.raises(DataError, match=rf"^{path}:4: invalid JSON"):  # not resumable: a bad line
        list(data.read_jsonl(path))
    assert path.read_bytes() == complete + b'{"a": 3, "b"'  # and the file is left alone
    # truncate=False (another process may still be writing that line): not read, not said, not cut
    assert list(data.read_jsonl(path, resumable=True, truncate=False)) == [(1, {"a": 1}), (3, {"a": 2})]
    assert capsys.readouterr().err == "" and path.read_bytes() == complete + b'{"a": 3, "b"'
    counts = Counter()
    assert list(data.read_jsonl(path, counts, resumable=True)) == [(1, {"a": 1}), (3, {"a": 2})]
    assert counts == {"blank lines (ignored)": 1}
    err = capsys.readouterr().err
    assert err == (f"{path}: dropping an incomplete last line (12 bytes, cut by an interrupted write); "
                   f"it will be redone\n")
    assert path.read_bytes() == complete  # cut off: the next append starts on a clean line
    with open(path, "a") as f:
        f.write(json.dumps({"a": 3}) + "\n")
    assert [obj for _, obj in data.read_jsonl(path, resumable=True)] == [{"a": 1}, {"a": 2}, {"a": 3}]
    assert capsys.readouterr().err == ""  # a complete file: nothing said, nothing changed
    assert [obj for _, obj in data.read_jsonl(path)] == [{"a": 1}, {"a": 2}, {"a": 3}]
    path.write_bytes(b'{"only": "cut')  # no complete line at all
    assert list(data.read_jsonl(path, resumable=True)) == [] and path.read_bytes() == b""
    assert "(13 bytes" in capsys.readouterr().err


def test_get_field_checks_presence_type_and_blank():
    obj = {"s": "text", "blank": "  ", "n": 3, "flag": True, "d": {"x": 1}}
    assert data.get_field(obj, "s", "f:1") == "text" and data.get_field(obj, "blank", "f:1") == "  "
    assert data.get_field(obj, "n", "f:1", int) == 3 and data.get_field(obj, "d", "f:1", dict) == {"x": 1}
    for args, expected in [(("missing",), "f:1: missing key 'missing'"),
                           (("n",), "f:1: key 'n' must be str, got int"),
                           (("flag", int), "f:1: key 'flag' must be int, got bool"),  # bool is no int here
                           (("d", list), "f:1: key 'd' must be list, got dict")]:
        with pytest.raises(DataError, match=rf"^{expected}$"):
            data.get_field(obj, args[0], "f:1", *args[1:])
    with pytest.raises(DataError, match=r"^f:1: key 'blank' is empty$"):
        data.get_field(obj, "blank", "f:1", nonempty=True)


def test_seeded_subset():
    subset = data.seeded_subset(50, 10, seed=1)
    assert subset == sorted(torch.randperm(50, generator=torch.Generator().manual_seed(1))[:10].tolist())
    assert len(set(subset)) == 10 and subset == sorted(subset) and 0 <= subset[0] and subset[-1] < 50
    assert subset != list(range(10)) and data.seeded_subset(50, 10, seed=1) == subset
    assert data.seeded_subset(50, 10, seed=2) != subset
    for n in (0, -3, 50, 60):  # no limit, or more than there is: everything, in order
        assert data.seeded_subset(50, n, seed=1) == list(range(50))


def test_percentiles_are_nearest_rank():
    values = list(np.random.default_rng(0).integers(0, 1000, size=137))
    got = data.percentiles(values)
    for p in (50, 90, 99):
        assert got[f"p{p}"] == int(np.percentile(values, p, method="inverted_cdf"))
    assert got["max"] == max(values) and data.percentiles([]) == {}


# ---------------------------------------------------------------------------------------------- conversations

def msgs(*pairs):
    return [{"role": role, "content": content} for role, content in pairs]


def test_conversational_preference_rows_explicit_and_implicit_prompt(tmp_path):
    prompt = msgs(("system", "Be brief."), ("user", "Hi?"))
    rows = [{"prompt": prompt, "chosen": msgs(("assistant", "Hello.")), "rejected": msgs(("assistant", "Go away."))},
            {"chosen": prompt + msgs(("assistant", "Hello.")), "rejected": prompt + msgs(("assistant", "No."))},
            {"prompt": "plain text", "chosen": " still", "rejected": " works"}]
    examples = data.read_preference_jsonl(write_jsonl(tmp_path / "p.jsonl", rows))
    assert examples[0]["prompt"] == prompt and examples[0]["chosen"] == msgs(("assistant", "Hello."))
    assert examples[1]["prompt"] == prompt and examples[1]["rejected"] == msgs(("assistant", "No."))  # implicit
    assert examples[2]["prompt"] == "plain text" and examples[1]["source"].endswith("p.jsonl:2")


def test_bad_conversational_rows_are_counted_with_their_first_line(tmp_path):
    good = {"chosen": msgs(("user", "Q"), ("assistant", "A")), "rejected": msgs(("user", "Q"), ("assistant", "B"))}
    rows = [good,
            {"chosen": [{"role": "user"}], "rejected": msgs(("user", "Q"))},                       # no content
            {"chosen": msgs(("robot", "Q")), "rejected": msgs(("user", "Q"))},                     # unknown role
            {"chosen": msgs(("user", "A"), ("assistant", "x")), "rejected": msgs(("user", "B"))},  # no shared prompt
            {"chosen": msgs(("user", "Q")), "rejected": msgs(("user", "Q"))},                      # identical
            {"chosen": [{"role": "user", "content": 3}], "rejected": msgs(("user", "Q"))}]         # not a string
    counts = Counter()
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    assert len(data.read_preference_jsonl(path, counts)) == 1
    dropped = {k: v for k, v in counts.items() if k.startswith("rows dropped")}
    assert dropped == {
        f"rows dropped: a message without a role or a string content (first at {path}:2)": 2,
        f"rows dropped: a message with an unknown role (expected one of system, user, assistant) (first at {path}:3)": 1,
        f"rows dropped: chosen and rejected share no prompt (first at {path}:4)": 1,
        f"rows dropped: chosen and rejected are the same conversation (first at {path}:5)": 1}
    assert "left out by the reader: 1 rows dropped: chosen and rejected share no prompt" in \
        data.format_summary("p", counts)


def test_conversational_sft_rows(tmp_path):
    conversation = msgs(("user", "Q1"), ("assistant", "A1"), ("user", "Q2"), ("assistant", "A2"))
    rows = [{"messages": conversation}, {"prompt": msgs(("user", "Q")), "completion": msgs(("assistant", "A"))},
            {"messages": msgs(("user", "only a question"))}, {"prompt": "", "completion": "text"}]
    counts = Counter()
    path = write_jsonl(tmp_path / "s.jsonl", rows)
    examples = data.read_sft_jsonl(path, counts)
    assert [sorted(e) for e in examples] == [["messages", "source"], ["completion", "prompt", "source"],
                                            ["completion", "prompt", "source"]]
    assert counts[f"rows dropped: a conversation without an assistant turn to learn (first at {path}:3)"] == 1


def test_parquet_rows_in_the_hub_layout_of_ultrafeedback(tmp_path):
    """HuggingFaceH4/ultrafeedback_binarized's rows: prompt a string, chosen / rejected whole conversations
    (user turn included), read from parquet: the shared user turn becomes the prompt."""
    pyarrow = pytest.importorskip("pyarrow")
    import pyarrow.parquet
    user = {"role": "user", "content": "Name a colour."}
    rows = [{"prompt": "Name a colour.", "chosen": [user, {"role": "assistant", "content": "Blue."}],
             "rejected": [user, {"role": "assistant", "content": "Seven."}], "score_chosen": 9.0, "score_rejected": 2.0}]
    path = tmp_path / "train_prefs.parquet"
    pyarrow.parquet.write_table(pyarrow.Table.from_pylist(rows * 2), path)
    examples = data.read_preference_jsonl(path)
    assert len(examples) == 2 and examples[1]["source"] == f"{path}:2"
    assert examples[0]["prompt"] == [user] and examples[0]["chosen"] == [{"role": "assistant", "content": "Blue."}]
