"""The TL;DR / HH win-rate driver: preference pairs ordered by ROUGE-L, the shipped configs, the judge stage
end to end against a stub OpenAI-compatible server on 127.0.0.1, the notebook executed headless on a small
results file, a smoke run of every stage on a toy TL;DR folder (tiny models), and both drivers' command line
(common.driver_main: bad input, the plot stage's out_dir/figures/ and --publish)."""
import gzip
import http.server
import json
import random
import re
import threading
from collections import Counter
from pathlib import Path

import pytest

from dpo import data
from dpo.config import load_config
from dpo.evaluate import judge as J
from dpo.experiments import common, imdb, pairs, tldr
from helpers import OUTPUT_CASES, bad_output_path, refused, write_toy_reward_model_config

ROOT = Path(__file__).resolve().parents[2]


def rows_of(path) -> list[dict]:
    return [row for _, row in data.read_jsonl(path)]


def lcs(a: list, b: list) -> int:
    """Longest common subsequence by the textbook full table (independent of dpo.evaluate.rewards.lcs_length)."""
    table = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
    for i, x in enumerate(a):
        for j, y in enumerate(b):
            table[i + 1][j + 1] = table[i][j] + 1 if x == y else max(table[i][j + 1], table[i + 1][j])
    return table[-1][-1]


def rouge_l_f1(candidate: str, reference: str) -> float:
    c, r = re.findall(r"[a-z0-9]+", candidate.lower()), re.findall(r"[a-z0-9]+", reference.lower())
    n = lcs(c, r)
    return 0.0 if n == 0 else 2 * n / (len(c) + len(r))  # F1 = 2PR/(P+R) = 2·LCS/(|c|+|r|)


