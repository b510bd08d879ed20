"""sample.py: the inverse-CDF draw restricted as top-k / top-p say, greedy = step-by-step argmax without the
cache, samples independent of batching, rank split and resume point, and the CLI (exit codes, errors)."""
import gzip
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import sample
from dpo.generation import filter_logits, generate, sample_token
from dpo.interop.hf_checkpoint import load_pretrained, save_pretrained
from dpo.model import GPT, GPTConfig
from dpo.tokenizer import Tokenizer
from helpers import OUTPUT_CASES, bad_output_path, byte_tokenizer, chatml_tokenizer, refused

ROOT = Path(__file__).resolve().parents[1]
EOS = 256


def tiny_model(seed: int = 0, embed_std: float = 0.3) -> GPT:
    """A random 2-layer GPT-2 whose next-token distributions are neither flat nor one-hot."""
    torch.manual_seed(seed)
    model = GPT(GPTConfig(vocab_size=EOS + 1, n_layer=2, n_head=2, n_embd=32, max_seq_len=96, eos_id=EOS))
    with torch.no_grad():
        model.wte.weight.normal_(0, embed_std)
    return model.eval()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("ckpt") / "model"
    save_pretrained(tiny_model(), out)
    byte_tokenizer().save_pretrained(out)
    return out


def prompts_of(texts, tokenizer):
    return [{"prompt_id": i, "prompt": t, "prompt_input_ids": tokenizer.encode(t)} for i, t in enumerate(texts)]


TEXTS = ["Hello", "The movie was", "I", "A much longer prompt than the others", "ok then", "why"]
SETTINGS = {"model": "tiny", "temperature": 1.0, "top_k": None, "top_p": None, "max_new_tokens": 12, "seed": 3}


# ---------------------------------------------------------------------------------------------- drawing


def test_inverse_cdf_reproduces_the_filtered_distribution():
    """Uniforms on a fine grid: each token's share of the grid equals its filtered probability (to 1/K),
    and tokens outside top-k / the top-p nucleus are never drawn."""
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 20, generator=g) * 2
    K = 20000
    u = (torch.arange(K, dtype=torch.float64) + 0.5) / K
    for temperature, top_k, top_p in [(1.0, None, None), (0.7, 5, None), (1.3, None, 0.8), (1.0, 6, 0.5)]:
        probs = filter_logits(logits, temperature, top_k, top_p).softmax(-1)
        for row in range(3):
            tokens = sample_token(logits[row].expand(K, -1), temperature, top_k, top_p, uniforms=u)
            freq = torch.bincount(tokens, minlength=20).double() / K
            assert (freq - probs[row].double()).abs().max() <= 2 / K
            # support by hand: the k largest, then the most likely tokens until their mass reaches top_p
            order = sorted(range(20), key=lambda v: -logits[row, v].item())
            kept = order[:top_k] if top_k else order
            if top_p is not None:
                p = torch.softmax(logits[row, kept] / temperature, -1).tolist()
                mass, nucleus = 0.0, []
                for v, pv in zip(kept, p):
                    if mass >= top_p:
                        break
                    nucleus.append(v)
                    mass += pv
                kept = nucleus
            assert set(tokens.tolist()) == set(kept)


def test_support_matches_model_sample_token():
    """The same restriction as dpo.generation.sample_token (drawn with torch.multinomial): equal supports."""
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(1, 30, generator=g) * 3
    for top_k, top_p in [(4, None), (None, 0.6), (8, 0.9)]:
        theirs = {sample_token(logits, 1.0, top_k, top_p, g).item() for _ in range(3000)}
        ours = set((filter_logits(logits, 1.0, top_k, top_p)[0] > float("-inf")).nonzero().flatten().tolist())
        assert theirs == ours


