"""The IMDB experiment's pieces: pair construction (4 samples -> 6 ordered pairs, ties dropped and counted),
the sweep, resumable files, review windows, the notebook executed headless on a small results file (alone,
and by the driver's plot stage with judge scores), and a smoke run of the driver's stages on a toy aclImdb
folder (tiny models, a random classifier as reward; PPO against a reward model trained on the pairs, PPO-GT
against the classifier)."""
import json
import os
import random
import shutil
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from dpo import data, formats
from dpo.config import load_config
from dpo.experiments import common, imdb, pairs
from helpers import write_toy_reward_model_config

ROOT = Path(__file__).resolve().parents[2]


def rows_of(path, **kw) -> list[dict]:
    return [row for _, row in data.read_jsonl(path, **kw)]


# ---------------------------------------------------------------------------------------------------
# Pairs

def test_four_samples_give_six_pairs_ordered_by_reward():
    counts = Counter()
    completions = ["a", "b", "c", "d"]
    rewards = [0.1, 0.9, 0.5, 0.3]
    got = pairs.ordered_pairs(completions, rewards, counts=counts)
    # every (i < j) once, chosen first: the higher reward
    assert got == [(1, 0), (2, 0), (3, 0), (1, 2), (1, 3), (2, 3)]
    assert all(rewards[c] > rewards[r] for c, r in got)
    assert sorted(tuple(sorted(p)) for p in got) == [(0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3)]
    assert counts == Counter()


def test_ties_and_empty_completions_are_dropped_and_counted():
    counts = Counter()
    got = pairs.ordered_pairs(["a", "b", "c", "d"], [0.5, 0.5, 0.2, 0.5], counts=counts)
    assert got == [(0, 2), (1, 2), (3, 2)]
    assert counts[pairs.TIE] == 3
    counts = Counter()
    got = pairs.ordered_pairs(["a", "b", "c", "d"], [0.5, 0.52, 0.2, 0.9], tie_tolerance=0.05, counts=counts)
    assert counts[pairs.TIE] == 1 and len(got) == 5
    counts = Counter()  # identical texts are a tie whatever the scores say; an empty side is no pair
    got = pairs.ordered_pairs(["same", "same", "  ", "x"], [0.1, 0.2, 0.9, 0.4], counts=counts)
    assert got == [(3, 0), (3, 1)]
    assert counts[pairs.TIE] == 1 and counts[pairs.EMPTY] == 3


def test_build_pairs_rows_counts_and_preference_jsonl_format(tmp_path):
    rows = [{"prompt_id": pid, "sample_index": s, "prompt": f"p{pid}", "completion": f"c{pid}{s}",
             "reward": r} for pid, rewards in [(0, [0.1, 0.9, 0.5, 0.3]), (1, [0.4, 0.4, 0.4, 0.8]), (2, [0.7])]
            for s, r in enumerate(rewards)]
    groups = pairs.group_samples(rows)
    assert list(groups) == [0, 1, 2]
    got, counts = pairs.build_pairs(groups)
    assert counts["prompts"] == 3 and counts["samples"] == 9
    assert counts["pairs possible"] == 6 + 6 + 0
    assert counts["pairs"] == len(got) == 6 + 3
    assert counts[pairs.TIE] == 3 and counts[pairs.SINGLE] == 1
    assert counts["pairs"] + counts[pairs.TIE] + counts[pairs.EMPTY] == counts["pairs possible"]
    assert got[0] == {"prompt": "p0", "chosen": "c01", "rejected": "c00", "reward_chosen": 0.9,
                      "reward_rejected": 0.1, "prompt_id": 0}
    assert all(p["reward_chosen"] > p["reward_rejected"] for p in got)
    path = tmp_path / "pairs.jsonl"
    common.write_jsonl(path, got)
    read = data.read_preference_jsonl(path)
    assert [(r["prompt"], r["chosen"], r["rejected"]) for r in read] == \
        [(p["prompt"], p["chosen"], p["rejected"]) for p in got]
    assert "pairs: 9" in pairs.format_pair_counts(counts)
    with pytest.raises(ValueError, match="different prompts"):
        pairs.build_pairs({0: [dict(rows[0]), dict(rows[1], prompt="other")]})


# ---------------------------------------------------------------------------------------------------
# Common pieces