def wilson(k: int, n: int, z: float = 1.959964) -> tuple[float, float]:
    """95% Wilson score interval, from its formula."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * (p * (1 - p) / n + z * z / (4 * n * n)) ** 0.5
    return max(0.0, centre - half), min(1.0, centre + half)


# ---------------------------------------------------------------------------------------------------
# Pairs: SFT samples ordered by ROUGE-L against the human summary

def test_pairs_are_ordered_by_rouge_l_against_the_reference_ties_dropped_and_counted():
    reference = " library for reading PNG images"
    completions = [" library for PNG images",        # LCS 4 of 4 / 5 words -> F1 8/9
                   " tool to convert images",        # LCS 1 ("images") -> F1 2/9
                   " images tool to convert",        # LCS 1 too: a tie with the one above
                   " library for reading PNG images"]  # the reference itself: F1 1
    samples = [{"prompt_id": "train:0", "sample_index": i, "prompt": "P0", "completion": c, "reference": reference}
               for i, c in enumerate(completions)]
    samples += [{"prompt_id": "valid:3", "sample_index": i, "prompt": "P1", "completion": c,
                 "reference": " documentation for pinentry"} for i, c in enumerate([" pinentry docs", "  "])]
    by_split, counts = tldr.label_pairs(samples, {"train:0": "train", "valid:3": "judge"})
    assert list(by_split) == ["train", "judge"]
    got = [(p["chosen"], p["rejected"]) for p in by_split["train"]]
    c = completions
    assert got == [(c[0], c[1]), (c[0], c[2]), (c[3], c[0]), (c[3], c[1]), (c[3], c[2])]  # (1, 2) tie
    for p in by_split["train"]:
        assert p["reward_chosen"] == pytest.approx(rouge_l_f1(p["chosen"], reference))
        assert p["reward_rejected"] == pytest.approx(rouge_l_f1(p["rejected"], reference))
        assert p["reward_chosen"] > p["reward_rejected"] and p["prompt"] == "P0" and p["prompt_id"] == "train:0"
    assert by_split["train"][0]["reward_chosen"] == pytest.approx(8 / 9)
    assert counts["train"]["pairs possible"] == 6 and counts["train"]["pairs"] == 5
    assert counts["train"][pairs.TIE] == 1
    assert counts["train"]["mean sample ROUGE-L"] == pytest.approx(round((8 / 9 + 2 / 9 + 2 / 9 + 1) / 4, 4))
    assert by_split["judge"] == [] and counts["judge"][pairs.EMPTY] == 1 and counts["judge"][pairs.SINGLE] == 1
    with pytest.raises(common.ExperimentError, match="no reference summary"):
        tldr.label_pairs([dict(samples[0], reference="")], {"train:0": "train"})


def test_cut_words_and_seeded_subsets():
    assert tldr.cut_words("a  b\n\nc d e", 3) == "a  b\n\nc"
    assert tldr.cut_words("a b", 3) == "a b"
    rows = [{"prompt": f"p{i}"} for i in range(10)]
    ids = lambda n, seed: [r["prompt_id"] for r in tldr.pick_prompts(rows, n, seed, "test")]  # noqa: E731
    assert ids(4, 0) == ids(4, 0) != ids(4, 1) and len(ids(4, 0)) == 4
    assert ids(0, 0) == [f"test:{i}" for i in range(10)]
    assert all(r["prompt"] == rows[int(r["prompt_id"][5:])]["prompt"] for r in tldr.pick_prompts(rows, 4, 0, "test"))
    assert [tldr.temperature_name(t) for t in (0, 0.25, 1.0)] == ["t0", "t0.25", "t1"]


# ---------------------------------------------------------------------------------------------------
# Configs

def test_shipped_configs_validate():
    mini = load_config(ROOT / "configs" / "tldr" / "mini.yaml", cls=tldr.WinRateExperiment)
    tldr.check_experiment(mini)
    assert mini.temperatures == [0.0, 0.25, 0.5, 0.75, 1.0] and mini.preferences == "samples"
    assert [r["name"] for r in tldr.sweep(mini)] == ["dpo", "preferred_ft", "ppo"]
    ppo = tldr.sweep(mini)[2]  # PPO against the reward model the reward_models stage trains (Best-of-N's)
    assert ppo["overrides"] == ["ppo.reward=reward_model:{reward_model}"] and mini.reward_model_config
    assert load_config(ppo["config"]).ppo.max_new_tokens == mini.max_new_tokens
    assert "loss.beta=0.5" in tldr.sweep(mini)[0]["overrides"]
    assert [(j["judge"], j["against"]) for j in mini.judges] == [("rouge", "sft@0"), ("judge_model", "reference")]
    paper = load_config(ROOT / "configs" / "tldr" / "pipeline.yaml", cls=tldr.WinRateExperiment)
    tldr.check_experiment(paper)
    assert paper.sft_model == "CarperAI/openai_summarize_tldr_sft" and paper.preferences == "human"
    assert paper.temperatures == [0.0, 0.25, 0.5, 0.75, 1.0] and paper.best_of == 128
    assert paper.judges[0]["judge"] == "llm" and paper.judges[0]["task"] == "summary_concise"
    assert "loss.beta=0.5" in tldr.sweep(paper)[0]["overrides"]
    assert [r["name"] for r in tldr.sweep(paper)] == ["dpo", "preferred_ft"]  # PPO does not fit GPT-J without FSDP2
    paper_ppo = load_config(ROOT / "configs" / "tldr" / "ppo.yaml")
    assert paper_ppo.model.name == paper.sft_model and paper_ppo.ppo.max_new_tokens == paper.max_new_tokens
    hh = load_config(ROOT / "configs" / "hh" / "pipeline.yaml", cls=tldr.WinRateExperiment)
    tldr.check_experiment(hh)
    assert hh.task == "hh" and hh.temperatures == [0.25, 0.7, 1.0] and hh.single_turn
    assert hh.judges[0]["task"] == "dialogue" and hh.judges[0]["against"] == "reference"
    for path in ["configs/tldr/mini_sft.yaml", "configs/tldr/mini_dpo.yaml", "configs/tldr/mini_reward_model.yaml",
                 "configs/tldr/reward_model.yaml", "configs/tldr/sft.yaml", "configs/hh/reward_model.yaml"]:
        load_config(str(ROOT / path))  # unknown keys or wrong types raise


@pytest.mark.parametrize("overrides, message", [
    (["judges=[{name: r, judge: rouge, against: reference}]"], "degenerate"),
    (["judges=[{name: a, judge: llm}, {name: a, judge: rouge, against: sft@0}]"], "unique"),
    (["judges=[{name: a, judge: llm, agianst: reference}]"], "unknown key"),
    (["judges=[{name: a, judge: llm, against: sft}]"], "RUN@T"),
    (["task=summaries"], "task must be one of"),
    (["best_of=4", "reward_model_config="], "best_of > 0 needs reward_model_config"),
    (["preferences=samples", "task=hh"], "needs task tldr"),
    (["temperatures=[]"], "temperatures"),
    (["methods={sft: {}}"], "taken by the baselines"),
    (["reward_model_config=", "best_of=0", "methods={ppo: {config: configs/tldr/ppo.yaml, "
      "overrides: ['ppo.reward=reward_model:{reward_model}']}}"],
     "run ppo uses {reward_model}, which needs reward_model_config"),
])
def test_bad_experiment_configs_fail_with_the_key(overrides, message):
    x = load_config(ROOT / "configs" / "tldr" / "pipeline.yaml", overrides, cls=tldr.WinRateExperiment)
    with pytest.raises(common.ExperimentError, match=message):
        tldr.check_experiment(x)


def test_hh_prompts_are_single_turn_with_the_chosen_reply(tmp_path):
    folder = tmp_path / "hh"
    rows = [{"chosen": "\n\nHuman: hi?\n\nAssistant: hello GOOD", "rejected": "\n\nHuman: hi?\n\nAssistant: go away"},
            {"chosen": "\n\nHuman: a\n\nAssistant: b\n\nHuman: c?\n\nAssistant: d", "rejected":
             "\n\nHuman: a\n\nAssistant: b\n\nHuman: c?\n\nAssistant: e"}]
    for subset in ("helpful-base", "harmless-base", "helpful-online", "helpful-rejection-sampled"):
        (folder / subset).mkdir(parents=True)
        with gzip.open(folder / subset / "test.jsonl.gz", "wt") as f:
            f.write("".join(json.dumps(r) + "\n" for r in rows))
    x = tldr.WinRateExperiment(task="hh", data_path=str(folder), out_dir=str(tmp_path / "out"), eval_prompts=0)
    counts = Counter()
    prompts = tldr.task_prompts(x, "test", counts)
    assert len(prompts) == 4 and counts["multi-turn dialogues (single_turn)"] == 4
    assert prompts[0]["prompt"] == "\n\nHuman: hi?\n\nAssistant:" and prompts[0]["reference"] == " hello GOOD"
    path = tldr.write_eval_prompts(x)
    written = rows_of(path)
    assert sorted(r["prompt_id"] for r in written) == ["test:0", "test:1", "test:2", "test:3"]


# ---------------------------------------------------------------------------------------------------
# The judge stage against a stub OpenAI-compatible chat-completions server

class StubJudge(http.server.BaseHTTPRequestHandler):
    """/v1/chat/completions answering like a judge that prefers the longer summary (A when equal).
    server.garbage: answer this many requests with text that has no verdict line."""

    def log_message(self, *args):
        pass

    def do_POST(self):
        srv = self.server
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        prompt = body["messages"][0]["content"]
        a = prompt.split("Summary A:\n", 1)[1].split("\n\nSummary B:", 1)[0]
        b = prompt.split("Summary B:\n", 1)[1].split("\n\nAnswer in two lines", 1)[0]
        with srv.lock:
            srv.bodies.append(body)
            srv.paths.append(self.path)
            srv.auth.append(self.headers.get("Authorization"))
            garbage = srv.garbage > 0
            srv.garbage -= garbage
        text = "I cannot decide." if garbage else \
            f"Comparison: one summary is longer.\nPreferred: {'A' if len(a) >= len(b) else 'B'}"
        payload = json.dumps({"choices": [{"message": {"role": "assistant", "content": text}}]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)


@pytest.fixture
def stub_judge():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), StubJudge)
    server.lock, server.bodies, server.paths, server.auth, server.garbage = threading.Lock(), [], [], [], 0
    server.url = f"http://127.0.0.1:{server.server_address[1]}/v1"
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


POSTS = [("pinentry-doc", "This package holds the documentation for pinentry, programs for entering PINs.",
          " documentation for pinentry"),
         ("xutils", "A set of utility programs shipped with the X Window System.", " X utility programs"),
         ("libpng-tools", "Tools that read and write PNG images from the command line.", " PNG image tools"),
         ("groff-base", "The traditional text formatting tools troff and nroff.", " text formatting system"),
         ("alsa-oss", "A wrapper that lets OSS applications run on ALSA.", " ALSA wrapper for OSS")]


def tldr_prompt(title: str, post: str) -> str:
    return f"SUBREDDIT: r/debian\nTITLE: {title}\nPOST: {post}\nTL;DR:"


def write_generations(x: tldr.WinRateExperiment, run: str, temperature: float, completions: list[str]) -> None:
    rows = [{"prompt_id": f"test:{i}", "sample_index": 0, "prompt": tldr_prompt(t, p), "completion": c,
             "reference": ref, "model": f"runs/{run}/final", "temperature": temperature, "top_k": None,
             "top_p": None, "max_new_tokens": 24, "seed": 0, "finish_reason": "eos"}
            for i, ((t, p, ref), c) in enumerate(zip(POSTS, completions))]
    common.write_jsonl(tldr.generations_file(x, run, temperature), rows)


def test_judge_stage_end_to_end_against_a_stub_server(tmp_path, stub_judge, monkeypatch, capsys):
    monkeypatch.setenv("DPO_JUDGE_URL", stub_judge.url)      # what a user provides for the paper-scale run
    monkeypatch.setenv("DPO_JUDGE_MODEL", "stub-gpt")
    monkeypatch.setenv("DPO_JUDGE_API_KEY", "sk-test")
    x = load_config(None, [
        f"out_dir={tmp_path / 'out'}", "methods={dpo: {overrides: [loss.beta=0.5]}}", "temperatures=[0, 1]",
        "judges=[{name: gpt, judge: llm, against: reference, workers: 2},"
        "        {name: rouge, judge: rouge, against: sft@0}]"], cls=tldr.WinRateExperiment)
    tldr.check_experiment(x)
    # reference lengths 27, 19, 16, 23, 21 characters; sft@0 on post 1 ties its reference (the stub says A)
    completions = {("sft", 0): [" docs", " X utility programs", " tools", " text", " ALSA"],
                   ("sft", 1): [" pinentry", " programs", " PNG", " troff", " OSS wrapper"],
                   ("dpo", 0): [" the documentation for pinentry", " X Window utility programs",
                                " command line PNG tools", " troff and nroff formatting", " wrapper"],
                   ("dpo", 1): [" documentation of pinentry programs", " xx", " PNG image tools here", " t", " a"]}
    for (run, t), texts in completions.items():
        write_generations(x, run, t, texts)
    stub_judge.garbage = 1
    results = tldr.stage_judge(x)
    out = capsys.readouterr().out
    assert "20 HTTP requests, 0 answers from the cache" in out, out

    # every request: the concise TL;DR prompt with the post alone, to the chat-completions URL, with the key
    assert len(stub_judge.bodies) == 20 and set(stub_judge.paths) == {"/v1/chat/completions"}
    assert set(stub_judge.auth) == {"Bearer sk-test"}
    assert all(b["model"] == "stub-gpt" and b["temperature"] == 0 for b in stub_judge.bodies)
    first = stub_judge.bodies[0]["messages"][0]["content"]
    assert first.startswith(J.SUMMARY_CONCISE_PROMPT.split("{context}")[0]) and "TL;DR" not in first
    assert "SUBREDDIT" not in first and "Preferred: <A or B>" in first

    rows = {(r["judge"], r["run"], r["temperature"]): r for r in results}
    assert len(rows) == 8
    positions = Counter()
    unparseable = 0
    for (run, t), texts in completions.items():
        row = rows[("gpt", run, float(t))]
        verdicts = rows_of(tmp_path / "out" / "verdicts" / "gpt" / run / f"{tldr.temperature_name(t)}.jsonl")
        assert len(verdicts) == 5
        expected = Counter()
        for v, text, (_, _, reference) in zip(verdicts, texts, POSTS):
            assert v["candidate"] == text and v["baseline"] == reference
            positions[v["candidate_position"]] += 1
            if v["status"] == "unparseable":
                unparseable += 1
                assert v["winner"] is None
                continue
            longer = len(text.strip()) > len(reference.strip())
            tie = len(text.strip()) == len(reference.strip())
            wins = longer or (tie and v["candidate_position"] == "A")
            assert v["winner"] == ("candidate" if wins else "baseline")
            expected["wins" if wins else "losses"] += 1
        assert (row["wins"], row["losses"], row["ties"]) == (expected["wins"], expected["losses"], 0)
        assert row["n"] == expected["wins"] + expected["losses"]
        assert row["win_rate"] == pytest.approx(expected["wins"] / row["n"])
        assert (row["ci_low"], row["ci_high"]) == pytest.approx(wilson(expected["wins"], row["n"]))
        assert row["rouge_l_mean"] == pytest.approx(sum(rouge_l_f1(c, r) for c, (_, _, r) in zip(texts, POSTS)) / 5)
        assert row["mean_words"] == pytest.approx(sum(len(c.split()) for c in texts) / 5)
    assert unparseable == 1 and sum(r["unparseable"] for r in results) == 1  # counted, never guessed
    assert positions["A"] > 0 and positions["B"] > 0  # the order is randomised
    assert rows[("gpt", "dpo", 0.0)]["win_rate"] > rows[("gpt", "sft", 0.0)]["win_rate"]

    # the ROUGE judge against the SFT model's greedy summaries: sft@0 against itself ties everywhere
    assert rows[("rouge", "sft", 0.0)]["ties"] == 5 and rows[("rouge", "sft", 0.0)]["win_rate"] == 0.5
    dpo0 = rows[("rouge", "dpo", 0.0)]
    sft0 = completions[("sft", 0)]
    wins = sum(rouge_l_f1(c, r) > rouge_l_f1(s, r) for c, s, (_, _, r) in zip(completions[("dpo", 0)], sft0, POSTS))
    ties = sum(rouge_l_f1(c, r) == rouge_l_f1(s, r) for c, s, (_, _, r) in zip(completions[("dpo", 0)], sft0, POSTS))
    assert (dpo0["wins"], dpo0["ties"]) == (wins, ties) and dpo0["against"] == "sft@0"

    # the CSV for the notebook, and a rerun: nothing left to judge, then (results removed) every answer cached
    csv_rows = (tmp_path / "out" / "results.csv").read_text().splitlines()
    assert csv_rows[0].split(",") == tldr.RESULT_COLUMNS and len(csv_rows) == 9
    tldr.stage_judge(x)
    assert len(stub_judge.bodies) == 20
    (tmp_path / "out" / "results.jsonl").unlink()
    again = tldr.stage_judge(x)
    assert len(stub_judge.bodies) == 20 and "0 HTTP requests, 20 answers from the cache" in capsys.readouterr().out
    assert [r["win_rate"] for r in again] == [r["win_rate"] for r in results]


def test_judge_stage_needs_the_generations(tmp_path):
    x = load_config(None, [f"out_dir={tmp_path}", "temperatures=[0]",
                           "judges=[{name: r, judge: rouge, against: sft@0}]"], cls=tldr.WinRateExperiment)
    with pytest.raises(common.ExperimentError, match=r"t0.jsonl: missing; run the generate stage first"):
        tldr.stage_judge(x)


# ---------------------------------------------------------------------------------------------------
# The notebook, headless

def results_rows() -> list[dict]:
    rows = []
    for judge, against in (("judge-rm", "reference"), ("rouge-vs-sft", "sft@0")):
        for run, method, base in (("sft", "sft", 0.40), ("dpo", "dpo", 0.55), ("preferred_ft", "preferred_ft", 0.45),
                                  ("ppo", "ppo", 0.52), ("best_of_8", "best_of", 0.5)):
            for t in (0.0, 0.25, 0.5, 0.75, 1.0):
                w = round(base - 0.08 * t, 4)
                rows.append({"judge": judge, "judge_spec": "judge_model" if judge == "judge-rm" else "rouge",
                             "against": against, "run": run, "method": method, "temperature": t,
                             "best_of": 8 if method == "best_of" else 0, "n": 100, "wins": round(100 * w),
                             "losses": 100 - round(100 * w), "ties": 0, "unparseable": 0, "errors": 0,
                             "missing_baseline": 0, "win_rate": w, "ci_low": round(w - 0.1, 4),
                             "ci_high": round(w + 0.1, 4), "rouge_l_mean": 0.3, "mean_words": 6.0, "samples": "x"})
    return rows


def test_notebook_executes_headless_and_writes_the_png(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("matplotlib")
    results = tmp_path / "results.csv"
    common.write_csv(results, results_rows(), tldr.RESULT_COLUMNS)
    figure = tmp_path / "figures" / "tldr_winrate.png"
    monkeypatch.setenv("WINRATE_RESULTS", str(results))
    monkeypatch.setenv("WINRATE_FIGURE", str(figure))
    monkeypatch.setenv("WINRATE_TASK", "tldr")
    notebook = nbformat.read(ROOT / "notebooks" / "tldr_winrate.ipynb", as_version=4)
    nbclient.NotebookClient(notebook, timeout=120, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and figure.stat().st_size > 10_000
    assert figure.with_suffix(".csv").read_text() == results.read_text()
    table = figure.with_suffix(".md").read_text()
    sections = table.strip().split("\n\n")
    assert len(sections) == 4  # per judge: a caption and a table
    assert sections[0] == "judge judge-rm (judge_model) vs the human reference, n = 100 prompts"
    lines = sections[1].splitlines()
    assert lines[0] == "| method | T = 0 | T = 0.25 | T = 0.5 | T = 0.75 | T = 1 |"
    assert lines[2] == ("| SFT | 0.40 [0.30, 0.50] | 0.38 [0.28, 0.48] | 0.36 [0.26, 0.46] | 0.34 [0.24, 0.44] "
                        "| 0.32 [0.22, 0.42] |")
    assert lines[3].startswith("| DPO | 0.55 [0.45, 0.65] |") and lines[5].startswith("| PPO | 0.52 [0.42, 0.62] |")
    assert lines[6].startswith("| Best of 8 |")
    assert sections[2].startswith("judge rouge-vs-sft (rouge) vs sft samples at T = 0, n = 100 prompts")


# ---------------------------------------------------------------------------------------------------
# The driver, every stage, on a toy TL;DR folder

WORDS = "library tool module documentation files data python perl image audio".split()


def toy_tldr(root: Path) -> Path:
    """A tldr_3_filtered-layout folder of 10 words: a summary is 3 of them, its post repeats them among others
    (a model that has learnt little more than the words already samples summaries of varied ROUGE-L)."""
    rng = random.Random(0)
    for split, n in (("train", 40), ("valid", 8), ("test", 6)):
        rows = []
        for i in range(n):
            summary = " ".join(rng.sample(WORDS, 3))
            post = " ".join(rng.sample(WORDS, 6) + summary.split() + rng.sample(WORDS, 4))
            rows.append({"id": f"{split}{i}", "subreddit": "debian", "title": f"pkg{i}", "post": post,
                         "summary": summary})
        common.write_jsonl(root / f"{split}.jsonl", rows)
    return root


def write_toy_configs(tmp_path: Path) -> Path:
    (tmp_path / "sft.yaml").write_text("""
