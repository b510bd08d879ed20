"""dpo/formats.py: the readers of the published formats (IMDB folder and archive, TL;DR SFT and comparisons,
Anthropic HH) on small files written here and on the real text in ../shared/data, and the format table."""
import gzip
import io
import json
import tarfile
from collections import Counter
from pathlib import Path

import pytest

from dpo import data, formats
from dpo.data import DataError
from helpers import ByteTokenizer


def write_jsonl(path, rows, raw_lines=()):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows) + "".join(raw_lines))
    return path


# ---------------------------------------------------------------------------------------------- IMDB

REVIEWS = {  # member path under aclImdb/ -> text
    "train/pos/3_9.txt": "Great film.<br /><br />Loved it.",
    "train/pos/10_8.txt": "Fine<br/>acting ",
    "train/neg/2_1.txt": "Awful.<BR>Really.",
    "test/pos/0_10.txt": "Superb.",
    "test/neg/5_3.txt": "Dull.",
    "train/unsup/7_0.txt": "No label here.",
}


def write_imdb_folder(root: Path, reviews=REVIEWS) -> Path:
    for rel, text in reviews.items():
        (root / "aclImdb" / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / "aclImdb" / rel).write_bytes(text.encode() if isinstance(text, str) else text)
    (root / "aclImdb" / "README").write_text("not a review")
    return root / "aclImdb"


def write_imdb_archive(path: Path, reviews=REVIEWS) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for rel, text in [("README", "readme"), ("imdb.vocab", "the\na")] + list(reviews.items()):
            raw = text.encode() if isinstance(text, str) else text
            info = tarfile.TarInfo(f"aclImdb/{rel}")
            info.size = len(raw)
            tar.addfile(info, io.BytesIO(raw))
    return path


def test_imdb_folder_and_archive_agree(tmp_path):
    folder = write_imdb_folder(tmp_path / "f")
    archive = write_imdb_archive(tmp_path / "aclImdb_v1.tar.gz")
    train = formats.read_imdb(folder, "train")
    assert [(r["polarity"], r["id"], r["rating"], r["label"], r["text"]) for r in train] == [
        ("neg", 2, 1, 0, "Awful.\nReally."), ("pos", 3, 9, 1, "Great film.\n\nLoved it."),
        ("pos", 10, 8, 1, "Fine\nacting")]
    strip_source = lambda rs: [{k: v for k, v in r.items() if k != "source"} for r in rs]
    for split in ("train", "test", "unsup"):
        from_folder = formats.read_imdb(tmp_path / "f", split)  # parent of aclImdb/ works too
        assert strip_source(formats.read_imdb(archive, split)) == strip_source(from_folder)
        assert strip_source(formats.read_imdb(tmp_path, split)) == strip_source(from_folder)  # dir holding the .tar.gz
    assert formats.read_imdb(archive, "train")[0]["source"] == f"{archive}:aclImdb/train/neg/2_1.txt"
    assert [r["label"] for r in formats.read_imdb(folder, "unsup")] == [None]
    assert formats.clean_imdb_review("a<br />b", "space") == "a b"
    assert formats.clean_imdb_review(" a<br />b ", "keep") == " a<br />b "
    sft = formats.imdb_sft_examples(train)
    assert sft[0] == {"prompt": "", "completion": "Awful.\nReally.", "source": train[0]["source"]}
    assert formats.imdb_classification_examples(train)[1]["label"] == 1