@torch.no_grad()
def test_greedy_equals_stepwise_argmax_without_cache():
    model, tok = tiny_model(), byte_tokenizer()
    prompts = [tok.encode(t) for t in TEXTS]  # of different lengths: left-padded in one batch
    new = generate(model, tok, prompts, max_new_tokens=10, temperature=0)
    for row, ids in enumerate(prompts):
        seq = list(ids)
        for _ in range(10):  # full recompute of the unpadded sequence every step, no KV cache
            seq.append(model(torch.tensor([seq]))[0, -1].argmax().item())
            if seq[-1] == EOS:
                break
        assert new[row] == seq[len(ids):]  # up to and including the EOS


@torch.no_grad()
def test_sampled_tokens_stay_in_top_k_of_the_model():
    model, tok = tiny_model(embed_std=0.1), byte_tokenizer()
    prompts = prompts_of(TEXTS, tok)
    settings = {**SETTINGS, "top_k": 3}
    rows = sample.sample_batch(model, tok, prompts, [(i, s) for i in range(len(TEXTS)) for s in range(4)],
                               settings, "cpu")
    for row in rows:
        seq = row["prompt_token_ids"]
        for t in row["completion_token_ids"]:
            top3 = model(torch.tensor([seq]))[0, -1].topk(3).indices.tolist()
            assert t in top3
            seq = seq + [t]


def test_samples_do_not_depend_on_batch_composition_and_follow_the_seed():
    model, tok = tiny_model(), byte_tokenizer()
    prompts = prompts_of(TEXTS, tok)
    rows = [(i, s) for i in range(len(TEXTS)) for s in range(2)]
    together = sample.sample_batch(model, tok, prompts, rows, SETTINGS, "cpu")
    alone = [sample.sample_batch(model, tok, prompts, [r], SETTINGS, "cpu")[0] for r in rows[::-1]][::-1]
    assert [r["completion_token_ids"] for r in together] == [r["completion_token_ids"] for r in alone]
    assert together[0]["completion_token_ids"] != together[1]["completion_token_ids"]  # sample_index matters
    again = sample.sample_batch(model, tok, prompts, rows, SETTINGS, "cpu")
    assert again == together
    other_seed = sample.sample_batch(model, tok, prompts, rows, {**SETTINGS, "seed": 4}, "cpu")
    assert [r["completion"] for r in other_seed] != [r["completion"] for r in together]


def test_row_fields_and_eos_handling():
    model, tok = tiny_model(), byte_tokenizer()
    prompts = prompts_of(TEXTS, tok)
    prompts[0]["reference"] = "a reference"
    rows = sample.sample_batch(model, tok, prompts, [(0, 0), (1, 0)], {**SETTINGS, "max_new_tokens": 40}, "cpu")
    for row in rows:
        ids = row["completion_token_ids"]
        assert row["finish_reason"] in ("eos", "length")
        if row["finish_reason"] == "eos":
            assert ids[-1] == EOS and EOS not in ids[:-1]
            assert row["completion"] == tok.decode(ids[:-1])
        else:
            assert len(ids) == 40 and EOS not in ids and row["completion"] == tok.decode(ids)
        assert {k: row[k] for k in SETTINGS} == {**SETTINGS, "max_new_tokens": 40}
    assert rows[0]["reference"] == "a reference" and "reference" not in rows[1]


# ---------------------------------------------------------------------------------------------- files


def run_all(model, tok, prompts, out, world_size=1, **kw):
    for rank in range(world_size):
        sample.run_sampling(model, tok, prompts, out, n=3, batch_size=4, settings=SETTINGS, rank=rank,
                            world_size=world_size, progress=False, **kw)
    return sample.merge(out, prompts)


