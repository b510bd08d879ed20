"""dpo/evaluate/tables.py: samples files → reward / KL and win-rate tables (JSON + CSV), Wilson intervals, and the
samples-file reader (interrupted last line, bad lines named)."""
import csv
import json
from pathlib import Path

import pytest
import torch

import sample
from dpo.evaluate import tables as E
from dpo import data, quickstart
from dpo.data import DataError
from dpo.evaluate.kl import sequence_kl
from dpo.interop.hf_checkpoint import load_pretrained, save_pretrained
from dpo.model import GPT, GPTConfig
from helpers import byte_tokenizer
from helpers import OUTPUT_CASES, bad_output_path, refused

EOS = 256


def save_tiny(path: Path, seed: int) -> Path:
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=EOS + 1, n_layer=1, n_head=2, n_embd=16, max_seq_len=64, eos_id=EOS))
    with torch.no_grad():
        model.wte.weight.normal_(0, 0.5)
    save_pretrained(model, path)
    byte_tokenizer().save_pretrained(path)
    return path


def write_rows(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def row(pid, completion, temperature=1.0, reference=None, index=0, model="m"):
    r = {"prompt_id": pid, "sample_index": index, "prompt": "the film", "completion": completion, "model": model,
         "temperature": temperature, "top_k": None, "top_p": None, "max_new_tokens": 16, "seed": 0}
    if reference is not None:
        r["reference"] = reference
    return r


GOOD, BAD, MIXED = " was great, superb and moving.", " was dull, awful and bland.", " was great, dull and bland."


def test_wilson_interval_known_values():
    assert E.wilson_interval(5, 10) == pytest.approx((0.2366, 0.7634), abs=1e-4)
    assert E.wilson_interval(0, 10) == pytest.approx((0.0, 0.2775), abs=1e-4)
    assert E.wilson_interval(10, 10) == pytest.approx((0.7225, 1.0), abs=1e-4)
    assert E.wilson_interval(0, 0) == (None, None)
    assert E.mean_sem([1.0, 2.0, 3.0]) == pytest.approx((2.0, (1 / 3) ** 0.5))


def test_spearman_known_values_ties_and_degenerate_inputs():
    # ranks x = [1, 2.5, 2.5, 4, 5], y = [2, 1, 4, 3, 5]: Σdxdy = 6.5, Σdx² = 9.5, Σdy² = 10
    assert E.spearman([1, 2, 2, 3, 5], [2, 1, 4, 3, 5]) == pytest.approx(6.5 / 95 ** 0.5)
    xs = [0.3, -1.0, 2.0, 7.0, 0.1]
    assert E.spearman(xs, [x ** 3 for x in xs]) == pytest.approx(1.0)  # ranks, not values
    assert E.spearman(xs, [-x for x in xs]) == pytest.approx(-1.0)
    assert E.spearman([1, 1, 1], [1, 2, 3]) is None and E.spearman([1], [2]) is None
    with pytest.raises(ValueError, match="3 values against 2"):
        E.spearman([1, 2, 3], [1, 2])


def test_read_samples_drops_an_interrupted_line_and_names_bad_ones(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text(json.dumps(row(0, "a")) + "\n" + '{"prompt_id": 1, "sampl')
    assert [r["prompt_id"] for r in E.read_samples(path)] == [0]
    assert path.read_text().endswith('"sampl')  # reading alone leaves the file as it is
    E.read_samples(path, truncate_partial=True)
    assert path.read_text() == json.dumps(row(0, "a")) + "\n"
    path.write_text(json.dumps(row(0, "a")) + "\n{oops\n")
    with pytest.raises(DataError, match=r"s.jsonl:2: invalid JSON"):
        E.read_samples(path)
    path.write_text('{"prompt": "x"}\n')
    with pytest.raises(E.SamplesFileError, match=r"s.jsonl:1: not a samples row"):
        E.read_samples(path)
    assert E.read_samples(tmp_path / "missing.jsonl") == [] == E.read_samples(tmp_path / "missing.jsonl", True)


def test_read_samples_reads_only_the_lines_complete_when_it_starts(tmp_path):
    """Another rank's part file may grow while it is read: the rows are those of the complete lines at the
    start, a line still being written is never parsed (nor cut: the file is not ours)."""
    path = tmp_path / "s.jsonl.rank1.part"
    path.write_text(json.dumps(row(0, "a")) + "\n" + json.dumps(row(1, "b")) + "\n" + '{"prompt_id": 2, "sa')
    lines = data.read_jsonl(path, resumable=True, truncate=False)  # what read_samples reads with
    assert next(lines)[1]["prompt_id"] == 0
    with open(path, "a") as f:  # the writer finishes its line and starts another
        f.write('mple_index": 0}\n{"prom')
    assert [r["prompt_id"] for _, r in lines] == [1]
    assert [r["prompt_id"] for r in E.read_samples(path)] == [0, 1, 2]
    assert path.read_text().endswith('{"prom')


def test_reward_cli_writes_json_and_csv(tmp_path, capsys):
    rows = [row(0, GOOD), row(1, BAD), row(2, MIXED), row(0, GOOD, temperature=0.5), row(1, GOOD, temperature=0.5)]
    samples = write_rows(tmp_path / "s.jsonl", rows)
    assert E.main(["reward", str(samples), "--reward", "quickstart", "--out", str(tmp_path / "res" / "imdb")]) == 0
    table = json.loads((tmp_path / "res" / "imdb.json").read_text())
    assert table["kind"] == "reward" and len(table["rows"]) == 2
    t1, t05 = table["rows"]
    assert (t1["temperature"], t1["n_samples"], t1["n_prompts"]) == (1.0, 3, 3)
    assert t1["reward_mean"] == pytest.approx((1 + 0 + 1 / 3) / 3) and t05["reward_mean"] == pytest.approx(1.0)
    with open(tmp_path / "res" / "imdb.csv") as f:
        csv_rows = list(csv.DictReader(f))
    assert [float(r["reward_mean"]) for r in csv_rows] == pytest.approx([t1["reward_mean"], 1.0])
    details = (tmp_path / "res" / "imdb.samples.jsonl").read_text().splitlines()
    assert [json.loads(d)["reward"] for d in details] == pytest.approx([1, 0, 1 / 3, 1, 1])
    assert "reward_mean" in capsys.readouterr().out
    assert E.main(["reward", str(tmp_path / "missing.jsonl"), "--reward", "quickstart", "--out", "x"]) == 1
    assert "missing.jsonl: no samples" in capsys.readouterr().err


@pytest.mark.parametrize("case", [*OUTPUT_CASES, "missing samples", "malformed samples", "not samples rows",
                                  "bad --reward", "bad --device", "bad --batch-size", "missing --against"])
def test_bad_input_is_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys, case):
    """--out (a prefix: PREFIX.json, .csv, .samples.jsonl) is checked before any scoring; every bad input is
    one line naming the file or option."""
    samples = write_rows(tmp_path / "s.jsonl", [row(0, GOOD), row(1, BAD)])
    out, extra = tmp_path / "res", []
    argv, named = ["reward", samples, "--reward", "quickstart"], [samples]
    if case in OUTPUT_CASES:
        out = bad_output_path(tmp_path, case, monkeypatch)
        named = [f"error: --out {out}: "]  # refused by the check before any work, not by a failed write
        if case == "a file":  # a file is a fine prefix; its PREFIX.samples.jsonl must not be a folder
            out.with_name("file.samples.jsonl").mkdir()
            named = [f"error: --out {tmp_path / 'file.samples.jsonl'}: "]
    elif case == "missing samples":
        argv[1] = named[0] = tmp_path / "nope.jsonl"
    elif case == "malformed samples":
        samples.write_text(samples.read_text() + '{"prompt_id": 2,\n')
        named = [f"{samples}:3: invalid JSON"]
    elif case == "not samples rows":
        write_rows(samples, [{"prompt": "p", "completion": "c"}])
        named = [f"{samples}:1: not a samples row (needs prompt_id and sample_index)"]
    elif case == "bad --reward":
        argv[3] = "reward_model:" + str(tmp_path / "no-model")
        named = [f"reward 'reward_model:{tmp_path / 'no-model'}': {tmp_path / 'no-model'} is not a folder"]
    elif case == "bad --device":
        extra, named = ["--device", "gpu0"], ["--device 'gpu0': not a device"]
    elif case == "bad --batch-size":
        extra, named = ["--batch-size", 0], ["--batch-size must be >= 1, got 0"]
    else:
        argv = ["winrate", samples, "--judge", "quickstart", "--against", tmp_path / "sft.jsonl"]
        named = [f"{tmp_path / 'sft.jsonl'}: no samples (no such file)"]
    refused(E.main, [*argv, "--out", out, *extra], capsys, tmp_path, *named)


def test_reward_and_kl_per_checkpoint(tmp_path):
    """sample.py → evaluate: KL to the model itself is 0; to another reference it is dpo.evaluate.kl's value."""
    policy_dir = save_tiny(tmp_path / "run" / "checkpoints" / "step-000100", seed=0)
    reference_dir = save_tiny(tmp_path / "sft", seed=1)
    policy, tok = load_pretrained(policy_dir), byte_tokenizer()
    prompts = [{"prompt_id": i, "prompt": t, "prompt_input_ids": tok.encode(t)}
               for i, t in enumerate(quickstart.prompts(6, 0))]
    settings = {"model": str(policy_dir), "temperature": 1.0, "top_k": None, "top_p": None, "max_new_tokens": 10,
                "seed": 0}
    out = tmp_path / "samples.jsonl"
    sample.run_sampling(policy, tok, prompts, out, n=2, batch_size=4, settings=settings, progress=False)
    sample.merge(out, prompts)
    same, _ = E.reward_table([out], lambda p, c: torch.ones(len(c)), reference_model=str(policy_dir))
    assert same[0]["kl_exact_mean"] == pytest.approx(0, abs=1e-6) and same[0]["kl_sampled_mean"] == pytest.approx(0, abs=1e-6)
    assert same[0]["step"] == 100 and same[0]["kl_valid"] is True and same[0]["retokenized"] == 0
    table, details = E.reward_table([out], lambda p, c: torch.ones(len(c)), reference_model=str(reference_dir))
    rows = E.read_samples(out)
    expected = sequence_kl(policy, load_pretrained(reference_dir), [r["prompt_token_ids"] for r in rows],
                           [r["completion_token_ids"] for r in rows])
    assert [d["kl_exact"] for d in details] == pytest.approx(expected["kl_exact"].tolist(), abs=1e-5)
    assert table[0]["kl_exact_mean"] == pytest.approx(expected["kl_exact"].mean().item(), abs=1e-5)
    assert table[0]["kl_exact_mean"] > 0 and table[0]["reward_mean"] == 1.0


def test_winrate_cli_against_the_reference(tmp_path):
    rows = [row(i, GOOD if i < 6 else BAD, reference=MIXED) for i in range(8)] + [row(8, GOOD)]  # no reference
    rows += [row(i, BAD, temperature=0.0, reference=MIXED) for i in range(4)]
    samples = write_rows(tmp_path / "s.jsonl", rows)
    assert E.main(["winrate", str(samples), "--judge", "quickstart", "--out", str(tmp_path / "wr")]) == 0
    table = json.loads((tmp_path / "wr.json").read_text())["rows"]
    t1, t0 = table
    assert (t1["wins"], t1["losses"], t1["ties"], t1["missing_baseline"], t1["n"]) == (6, 2, 0, 1, 8)
    assert t1["win_rate"] == 0.75 and (t1["ci_low"], t1["ci_high"]) == pytest.approx(E.wilson_interval(6, 8))
    assert t0["win_rate"] == 0.0 and t0["temperature"] == 0.0
    assert t1["rouge_l_mean"] is not None
    verdicts = [json.loads(line) for line in (tmp_path / "wr.verdicts.jsonl").read_text().splitlines()]
    assert len(verdicts) == 12 and verdicts[0]["winner"] == "candidate" and verdicts[0]["baseline"] == MIXED


def test_winrate_against_another_samples_file(tmp_path):
    ours = write_rows(tmp_path / "dpo.jsonl", [row(i, GOOD, index=1) for i in range(3)])
    theirs = write_rows(tmp_path / "sft.jsonl", [row(0, BAD), row(1, GOOD), row(2, MIXED, index=1)])
    table, verdicts = E.winrate_table([ours], E.make_judge("quickstart", task="summary", seed=0),
                                      judge_name="quickstart", against=str(theirs))
    # prompt 2 pairs with the same sample_index, prompts 0 and 1 fall back to sample_index 0
    assert [v["baseline"] for v in verdicts] == [BAD, GOOD, MIXED]
    assert (table[0]["wins"], table[0]["ties"], table[0]["win_rate"]) == (2, 1, pytest.approx(5 / 6))


def test_summarize_verdicts_counts_ties_as_halves():
    verdicts = [{"winner": "candidate", "status": "ok"}, {"winner": "tie", "status": "ok"},
                {"winner": None, "status": "unparseable"}, {"winner": None, "status": "error"},
                {"winner": "baseline", "status": "ok"}]
    s = E.summarize_verdicts(verdicts)
    assert (s["n"], s["wins"], s["ties"], s["losses"], s["unparseable"], s["errors"]) == (3, 1, 1, 1, 1, 1)
    assert s["win_rate"] == 0.5
