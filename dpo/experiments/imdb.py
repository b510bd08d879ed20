"""IMDB controlled sentiment generation (the DPO paper's Figure 2, left): the whole pipeline, one stage at a time.

    python -m dpo.experiments.imdb --config configs/imdb/mini.yaml                  # every stage, in order
    python -m dpo.experiments.imdb --config configs/imdb/paper.yaml --stage sample  # one stage
    python -m dpo.experiments.imdb --config configs/imdb/mini.yaml --stage train,evaluate --runs dpo-beta0.1
    python -m dpo.experiments.imdb --config configs/imdb/mini.yaml --stage train,evaluate --runs ppo_gt-kl_target6
    python -m dpo.experiments.imdb --config configs/imdb/mini.yaml out_dir=runs/imdb-mini-2 seed=1
    python -m dpo.experiments.imdb --config configs/imdb/mini.yaml --stage plot --publish  # update notebooks/figures/

Stages (each reads the files of the ones before it, resumes where it stopped, skips what is done):

    prepare     (only when window_words > 0) review windows of window_words words in the aclImdb layout,
                out_dir/data/aclImdb-windows: more, shorter SFT texts and classifier examples from few reviews
    sft         train.py --config sft_config: the SFT policy (paper: gpt2-large, 1 epoch of IMDB reviews)
    classifier  (only when reward = "classifier") train.py --config classifier_config: our sentiment
                classifier on the IMDB labels (or other labelled text, classifier_overrides), whose
                p(positive) is then the ground-truth reward; then its accuracy on held-out whole reviews and
                windows, and what it says of windows without sentiment -> out_dir/classifier/check.json
    sample      prefixes of 2-8 tokens (SFT tokenizer) of train_prefixes train reviews, then
                samples_per_prefix completions of each from the SFT model (sample.py, T = 1, no top-k/p)
    label       score every completion with the reward; all k(k−1)/2 pairs per prefix ordered by it
                (ties dropped and counted): out_dir/pairs/{train,eval}.jsonl, eval = held-out prefixes
    reward_model  (only with reward_model_config) train.py loss.name=reward_model: a Bradley–Terry reward model
                on the train pairs (out_dir/reward_model), PPO's learned reward ({reward_model} in methods)
    train       one train.py run per method and hyperparameter (`methods`, from train_config or the method's
                own config), from the SFT model with the SFT model as reference, saving a checkpoint every eval
                interval. DPO, Unlikelihood, Preferred-FT train on the pairs; PPO (reward {reward_model}) and
                PPO-GT (reward {reward}, the ground truth) sample from the pairs' prefixes, one run per target KL
    evaluate    for the SFT model and every saved checkpoint: one sample per test prefix (T = 1, no
                top-k/p, max_new_tokens), mean reward (and, with `judge`, an independent judge's mean score
                of the same samples) and sequence-level KL(π_θ‖π_ref) to the SFT model -> out_dir/results.jsonl
                (one row per run and step), out_dir/results.csv, and out_dir/results.md: the last checkpoints,
                the rank correlation of reward and judge, paired differences against Preferred-FT (and PPO's
                runs against DPO) at the nearest KL, and samples
    plot        jupyter-execute notebooks/imdb_frontier.ipynb on results.csv -> out_dir/figures/<file name of
                `figure`> (PNG, and the results CSV, a Markdown table and results.md as <name>_results.md beside
                it); with --publish, those four files are then copied to `figure`'s folder (committed files:
                only --publish changes them)

Frontier point = (mean KL, mean reward) of one checkpoint; the paper plots every 100 steps of every run.
train.py and sample.py run as subprocesses, under `launcher` (e.g. "torchrun --nproc_per_node=8") when set;
label and evaluate run in this process on `device`.
"""
import json
import re
import shlex
import shutil
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dpo import data, formats
from dpo.config import save_config
from dpo.experiments import pairs as pairs_lib
from dpo.experiments.common import (
    ExperimentError, append_jsonl, check_reward_model_runs, driver_main, execute_notebook, expand_sweep, fill_in,
    hold_out, list_checkpoints, require, run_actions, run_train, train_done, uses_reward_model, write_csv,
    write_jsonl,
)
from dpo.files import atomic_dir, atomic_write
from dpo.generation import completion_text, generate, stop_ids

REPO = Path(__file__).resolve().parents[2]
SAMPLE_PY = REPO / "sample.py"
NOTEBOOK = REPO / "notebooks" / "imdb_frontier.ipynb"
STAGES = ("prepare", "sft", "classifier", "sample", "label", "reward_model", "train", "evaluate", "plot")
RESULT_COLUMNS = ["run", "method", "param", "value", "step", "examples", "reward_mean", "reward_sem", "judge_mean",
                  "judge_sem", "kl_exact_mean", "kl_exact_sem", "kl_sampled_mean", "kl_sampled_sem", "n_samples",
                  "mean_completion_tokens", "eos_fraction", "seconds", "checkpoint"]