def test_resumed_run_equals_uninterrupted_run(tmp_path):
    model, tok = tiny_model(), byte_tokenizer()
    prompts = prompts_of(TEXTS, tok)
    assert run_all(model, tok, prompts, tmp_path / "full.jsonl") == len(TEXTS) * 3
    out = tmp_path / "resumed.jsonl"
    first = sample.run_sampling(model, tok, prompts, out, n=3, batch_size=4, settings=SETTINGS, progress=False,
                                stop_after_batches=2)
    assert first["sampled"] == 8
    part = out.with_name(out.name + ".rank0.part")
    with open(part, "a") as f:  # a kill in the middle of writing a line
        f.write('{"prompt_id": 5, "sample_index": 0, "prompt": "wh')
    second = sample.run_sampling(model, tok, prompts, out, n=3, batch_size=4, settings=SETTINGS, progress=False)
    assert second["done_before"] == 8 and second["sampled"] == 10
    sample.merge(out, prompts)
    assert out.read_bytes() == (tmp_path / "full.jsonl").read_bytes()
    assert not list(tmp_path.glob("*.part"))
    # a finished file: nothing left to do
    assert sample.run_sampling(model, tok, prompts, out, n=3, batch_size=4, settings=SETTINGS,
                               progress=False)["sampled"] == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["prompt_id"], r["sample_index"]) for r in rows] == [(i, s) for i in range(len(TEXTS)) for s in range(3)]


def test_two_ranks_give_the_same_file_as_one(tmp_path):
    model, tok = tiny_model(), byte_tokenizer()
    prompts = prompts_of(TEXTS, tok)
    run_all(model, tok, prompts, tmp_path / "one.jsonl")
    run_all(model, tok, prompts, tmp_path / "two.jsonl", world_size=2)
    assert (tmp_path / "one.jsonl").read_bytes() == (tmp_path / "two.jsonl").read_bytes()


def test_resuming_with_other_settings_is_an_error(tmp_path):
    model, tok = tiny_model(), byte_tokenizer()
    prompts = prompts_of(TEXTS, tok)
    run_all(model, tok, prompts, tmp_path / "s.jsonl")
    with pytest.raises(sample.SampleError, match="temperature=1.0.*temperature=0.5"):
        sample.run_sampling(model, tok, prompts, tmp_path / "s.jsonl", settings={**SETTINGS, "temperature": 0.5},
                            progress=False)


def test_dpo_no_progress_turns_the_progress_bar_off(tmp_path, monkeypatch, capsys):
    """DPO_NO_PROGRESS=1 hides sample.py's progress bar, as it hides train.py's; without it the bar is drawn."""
    model, tok = tiny_model(), byte_tokenizer()
    prompts = prompts_of(TEXTS[:2], tok)
    monkeypatch.delenv("DPO_NO_PROGRESS", raising=False)
    sample.run_sampling(model, tok, prompts, tmp_path / "bar.jsonl", settings=SETTINGS)
    assert "sample[0]" in capsys.readouterr().err
    monkeypatch.setenv("DPO_NO_PROGRESS", "1")
    sample.run_sampling(model, tok, prompts, tmp_path / "quiet.jsonl", settings=SETTINGS)
    assert capsys.readouterr().err == ""


def test_load_prompts_jsonl(tmp_path):
    tok = byte_tokenizer()
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a"}\n\n{"prompt": "b", "id": "x7", "chosen": "c"}\n{"prompt": "c", "reference": "r"}\n')
    prompts, counts = sample.load_prompts(str(path), tok)
    assert [p["prompt_id"] for p in prompts] == [0, "x7", 2]
    assert [p.get("reference") for p in prompts] == [None, "c", "r"]
    assert prompts[1]["prompt_input_ids"] == tok.encode("b") and counts["blank lines (ignored)"] == 1
    path.write_text('{"prompt": "a", "id": 1}\n{"prompt": "b", "id": 1}\n')
    with pytest.raises(sample.DataError, match=r"p.jsonl:2: prompt_id 1 repeats line 1"):
        sample.load_prompts(str(path), tok)
    path.write_text('{"text": "a"}\n')
    with pytest.raises(sample.DataError, match=r"p.jsonl:1: missing key 'prompt'"):
        sample.load_prompts(str(path), tok)