def test_imdb_bad_inputs(tmp_path):
    with pytest.raises(DataError, match="neither an aclImdb folder"):
        formats.read_imdb(tmp_path / "missing")
    bad_name = write_imdb_folder(tmp_path / "a", {**REVIEWS, "train/pos/oops.txt": "x"})
    with pytest.raises(DataError, match=r"oops.txt: file name is not <id>_<rating>.txt"):
        formats.read_imdb(bad_name)
    bad_bytes = {**REVIEWS, "test/neg/9_2.txt": b"bad \xe9 byte"}
    with pytest.raises(DataError, match=r"test/neg/9_2.txt: not valid UTF-8 \(byte 0xe9"):
        formats.read_imdb(write_imdb_folder(tmp_path / "b", bad_bytes), "test")
    archive = write_imdb_archive(tmp_path / "bytes.tar.gz", bad_bytes)
    with pytest.raises(DataError, match=rf"^{archive}:aclImdb/test/neg/9_2.txt: not valid UTF-8"):
        formats.read_imdb(archive, "test")
    with pytest.raises(DataError, match=r"train/neg: missing folder"):
        formats.read_imdb(write_imdb_folder(tmp_path / "c", {"train/pos/1_7.txt": "ok"}))
    empty = write_imdb_folder(tmp_path / "d", {**REVIEWS, "test/pos/1_7.txt": "<br />"})
    with pytest.raises(DataError, match=r"test/pos/1_7.txt: empty review"):
        formats.read_imdb(empty, "test")