def test_expand_sweep_names_and_overrides():
    runs = common.expand_sweep({
        "dpo": {"overrides": ["loss.name=sigmoid"], "param": "loss.beta", "values": [0.05, 5]},
        "unlikelihood": {"overrides": ["loss.name=unlikelihood"], "param": "loss.options.unlikelihood_alpha",
                         "values": [1]},
        "preferred_ft": {"overrides": ["loss.name=preferred_ft"]}})
    assert [r["name"] for r in runs] == ["dpo-beta0.05", "dpo-beta5", "unlikelihood-alpha1", "preferred_ft"]
    assert runs[1]["overrides"] == ["loss.name=sigmoid", "loss.beta=5"] and runs[1]["config"] == ""
    assert runs[2]["overrides"][-1] == "loss.options.unlikelihood_alpha=1"
    assert runs[3]["param"] == "" and runs[3]["value"] is None
    with pytest.raises(common.ExperimentError, match="go together"):
        common.expand_sweep({"dpo": {"param": "loss.beta"}})
    with pytest.raises(common.ExperimentError, match="unknown key"):
        common.expand_sweep({"dpo": {"valuez": [1]}})
    ppo = common.expand_sweep({"ppo": {"config": "ppo.yaml", "overrides": ["ppo.reward=reward_model:{reward_model}"],
                                       "param": "ppo.kl_target", "values": [3]}})
    assert ppo[0]["name"] == "ppo-kl_target3" and ppo[0]["config"] == "ppo.yaml"
    with pytest.raises(common.ExperimentError, match="uses {reward_model}, which needs reward_model_config"):
        common.check_reward_model_runs(ppo, "")
    assert common.fill_in(ppo[0]["overrides"], {"reward_model": "/rm"}) == ["ppo.reward=reward_model:/rm",
                                                                             "ppo.kl_target=3"]


def test_the_paper_sweep_in_the_shipped_configs():
    for name in ("paper.yaml", "mini.yaml"):
        x = load_config(ROOT / "configs" / "imdb" / name, cls=imdb.ImdbExperiment)
        runs = imdb.sweep(x)
        assert [r["value"] for r in runs if r["method"] == "dpo"] == [0.05, 0.1, 1, 5]
        assert [r["value"] for r in runs if r["method"] == "unlikelihood"] == [0.05, 0.1, 0.5, 1]
        assert [r["name"] for r in runs if r["method"] == "preferred_ft"] == ["preferred_ft"]
        assert x.samples_per_prefix == 4 and x.max_new_tokens == 60 and x.temperature == 1.0
        for method, reward in (("ppo", f"ppo.reward=reward_model:{x.out_dir}/reward_model/final"),
                               ("ppo_gt", f"ppo.reward={imdb.reward_spec(x)}")):  # the paper's target KLs
            ppo = [r for r in runs if r["method"] == method]
            assert [r["value"] for r in ppo] == [3, 6, 9, 12] and imdb.expand(x, ppo[0]["overrides"])[0] == reward
            assert load_config(ppo[0]["config"]).ppo.max_new_tokens == x.max_new_tokens  # KL over the same length
    x = load_config(ROOT / "configs" / "imdb" / "mini.yaml", ["out_dir=/x/y"], cls=imdb.ImdbExperiment)
    assert imdb.expand(x, x.classifier_overrides) == ["model.name=/x/y/sft/final"]
    with pytest.raises(common.ExperimentError, match="key=value"):
        imdb.expand(x, ["model.name"])
    with pytest.raises(ValueError, match="unknown key 'sample_size'"):
        load_config(ROOT / "configs" / "imdb" / "mini.yaml", ["sample_size=3"], cls=imdb.ImdbExperiment)


def test_the_real_language_model_config():
    """configs/imdb/smollm2.yaml: SmolLM2 for policy and classifier, the judge, a sweep that fits 2 CPU cores."""
    x = load_config(ROOT / "configs" / "imdb" / "smollm2.yaml", cls=imdb.ImdbExperiment)
    runs = imdb.sweep(x)
    assert {r["method"] for r in runs} == {"dpo", "unlikelihood", "preferred_ft", "ppo", "ppo_gt"} and len(runs) == 8
    assert x.judge == "vader" and x.reward == "classifier" and x.classifier_overrides == []
    sft, classifier, dpo = (load_config(path) for path in (x.sft_config, x.classifier_config, x.train_config))
    assert sft.model.name == classifier.model.name == "checkpoints/smollm2-135m-instruct"  # the judge owes the policy nothing
    assert dpo.lora.rank > 0 and dpo.reference == "" and dpo.model.name == f"{x.out_dir}/sft/final"
    assert dpo.data.max_length >= x.prefix_max_tokens + x.max_new_tokens + 1  # prefix + sample + EOS fit
    assert dpo.data.max_prompt_length >= x.prefix_max_tokens
    [ppo_gt] = [r for r in runs if r["method"] == "ppo_gt"]
    ppo = load_config(ppo_gt["config"])  # PPO(-GT) with LoRA: the reference is the SFT model, adapters off
    assert ppo.lora.rank > 0 and ppo.reference == "" and ppo.model.name == dpo.model.name
    assert ppo.ppo.max_new_tokens == x.max_new_tokens and ppo.ppo.iterations * ppo.ppo.rollout_prompts == \
        dpo.train.max_examples  # as many samples as DPO's runs see pairs
    reward_model = load_config(x.reward_model_config)  # PPO's learned reward: from the SFT model, on the pairs
    assert reward_model.loss.name == "reward_model" and reward_model.model.name == dpo.model.name