def test_load_prompts_from_datasets(shared_data):
    tok = Tokenizer.from_pretrained(shared_data / "gpt2")
    imdb, _ = sample.load_prompts(f"imdb:{shared_data / 'aclImdb-mini'}:test", tok, prompt_seed=0, limit=50)
    assert len(imdb) == 50 and all(2 <= len(p["prompt_input_ids"]) <= 8 for p in imdb)
    assert {p["label"] for p in imdb} == {0}  # the split is sorted by polarity: --subsample spreads over it
    mixed, counts = sample.load_prompts(f"imdb:{shared_data / 'aclImdb-mini'}:test", tok, subsample=50)
    assert {p["label"] for p in mixed} == {0, 1} and len(mixed) == 50
    assert [p["prompt_id"] for p in mixed] == sorted(p["prompt_id"] for p in mixed)
    assert counts["prompts outside a random subset of 50 (--subsample)"] > 0
    assert len({len(p["prompt_input_ids"]) for p in imdb}) > 3
    again, _ = sample.load_prompts(f"imdb:{shared_data / 'aclImdb-mini'}:test", tok, prompt_seed=0, limit=50)
    assert again == imdb
    tldr, counts = sample.load_prompts(f"tldr:{shared_data / 'tldr-mini'}:test", tok, limit=5)
    assert all(p["prompt"].startswith("SUBREDDIT: r/") and p["prompt"].endswith("\nTL;DR:") for p in tldr)
    assert all(p["reference"].startswith(" ") for p in tldr) and [p["prompt_id"] for p in tldr] == list(range(5))
    assert counts["prompts after the first 5 (--limit)"] > 0


def test_load_prompts_quickstart_and_hh(tmp_path):
    tok = byte_tokenizer()
    assert len(sample.load_prompts("quickstart", tok)[0]) == 400
    assert len(sample.load_prompts("quickstart:train", tok)[0]) == 4000
    hh = tmp_path / "test.jsonl.gz"
    single = "\n\nHuman: How do I boil an egg?\n\nAssistant:"
    multi = "\n\nHuman: hi\n\nAssistant: hello\n\nHuman: and?\n\nAssistant:"
    with gzip.open(hh, "wt") as f:
        for prompt in (single, multi):
            f.write(json.dumps({"chosen": prompt + " Good answer.", "rejected": prompt + " Bad."}) + "\n")
    prompts, counts = sample.load_prompts(f"hh:{hh}", tok)
    assert [p["prompt"] for p in prompts] == [single, multi] and prompts[0]["reference"] == " Good answer."
    prompts, counts = sample.load_prompts(f"hh:{hh}:test", tok, single_turn=True)
    assert [p["prompt"] for p in prompts] == [single] and counts["multi-turn dialogues (--single-turn)"] == 1


# ---------------------------------------------------------------------------------------------- CLI