@dataclass
class ImdbExperiment:
    out_dir: str = "runs/imdb"          # every file of the experiment goes under here
    imdb_path: str = "data/aclImdb"     # aclImdb folder or aclImdb_v1.tar.gz
                                        # (python -m dpo.interop.datasets download imdb --out data)
    seed: int = 0                       # prefix choice and lengths, samples
    device: str = "auto"                # label and evaluate stages: auto | cpu | cuda
    launcher: str = ""                  # prefix of train.py / sample.py runs ("" = this Python), e.g. torchrun ...
    threads: int = 0                    # CPU threads per process (OMP_NUM_THREADS); 0 = torch's default
    window_words: int = 0               # > 0: SFT and classifier train on review windows of this many words
    window_reviews: int = 0             # windows of this many train reviews (seeded subset; half as many test); 0 = all
    sft_config: str = "configs/imdb/sft.yaml"
    sft_overrides: list = field(default_factory=list)         # extra train.py key=value ({out_dir} expands)
    reward: str = "hf:siebert/sentiment-roberta-large-english"  # "classifier" (ours) or a dpo.evaluate.rewards spec
    classifier_config: str = "configs/imdb/classifier.yaml"
    classifier_overrides: list = field(default_factory=list)  # e.g. [model.name={out_dir}/sft/final]
    reward_batch_size: int = 64
    judge: str = ""                     # an independent judge scored beside the reward (a dpo.evaluate.rewards
                                        # spec, e.g. vader); "" = none
    train_prefixes: int = 25000         # train reviews whose prefixes are sampled (0 = all)
    pair_eval_prefixes: int = 500       # of those, held out: their pairs are train.py's evaluation set
    prefix_min_tokens: int = 2
    prefix_max_tokens: int = 8
    samples_per_prefix: int = 4
    temperature: float = 1.0
    max_new_tokens: int = 60
    sample_batch_size: int = 64
    tie_tolerance: float = 0.0          # |r_i − r_j| <= this is a tie (pair dropped and counted)
    reward_model_config: str = ""       # Bradley–Terry reward model on the train pairs ({reward_model}); "" = none
    train_config: str = "configs/imdb/dpo.yaml"
    train_overrides: list = field(default_factory=list)       # for every run of the sweep
    methods: dict = field(default_factory=dict)  # {method: {config, overrides: [k=v], param: key, values: [...]}}
    eval_prefixes: int = 1000           # test reviews whose prefixes evaluate each checkpoint
    eval_batch_size: int = 64
    evaluate_during_training: bool = False  # evaluate each run's checkpoints while it trains (then the next run)
    prune_checkpoints: bool = False     # delete a checkpoint once evaluated (never a run's latest: resume needs it)
    figure: str = "notebooks/figures/imdb_frontier.png"  # where --publish copies the plot stage's figure (and
                                        # the .csv and .md beside it); the plot stage writes out_dir/figures/


# ---------------------------------------------------------------------------------------------------
# Paths

def paths(x: ImdbExperiment) -> dict:
    out = Path(x.out_dir)
    return {
        "windows": out / "data" / "aclImdb-windows", "sft": out / "sft", "classifier": out / "classifier",
        "train_prompts": out / "prompts" / "train.jsonl", "test_prompts": out / "prompts" / "test.jsonl",
        "samples": out / "samples" / "train.jsonl", "scores": out / "samples" / "train_scores.jsonl",
        "pairs_train": out / "pairs" / "train.jsonl", "pairs_eval": out / "pairs" / "eval.jsonl",
        "pairs_summary": out / "pairs" / "summary.json", "reward_model": out / "reward_model", "runs": out / "runs",
        "eval_samples": out / "eval_samples",
        "results": out / "results.jsonl", "results_csv": out / "results.csv", "report": out / "results.md",
    }


def eval_samples_path(x: ImdbExperiment, row: dict) -> Path:
    """Where the evaluate stage keeps the samples of one checkpoint (a results row, or an item to evaluate)."""
    return paths(x)["eval_samples"] / row["run"] / f"step-{row['step']:06d}.jsonl"


def expand(x: ImdbExperiment, overrides: list) -> list[str]:
    """train.py overrides of the experiment config with {out_dir}, {reward} (the ground-truth reward spec) and
    {reward_model} (the reward_model stage's model) replaced."""
    return fill_in(overrides, {"out_dir": x.out_dir, "reward": reward_spec(x),
                               "reward_model": paths(x)["reward_model"] / "final"})


def sft_data_path(x: ImdbExperiment) -> Path:
    return paths(x)["windows"] if x.window_words > 0 else Path(x.imdb_path)


def reward_spec(x: ImdbExperiment) -> str:
    return f"classifier:{paths(x)['classifier'] / 'final'}" if x.reward == "classifier" else x.reward


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


# ---------------------------------------------------------------------------------------------------
# prepare: review windows

def review_windows(text: str, words: int) -> list[str]:
    """Consecutive windows of `words` whitespace-separated words, cut from the text itself (its inner
    whitespace kept). A last window shorter than words/2 joins the one before it (no stubs)."""
    spans = [m.span() for m in re.finditer(r"\S+", text)]
    starts = list(range(0, len(spans), words))
    if len(starts) > 1 and len(spans) - starts[-1] < words / 2:
        starts.pop()
    ends = starts[1:] + [len(spans)]
    return [text[spans[a][0]:spans[b - 1][1]] for a, b in zip(starts, ends)]