def test_appended_jsonl_resumes_after_a_cut_last_line(tmp_path, capsys):
    path = tmp_path / "rows.jsonl"
    common.append_jsonl(path, [{"a": 1}, {"a": 2}])
    with open(path, "a") as f:
        f.write('{"a": 3')  # a write cut by a kill
    with pytest.raises(data.DataError, match=r"rows.jsonl:3: invalid JSON"):
        rows_of(path)
    assert rows_of(path, resumable=True) == [{"a": 1}, {"a": 2}]
    assert "incomplete last line" in capsys.readouterr().err
    common.append_jsonl(path, [{"a": 3}])
    assert rows_of(path) == [{"a": 1}, {"a": 2}, {"a": 3}]


def test_hold_out_marks_a_seeded_subset():
    def held(n_rows, n, seed):
        marked = [{"i": i} for i in range(n_rows)]
        common.hold_out(marked, n, seed)
        assert {r["split"] for r in marked} <= {"train", "eval"}
        return [r["i"] for r in marked if r["split"] == "eval"]
    assert len(held(40, 10, 0)) == 10 and held(40, 10, 0) == held(40, 10, 0) != held(40, 10, 1)
    assert held(40, 10, 0) != list(range(30, 40))  # not the last rows: file order can be sorted by label
    assert held(40, 0, 0) == []


def test_list_checkpoints_only_complete_ones(tmp_path):
    for name, complete in [("step-000020", True), ("step-000010", True), ("step-000030.tmp", True),
                           ("step-000040", False)]:
        folder = tmp_path / "checkpoints" / name
        folder.mkdir(parents=True)
        if complete:
            (folder / "trainer_state.json").write_text("{}")
    assert [s for s, _ in common.list_checkpoints(tmp_path)] == [10, 20]
    assert common.list_checkpoints(tmp_path / "nothing") == []


def test_review_windows():
    text = " ".join(f"w{i}" for i in range(10))
    assert imdb.review_windows(text, 4) == ["w0 w1 w2 w3", "w4 w5 w6 w7", "w8 w9"]
    assert imdb.review_windows(text, 3) == ["w0 w1 w2", "w3 w4 w5", "w6 w7 w8 w9"]  # a 1-word stub joins
    assert imdb.review_windows("a  b\n\nc d", 3) == ["a  b\n\nc d"]


def test_format_table():
    rows = [{"run": "sft", "method": "sft", "param": "", "value": None, "step": 0, "reward_mean": 0.5,
             "reward_sem": 0.02, "kl_exact_mean": 0.0, "kl_exact_sem": 0.0},
            {"run": "dpo-beta0.1", "method": "dpo", "param": "loss.beta", "value": 0.1, "step": 10,
             "reward_mean": 0.7, "reward_sem": 0.02, "kl_exact_mean": 1.0, "kl_exact_sem": 0.1},
            {"run": "dpo-beta0.1", "method": "dpo", "param": "loss.beta", "value": 0.1, "step": 20,
             "reward_mean": 0.8, "reward_sem": 0.02, "kl_exact_mean": 2.0, "kl_exact_sem": 0.1}]
    table = imdb.format_table(imdb.final_rows(rows))
    assert table.splitlines()[2] == "| sft | — | 0 | 0.500 ± 0.020 | 0.00 ± 0.00 |"
    assert table.splitlines()[3] == "| dpo | beta = 0.1 | 20 | 0.800 ± 0.020 | 2.00 ± 0.10 |"


# ---------------------------------------------------------------------------------------------------
# The notebook, headless

def results_rows() -> list[dict]:
    rows = [{"run": "sft", "method": "sft", "param": "", "value": "", "step": 0, "examples": 0, "reward_mean": 0.5,
             "reward_sem": 0.02, "kl_exact_mean": 0.0, "kl_exact_sem": 0.0, "kl_sampled_mean": 0.0, "n_samples": 50}]
    for method, param, values in [("dpo", "loss.beta", [0.1, 1]), ("unlikelihood", "loss.options.unlikelihood_alpha", [1]),
                                  ("preferred_ft", "", [""]), ("ppo", "ppo.kl_target", [3]),
                                  ("ppo_gt", "ppo.kl_target", [3])]:
        for value in values:
            for step in (10, 20):
                rows.append({"run": f"{method}-{value}", "method": method, "param": param, "value": value,
                             "step": step, "examples": 64 * step, "reward_mean": 0.5 + step / 100,
                             "reward_sem": 0.02, "kl_exact_mean": step / 5, "kl_exact_sem": 0.1,
                             "kl_sampled_mean": step / 5, "n_samples": 50})
    return rows