def cli(*args, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([sys.executable, str(ROOT / "sample.py"), *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


def test_cli_samples(checkpoint, tmp_path):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in TEXTS))
    out = tmp_path / "out" / "s.jsonl"
    args = ["--model", checkpoint, "--prompts", prompts, "--out", out, "--num-samples", 2, "--max-new-tokens", 8,
            "--batch-size", 5, "--device", "cpu", "--temperature", 0.8, "--top-p", 0.95]
    result = cli(*args, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 12 and rows[0]["model"] == str(checkpoint) and rows[0]["top_p"] == 0.95
    # the same rows as the library makes in-process (the CLI adds nothing random)
    model, tok = load_pretrained(checkpoint), Tokenizer.from_pretrained(checkpoint)
    settings = {k: rows[0][k] for k in sample.SETTINGS}
    expected = sample.sample_batch(model, tok, prompts_of(TEXTS, tok), [(0, 0), (5, 1)], settings, "cpu")
    assert [rows[0], rows[11]] == expected


def test_cli_bad_prompt_file_is_a_one_line_error(checkpoint, tmp_path):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": "ok"}\n{"prompt": \n')
    result = cli("--model", checkpoint, "--prompts", bad, "--out", tmp_path / "o.jsonl", "--device", "cpu",
                 cwd=tmp_path)
    assert result.returncode == 1
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines == [f"error: {bad}:2: invalid JSON (Expecting value at column 1)"]
    assert not (tmp_path / "o.jsonl").exists()


@pytest.mark.parametrize("case", [*OUTPUT_CASES, "missing prompts", "malformed prompts", "bad --top-p",
                                  "bad --reward", "missing model", "out of other settings", "malformed out"])
def test_bad_input_is_one_line_and_writes_nothing(checkpoint, tmp_path, monkeypatch, capsys, case):
    """Output paths are checked before the model is loaded (an existing folder as --out used to sample
    everything, then fail and leave .tmp and .rank0.part files); every bad input is one line."""
    prompts, out = tmp_path / "prompts.jsonl", tmp_path / "s.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": t}) + "\n" for t in TEXTS))
    model, extra, named = checkpoint, [], [out]
    if case in OUTPUT_CASES:
        out = bad_output_path(tmp_path, case, monkeypatch)
        named = [f"error: --out {out}: "]  # refused by the check before any work, not by a failed write
        if case == "a file":  # a file is a fine --out; under --best-of its .candidates.jsonl is a folder
            out.with_name("file.candidates.jsonl").mkdir()
            extra, named = ["--best-of", 2, "--reward", "quickstart"], [f"--out {tmp_path / 'file.candidates.jsonl'}: "]
    elif case == "missing prompts":
        prompts = named[0] = tmp_path / "nope.jsonl"
    elif case == "malformed prompts":
        prompts.write_text('{"prompt": "ok"}\n["a list"]\n')
        named = [f"{prompts}:2: expected a JSON object, got list"]
    elif case == "bad --top-p":
        extra, named = ["--top-p", 1.5], ["error: --top-p must be in (0, 1], got 1.5"]
    elif case == "bad --reward":
        extra, named = ["--best-of", 2, "--reward", "classifier:" + str(tmp_path / "nope")], [tmp_path / "nope"]
    elif case == "missing model":
        model = named[0] = tmp_path / "no-model"
    elif case == "out of other settings":
        out.write_text(json.dumps({"prompt_id": 0, "sample_index": 0, **SETTINGS}) + "\n")
        named = [out, "model='tiny', this run has model="]
    else:
        out.write_text('{"prompt_id": 0, "sample_index": 0}\n{"prompt_id": 1}\n')
        named = [f"{out}:2: not a samples row"]
    refused(sample.main, ["--model", model, "--prompts", prompts, "--out", out, "--max-new-tokens", 8, *extra],
            capsys, tmp_path, *named)


def test_conversational_prompts_are_rendered_by_the_chat_template(tmp_path):
    """A prompt given as messages is rendered as training renders it (template + generation prompt)."""
    tok = chatml_tokenizer()
    path = tmp_path / "prompts.jsonl"
    path.write_text(json.dumps({"prompt": [{"role": "user", "content": "Hi?"}]}) + "\n"
                    + json.dumps({"prompt": "plain"}) + "\n")
    prompts, _ = sample.load_prompts(str(path), tok, chat_template="chatml")
    assert prompts[0]["prompt"] == "<|im_start|>user\nHi?<|im_end|>\n<|im_start|>assistant\n"
    assert prompts[0]["prompt_input_ids"][0] == 257 and prompts[1]["prompt"] == "plain"
    path.write_text(json.dumps({"prompt": [{"role": "robot", "content": "Hi?"}]}) + "\n")
    with pytest.raises(sample.DataError, match="prompts.jsonl:1: prompt: a message with an unknown role"):
        sample.load_prompts(str(path), tok, chat_template="chatml")