def stage_prepare(x: ImdbExperiment) -> None:
    """aclImdb-layout folder of review windows (train and test, of `window_reviews` seeded-random reviews):
    <review id · 1000 + window>_<rating>.txt."""
    out = paths(x)["windows"]
    if x.window_words <= 0:
        print("prepare: window_words = 0, SFT and classifier read whole reviews from imdb_path")
        return
    if out.is_dir():
        print(f"skip: {out} exists")
        return
    counts = Counter()
    with atomic_dir(out) as tmp:
        for split, n in (("train", x.window_reviews), ("test", x.window_reviews // 2)):
            reviews = formats.read_imdb(x.imdb_path, split)
            for review in (reviews[i] for i in data.seeded_subset(len(reviews), n, x.seed)):
                windows = review_windows(review["text"], x.window_words)
                if len(windows) >= 1000:
                    raise ExperimentError(f"{review['source']}: more than 999 windows of {x.window_words} words")
                folder = tmp / split / review["polarity"]
                folder.mkdir(parents=True, exist_ok=True)
                for i, window in enumerate(windows):
                    (folder / f"{review['id'] * 1000 + i}_{review['rating']}.txt").write_text(window)
                counts[f"{split} reviews"] += 1
                counts[f"{split} windows"] += len(windows)
    print(f"prepare: {out}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))


# ---------------------------------------------------------------------------------------------------
# sft, classifier

def stage_sft(x: ImdbExperiment) -> None:
    data_path = require(sft_data_path(x), "prepare" if x.window_words > 0
                        else "download (python -m dpo.interop.datasets download imdb)")
    run_train(x.sft_config, [f"data.path={data_path}", f"train.out_dir={paths(x)['sft']}",
                             *expand(x, x.sft_overrides)], run_dir=paths(x)["sft"], launcher=x.launcher)


def stage_classifier(x: ImdbExperiment) -> None:
    if x.reward != "classifier":
        print(f"classifier: not needed, the reward is {x.reward}")
        return
    data_path = require(sft_data_path(x), "prepare")
    run_train(x.classifier_config, [f"data.path={data_path}", f"train.out_dir={paths(x)['classifier']}",
                                    *expand(x, x.classifier_overrides)],
              run_dir=paths(x)["classifier"], launcher=x.launcher)
    check_classifier(x)


def check_classifier(x: ImdbExperiment, reviews: int = 60, windows: int = 500) -> dict:
    """How well the ground truth tells sentiment, on held-out text: its accuracy on `reviews` seeded-random
    whole test reviews and on `windows` windows of them of window_words words (a sample's length; 32 when
    window_words = 0), and, with a judge, its p(positive) on the windows in which the judge finds no sentiment
    at all (score 0): a reward that measures sentiment stays near its average there, one that learned a topic
    cue does not. -> out_dir/classifier/check.json"""
    from dpo.evaluate import rewards
    from dpo.evaluate.tables import mean_sem
    out = paths(x)["classifier"] / "check.json"
    if out.is_file():
        print(f"skip: {out} exists")
        return json.loads(out.read_text())
    test = formats.read_imdb(x.imdb_path, "test")
    chosen = [test[i] for i in data.seeded_subset(len(test), reviews, x.seed)]
    cut = [(w, r["label"]) for r in chosen for w in review_windows(r["text"], x.window_words or 32)]
    cut = [cut[i] for i in sorted(data.seeded_subset(len(cut), windows, x.seed))]
    scorer = rewards.load_scorer(reward_spec(x), device=pick_device(x.device))

    def accuracy(texts, labels):
        p = scorer([""] * len(texts), texts).tolist()
        return sum((pi > 0.5) == bool(label) for pi, label in zip(p, labels)) / len(p), p
    check = {"reward": reward_spec(x), "reviews": len(chosen), "windows": len(cut)}
    check["accuracy_reviews"], _ = accuracy([r["text"] for r in chosen], [r["label"] for r in chosen])
    check["accuracy_windows"], p_windows = accuracy([w for w, _ in cut], [label for _, label in cut])
    check["mean_p_windows"] = mean_sem(p_windows)[0]
    line = (f"classifier check: accuracy {check['accuracy_reviews']:.3f} on {len(chosen)} whole test reviews, "
            f"{check['accuracy_windows']:.3f} on {len(cut)} windows of them; mean p(positive) {check['mean_p_windows']:.3f}")
    if x.judge:
        judged = rewards.load_scorer(x.judge)([""] * len(cut), [w for w, _ in cut]).tolist()
        neutral = [p for p, j in zip(p_windows, judged) if j == 0]
        check |= {"judge": x.judge, "neutral_windows": len(neutral), "mean_p_neutral": mean_sem(neutral)[0],
                  "above_0.9_neutral": sum(p > 0.9 for p in neutral) / len(neutral) if neutral else None}
        if neutral:
            line += (f"; on the {len(neutral)} windows without sentiment for {x.judge}: mean {check['mean_p_neutral']:.3f}, "
                     f"{check['above_0.9_neutral']:.1%} above 0.9")
    atomic_write(out, json.dumps(check, indent=1) + "\n")
    print(line, flush=True)
    return check


# ---------------------------------------------------------------------------------------------------
# sample: prefixes, then sample.py

def prefix_prompts(x: ImdbExperiment, split: str, n: int, tokenizer, seed: int) -> tuple[list[dict], Counter]:
    """{"prompt_id", "prompt", "label", "source"} for the 2–8-token prefixes of n seeded-random reviews
    (dpo.data.seeded_subset, in file order; all when n = 0)."""
    reviews = formats.read_imdb(x.imdb_path, split)
    chosen = [reviews[i] for i in data.seeded_subset(len(reviews), n, seed)]
    counts = Counter()
    prompts = formats.imdb_prefix_prompts(chosen, tokenizer, seed, x.prefix_min_tokens, x.prefix_max_tokens, counts)
    rows = [{"prompt_id": i, "prompt": p["prompt"], "label": p["label"], "source": p["source"]}
            for i, p in enumerate(prompts)]
    return rows, counts


def write_prompts(x: ImdbExperiment) -> None:
    from dpo.tokenizer import Tokenizer
    p = paths(x)
    if p["train_prompts"].is_file() and p["test_prompts"].is_file():
        return
    tokenizer = Tokenizer.from_pretrained(require(p["sft"] / "final", "sft"))
    train, counts = prefix_prompts(x, "train", x.train_prefixes, tokenizer, x.seed)
    if not 0 <= x.pair_eval_prefixes < len(train):
        raise ExperimentError(f"pair_eval_prefixes: {x.pair_eval_prefixes} of {len(train)} train prefixes "
                              f"would leave none to train on")
    hold_out(train, x.pair_eval_prefixes, x.seed)  # their pairs: train.py's evaluation set
    test, test_counts = prefix_prompts(x, "test", x.eval_prefixes, tokenizer, x.seed + 1)
    write_jsonl(p["test_prompts"], test)
    write_jsonl(p["train_prompts"], train)
    print(f"prefixes: {len(train)} train ({x.pair_eval_prefixes} held out for pair evaluation), {len(test)} test"
          + "".join(f"; left out: {v} {k}" for k, v in (counts + test_counts).items()))


def stage_sample(x: ImdbExperiment) -> None:
    p = paths(x)
    write_prompts(x)
    if p["samples"].is_file() and not list(p["samples"].parent.glob(p["samples"].name + ".rank*.part")):
        rows = sum(1 for _ in open(p["samples"]))
        expected = sum(1 for _ in open(p["train_prompts"])) * x.samples_per_prefix
        if rows >= expected:
            print(f"skip: {p['samples']} holds {rows} samples")
            return
    head = shlex.split(x.launcher) if x.launcher else [sys.executable]
    argv = [*head, str(SAMPLE_PY), "--model", str(p["sft"] / "final"), "--prompts", str(p["train_prompts"]),
            "--out", str(p["samples"]), "--num-samples", str(x.samples_per_prefix), "--temperature", str(x.temperature),
            "--max-new-tokens", str(x.max_new_tokens), "--batch-size", str(x.sample_batch_size),
            "--seed", str(x.seed), "--device", x.device]
    print("$ " + " ".join(shlex.quote(a) for a in argv), flush=True)
    if subprocess.run(argv).returncode != 0:
        raise ExperimentError("sample.py failed (command above); rerun the stage to resume")


# ---------------------------------------------------------------------------------------------------
# label: rewards, then pairs

def score_rows(rows: list[dict], scorer, done: set, out: Path, batch_size: int, chunk: int = 4096) -> None:
    """Append {"prompt_id", "sample_index", "reward"} for every row not in `done`, `chunk` rows per write."""
    todo = [r for r in rows if (r["prompt_id"], r["sample_index"]) not in done]
    from dpo.run_log import progress_bar
    with progress_bar(len(rows), len(rows) - len(todo), enabled=True, desc="label", unit="sample") as bar:
        for k in range(0, len(todo), chunk):
            part = todo[k:k + chunk]
            rewards = []
            for b in range(0, len(part), batch_size):
                batch = part[b:b + batch_size]
                rewards += scorer([r["prompt"] for r in batch], [r["completion"] for r in batch]).tolist()
                bar.update(len(batch))
            append_jsonl(out, [{"prompt_id": r["prompt_id"], "sample_index": r["sample_index"], "reward": v}
                               for r, v in zip(part, rewards)])


def stage_label(x: ImdbExperiment) -> None:
    from dpo.evaluate import rewards
    p = paths(x)
    if p["pairs_summary"].is_file():
        print(f"skip: {p['pairs_summary']} exists")
        return
    samples = [r for _, r in data.read_jsonl(require(p["samples"], "sample"))]
    split_of = {r["prompt_id"]: r["split"] for _, r in data.read_jsonl(p["train_prompts"])}
    done = {(r["prompt_id"], r["sample_index"]) for _, r in data.read_jsonl(p["scores"], resumable=True)}
    if len(done) < len(samples):
        scorer = rewards.load_scorer(reward_spec(x), device=pick_device(x.device))
        score_rows(samples, scorer, done, p["scores"], x.reward_batch_size)
    reward_of = {(r["prompt_id"], r["sample_index"]): r["reward"] for _, r in data.read_jsonl(p["scores"])}
    missing = [r for r in samples if (r["prompt_id"], r["sample_index"]) not in reward_of]
    if missing:
        raise ExperimentError(f"{p['scores']}: no reward for {len(missing)} samples (rerun the label stage)")
    for r in samples:
        r["reward"] = reward_of[(r["prompt_id"], r["sample_index"])]
    summary = {"reward": reward_spec(x), "tie_tolerance": x.tie_tolerance,
               "mean_sample_reward": sum(r["reward"] for r in samples) / len(samples)}
    for split, out in (("train", p["pairs_train"]), ("eval", p["pairs_eval"])):
        groups = pairs_lib.group_samples(r for r in samples if split_of[r["prompt_id"]] == split)
        split_pairs, counts = pairs_lib.build_pairs(groups, tie_tolerance=x.tie_tolerance)
        print(f"pairs {split} -> {out}\n{pairs_lib.format_pair_counts(counts)}")
        if not split_pairs and (split == "train" or x.pair_eval_prefixes):
            raise ExperimentError(f"label: no {split} pairs: every pair of samples was tied or empty (reward "
                                  f"{reward_spec(x)} gives {len({r['reward'] for r in samples})} distinct values)")
        write_jsonl(out, split_pairs)
        summary[split] = dict(counts)
    atomic_write(p["pairs_summary"], json.dumps(summary, indent=1) + "\n")


# ---------------------------------------------------------------------------------------------------
# train: the sweep

def sweep(x: ImdbExperiment, only: list[str] | None = None) -> list[dict]:
    runs = expand_sweep(x.methods)
    check_reward_model_runs(runs, x.reward_model_config)
    if only:
        unknown = sorted(set(only) - {r["name"] for r in runs})
        if unknown:
            raise ExperimentError(f"--runs: unknown run(s) {', '.join(unknown)}; the sweep has "
                                  f"{', '.join(r['name'] for r in runs)}")
        runs = [r for r in runs if r["name"] in only]
    return runs


def stage_reward_model(x: ImdbExperiment) -> None:
    """The Bradley–Terry reward model of the PPO runs: the SFT backbone + a scalar head on the train pairs."""
    p = paths(x)
    if not x.reward_model_config:
        print("reward_model: none configured (reward_model_config is empty)")
        return
    sft = require(p["sft"] / "final", "sft")
    require(p["pairs_summary"], "label")
    run_train(x.reward_model_config, [f"model.name={sft}", f"data.path={p['pairs_train']}",
                                      f"data.eval_path={p['pairs_eval']}", f"train.out_dir={p['reward_model']}",
                                      "wandb.name=imdb-reward-model"], run_dir=p["reward_model"], launcher=x.launcher)


def stage_train(x: ImdbExperiment, only=None) -> None:
    """One train.py run per entry of the sweep. With evaluate_during_training, each run's checkpoints are
    evaluated (and pruned) while it trains, so the disk holds only a few of them at a time."""
    p = paths(x)
    sft = require(p["sft"] / "final", "sft")
    require(p["pairs_summary"], "label")
    evaluate = make_evaluator(x) if x.evaluate_during_training else None
    for run in sweep(x, only):
        run_dir = p["runs"] / run["name"]
        if uses_reward_model(run):
            require(p["reward_model"] / "final", "reward_model")
        overrides = [f"model.name={sft}", f"data.path={p['pairs_train']}", f"data.eval_path={p['pairs_eval']}",
                     f"train.out_dir={run_dir}", f"wandb.name=imdb-{run['name']}", *expand(x, x.train_overrides),
                     *expand(x, run["overrides"])]
        poll = (lambda name=run["name"]: evaluate(checkpoints_to_evaluate(x, [name], sft=False))) if evaluate else None
        run_train(run["config"] or x.train_config, overrides, run_dir=run_dir, launcher=x.launcher,
                  while_running=poll)
        if poll:
            poll()


# ---------------------------------------------------------------------------------------------------
# evaluate: reward and KL of samples from every checkpoint

def generate_completions(model, tokenizer, prompt_ids: list[list[int]], *, max_new_tokens: int,
                         temperature: float = 1.0, batch_size: int = 64, seed: int = 0, device="cpu") -> list[list[int]]:
    """One completion per prompt (dpo.generation.generate: ids up to and including the first stop token),
    in input order.

    Plain ancestral sampling (no top-k/top-p), rows sorted by prompt length and batched. One generator on
    `device` (the model's), seeded once, serves every batch, and the batches are the same for every model,
    so two checkpoints see the same random numbers (common random numbers: their difference has less noise
    than either)."""
    order = sorted(range(len(prompt_ids)), key=lambda i: (len(prompt_ids[i]), i))
    out = [None] * len(prompt_ids)
    generator = torch.Generator(device=device).manual_seed(seed)
    for k in range(0, len(order), batch_size):
        batch = order[k:k + batch_size]
        completions = generate(model, tokenizer, [prompt_ids[i] for i in batch], max_new_tokens=max_new_tokens,
                               temperature=temperature, generator=generator)
        for i, completion in zip(batch, completions):
            out[i] = completion
    return out


def evaluate_policy(policy, reference, tokenizer, prompts: list[str], scorer, *, max_new_tokens: int,
                    temperature: float, batch_size: int, seed: int, device, model_name: str = "",
                    judge=None) -> tuple[dict, list[dict]]:
    """Sample one completion per prompt from `policy`, score it (and with `judge`, a second scorer, judge it),
    and measure KL(policy ‖ reference).

    Returns (metrics, sample rows). metrics use dpo.evaluate's reward-table names: n_samples, reward_mean,
    reward_sem, judge_mean, judge_sem (None without a judge), kl_exact_mean, kl_exact_sem, kl_sampled_mean,
    kl_sampled_sem, mean_completion_tokens, eos_fraction. Sample rows are in sample.py's format (plus reward,
    judge and KLs), so `python -m dpo.evaluate reward FILE --reward ...` can score them again with another
    reward."""
    from dpo.evaluate.tables import mean_sem
    from dpo.evaluate.kl import sequence_kl
    prompt_ids = [tokenizer.encode(p) for p in prompts]
    completion_ids = generate_completions(policy, tokenizer, prompt_ids, max_new_tokens=max_new_tokens,
                                          temperature=temperature, batch_size=batch_size, seed=seed, device=device)
    stop = stop_ids(policy, tokenizer)
    texts = [completion_text(tokenizer, c, stop) for c in completion_ids]
    reward = scorer(prompts, texts).float().tolist()
    judged = judge(prompts, texts).float().tolist() if judge else [None] * len(prompts)
    kl = sequence_kl(policy, reference, prompt_ids, completion_ids, batch_size=batch_size, device=device,
                     pad_id=tokenizer.pad_id_or_eos())
    kl_exact, kl_sampled = kl["kl_exact"].tolist(), kl["kl_sampled"].tolist()
    ended = [bool(c) and c[-1] in stop for c in completion_ids]
    metrics = {"n_samples": len(prompts)}
    metrics["reward_mean"], metrics["reward_sem"] = mean_sem(reward)
    metrics["judge_mean"], metrics["judge_sem"] = mean_sem(judged) if judge else (None, None)
    metrics["kl_exact_mean"], metrics["kl_exact_sem"] = mean_sem(kl_exact)
    metrics["kl_sampled_mean"], metrics["kl_sampled_sem"] = mean_sem(kl_sampled)
    metrics["mean_completion_tokens"] = sum(map(len, completion_ids)) / len(completion_ids)
    metrics["eos_fraction"] = sum(ended) / len(ended)
    rows = [{"prompt_id": i, "sample_index": 0, "prompt": prompts[i], "completion": texts[i], "model": model_name,
             "temperature": temperature, "top_k": None, "top_p": None, "max_new_tokens": max_new_tokens,
             "seed": seed, "finish_reason": "eos" if ended[i] else "length", "prompt_token_ids": prompt_ids[i],
             "completion_token_ids": completion_ids[i], "reward": reward[i], "judge": judged[i],
             "kl_exact": kl_exact[i], "kl_sampled": kl_sampled[i]} for i in range(len(prompts))]
    return metrics, rows


def checkpoints_to_evaluate(x: ImdbExperiment, only=None, sft: bool = True) -> list[dict]:
    """The SFT model (step 0 of every run) and every complete checkpoint of every run of the sweep."""
    p = paths(x)
    items = [{"run": "sft", "method": "sft", "param": "", "value": None, "step": 0, "examples": 0,
              "checkpoint": str(p["sft"] / "final")}] if sft else []
    for run in sweep(x, only):
        for step, folder in list_checkpoints(p["runs"] / run["name"]):
            examples = json.loads((folder / "trainer_state.json").read_text()).get("examples")
            items.append({"run": run["name"], "method": run["method"], "param": run["param"],
                          "value": run["value"], "step": step, "examples": examples, "checkpoint": str(folder)})
    return items


def prune(item: dict) -> None:
    """Delete an evaluated checkpoint, unless a cut-off run still needs it to resume (its latest)."""
    folder = Path(item["checkpoint"])
    run_dir = folder.parent.parent
    latest = (run_dir / "checkpoints" / "latest")
    if latest.is_file() and latest.read_text().strip() == folder.name and not train_done(run_dir):
        return
    shutil.rmtree(folder)
    print(f"pruned {folder}", flush=True)


def make_evaluator(x: ImdbExperiment):
    """evaluate(items) -> results rows of items not evaluated before (each appended to results.jsonl as
    soon as it is done). The reference (SFT) model, tokenizer, reward and test prompts load on first use."""
    from dpo.evaluate import rewards
    from dpo.interop.hf_checkpoint import load_pretrained
    from dpo.tokenizer import Tokenizer
    p = paths(x)
    state = {}

    def evaluate(items: list[dict]) -> list[dict]:
        done = {(r["run"], r["step"]) for _, r in data.read_jsonl(p["results"], resumable=True)}
        todo = [item for item in items if (item["run"], item["step"]) not in done]
        if todo and not state:
            sft = require(p["sft"] / "final", "sft")
            state["device"] = device = pick_device(x.device)
            state["prompts"] = [r["prompt"] for _, r in data.read_jsonl(require(p["test_prompts"], "sample"))]
            state["tokenizer"] = Tokenizer.from_pretrained(sft)
            state["reference"] = load_pretrained(sft, device=device).eval()
            state["scorer"] = rewards.load_scorer(reward_spec(x), device=device)
            state["judge"] = rewards.load_scorer(x.judge, device=device) if x.judge else None
        rows = []
        for item in todo:
            start = time.perf_counter()
            policy = state["reference"] if item["run"] == "sft" else \
                load_pretrained(item["checkpoint"], device=state["device"]).eval()
            metrics, samples = evaluate_policy(
                policy, state["reference"], state["tokenizer"], state["prompts"], state["scorer"],
                max_new_tokens=x.max_new_tokens, temperature=x.temperature, batch_size=x.eval_batch_size,
                seed=x.seed, device=state["device"], model_name=item["checkpoint"], judge=state["judge"])
            row = {**item, **metrics, "seconds": round(time.perf_counter() - start, 2)}
            write_jsonl(eval_samples_path(x, item), samples)
            append_jsonl(p["results"], [row])
            rows.append(row)
            judged = f"  judge {row['judge_mean']:.3f} ± {row['judge_sem']:.3f}" if x.judge else ""
            print(f"evaluate {item['run']} step {item['step']}: reward {row['reward_mean']:.3f} ± "
                  f"{row['reward_sem']:.3f}{judged}  KL {row['kl_exact_mean']:.2f} ± {row['kl_exact_sem']:.2f}  "
                  f"({row['seconds']:.1f}s)", flush=True)
        if x.prune_checkpoints:
            for item in items:
                if item["run"] != "sft" and Path(item["checkpoint"]).is_dir():
                    prune(item)
        return rows
    return evaluate


def judge_earlier_rows(x: ImdbExperiment, results: list[dict]) -> list[dict]:
    """Rows evaluated before `judge` was set get it now from their saved samples (nothing is sampled again):
    each sample file gains a "judge" per row and results.jsonl is rewritten with judge_mean and judge_sem."""
    from dpo.evaluate import rewards
    from dpo.evaluate.tables import mean_sem
    todo = [r for r in results if r.get("judge_mean") is None]
    if not x.judge or not todo:
        return results
    judge = rewards.load_scorer(x.judge, device=pick_device(x.device))
    for row in todo:
        path = eval_samples_path(x, row)
        samples = [r for _, r in data.read_jsonl(require(path, "evaluate"))]
        judged = judge([r["prompt"] for r in samples], [r["completion"] for r in samples]).tolist()
        for sample, value in zip(samples, judged):
            sample["judge"] = value
        write_jsonl(path, samples)
        row["judge_mean"], row["judge_sem"] = mean_sem(judged)
    write_jsonl(paths(x)["results"], results)
    print(f"judge {x.judge}: {len(todo)} checkpoints evaluated before it was set, judged from their samples")
    return results


def stage_evaluate(x: ImdbExperiment, only=None) -> list[dict]:
    p = paths(x)
    make_evaluator(x)(checkpoints_to_evaluate(x, only))
    order = {"sft": -1} | {run["name"]: i for i, run in enumerate(sweep(x))}  # the sweep's order, then the rest
    results = sorted((r for _, r in data.read_jsonl(p["results"], resumable=True)),
                     key=lambda r: (order.get(r["run"], len(order)), r["run"], r["step"]))
    if not results:
        raise ExperimentError(f"{p['results']}: nothing evaluated")
    results = judge_earlier_rows(x, results)
    write_csv(p["results_csv"], results, RESULT_COLUMNS)
    report = write_report(x, results)
    print(f"results: {p['results_csv']} ({len(results)} rows), {p['report']}\n" + report.split("\n## Samples")[0])
    return results


# ---------------------------------------------------------------------------------------------------
# Tables

def final_rows(results: list[dict]) -> list[dict]:
    """The last evaluated step of each run (and the SFT row), in the order methods first appear."""
    last = {}
    for row in results:
        if row["run"] not in last or row["step"] > last[row["run"]]["step"]:
            last[row["run"]] = row
    return list(last.values())


def pm(mean, sem, digits: int) -> str:
    if mean is None:
        return "—"
    return f"{mean:.{digits}f}" + ("" if sem is None else f" ± {sem:.{digits}f}")


def hyperparameter(row: dict) -> str:
    return f"{row['param'].rsplit('.', 1)[-1]} = {row['value']}" if row.get("param") else "—"


def format_table(rows: list[dict]) -> str:
    """A Markdown table: method, hyperparameter, step, mean reward ± sem, the judge's mean ± sem (when the
    rows have one), mean KL ± sem."""
    judged = any(r.get("judge_mean") is not None for r in rows)
    lines = ["| method | hyperparameter | step | reward |" + (" judge |" if judged else "") + " KL(π‖π_ref) |",
             "|---|---|---:|---:|" + ("---:|" if judged else "") + "---:|"]
    for r in rows:
        judge = f" {pm(r.get('judge_mean'), r.get('judge_sem'), 3)} |" if judged else ""
        lines.append(f"| {r['method']} | {hyperparameter(r)} | {r['step']} | {pm(r['reward_mean'], r['reward_sem'], 3)} "
                     f"|{judge} {pm(r['kl_exact_mean'], r['kl_exact_sem'], 2)} |")
    return "\n".join(lines)


def read_eval_samples(x: ImdbExperiment, row: dict) -> dict[int, dict]:
    """The evaluate stage's samples of one checkpoint, by test prompt id."""
    return {r["prompt_id"]: r for _, r in data.read_jsonl(require(eval_samples_path(x, row), "evaluate"))}


def paired_differences(x: ImdbExperiment, results: list[dict], baseline: str = "preferred_ft",
                       methods: tuple | None = None) -> list[dict]:
    """The last checkpoint of each run (of `methods`; None: all but SFT and the baseline) against the `baseline`
    method's checkpoint nearest to it in KL: the mean difference of reward (and judge) over the same test
    prefixes, ± its standard error. Both checkpoints sampled each prefix with the same random numbers, so the
    paired difference is less noisy than the difference of the two means."""
    from dpo.evaluate.tables import mean_sem
    candidates = [r for r in results if r["method"] == baseline]
    out = []
    for row in final_rows(results):
        if row["method"] in ("sft", baseline) or not candidates or (methods and row["method"] not in methods):
            continue
        base = min(candidates, key=lambda r: abs(r["kl_exact_mean"] - row["kl_exact_mean"]))
        mine, theirs = read_eval_samples(x, row), read_eval_samples(x, base)
        shared = sorted(mine.keys() & theirs.keys())
        diff = {"run": row["run"], "step": row["step"], "kl": row["kl_exact_mean"], "baseline_run": base["run"],
                "baseline_step": base["step"], "baseline_kl": base["kl_exact_mean"], "n": len(shared)}
        for key in ("reward", "judge"):
            values = [mine[i].get(key) for i in shared], [theirs[i].get(key) for i in shared]
            ok = shared and None not in values[0] and None not in values[1]
            diff[key], diff[key + "_sem"] = mean_sem([a - b for a, b in zip(*values)]) if ok else (None, None)
        out.append(diff)
    return out


def format_differences(diffs: list[dict], baseline: str = "preferred_ft") -> str:
    """paired_differences as a Markdown table."""
    lines = [f"| run (last step) | KL | {baseline} step nearest in KL | its KL | Δ reward | Δ judge | prefixes |",
             "|---|---:|---|---:|---:|---:|---:|"]
    for d in diffs:
        lines.append(f"| {d['run']} ({d['step']}) | {d['kl']:.2f} | {d['baseline_run']} ({d['baseline_step']}) "
                     f"| {d['baseline_kl']:.2f} | {pm(d['reward'], d['reward_sem'], 3)} "
                     f"| {pm(d['judge'], d['judge_sem'], 3)} | {d['n']} |")
    return "\n".join(lines)


def format_samples(x: ImdbExperiment, results: list[dict], n: int = 3) -> str:
    """n seeded-random test prefixes, and what the SFT model and every run's last checkpoint wrote after them."""
    rows = final_rows(results)
    by_run = {r["run"]: read_eval_samples(x, r) for r in rows}
    shared = sorted(set.intersection(*(set(s) for s in by_run.values())))
    picked = [shared[i] for i in sorted(data.seeded_subset(len(shared), n, x.seed))]
    lines = []
    for pid in picked:
        prompt = next(iter(by_run.values()))[pid]["prompt"]
        lines += [f"**Prefix {pid}: \"{prompt}\"**", "", "| run (step) | reward | judge | completion |",
                  "|---|---:|---:|---|"]
        for r in rows:
            sample = by_run[r["run"]][pid]
            text = " ".join(sample["completion"].split()).replace("|", "\\|")
            judge = "—" if sample.get("judge") is None else f"{sample['judge']:.2f}"
            lines.append(f"| {r['run']} ({r['step']}) | {sample['reward']:.2f} | {judge} | {text} |")
        lines.append("")
    return "\n".join(lines)


def write_report(x: ImdbExperiment, results: list[dict]) -> str:
    """out_dir/results.md: the last checkpoint of every run, the rank correlation of reward and judge over all
    checkpoints, the paired differences against Preferred-FT (every run) and DPO (PPO's runs) at the nearest
    KL, and samples."""
    from dpo.evaluate.tables import spearman
    parts = [f"# IMDB results: {x.out_dir}", "", f"reward: {reward_spec(x)}; judge: {x.judge or 'none'}; "
             f"{results[0]['n_samples']} test prefixes per checkpoint, T = {x.temperature}, "
             f"{x.max_new_tokens} new tokens at most", "", "## Last checkpoint of every run", "",
             format_table(final_rows(results)), ""]
    judged = [r for r in results if r.get("judge_mean") is not None]
    if x.judge and len(judged) >= 2:
        rho = spearman([r["reward_mean"] for r in judged], [r["judge_mean"] for r in judged])
        parts += [f"Rank correlation (Spearman) of mean reward and mean judge over the {len(judged)} evaluated "
                  f"checkpoints: {'—' if rho is None else f'{rho:.2f}'}", ""]
    for baseline, name, methods in (("preferred_ft", "Preferred-FT", None), ("dpo", "DPO", ("ppo", "ppo_gt"))):
        diffs = paired_differences(x, results, baseline, methods)
        if diffs:
            parts += [f"## Against {name} at the nearest KL (paired over the same test prefixes, ± standard error)",
                      "", format_differences(diffs, baseline), ""]
    parts += ["## Samples (last checkpoints, the same test prefixes)", "", format_samples(x, results)]
    report = "\n".join(parts)
    atomic_write(paths(x)["report"], report)
    return report


# ---------------------------------------------------------------------------------------------------
# plot

def stage_plot(x: ImdbExperiment, publish: bool = False) -> None:
    """Execute the notebook headless on results.csv; it writes the figure and the CSV and table beside it
    under out_dir/figures/, with the evaluate stage's results.md as <figure name>_results.md, and publish
    copies the four to `figure`'s folder (common.execute_notebook)."""
    results = require(paths(x)["results_csv"], "evaluate")
    execute_notebook(NOTEBOOK, {"IMDB_RESULTS": str(results.resolve())}, results, x, figure_var="IMDB_FIGURE",
                     publish=publish, report=require(paths(x)["report"], "evaluate"))


# ---------------------------------------------------------------------------------------------------
# CLI

def run_stages(x: ImdbExperiment, stages: list[str], only=None, publish: bool = False) -> None:
    sweep(x, only)  # a bad sweep, --runs or judge fails now, not after hours of earlier stages
    if x.judge:
        from dpo.evaluate.rewards import check_spec
        check_spec(x.judge, folders=False)
    save_config(x, Path(x.out_dir) / "experiment.yaml")
    actions = {"prepare": stage_prepare, "sft": stage_sft, "classifier": stage_classifier, "sample": stage_sample,
               "label": stage_label, "reward_model": stage_reward_model, "train": lambda x: stage_train(x, only),
               "evaluate": lambda x: stage_evaluate(x, only), "plot": lambda x: stage_plot(x, publish)}
    run_actions(x, actions, stages)


def main(argv=None) -> int:
    return driver_main(argv, module_doc=__doc__, prog="python -m dpo.experiments.imdb", cls=ImdbExperiment,
                       stages=STAGES, run_stages=run_stages, config_help="experiment config (configs/imdb/*.yaml)",
                       runs_help="train/evaluate only these runs of the sweep (comma-separated)")


if __name__ == "__main__":
    sys.exit(main())
