"""dpo/evaluate/best_of_n.py: the highest-scoring of N candidates per prompt (ties: the lowest index), and
sample.py --best-of end to end."""
import json

import pytest
import torch

import sample
from dpo.evaluate import best_of_n
from dpo.interop.hf_checkpoint import save_pretrained
from dpo.model import GPT, GPTConfig
from dpo.reward_model import RewardModel
from dpo.evaluate.rewards import load_scorer
from dpo.interop.bpe import bytes_to_unicode
from dpo.tokenizer import Tokenizer
from helpers import bad_output_path, refused

EOS = 256


def candidates(scores_by_prompt: dict) -> list[dict]:
    return [{"prompt_id": pid, "sample_index": i, "prompt": f"p{pid}", "completion": f"{pid}:{s}"}
            for pid, scores in scores_by_prompt.items() for i, s in enumerate(scores)]


def score_from_text(prompts, completions):
    return torch.tensor([float(c.split(":")[1]) for c in completions], dtype=torch.float64)


def test_keeps_the_best_per_prompt():
    rows = candidates({"a": [0.1, 0.9, 0.5], 7: [2.0, 2.0, 1.0]})[::-1]  # order of rows does not matter
    best = best_of_n.best_of_n(rows, score_from_text, n=3)
    assert [(b["prompt_id"], b["best_sample_index"], b["reward"]) for b in best] == [(7, 0, 2.0), ("a", 1, 0.9)]
    assert best[1]["candidate_rewards"] == pytest.approx([0.1, 0.9, 0.5])
    assert all(b["sample_index"] == 0 and b["best_of"] == 3 for b in best)
    with pytest.raises(best_of_n.BestOfNError, match="prompt_id 7: 3 candidates, expected 4"):
        best_of_n.best_of_n(rows, score_from_text, n=4)


def test_sample_py_best_of(tmp_path, capsys):
    b2u = bytes_to_unicode()
    tok = Tokenizer.from_bpe({b2u[i]: i for i in range(256)}, [], "gpt2", {"<|endoftext|>": EOS},
                             eos_token="<|endoftext|>")
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=EOS + 1, n_layer=1, n_head=2, n_embd=16, max_seq_len=64, eos_id=EOS))
    save_pretrained(model, tmp_path / "m")
    tok.save_pretrained(tmp_path / "m")
    clf = RewardModel(GPT(GPTConfig(vocab_size=EOS + 1, n_layer=1, n_head=2, n_embd=16, max_seq_len=64)), 2)
    with torch.no_grad():
        clf.score.weight.normal_(0, 3.0)  # a random classifier: rewards differ between candidates
    clf.save_pretrained(tmp_path / "clf", tokenizer=tok)
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"the film was {w}"}) + "\n" for w in ("great", "dull", "ok")))
    out = tmp_path / "best.jsonl"
    args = ["--model", str(tmp_path / "m"), "--prompts", str(prompts), "--out", str(out), "--best-of", "4",
            "--reward", f"classifier:{tmp_path / 'clf'}", "--max-new-tokens", "4", "--device", "cpu"]
    assert sample.main(args) == 0, capsys.readouterr().err
    cands = [json.loads(line) for line in (tmp_path / "best.candidates.jsonl").read_text().splitlines()]
    best = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(cands) == 12 and len(best) == 3
    score = load_scorer(f"classifier:{tmp_path / 'clf'}")
    for b in best:
        mine = [c for c in cands if c["prompt_id"] == b["prompt_id"]]
        rewards = score([c["prompt"] for c in mine], [c["completion"] for c in mine]).tolist()
        assert len(set(rewards)) > 1
        assert b["candidate_rewards"] == pytest.approx(rewards) and b["reward"] == pytest.approx(max(rewards))
        assert b["completion"] == mine[b["best_sample_index"]]["completion"]
    assert sample.main(args[:-6] + ["--best-of", "4"]) == 1
    assert "--best-of and --reward go together" in capsys.readouterr().err


BAD_OUTS = ("a folder", "under a file", "read-only")  # a file is a fine --out: it is replaced


@pytest.mark.parametrize("case", [*BAD_OUTS, "missing samples", "malformed samples", "bad --reward", "bad --n",
                                  "too few candidates"])
def test_cli_bad_input_is_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys, case):
    """--out is checked before the reward is loaded; every bad input is one line naming the file or option."""
    samples, out = tmp_path / "candidates.jsonl", tmp_path / "best.jsonl"
    samples.write_text("".join(json.dumps(r) + "\n" for r in candidates({0: [0.5, 0.7], 1: [0.1, 0.2]})))
    argv, named = ["--samples", samples, "--reward", "quickstart", "--n", 2], [samples]
    if case in BAD_OUTS:
        out = bad_output_path(tmp_path, case, monkeypatch)
        named = [f"error: --out {out}: "]  # refused by the check before any work, not by a failed write
    elif case == "missing samples":
        argv[1] = named[0] = tmp_path / "nope.jsonl"
    elif case == "malformed samples":
        samples.write_text('{"prompt_id": 0, "sample_index": 0, "prompt": "p", "completion": "c"}\n[]\n')
        named = [f"{samples}:2: expected a JSON object, got list"]
    elif case == "bad --reward":
        argv[3], named = "nope", ["unknown reward 'nope'"]
    elif case == "bad --n":
        argv[5], named = 0, ["--n must be >= 1, got 0"]
    else:
        argv[5], named = 3, ["prompt_id 0: 2 candidates, expected 3"]
    refused(best_of_n.main, [*argv, "--out", out], capsys, tmp_path, *named)