def test_notebook_executes_headless_and_writes_the_png(tmp_path, monkeypatch):
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("matplotlib")
    results = tmp_path / "results.csv"
    common.write_csv(results, results_rows(), imdb.RESULT_COLUMNS)
    figure = tmp_path / "figures" / "frontier.png"
    monkeypatch.setenv("IMDB_RESULTS", str(results))
    monkeypatch.setenv("IMDB_FIGURE", str(figure))
    notebook = nbformat.read(ROOT / "notebooks" / "imdb_frontier.ipynb", as_version=4)
    nbclient.NotebookClient(notebook, timeout=120, kernel_name="python3",
                            resources={"metadata": {"path": str(tmp_path)}}).execute()
    assert figure.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and figure.stat().st_size > 10_000
    assert figure.with_suffix(".csv").read_text() == results.read_text()
    assert png_size(figure) == (900, 600)  # one panel: no judge scores
    table = figure.with_suffix(".md").read_text().splitlines()
    assert table[0] == "| method | hyperparameter | step | reward | judge | KL(π‖π_ref) |"
    assert table[2] == "| SFT | — | 0 | 0.500 ± 0.020 | — | 0.00 ± 0.00 |"
    assert "| DPO | beta = 0.1 | 20 | 0.700 ± 0.020 | — | 4.00 ± 0.10 |" in table
    assert "| PPO | kl_target = 3 | 20 | 0.700 ± 0.020 | — | 4.00 ± 0.10 |" in table
    assert "| PPO-GT | kl_target = 3 | 20 | 0.700 ± 0.020 | — | 4.00 ± 0.10 |" in table
    assert len(table) == 2 + 1 + 6


def test_plot_stage_draws_the_judge_panel_in_out_dir_and_leaves_figure_alone(tmp_path):
    """The driver's plot stage (jupyter-execute) on results with judge scores: a second panel (a figure twice
    as wide) and the table's judge column, under out_dir/figures/; the config's `figure` keeps its bytes."""
    pytest.importorskip("nbclient")
    pytest.importorskip("matplotlib")
    out = tmp_path / "out"
    rows = [dict(r, judge_mean=r["reward_mean"] - 0.25, judge_sem=0.05) for r in results_rows()]
    common.write_csv(out / "results.csv", rows, imdb.RESULT_COLUMNS)
    (out / "results.md").write_text("# IMDB results")  # the evaluate stage's report, copied beside the figure
    figure = tmp_path / "committed" / "frontier.png"
    figure.parent.mkdir()
    figure.write_bytes(b"the committed figure")
    config = tmp_path / "experiment.yaml"
    config.write_text(f"out_dir: {out}\nfigure: {figure}\nmethods: {{dpo: {{param: loss.beta, values: [0.1]}}}}\n")
    assert imdb.main(["--config", str(config), "--stage", "plot"]) == 0
    made = out / "figures" / "frontier.png"
    assert png_size(made) == (1800, 600)
    assert made.with_suffix(".csv").read_bytes() == (out / "results.csv").read_bytes()
    table = made.with_suffix(".md").read_text().splitlines()
    assert table[2] == "| SFT | — | 0 | 0.500 ± 0.020 | 0.250 ± 0.050 | 0.00 ± 0.00 |"
    assert "| DPO | beta = 0.1 | 20 | 0.700 ± 0.020 | 0.450 ± 0.050 | 4.00 ± 0.10 |" in table
    assert (out / "figures" / "frontier_results.md").read_text() == "# IMDB results"
    assert figure.read_bytes() == b"the committed figure" and sorted(figure.parent.iterdir()) == [figure]


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) of a PNG, from its header."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")


# ---------------------------------------------------------------------------------------------------
# The driver, end to end on a toy aclImdb folder