def test_imdb_truncated_archive_names_archive_and_member(tmp_path):
    big = {f"train/pos/{i}_9.txt": f"review {i} " + "word " * (i % 50) for i in range(400)}
    big.update({f"train/neg/{i}_2.txt": "bad " * 30 for i in range(400)})
    full = write_imdb_archive(tmp_path / "full.tar.gz", big).read_bytes()
    assert len(formats.read_imdb(tmp_path / "full.tar.gz")) == 800
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(full[: len(full) // 2])
    with pytest.raises(DataError, match=rf"^{cut}:aclImdb/train/(pos|neg)/\d+_\d.txt: truncated or corrupt archive"):
        formats.read_imdb(cut)
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"this is not gzip at all")
    with pytest.raises(DataError, match=rf"^{junk}:\(archive header\): truncated or corrupt archive"):
        formats.read_imdb(junk)


def test_imdb_prefix_prompts_are_seeded_2_to_8_token_prefixes(tmp_path):
    reviews = formats.read_imdb(write_imdb_folder(tmp_path), "train") * 40
    tok = ByteTokenizer()
    prompts = formats.imdb_prefix_prompts(reviews, tok, seed=3)
    lengths = [len(p["prompt_input_ids"]) for p in prompts]
    assert set(lengths) == set(range(2, 9))  # 120 draws hit every length
    for p, r in zip(prompts, reviews):
        assert tok.encode(r["text"])[: len(p["prompt_input_ids"])] == p["prompt_input_ids"]
        assert p["prompt"] == r["text"][: len(p["prompt_input_ids"])] and p["label"] == r["label"]
    assert formats.imdb_prefix_prompts(reviews, tok, seed=3) == prompts
    assert [len(p["prompt_input_ids"]) for p in formats.imdb_prefix_prompts(reviews, tok, seed=4)] != lengths
    counts = Counter()
    short = [{"text": "ab", "label": 1, "source": "s"}]
    assert formats.imdb_prefix_prompts(short, tok, seed=0, min_tokens=5, counts=counts) == []
    assert sum(counts.values()) == 1


def test_shared_aclimdb_mini(shared_data):
    root = shared_data / "aclImdb-mini"
    train, test = formats.read_imdb(root, "train"), formats.read_imdb(root, "test")
    assert len(train) == 1000 and len(test) == 500
    assert Counter(r["label"] for r in train) == {0: 500, 1: 500}
    assert Counter(r["label"] for r in test) == {0: 250, 1: 250}
    assert all(r["text"] and "<br" not in r["text"] for r in train)
    prompts = formats.imdb_prefix_prompts(test, ByteTokenizer(), seed=0)
    assert len(prompts) == 500 and all(2 <= len(p["prompt_input_ids"]) <= 8 for p in prompts)


# ---------------------------------------------------------------------------------------------- TL;DR


def tldr_row(i, summary=" a summary "):
    return {"id": f"t3_{i}", "subreddit": "relationships", "title": f"Title {i}", "post": f"Post {i}\n\nmore",
            "summary": summary}


def test_tldr_sft_prompt_template_and_completion(tmp_path):
    folder = tmp_path / "tldr_3_filtered"
    folder.mkdir()
    write_jsonl(folder / "valid.jsonl", [tldr_row(0), tldr_row(1, "no leading space")])
    examples = formats.read_tldr_sft(folder, "valid")
    assert examples[0]["prompt"] == "SUBREDDIT: r/relationships\nTITLE: Title 0\nPOST: Post 0\n\nmore\nTL;DR:"
    assert [e["completion"] for e in examples] == [" a summary", " no leading space"]
    assert examples[1]["id"] == "t3_1" and examples[1]["source"] == f"{folder / 'valid.jsonl'}:2"
    assert formats.read_tldr_sft(folder / "valid.jsonl") == examples
    write_jsonl(folder / "train.jsonl", [{**tldr_row(0), "post": 5}])
    with pytest.raises(DataError, match=rf"{folder / 'train.jsonl'}:1: key 'post' must be str, got int"):
        formats.read_tldr_sft(folder, "train")
    with pytest.raises(DataError, match=r"test.jsonl: no such file"):
        formats.read_tldr_sft(folder, "test")


def test_shared_tldr_mini(shared_data):
    folder = shared_data / "tldr-mini"
    sizes = {split: len(formats.read_tldr_sft(folder, split)) for split in ("train", "valid", "test")}
    assert sizes == {"train": 8000, "valid": 500, "test": 500}
    ex = formats.read_tldr_sft(folder, "test")[0]
    assert ex["prompt"].startswith("SUBREDDIT: r/debian\nTITLE: ") and ex["prompt"].endswith("\nTL;DR:")
    assert ex["completion"].startswith(" ") and not ex["completion"].startswith("  ")


def comparison(i, choice, split, cnndm=False):
    info = ({"id": f"cnn{i}", "article": "News.", "site": "cnn", "title": "T"} if cnndm else
            {"id": f"t3_{i}", "post": f"post {i}", "title": f"title {i}", "subreddit": "AskReddit"})
    return {"info": info, "split": split, "choice": choice, "worker": "w1", "batch": "batch3",
            "summaries": [{"text": f" summary A{i}", "policy": "p1", "note": None},
                          {"text": f"summary B{i}\n", "policy": "p2", "note": None}], "extra": {"confidence": 7}}


def write_comparisons(folder: Path) -> Path:
    folder.mkdir(parents=True)
    for name in formats.TLDR_COMPARISON_FILES:
        (folder / name).write_text("")
    write_jsonl(folder / "batch3.json", [comparison(0, 0, "train"), comparison(1, 1, "train"),
                                         comparison(2, 0, "valid1")])
    write_jsonl(folder / "batch22.json", [comparison(3, 1, "valid2"), comparison(4, 0, "train")])
    write_jsonl(folder / "cnndm0.json", [comparison(5, 0, "valid2", cnndm=True)])
    return folder


def test_tldr_comparisons_chosen_is_summaries_choice(tmp_path):
    folder = write_comparisons(tmp_path / "comparisons")
    counts = Counter()
    train = formats.read_tldr_comparisons(folder, "train", counts)
    assert [(e["id"], e["chosen"], e["rejected"]) for e in train] == [
        ("t3_0", " summary A0", " summary B0"), ("t3_1", " summary B1", " summary A1"),
        ("t3_4", " summary A4", " summary B4")]
    assert train[0]["prompt"] == "SUBREDDIT: r/AskReddit\nTITLE: title 0\nPOST: post 0\nTL;DR:"
    assert counts == {"comparisons of other splits (not selected)": 3}
    valid2 = Counter()
    assert [e["id"] for e in formats.read_tldr_comparisons(folder, "valid2", valid2)] == ["t3_3"]
    assert valid2["CNN/DM news comparisons (no Reddit post)"] == 1
    assert len(formats.read_tldr_comparisons(folder, None)) == 5
    kind, sft, read_counts = formats.load_examples("tldr_comparisons_sft", folder, "train")
    assert kind == "sft" and [e["completion"] for e in sft] == [e["chosen"] for e in train]
    assert read_counts["read"] == 6
    assert "left out by the reader: 3 comparisons of other splits" in data.format_summary("x", read_counts)


def test_tldr_comparisons_bad_input(tmp_path):
    folder = write_comparisons(tmp_path / "c")
    (folder / "batch7.json").unlink()
    with pytest.raises(DataError, match=r"missing batch7.json of the published comparison files"):
        formats.read_tldr_comparisons(folder)
    for bad, expected in [({"choice": 2}, "key 'choice' must be 0 or 1, got 2"),
                          ({"choice": True}, "key 'choice' must be int, got bool"),
                          ({"summaries": [{"text": "a"}]}, "key 'summaries' must be a list of two objects"),
                          ({"summaries": [{"text": "a"}, {"text": ""}]}, r"summaries\[1\]: key 'text' is empty"),
                          ({"info": "x"}, "key 'info' must be dict, got str")]:
        path = write_jsonl(tmp_path / "one.json", [comparison(0, 0, "train"), {**comparison(1, 0, "train"), **bad}])
        with pytest.raises(DataError, match=rf"^{path}:2: .*{expected}"):
            formats.read_tldr_comparisons(path)
    with pytest.raises(DataError, match="split must be one of train, valid1, valid2"):
        formats.read_tldr_comparisons(path, "valid")


# ---------------------------------------------------------------------------------------------- HH

H, A = "\n\nHuman: ", "\n\nAssistant:"


def test_hh_prompt_extraction_and_drops(tmp_path):
    multi = f"{H}Hi{A} Hello!{H}How are you?{A}"
    rows = [{"chosen": multi + " Fine, thanks.", "rejected": multi + " Go away."},
            {"chosen": f"{H}Q{A} A1", "rejected": f"{H}Other Q{A} A2"},  # different prompts
            {"chosen": f"{H}Q{A} ", "rejected": f"{H}Q{A} no"}]  # empty chosen response
    for subset in formats.HH_SUBSETS:
        (tmp_path / "hh-rlhf" / subset).mkdir(parents=True)
        with gzip.open(tmp_path / "hh-rlhf" / subset / "test.jsonl.gz", "wt") as f:
            f.write("".join(json.dumps(r) + "\n" for r in rows))
    counts = Counter()
    examples = formats.read_hh(tmp_path / "hh-rlhf", "test", counts)
    assert len(examples) == 4  # one kept pair per subset
    assert examples[0]["prompt"] == multi and examples[0]["chosen"] == " Fine, thanks."
    assert examples[0]["rejected"] == " Go away."
    assert examples[0]["source"] == f"{tmp_path / 'hh-rlhf' / 'helpful-base' / 'test.jsonl.gz'}:1"
    assert counts == {"HH pairs whose rejected transcript has another prompt": 4,
                      "HH pairs with an empty response": 4}
    kind, sft, read_counts = formats.load_examples("hh_sft", tmp_path / "hh-rlhf", "test")
    assert kind == "sft" and sft[0]["completion"] == " Fine, thanks." and read_counts["read"] == 12
    summary = data.format_summary("hh", read_counts)
    assert "read 12 records" in summary and "4 HH pairs with an empty response" in summary
    assert formats.split_hh_transcript("no turns") == ("", "no turns")


def test_hh_bad_input(tmp_path):
    path = tmp_path / "train.jsonl.gz"
    with gzip.open(path, "wt") as f:
        f.write(json.dumps({"chosen": f"{H}Q{A} A", "rejected": f"{H}Q{A} B"}) + "\n")
        f.write(json.dumps({"chosen": "no assistant turn", "rejected": "x"}) + "\n")
    with pytest.raises(DataError, match=rf"^{path}:2: chosen transcript has no"):
        formats.read_hh(path)
    with pytest.raises(DataError, match=r"helpful-base/train.jsonl.gz: no such file"):
        formats.read_hh(tmp_path, "train")


def test_unknown_format():
    with pytest.raises(DataError, match="unknown data format 'nope'; valid: preference_jsonl"):
        formats.load_examples("nope", ".")