model: {name: "", tokenizer_vocab_size: 400, n_layer: 1, n_head: 2, n_embd: 32, max_seq_len: 96}
data: {format: sft_jsonl, eval_examples: 8, max_length: 88, max_prompt_length: 4, truncation: keep_response}
loss: {name: sft}
train: {epochs: 2, batch_size: 8, micro_batch_size: 8, optimizer: adamw, lr: 1.0e-2, warmup_steps: 0,
        log_every: 100, device: cpu}
wandb: {mode: disabled}
""")
    write_toy_reward_model_config(tmp_path / "rm.yaml", 80)
    (tmp_path / "dpo.yaml").write_text("""
data: {format: preference_jsonl, eval_examples: 8, max_length: 80, max_prompt_length: 64}
loss: {name: sigmoid, beta: 0.5}
train: {epochs: 1, max_examples: 16, batch_size: 8, micro_batch_size: 8, optimizer: rmsprop, lr: 1.0e-3,
        warmup_steps: 0, log_every: 100, device: cpu}
wandb: {mode: disabled}
""")
    (tmp_path / "ppo.yaml").write_text("""
data: {format: preference_jsonl, eval_examples: 4, max_length: 80, max_prompt_length: 64}
loss: {name: ppo}
ppo: {iterations: 2, rollout_prompts: 8, minibatch_size: 4, ppo_epochs: 1, max_new_tokens: 8, kl_target: 0}
train: {optimizer: adamw, lr: 1.0e-3, log_every: 100, device: cpu}
wandb: {mode: disabled}
""")
    (tmp_path / "experiment.yaml").write_text(f"""