def toy_imdb(root: Path, n_train: int = 24, n_test: int = 8) -> Path:
    """An aclImdb-layout folder of short reviews built from the quickstart vocabulary."""
    from dpo import quickstart
    rng = random.Random(0)
    for split, n in (("train", n_train), ("test", n_test)):
        for polarity, words in (("pos", quickstart.POSITIVE), ("neg", quickstart.NEGATIVE)):
            folder = root / split / polarity
            folder.mkdir(parents=True)
            for i in range(n // 2):
                text = " ".join(f"{rng.choice(quickstart.ASPECTS)} was {rng.choice(words)} ." for _ in range(6))
                (folder / f"{i}_{8 if polarity == 'pos' else 2}.txt").write_text(text)
    return root


def toy_classifier(root: Path, imdb: Path) -> Path:
    """A random classifier (dpo.reward_model, random head) with its own tokenizer: p(positive) varies
    smoothly with the text, so samples of even an untrained model are rarely tied."""
    import torch
    from dpo.model import GPT, GPTConfig
    from dpo.reward_model import RewardModel
    from dpo.tokenizer import Tokenizer, train_sentencepiece
    corpus = root / "corpus.txt"
    corpus.write_text("\n".join(r["text"] for r in formats.read_imdb(imdb, "train")))
    train_sentencepiece([corpus], root / "clf_sp", 300)
    tokenizer = Tokenizer.from_pretrained(root / "clf_sp.model")
    torch.manual_seed(0)
    model = RewardModel(GPT(GPTConfig(vocab_size=tokenizer.vocab_size, n_layer=1, n_head=2, n_embd=16,
                                      max_seq_len=64, eos_id=tokenizer.eos_id, bos_id=tokenizer.bos_id)), 2)
    torch.nn.init.normal_(model.score.weight, std=3.0)
    model.save_pretrained(root / "classifier", tokenizer)
    return root / "classifier"


def write_toy_configs(tmp_path: Path) -> Path:
    (tmp_path / "sft.yaml").write_text("""
model: {name: "", tokenizer_vocab_size: 300, n_layer: 1, n_head: 2, n_embd: 32, max_seq_len: 64}
data: {format: imdb, eval_examples: 8, max_length: 48, max_prompt_length: 4}
loss: {name: sft}
train: {epochs: 1, batch_size: 8, micro_batch_size: 8, optimizer: adamw, lr: 3.0e-3, warmup_steps: 0,
        log_every: 100, device: cpu}
wandb: {mode: disabled}
""")
    (tmp_path / "dpo.yaml").write_text("""
data: {format: preference_jsonl, eval_examples: 8, max_length: 40, max_prompt_length: 8}
loss: {name: sigmoid, beta: 0.1}
train: {epochs: 1, max_examples: 16, batch_size: 8, micro_batch_size: 8, optimizer: rmsprop, lr: 1.0e-3,
        warmup_steps: 0, save_every: 1, log_every: 100, device: cpu}
wandb: {mode: disabled}
""")
    (tmp_path / "ppo.yaml").write_text("""
data: {format: preference_jsonl, eval_examples: 4, max_length: 40, max_prompt_length: 8}
loss: {name: ppo}
ppo: {iterations: 2, rollout_prompts: 8, minibatch_size: 4, ppo_epochs: 1, max_new_tokens: 12, kl_horizon: 100}
train: {optimizer: adamw, lr: 1.0e-3, save_every: 1, log_every: 100, device: cpu}
wandb: {mode: disabled}
""")
    imdb = toy_imdb(tmp_path / "aclImdb")
    (tmp_path / "experiment.yaml").write_text(f"""
out_dir: {tmp_path / 'out'}
imdb_path: {imdb}
device: cpu
window_words: 12
window_reviews: 20
sft_config: {tmp_path / 'sft.yaml'}
reward: classifier:{toy_classifier(tmp_path, imdb)}
judge: vader
train_prefixes: 0
pair_eval_prefixes: 4
samples_per_prefix: 4
max_new_tokens: 12
sample_batch_size: 32
reward_model_config: {write_toy_reward_model_config(tmp_path / 'rm.yaml', 40)}
train_config: {tmp_path / 'dpo.yaml'}
methods:
  dpo: {{overrides: [loss.name=sigmoid], param: loss.beta, values: [0.1]}}
  preferred_ft: {{overrides: [loss.name=preferred_ft]}}
  ppo: {{config: {tmp_path / 'ppo.yaml'}, overrides: ["ppo.reward=reward_model:{{reward_model}}"], param: ppo.kl_target,
        values: [2]}}
  ppo_gt: {{config: {tmp_path / 'ppo.yaml'}, overrides: ["ppo.reward={{reward}}"], param: ppo.kl_target, values: [2]}}
eval_prefixes: 8
eval_batch_size: 8
figure: {tmp_path / 'figure.png'}
""")
    return tmp_path / "experiment.yaml"


def test_check_classifier_scores_held_out_reviews_windows_and_windows_without_sentiment(tmp_path):
    from dpo.evaluate import rewards
    reviews = toy_imdb(tmp_path / "aclImdb")
    clf = toy_classifier(tmp_path, reviews)
    x = imdb.ImdbExperiment(out_dir=str(tmp_path / "out"), imdb_path=str(reviews), reward="classifier",
                            judge="vader", window_words=12, device="cpu")
    shutil.copytree(clf, tmp_path / "out" / "classifier" / "final")
    check = imdb.check_classifier(x, reviews=6, windows=10)
    assert (check["reviews"], check["windows"]) == (6, 10)
    test = formats.read_imdb(reviews, "test")
    chosen = [test[i] for i in data.seeded_subset(len(test), 6, 0)]
    scorer = rewards.load_scorer(imdb.reward_spec(x))
    p = scorer([""] * 6, [r["text"] for r in chosen]).tolist()
    assert check["accuracy_reviews"] == sum((pi > 0.5) == bool(r["label"]) for pi, r in zip(p, chosen)) / 6
    windows = [w for r in chosen for w in imdb.review_windows(r["text"], 12)]
    windows = [windows[i] for i in sorted(data.seeded_subset(len(windows), 10, 0))]
    neutral = [w for w in windows if rewards.load_scorer("vader")([""], [w])[0] == 0]
    assert check["neutral_windows"] == len(neutral)
    assert json.loads((tmp_path / "out" / "classifier" / "check.json").read_text()) == check
    assert imdb.check_classifier(x, reviews=6, windows=10) == check  # done: read back, not redone


def driver(config: Path, stages: str, *extra) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS="1", DPO_NO_PROGRESS="1")
    return subprocess.run([sys.executable, "-m", "dpo.experiments.imdb", "--config", str(config), "--stage", stages,
                           *extra], cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)


