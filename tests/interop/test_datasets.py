"""dpo/interop/datasets.py: the download CLI against a local server only (fetch, resume, size check,
offline), the published file lists, and the summary CLI (counts, one-line errors, token statistics)."""
import json
import socket
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from dpo import data, formats
from dpo.interop import datasets
from helpers import byte_tokenizer
from helpers import OUTPUT_CASES, bad_output_path, refused

REPO = Path(__file__).resolve().parents[2]
GOOD = '{"prompt": "p", "chosen": "c", "rejected": "r"}\n'


# ---------------------------------------------------------------------------------------------- summary


def test_cli_exits_nonzero_with_one_line_error(tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(GOOD.encode() + b'{"prompt": "p", "chosen": "c"}\n')
    command = [sys.executable, "-m", "dpo.interop.datasets", "summary"]
    result = subprocess.run(command + ["preference_jsonl", str(path)], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 1
    assert result.stderr == f"error: {path}:2: missing key 'rejected'\n"
    missing = subprocess.run(command + ["imdb", str(tmp_path / "nope")], cwd=REPO, capture_output=True, text=True)
    assert missing.returncode == 1 and "neither an aclImdb folder" in missing.stderr
    assert "python -m dpo.interop.datasets download imdb" in missing.stderr  # the hint names this command


@pytest.mark.parametrize("case", ["a file", "under a file", "read-only", "missing file", "malformed file",
                                  "missing tokenizer", "bad --limit", "bad --max-length"])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys, case):
    """download --out is checked before anything is fetched (from a dead URL: trying would be another error);
    summary's bad inputs name the file or option."""
    path = tmp_path / "pairs.jsonl"
    path.write_text(GOOD)
    argv, named = ["summary", "preference_jsonl", path], [path]
    if case in OUTPUT_CASES:
        out = bad_output_path(tmp_path, case, monkeypatch)
        named = [f"error: --out {out}: "]  # refused by the check before any work, not by a failed write
        argv = ["download", "tldr", "--out", out, "--base-url", "http://127.0.0.1:9"]
    elif case == "missing file":
        argv[2] = named[0] = tmp_path / "nope.jsonl"
    elif case == "malformed file":
        path.write_text(GOOD + '{"prompt": "p", "chosen": "c", "rejected": 3}\n')
        named = [f"{path}:2: key 'rejected' must be str, got int"]
    elif case == "missing tokenizer":
        argv += ["--tokenizer", tmp_path / "no-tokenizer"]
        named = [tmp_path / "no-tokenizer"]
    elif case == "bad --limit":
        argv += ["--limit", -1]
        named = ["--limit must be >= 0 (0: every example), got -1"]
    else:
        byte_tokenizer().save_pretrained(tmp_path / "tok")
        argv += ["--tokenizer", tmp_path / "tok", "--max-length", 0]
        named = ["max_length", "got 256 and 0"]
    refused(datasets.main, argv, capsys, tmp_path, *named)


def test_summary_cli_prints_counts(tmp_path, capsys):
    path = tmp_path / "ok.jsonl"
    path.write_text(GOOD * 4 + "\n")
    assert datasets.main(["summary", "preference_jsonl", str(path)]) == 0
    out = capsys.readouterr().out
    assert "read 4 records" in out and "1 blank lines (ignored)" in out


def test_summary_cli_with_a_tokenizer(shared_data, tmp_path, capsys):
    pairs_file = tmp_path / "hh.jsonl"
    pairs_file.write_text(json.dumps({"prompt": "\n\nHuman: Hi\n\nAssistant:", "chosen": " Hello.",
                                      "rejected": " Go."}) + "\n")
    assert datasets.main(["summary", "preference_jsonl", str(pairs_file), "--tokenizer", str(shared_data / "gpt2"),
                          "--max-length", "10", "--max-prompt-length", "4"]) == 0
    out = capsys.readouterr().out
    assert "prompt tokens before truncation: p50 9" in out and "prompts cut: 1" in out


# ---------------------------------------------------------------------------------------------- download


def serve(http_server, name):
    """Put a small file at the path of each canonical URL of `name`; return {relative dest: bytes}."""
    files = {}
    for i, (url, rel, _) in enumerate(datasets.DOWNLOADS[name]):
        blob = (f"file {i} " * (500 + 37 * i)).encode()
        target = http_server.root / urlsplit(url).path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(blob)
        files[rel] = blob
    return files


def test_download_cli_fetches_and_resumes(http_server, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("DPO_NO_PROGRESS", "1")
    files = serve(http_server, "tldr")
    out = tmp_path / "out"
    partial = out / "tldr_3_filtered" / "valid.jsonl.part"
    partial.parent.mkdir(parents=True)
    partial.write_bytes(files["tldr_3_filtered/valid.jsonl"][:100])
    http_server.fail_after["/summarize-from-feedback/datasets/tldr_3_filtered/test.jsonl"] = 50
    monkeypatch.setenv(datasets.BASE_URL_ENV, http_server.url)
    assert datasets.main(["download", "tldr", "--out", str(out)]) == 0
    for rel, blob in files.items():
        assert (out / rel).read_bytes() == blob
    assert not partial.exists()
    ranges = {path.rsplit("/", 1)[1]: rng for path, rng, _ in http_server.requests if rng}
    assert ranges == {"valid.jsonl": "bytes=100-", "test.jsonl": "bytes=50-"}
    assert capsys.readouterr().out.split() == [str(out / rel) for rel in files]
    n_requests = len(http_server.requests)
    assert datasets.main(["download", "tldr", "--out", str(out)]) == 0  # complete files are kept
    assert len(http_server.requests) == n_requests


def test_download_cli_checks_imdb_size_and_offline(http_server, tmp_path, capsys):
    serve(http_server, "imdb")  # a small file where the 84 MB archive should be
    assert datasets.main(["download", "imdb", "--out", str(tmp_path), "--base-url", http_server.url]) == 1
    assert "expected 84125825" in capsys.readouterr().err
    assert not (tmp_path / "aclImdb_v1.tar.gz").exists()
    with socket.socket() as s:  # a port nobody listens on: connection refused
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"
    assert datasets.main(["download", "hh", "--out", str(tmp_path), "--base-url", dead]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {dead}/anthropics/hh-rlhf/master/helpful-base/train.jsonl.gz: cannot connect")
    assert err.count("\n") == 1
    with pytest.raises(data.DataError, match="unknown dataset 'nope'; valid: imdb, tldr, tldr-comparisons, hh"):
        datasets.download_dataset("nope", tmp_path)


def test_download_lists_are_the_published_ones():
    assert len(datasets.DOWNLOADS["tldr-comparisons"]) == 23 and "batch21.json" not in formats.TLDR_COMPARISON_FILES
    assert [rel for _, rel, _ in datasets.DOWNLOADS["tldr-comparisons"]] == \
        [f"comparisons/{name}" for name in formats.TLDR_COMPARISON_FILES]  # what read_tldr_comparisons expects
    assert datasets.DOWNLOADS["imdb"] == [("https://ai.stanford.edu/~amaas/data/sentiment/aclImdb_v1.tar.gz",
                                           "aclImdb_v1.tar.gz", 84_125_825)]
    assert datasets.IMDB_URL == datasets.DOWNLOADS["imdb"][0][0]
    assert len(datasets.DOWNLOADS["hh"]) == 8
    assert [rel for _, rel, _ in datasets.DOWNLOADS["tldr"]] == \
        [f"tldr_3_filtered/{split}.jsonl" for split in formats.TLDR_SFT_SPLITS]