task: tldr
out_dir: {tmp_path / 'out'}
data_path: {toy_tldr(tmp_path / 'tldr')}
device: cpu
max_post_words: 12
sft_text: true
sft_config: {tmp_path / 'sft.yaml'}
preferences: samples
pair_prompts: 0
pair_eval_prompts: 4
judge_prompts: 8
samples_per_prompt: 4
max_new_tokens: 8
sample_batch_size: 64
reward_model_config: {tmp_path / 'rm.yaml'}
judge_model_config: {tmp_path / 'rm.yaml'}
train_config: {tmp_path / 'dpo.yaml'}
methods:
  dpo: {{overrides: [loss.name=sigmoid]}}
  ppo: {{config: {tmp_path / 'ppo.yaml'}, overrides: ["ppo.reward=reward_model:{{reward_model}}"]}}
eval_prompts: 0
temperatures: [0, 1]
best_of: 2
judges:
  - {{name: judge-rm, judge: judge_model, against: reference}}
  - {{name: rouge-vs-sft, judge: rouge, against: sft@0}}
figure: {tmp_path / 'figure.png'}
""")
    return tmp_path / "experiment.yaml"


def test_driver_runs_every_stage_on_a_toy_folder(tmp_path, capsys):
    config = write_toy_configs(tmp_path)
    stages = "download,prepare,sft,pairs,reward_models,train,generate,judge"
    assert tldr.main(["--config", str(config), "--stage", stages]) == 0
    out = tmp_path / "out"
    # prepare: posts cut to 12 words
    posts = rows_of(out / "data" / "tldr" / "train.jsonl")
    assert all(len(r["post"].split()) == 12 for r in posts)
    texts = rows_of(out / "data" / "sft_text" / "train.jsonl")
    assert texts[0] == {"prompt": "", "id": "train0", "completion": f"SUBREDDIT: r/debian\nTITLE: pkg0\nPOST: "
                        f"{posts[0]['post']}\nTL;DR: {posts[0]['summary']}"}
    # pairs: every split's counts add up; each pair ordered by ROUGE-L against its reference
    summary = json.loads((out / "pairs" / "summary.json").read_text())
    references = {r["prompt_id"]: r["reference"] for r in rows_of(out / "prompts" / "pairs.jsonl")}
    for split, prompts in (("train", 36), ("eval", 4), ("judge", 8)):
        c = summary[split]
        assert c["prompts"] == prompts and c["samples"] == 4 * prompts and c["pairs possible"] == 6 * prompts
        assert c["pairs"] + c.get(pairs.TIE, 0) + c.get(pairs.EMPTY, 0) == c["pairs possible"]
        rows = rows_of(out / "pairs" / f"{split}.jsonl")
        assert len(rows) == c["pairs"]
        for p in rows:
            reference = references[p["prompt_id"]]
            assert rouge_l_f1(p["chosen"], reference) > rouge_l_f1(p["rejected"], reference)
    assert {r["prompt_id"].split(":")[0] for r in rows_of(out / "pairs" / "judge.jsonl")} == {"valid"}
    for name in ("sft", "reward_model", "judge_model", "runs/dpo", "runs/ppo"):
        assert common.train_done(out / name)
    ppo_config = (out / "runs" / "ppo" / "config.yaml").read_text()
    assert f"reward: reward_model:{out / 'reward_model' / 'final'}" in ppo_config  # the stage's model, reused
    # generate: every policy at every temperature, one sample per test post; Best-of-2 greedy is sampled once
    for run in ("sft", "dpo", "ppo", "best_of_2"):
        for t in ("t0", "t1"):
            rows = rows_of(out / "generations" / run / f"{t}.jsonl")
            assert len(rows) == 6 and all(r["reference"] for r in rows)
    assert {r["best_of"] for r in rows_of(out / "generations" / "best_of_2" / "t0.jsonl")} == {1}
    assert {r["best_of"] for r in rows_of(out / "generations" / "best_of_2" / "t1.jsonl")} == {2}
    # judge: 2 judges x 4 runs x 2 temperatures; PPO's rows have the columns DPO's have
    results = rows_of(out / "results.jsonl")
    assert len(results) == 16 and all(r["n"] + r["unparseable"] + r["errors"] == 6 for r in results)
    ppo_rows = [r for r in results if r["run"] == "ppo"]
    assert len(ppo_rows) == 4 and all(set(r) == set(results[0]) and r["method"] == "ppo" for r in ppo_rows)
    assert sum(line.split(",")[3] == "ppo" for line in (out / "results.csv").read_text().splitlines()) == 4
    same = [r for r in results if r["judge"] == "rouge-vs-sft" and r["run"] == "sft" and r["temperature"] == 0]
    assert same[0]["ties"] == 6 and same[0]["win_rate"] == 0.5
    printed = capsys.readouterr().out
    assert "| run | T = 0 | T = 1 |" in printed and "=== stage judge done" in printed and "\n| ppo | " in printed
    # a rerun finds everything done
    assert tldr.main(["--config", str(config), "--stage", "prepare,pairs,generate,judge"]) == 0
    assert "skip: " in capsys.readouterr().out
    assert len(rows_of(out / "results.jsonl")) == 16


@pytest.mark.parametrize("case", ["a file", "under a file", "read-only", "missing config", "malformed config",
                                  "bad --stage", "bad override", "--publish without plot"])
def test_cli_bad_input_is_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys, case):
    """The drivers' command line (common.driver_main): out_dir is checked before any stage runs; a bad
    config, stage or override is one line naming it."""
    config = tmp_path / "mini.yaml"
    config.write_text((ROOT / "configs" / "tldr" / "mini.yaml").read_text())
    argv, named = ["--config", config, "--stage", "prepare", f"out_dir={tmp_path / 'run'}"], []
    if case in OUTPUT_CASES:
        out = bad_output_path(tmp_path, case, monkeypatch)
        argv[-1], named = f"out_dir={out}", [f"error: out_dir {out}: "]
    elif case == "missing config":
        argv[1] = tmp_path / "nope.yaml"
        named = [f"{tmp_path / 'nope.yaml'}: cannot read config"]
    elif case == "malformed config":
        config.write_text("out_dir: [\n")
        named = [f"{config}: invalid YAML"]
    elif case == "bad --stage":
        argv[3], named = "prepare,sample", ["--stage: unknown stage(s) sample"]
    elif case == "--publish without plot":
        argv.append("--publish")
        named = ["--publish copies the plot stage's figure; add plot to --stage"]
    else:
        argv.append("judgez=1")
        named = ["unknown key 'judgez'"]
    refused(tldr.main, argv, capsys, tmp_path, *named)


@pytest.mark.parametrize("driver", [imdb, tldr], ids=["imdb", "tldr"])
def test_plot_stage_writes_out_dir_and_only_publish_replaces_figure(tmp_path, monkeypatch, driver):
    """Both drivers' plot stage (common.execute_notebook) writes the figure, CSV and table under
    out_dir/figures/ (IMDB: and its results.md as <figure name>_results.md) and leaves the config's `figure`
    (a committed file) and those beside it byte for byte as they were; with --publish it copies the run's
    files over them. The notebook is a stand-in."""
    def run_notebook(notebook, env_vars, results):
        figure = next(v for k, v in env_vars.items() if k.endswith("_FIGURE"))
        for path in common.figure_files(figure):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(f"{path.suffix} of the run, from {results.read_text()}")
    monkeypatch.setattr(common, "run_notebook", run_notebook)
    out, report = tmp_path / "out", driver is imdb
    common.write_csv(out / "results.csv", [{"run": "sft"}], ["run"])
    (out / "results.md").write_text("# the report")
    published = common.figure_files(tmp_path / "figures" / "plot.png", report)
    published[0].parent.mkdir()
    for path in published:
        path.write_text(f"committed {path.name}")
    config = tmp_path / "experiment.yaml"
    config.write_text(f"out_dir: {out}\nfigure: {published[0]}\n"
                      f"methods: {{dpo: {{param: loss.beta, values: [0.1]}}}}\n")
    argv = ["--config", str(config), "--stage", "plot"]
    assert driver.main(argv) == 0
    made = common.figure_files(out / "figures" / "plot.png", report)
    assert [p.read_text() for p in made] == [f"{s} of the run, from run\nsft\n" for s in (".png", ".csv", ".md")] \
        + ["# the report"] * report
    assert [p.read_text() for p in published] == [f"committed {p.name}" for p in published]
    assert driver.main(argv + ["--publish"]) == 0
    assert [p.read_bytes() for p in published] == [p.read_bytes() for p in made]
    assert sorted(published[0].parent.iterdir()) == sorted(published)  # no temporary file left