def test_driver_stages_end_to_end_on_a_toy_folder(tmp_path):
    config = write_toy_configs(tmp_path)
    proc = driver(config, "prepare,sft,classifier,sample,label")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = tmp_path / "out"
    windows = formats.read_imdb(out / "data" / "aclImdb-windows", "train")  # 20 reviews of ~30 words: 2-3 each
    assert len({(w["polarity"], w["id"] // 1000) for w in windows}) == 20 and 40 <= len(windows) <= 60
    assert all(len(w["text"].split()) >= 6 for w in windows)
    # one run evaluated as it trains, its checkpoints deleted once evaluated (the paper-scale setting)
    proc = driver(config, "train", "--runs", "preferred_ft", "evaluate_during_training=true", "prune_checkpoints=true")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert list((out / "runs" / "preferred_ft" / "checkpoints").glob("step-*")) == []
    assert (out / "runs" / "preferred_ft" / "final" / "config.json").is_file()
    proc = driver(config, "train", "--runs", "ppo-kl_target2")  # PPO's reward model is not trained yet
    assert proc.returncode == 1 and "reward_model/final: missing; run the reward_model stage first" in proc.stderr
    proc = driver(config, "reward_model,train,evaluate")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert common.train_done(out / "reward_model")
    ppo_config = (out / "runs" / "ppo-kl_target2" / "config.yaml").read_text()
    assert f"reward: reward_model:{out / 'reward_model' / 'final'}" in ppo_config and "kl_target: 2.0" in ppo_config
    ppo_gt_config = (out / "runs" / "ppo_gt-kl_target2" / "config.yaml").read_text()
    assert f"reward: classifier:{tmp_path / 'classifier'}" in ppo_gt_config  # the ground truth, {reward}
    prompts = rows_of(out / "prompts" / "train.jsonl")
    assert len(prompts) == 24 and sum(p["split"] == "eval" for p in prompts) == 4
    assert {p["label"] for p in prompts} == {0, 1}
    assert len(rows_of(out / "samples" / "train.jsonl")) == 24 * 4
    summary = json.loads((out / "pairs" / "summary.json").read_text())
    for split, n_prefixes in (("train", 20), ("eval", 4)):
        c = summary[split]
        assert c["prompts"] == n_prefixes and c["pairs possible"] == 6 * n_prefixes
        assert c["pairs"] + c.get(pairs.TIE, 0) + c.get(pairs.EMPTY, 0) == c["pairs possible"]
        assert len(rows_of(out / "pairs" / f"{split}.jsonl")) == c["pairs"]
    for pair in rows_of(out / "pairs" / "train.jsonl"):
        assert pair["reward_chosen"] > pair["reward_rejected"]
    results = rows_of(out / "results.jsonl")
    # the SFT model (step 0) and checkpoints 1 and 2 of every run (PPO: rollouts 1 and 2)
    assert sorted((r["run"], r["step"]) for r in results) == [
        ("dpo-beta0.1", 1), ("dpo-beta0.1", 2), ("ppo-kl_target2", 1), ("ppo-kl_target2", 2),
        ("ppo_gt-kl_target2", 1), ("ppo_gt-kl_target2", 2), ("preferred_ft", 1), ("preferred_ft", 2), ("sft", 0)]
    by_run = {r["run"]: r for r in results}  # PPO's rows: the same columns, the same test prefixes, reward and KL
    assert set(by_run["ppo-kl_target2"]) == set(by_run["ppo_gt-kl_target2"]) == set(by_run["dpo-beta0.1"])
    assert all(r["n_samples"] == 8 and r["examples"] == 8 * r["step"] for r in results if r["method"] == "ppo")
    csv_lines = (out / "results.csv").read_text().splitlines()
    assert sum(line.startswith("ppo-kl_target2,ppo,ppo.kl_target,2,") for line in csv_lines) == 2
    table = imdb.format_table(imdb.final_rows(results))
    assert "| ppo | kl_target = 2 | 2 |" in table and "| ppo_gt | kl_target = 2 | 2 |" in table
    sft = next(r for r in results if r["run"] == "sft")
    assert sft["kl_exact_mean"] == 0 and sft["n_samples"] == 8  # the reference against itself
    assert all(r["kl_exact_mean"] >= 0 and 0 <= r["reward_mean"] <= 1 for r in results)
    header = (out / "results.csv").read_text().splitlines()[0]
    assert header == ",".join(imdb.RESULT_COLUMNS)
    eval_rows = rows_of(out / "eval_samples" / "dpo-beta0.1" / "step-000002.jsonl")
    assert len(eval_rows) == 8 and {"prompt", "completion", "completion_token_ids", "reward", "judge",
                                    "kl_exact"} <= set(eval_rows[0])
    # the independent judge: its mean over the same samples, the paired differences and samples in results.md
    dpo_last = next(r for r in results if (r["run"], r["step"]) == ("dpo-beta0.1", 2))
    assert dpo_last["judge_mean"] == pytest.approx(sum(r["judge"] for r in eval_rows) / 8, abs=1e-6)
    assert all(-1 <= r["judge_mean"] <= 1 for r in results)
    report = (out / "results.md").read_text()
    assert "| method | hyperparameter | step | reward | judge | KL(π‖π_ref) |" in report
    assert "Rank correlation (Spearman) of mean reward and mean judge over the 9 evaluated checkpoints" in report
    pft = [r for r in results if r["method"] == "preferred_ft"]
    nearest = min(pft, key=lambda r: abs(r["kl_exact_mean"] - dpo_last["kl_exact_mean"]))
    theirs = {r["prompt_id"]: r for r in rows_of(out / "eval_samples" / "preferred_ft" / f"step-{nearest['step']:06d}.jsonl")}
    delta = sum(r["reward"] - theirs[r["prompt_id"]]["reward"] for r in eval_rows) / 8
    row = next(line for line in report.splitlines() if line.startswith("| dpo-beta0.1 (2) |"))
    assert f"| preferred_ft ({nearest['step']}) |" in row and row.split(" | ")[4].startswith(f"{delta:.3f} ± ")
    # PPO's runs also against DPO's checkpoint nearest in KL (and only PPO's runs)
    against_dpo = report.split("## Against DPO at the nearest KL")[1].split("## ")[0]
    ppo_last = next(r for r in results if (r["run"], r["step"]) == ("ppo-kl_target2", 2))
    nearest = min((r for r in results if r["method"] == "dpo"),
                  key=lambda r: abs(r["kl_exact_mean"] - ppo_last["kl_exact_mean"]))
    theirs = {r["prompt_id"]: r for r in rows_of(out / "eval_samples" / "dpo-beta0.1" / f"step-{nearest['step']:06d}.jsonl")}
    mine = rows_of(out / "eval_samples" / "ppo-kl_target2" / "step-000002.jsonl")
    delta = sum(r["reward"] - theirs[r["prompt_id"]]["reward"] for r in mine) / 8
    row = next(line for line in against_dpo.splitlines() if line.startswith("| ppo-kl_target2 (2) |"))
    assert f"| dpo-beta0.1 ({nearest['step']}) |" in row and row.split(" | ")[4].startswith(f"{delta:.3f} ± ")
    rows = [line.split(" (")[0] for line in against_dpo.splitlines()
            if line.startswith("| ") and "last step" not in line]  # (not the header)
    assert rows == ["| ppo-kl_target2", "| ppo_gt-kl_target2"]
    assert report.count("**Prefix ") == 3 and report.count("| sft (0) |") == 3  # 3 samples, the SFT model first
    # everything is done: a rerun skips every stage and changes nothing
    before = (out / "results.csv").read_text()
    proc = driver(config, "sft,sample,label,reward_model,train,evaluate")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.count("skip:") >= 8 and (out / "results.csv").read_text() == before
    # a judge set after the evaluation: it scores the saved samples, nothing is sampled again
    unjudged = [{k: v for k, v in r.items() if not k.startswith("judge")} for r in results]
    common.write_jsonl(out / "results.jsonl", unjudged)
    proc = driver(config, "evaluate")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "judge vader: 9 checkpoints evaluated before it was set, judged from their samples" in proc.stdout
    assert (out / "results.csv").read_text() == before


def test_the_real_language_model_shape_on_a_toy_folder(tmp_path):
    """configs/imdb/smollm2.yaml's shape, every stage: SFT and the classifier both from one pretrained model
    (here a toy one), the classifier on labelled sentences (classification_jsonl) and checked, LoRA preference
    and PPO-GT runs, the judge, and the plot stage publishing the figure, tables and results.md."""
    pytest.importorskip("nbclient")
    pytest.importorskip("matplotlib")
    config = write_toy_configs(tmp_path)
    proc = driver(config, "prepare,sft")  # the toy experiment's SFT model stands in for SmolLM2
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    base = tmp_path / "out" / "sft" / "final"
    from dpo import quickstart
    rng = random.Random(1)
    sentences = tmp_path / "sentences"
    sentences.mkdir()
    for split, n in (("train", 32), ("test", 8)):
        rows = [{"text": f"the {rng.choice(quickstart.ASPECTS)} was {rng.choice(words)} .", "label": label}
                for _ in range(n // 2) for label, words in ((1, quickstart.POSITIVE), (0, quickstart.NEGATIVE))]
        common.write_jsonl(sentences / f"{split}.jsonl", rows)
    (tmp_path / "classifier.yaml").write_text(f"""
model: {{name: {base}}}
data: {{format: imdb_sentiment, eval_examples: 8, max_length: 48}}
loss: {{name: classifier}}
train: {{max_examples: 16, batch_size: 8, micro_batch_size: 8, optimizer: adamw, lr: 1.0e-3, warmup_steps: 0,
        log_every: 100, device: cpu}}
wandb: {{mode: disabled}}
""")
    (tmp_path / "dpo_lora.yaml").write_text((tmp_path / "dpo.yaml").read_text() + "lora: {rank: 4, alpha: 8}\n")
    (tmp_path / "ppo_lora.yaml").write_text((tmp_path / "ppo.yaml").read_text() + "lora: {rank: 4, alpha: 8}\n")
    experiment = tmp_path / "real.yaml"
    experiment.write_text(f"""
out_dir: {tmp_path / 'real'}
imdb_path: {tmp_path / 'aclImdb'}
device: cpu
window_words: 12
window_reviews: 20
sft_config: {tmp_path / 'sft.yaml'}
sft_overrides: [model.name={base}, train.max_examples=16]
reward: classifier
classifier_config: {tmp_path / 'classifier.yaml'}
classifier_overrides: [data.format=classification_jsonl, data.path={sentences}]
judge: vader
train_prefixes: 0
pair_eval_prefixes: 4
max_new_tokens: 12
sample_batch_size: 32
train_config: {tmp_path / 'dpo_lora.yaml'}
methods:
  dpo: {{overrides: [loss.name=sigmoid], param: loss.beta, values: [0.1]}}
  preferred_ft: {{overrides: [loss.name=preferred_ft]}}
  ppo_gt: {{config: {tmp_path / 'ppo_lora.yaml'}, overrides: ["ppo.reward={{reward}}"], param: ppo.kl_target,
           values: [2]}}
eval_prefixes: 8
eval_batch_size: 8
figure: {tmp_path / 'published' / 'frontier.png'}
""")
    proc = driver(experiment, "all", "--publish")
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    real = tmp_path / "real"
    assert "data classification_jsonl" in proc.stdout and "classifier check: accuracy" in proc.stdout
    check = json.loads((real / "classifier" / "check.json").read_text())
    assert check["judge"] == "vader" and check["reviews"] == 8 and 0 <= check["accuracy_windows"] <= 1
    for run in ("dpo-beta0.1", "ppo_gt-kl_target2"):  # LoRA: adapters beside merged weights
        assert (real / "runs" / run / "final" / "adapter").is_dir()
    results = rows_of(real / "results.jsonl")
    assert sorted((r["run"], r["step"]) for r in results) == [
        ("dpo-beta0.1", 1), ("dpo-beta0.1", 2), ("ppo_gt-kl_target2", 1), ("ppo_gt-kl_target2", 2),
        ("preferred_ft", 1), ("preferred_ft", 2), ("sft", 0)]
    assert all(r["judge_mean"] is not None for r in results)
    published = common.figure_files(tmp_path / "published" / "frontier.png", report=True)
    assert all(p.is_file() for p in published)
    assert published[-1].read_text() == (real / "results.md").read_text()


def test_driver_errors_are_one_line(tmp_path):
    config = write_toy_configs(tmp_path)
    proc = driver(config, "label")
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1].startswith("error: ") and "run the sample stage first" in proc.stderr
    proc = driver(config, "sample,fly")
    assert proc.returncode == 1 and "unknown stage(s) fly" in proc.stderr
    proc = driver(config, "train", "--runs", "dpo-beta9")
    assert proc.returncode == 1 and "unknown run(s) dpo-beta9" in proc.stderr
