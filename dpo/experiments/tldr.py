"""Win rate against human references across sampling temperatures: TL;DR summarization (the DPO paper's
Figure 2, right) and Anthropic HH single-turn dialogue (Figure 3), one driver for both (`task: tldr | hh`).

    python -m dpo.experiments.tldr --config configs/tldr/mini.yaml data_path=PATH/tldr-mini  # all stages
    python -m dpo.experiments.tldr --config configs/tldr/pipeline.yaml --stage generate,judge,plot
    python -m dpo.experiments.tldr --config configs/hh/pipeline.yaml --stage judge
    python -m dpo.experiments.tldr --config configs/tldr/mini.yaml --stage plot --publish  # update notebooks/figures/

Stages (each reads the files of the ones before it, resumes where it stopped, skips what is done):

    download       the published data sets named in `downloads` into download_dir (dpo.interop.datasets)
    prepare        (miniature) with max_post_words > 0, a copy of the TL;DR folder with every post cut to
                   its first max_post_words words (out_dir/data/tldr: short prompts); with sft_text, the
                   prompts + summaries as plain text for SFT (out_dir/data/sft_text)
    sft            the policy's and reference's starting point: `sft_model` when set (the paper's
                   CarperAI/openai_summarize_tldr_sft), else train.py --config sft_config -> out_dir/sft
    pairs          (only when preferences = samples) samples_per_prompt SFT samples for train prompts (and
                   for judge_prompts held-out valid prompts), scored by ROUGE-L F1 against the human
                   reference; all k(k−1)/2 pairs per prompt ordered by it, ties dropped and counted
                   (dpo/experiments/pairs.py, the IMDB recipe): out_dir/pairs/{train,eval,judge}.jsonl
    reward_models  Bradley–Terry reward models (train.py loss.name=reward_model): out_dir/reward_model on
                   the training preferences (scores Best-of-N), and with judge_model_config out_dir/
                   judge_model on the held-out judge pairs (an offline judge that never saw the train pairs)
    train          one train.py run per entry of `methods` (DPO, Preferred-FT, ...) from the SFT model,
                   with the SFT model as the frozen reference; a method with its own `config` runs another
                   trainer: PPO (loss.name=ppo) against the reward model, ppo.reward=reward_model:{reward_model}
    generate       one summary (reply) per evaluation prompt at each of `temperatures`, from the SFT model
                   and every run's final policy, and Best-of-best_of from the SFT model by the reward model
                   (sample.py): out_dir/generations/{run}/t{T}.jsonl
    judge          every entry of `judges` on every generations file: win rate against the human reference
                   (or another run's samples) with its 95% Wilson interval -> out_dir/results.{jsonl,csv}
    plot           jupyter-execute notebooks/tldr_winrate.ipynb on results.csv -> out_dir/figures/<file name of
                   `figure`> (PNG, and the results CSV and a Markdown table beside it); with --publish, those
                   three files are then copied to `figure` (a committed file: only --publish changes it)

The judges (`judges` entries {name, judge, against, task, url, model, workers}):
    judge: llm            an OpenAI-compatible chat-completions endpoint (dpo/evaluate/judge.py; the paper: GPT-4 with
                          the concise prompt, A/B order randomised). URL, model and key from the entry or from
                          DPO_JUDGE_URL, DPO_JUDGE_MODEL, DPO_JUDGE_API_KEY (or OPENAI_API_KEY).
    judge: judge_model    the driver's held-out Bradley–Terry judge (out_dir/judge_model): the higher reward wins
    judge: reward_model   the driver's Best-of-N reward model (biased in Best-of-N's favour: it picked those)
    judge: rouge          ROUGE-L F1 against the human reference: only meaningful with `against` another run
                          (against the reference itself the reference scores 1 and always wins)
    judge: <reward spec>  any dpo.evaluate.rewards spec (reward_model:DIR, classifier:DIR, hf:NAME)
    against: reference    the human reference summary (TL;DR) or the chosen reply (HH), as in the paper
    against: RUN@T        that run's samples at temperature T (e.g. sft@0, the SFT model's greedy summaries)
train.py runs as a subprocess and sample.py in this process, both under `launcher` (e.g. "torchrun
--nproc_per_node=8", then sample.py is a subprocess too) when set. The judges run in this process.
"""
import json
import re
import shlex
import subprocess
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from dpo import data, formats
from dpo.config import save_config
from dpo.experiments import pairs as pairs_lib
from dpo.experiments.common import (
    ExperimentError, append_jsonl, check_reward_model_runs, driver_main, execute_notebook, expand_sweep, fill_in,
    hold_out, require, run_actions, run_train, train_done, uses_reward_model, write_csv, write_jsonl,
)
from dpo.files import atomic_dir, atomic_write

REPO = Path(__file__).resolve().parents[2]
SAMPLE_PY = REPO / "sample.py"
NOTEBOOK = REPO / "notebooks" / "tldr_winrate.ipynb"
STAGES = ("download", "prepare", "sft", "pairs", "reward_models", "train", "generate", "judge", "plot")
TASKS = ("tldr", "hh")
JUDGE_TASK = {"tldr": "summary_concise", "hh": "dialogue"}  # dpo/evaluate/judge.py prompts
JUDGE_KEYS = ("name", "judge", "against", "task", "url", "model", "workers")
RESULT_COLUMNS = ["judge", "judge_spec", "against", "run", "method", "temperature", "best_of", "n", "wins",
                  "losses", "ties", "unparseable", "errors", "missing_baseline", "win_rate", "ci_low", "ci_high",
                  "rouge_l_mean", "mean_words", "samples"]


@dataclass
class WinRateExperiment:
    task: str = "tldr"                  # tldr (summaries vs the human TL;DR) | hh (replies vs the chosen reply)
    out_dir: str = "runs/tldr"          # every file of the experiment goes under here
    data_path: str = "data/tldr/tldr_3_filtered"  # TL;DR SFT folder ({train,valid,test}.jsonl) or hh-rlhf folder
    comparisons_path: str = "data/tldr/comparisons"  # TL;DR human comparisons (preferences = human)
    downloads: list = field(default_factory=list)  # download stage: dpo.data names (tldr, tldr-comparisons, hh)
    download_dir: str = "data/tldr"
    seed: int = 0
    device: str = "auto"                # sample.py's device: auto | cpu | cuda
    launcher: str = ""                  # prefix of train.py / sample.py runs ("" = this Python), e.g. torchrun ...
    threads: int = 0                    # CPU threads per process (OMP_NUM_THREADS); 0 = torch's default
    max_post_words: int = 0             # prepare: > 0 cuts each TL;DR post to its first N words
    sft_text: bool = False              # SFT on the whole prompt + summary as LM text (a model from scratch
                                        # learns the posts' language too), not on the summary alone
    sft_model: str = ""                 # start from this SFT checkpoint or hub name ("" = train sft_config)
    sft_config: str = "configs/tldr/mini_sft.yaml"
    preferences: str = "human"          # human (the published comparisons / HH pairs) | samples (see `pairs`)
    pair_prompts: int = 0               # samples: train prompts sampled (0 = all)
    pair_eval_prompts: int = 100        # samples: of those, held out as train.py's evaluation pairs
    judge_prompts: int = 0              # samples: valid prompts whose pairs train the judge model (0 = none)
    samples_per_prompt: int = 4
    pair_temperature: float = 1.0
    tie_tolerance: float = 0.0          # |ROUGE_i − ROUGE_j| <= this is a tie (pair dropped and counted)
    max_new_tokens: int = 64
    sample_batch_size: int = 64
    reward_model_config: str = ""       # Bradley–Terry reward model for Best-of-N and PPO ({reward_model}; "" = none)
    judge_model_config: str = ""        # Bradley–Terry judge on the held-out judge pairs ("" = none)
    train_config: str = "configs/tldr/dpo.yaml"
    methods: dict = field(default_factory=dict)  # {method: {config, overrides: [k=v], param: key, values: [...]}}
    eval_split: str = "test"
    eval_prompts: int = 500             # evaluation prompts (seeded subset of eval_split; 0 = all)
    single_turn: bool = True            # hh: evaluate on single-turn dialogues only (the paper)
    temperatures: list = field(default_factory=lambda: [0.0, 0.25, 0.5, 0.75, 1.0])
    best_of: int = 0                    # N of the Best-of-N baseline (0 = none; needs reward_model_config)
    judges: list = field(default_factory=lambda: [{"name": "gpt4", "judge": "llm", "against": "reference"}])
    figure: str = "notebooks/figures/tldr_winrate.png"  # where --publish copies the plot stage's figure (and
                                        # the .csv and .md beside it); the plot stage writes out_dir/figures/


# ---------------------------------------------------------------------------------------------------
# Paths and checks

def paths(x: WinRateExperiment) -> dict:
    out = Path(x.out_dir)
    return {
        "data": out / "data" / "tldr", "sft_text": out / "data" / "sft_text", "sft": out / "sft",
        "pair_prompts": out / "prompts" / "pairs.jsonl", "eval_prompts": out / "prompts" / "eval.jsonl",
        "pair_samples": out / "samples" / "pairs.jsonl", "pairs": out / "pairs",
        "pairs_summary": out / "pairs" / "summary.json", "reward_model": out / "reward_model",
        "judge_model": out / "judge_model", "runs": out / "runs", "generations": out / "generations",
        "verdicts": out / "verdicts", "results": out / "results.jsonl", "results_csv": out / "results.csv",
    }


def check_experiment(x: WinRateExperiment) -> None:
    """Fail before any work on a config that cannot run to the end."""
    def need(ok, msg):
        if not ok:
            raise ExperimentError(f"experiment config: {msg}")
    need(x.task in TASKS, f"task must be one of {', '.join(TASKS)}; got {x.task!r}")
    need(x.preferences in ("human", "samples"), f"preferences must be human or samples; got {x.preferences!r}")
    need(x.preferences == "human" or x.task == "tldr", "preferences: samples needs task tldr (ROUGE-L vs the summary)")
    need((x.max_post_words == 0 and not x.sft_text) or x.task == "tldr",
         "max_post_words and sft_text apply to task tldr only")
    need(bool(x.temperatures) and all(isinstance(t, (int, float)) and t >= 0 for t in x.temperatures),
         f"temperatures must be a non-empty list of numbers >= 0; got {x.temperatures!r}")
    need(x.best_of >= 0 and (x.best_of == 0 or x.reward_model_config),
         "best_of > 0 needs reward_model_config (the reward model that picks the best sample)")
    need(not x.judge_model_config or (x.preferences == "samples" and x.judge_prompts > 0),
         "judge_model_config needs preferences: samples and judge_prompts > 0 (its held-out training pairs)")
    need(x.preferences == "human" or (x.samples_per_prompt >= 2 and x.pair_eval_prompts > 0),
         "preferences: samples needs samples_per_prompt >= 2 and pair_eval_prompts > 0 (train.py's evaluation pairs)")
    need(isinstance(x.judges, list) and x.judges, "judges must be a non-empty list")
    names = set()
    for i, j in enumerate(x.judges):
        need(isinstance(j, dict) and {"name", "judge"} <= set(j), f"judges[{i}] must be a mapping with name and judge")
        unknown = set(j) - set(JUDGE_KEYS)
        need(not unknown, f"judges[{i}]: unknown key(s) {', '.join(sorted(unknown))}; valid: {', '.join(JUDGE_KEYS)}")
        need(j["name"] not in names and re.fullmatch(r"[\w.-]+", str(j["name"])),
             f"judges[{i}].name {j['name']!r} must be unique and a plain file name")
        names.add(j["name"])
        need(j["judge"] != "judge_model" or x.judge_model_config, f"judges[{i}]: judge_model needs judge_model_config")
        need(j["judge"] != "reward_model" or x.reward_model_config,
             f"judges[{i}]: reward_model needs reward_model_config")
        against = j.get("against", "reference")
        need(against == "reference" or re.fullmatch(r"[\w.-]+@[0-9.]+", against),
             f"judges[{i}].against must be reference or RUN@T (e.g. sft@0); got {against!r}")
        need(j["judge"] != "rouge" or against != "reference",
             f"judges[{i}]: the rouge judge against the reference is degenerate (the reference scores 1 and "
             f"always wins); compare against another run's samples (against: sft@0)")
    sweep(x)


def sweep(x: WinRateExperiment, only: list[str] | None = None) -> list[dict]:
    runs = expand_sweep(x.methods) if x.methods else []
    check_reward_model_runs(runs, x.reward_model_config)
    clash = {r["name"] for r in runs} & {"sft", f"best_of_{x.best_of}"}
    if clash:
        raise ExperimentError(f"methods: run name(s) {', '.join(sorted(clash))} are taken by the baselines")
    if only:
        unknown = sorted(set(only) - {r["name"] for r in runs})
        if unknown:
            raise ExperimentError(f"--runs: unknown run(s) {', '.join(unknown)}; the sweep has "
                                  f"{', '.join(r['name'] for r in runs) or 'no runs'}")
        runs = [r for r in runs if r["name"] in only]
    return runs


def sft_dir(x: WinRateExperiment) -> str:
    """The SFT model: `sft_model` (a folder or hub name) or our run's final checkpoint."""
    if x.sft_model:
        return x.sft_model
    return str(require(paths(x)["sft"] / "final", "sft"))


def tldr_path(x: WinRateExperiment) -> Path:
    """The TL;DR SFT folder every stage reads: the cut copy when max_post_words > 0."""
    return paths(x)["data"] if x.max_post_words > 0 else Path(x.data_path)


def temperature_name(t: float) -> str:
    return f"t{float(t):g}"


# ---------------------------------------------------------------------------------------------------
# download, prepare

def stage_download(x: WinRateExperiment) -> None:
    if not x.downloads:
        print("download: nothing to download (downloads is empty)")
        return
    from dpo.interop.datasets import download_dataset
    for name in x.downloads:
        for path in download_dataset(name, x.download_dir):
            print(path)


def cut_words(text: str, words: int) -> str:
    """The text up to the end of its `words`-th whitespace-separated word (inner whitespace kept)."""
    spans = [m.end() for m in re.finditer(r"\S+", text)]
    return text if len(spans) <= words else text[:spans[words - 1]]


def stage_prepare(x: WinRateExperiment) -> None:
    """max_post_words > 0: the TL;DR folder with each post cut to max_post_words words (other fields as they
    were). sft_text: {"prompt": "", "completion": prompt + " " + summary} JSON lines for SFT (train, valid)."""
    if x.max_post_words <= 0 and not x.sft_text:
        print("prepare: nothing to prepare (max_post_words = 0, sft_text false): every stage reads data_path")
    if x.max_post_words > 0:
        cut_posts(x)
    if x.sft_text:
        out = paths(x)["sft_text"]
        if out.is_dir():
            print(f"skip: {out} exists")
            return
        with atomic_dir(out) as tmp:
            for split in ("train", "valid"):
                examples = formats.read_tldr_sft(tldr_path(x), split)
                write_jsonl(tmp / f"{split}.jsonl", [{"prompt": "", "completion": ex["prompt"] + ex["completion"],
                                                     "id": ex["id"]} for ex in examples])
        print(f"prepare: {out}: the prompts and summaries of {tldr_path(x)} as plain text (train, valid)")


def cut_posts(x: WinRateExperiment) -> None:
    out = paths(x)["data"]
    if out.is_dir():
        print(f"skip: {out} exists")
        return
    counts = Counter()
    with atomic_dir(out) as tmp:
        for split in formats.TLDR_SFT_SPLITS:
            source = Path(x.data_path) / f"{split}.jsonl"
            rows = []
            for lineno, obj in data.read_jsonl(source, counts):
                post = data.get_field(obj, "post", f"{source}:{lineno}", nonempty=True)
                cut = cut_words(post, x.max_post_words)
                counts[f"{split} posts cut to {x.max_post_words} words"] += cut != post
                rows.append({**obj, "post": cut})
            counts[f"{split} posts"] = len(rows)
            write_jsonl(tmp / f"{split}.jsonl", rows)
    print(f"prepare: {out}: " + ", ".join(f"{k} {v}" for k, v in counts.items()))


# ---------------------------------------------------------------------------------------------------
# sft

def stage_sft(x: WinRateExperiment) -> None:
    if x.sft_model:
        print(f"sft: starting from {x.sft_model} (sft_model)")
        return
    if x.sft_text:
        folder = require(paths(x)["sft_text"], "prepare")
        data_overrides = ["data.format=sft_jsonl", f"data.path={folder / 'train.jsonl'}",
                          f"data.eval_path={folder / 'valid.jsonl'}"]
    else:
        data_path = tldr_path(x) if x.task == "tldr" else Path(x.data_path)
        data_overrides = [f"data.path={require(data_path, 'prepare' if x.max_post_words > 0 else 'download')}"]
    run_train(x.sft_config, [*data_overrides, f"train.out_dir={paths(x)['sft']}"], run_dir=paths(x)["sft"],
              launcher=x.launcher)


# ---------------------------------------------------------------------------------------------------
# Prompts

def task_prompts(x: WinRateExperiment, split: str, counts: Counter) -> list[dict]:
    """{"prompt", "reference", "source"} of a split: TL;DR posts with their human summary, or HH dialogues
    (single-turn ones when single_turn) with their chosen reply."""
    if x.task == "tldr":
        return [{"prompt": ex["prompt"], "reference": ex["completion"], "source": ex["source"]}
                for ex in formats.read_tldr_sft(tldr_path(x), split, counts)]
    rows = [{"prompt": ex["prompt"], "reference": ex["chosen"], "source": ex["source"]}
            for ex in formats.read_hh(x.data_path, split, counts)]
    if x.single_turn:
        kept = [r for r in rows if sample_cli().is_single_turn(r["prompt"])]
        counts["multi-turn dialogues (single_turn)"] += len(rows) - len(kept)
        rows = kept
    return rows


def pick_prompts(rows: list[dict], n: int, seed: int, prefix: str) -> list[dict]:
    """A seeded subset of n rows (dpo.data.seeded_subset: in split order, all when n = 0) with ids
    "prefix:position in the split" (unique across splits)."""
    return [{"prompt_id": f"{prefix}:{i}", **rows[i]} for i in data.seeded_subset(len(rows), n, seed)]


def write_eval_prompts(x: WinRateExperiment) -> Path:
    path = paths(x)["eval_prompts"]
    if not path.is_file():
        counts = Counter()
        rows = pick_prompts(task_prompts(x, x.eval_split, counts), x.eval_prompts, x.seed + 1, x.eval_split)
        if not rows:
            raise ExperimentError(f"{x.data_path}: no evaluation prompts in split {x.eval_split}")
        write_jsonl(path, rows)
        print(f"evaluation prompts: {len(rows)} of split {x.eval_split} -> {path}"
              + "".join(f"; {k}: {v}" for k, v in counts.items()))
    return path


def write_pair_prompts(x: WinRateExperiment) -> Path:
    """Train prompts (a seeded subset of pair_eval_prompts of them held out: split "eval", the rest
    "train") and judge_prompts valid prompts (split "judge"), each row with its "split"."""
    path = paths(x)["pair_prompts"]
    if path.is_file():
        return path
    counts = Counter()
    train = pick_prompts(task_prompts(x, "train", counts), x.pair_prompts, x.seed, "train")
    if not 0 <= x.pair_eval_prompts < len(train):
        raise ExperimentError(f"pair_eval_prompts: {x.pair_eval_prompts} of {len(train)} train prompts would "
                              f"leave none to train on")
    hold_out(train, x.pair_eval_prompts, x.seed)
    judge = pick_prompts(task_prompts(x, "valid", counts), x.judge_prompts, x.seed + 2, "valid") \
        if x.judge_prompts > 0 else []
    for row in judge:
        row["split"] = "judge"
    write_jsonl(path, train + judge)
    print(f"pair prompts: {len(train) - x.pair_eval_prompts} train, {x.pair_eval_prompts} eval, {len(judge)} "
          f"judge -> {path}")
    return path


# ---------------------------------------------------------------------------------------------------
# sample.py

def run_sample(x: WinRateExperiment, model: str, prompts: Path, out: Path, *, temperature: float,
               n: int = 1, best_of: int = 0, reward: str = "") -> None:
    """sample.py (resumable: a cut-off run continues where it stopped): under `launcher` as a subprocess,
    else in this process (no interpreter and torch start-up per file: the miniature samples ~25 files)."""
    args = ["--model", str(model), "--prompts", str(prompts), "--out", str(out),
            "--temperature", str(float(temperature)), "--max-new-tokens", str(x.max_new_tokens),
            "--batch-size", str(x.sample_batch_size), "--seed", str(x.seed), "--device", x.device]
    args += ["--best-of", str(best_of), "--reward", reward] if best_of else ["--num-samples", str(n)]
    head = shlex.split(x.launcher) if x.launcher else [sys.executable]
    print("$ " + " ".join(shlex.quote(a) for a in [*head, str(SAMPLE_PY), *args]), flush=True)
    if x.launcher:
        failed = subprocess.run([*head, str(SAMPLE_PY), *args]).returncode != 0
    else:
        failed = sample_cli().main(args) != 0
    if failed:
        raise ExperimentError(f"sample.py failed for {out} (command above); rerun the stage to resume")


def sample_cli():
    """sample.py (a script at the repository root, not a package module) loaded as a module, once."""
    if "_dpo_sample_cli" not in sys.modules:
        import importlib.util
        spec = importlib.util.spec_from_file_location("_dpo_sample_cli", SAMPLE_PY)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sys.modules["_dpo_sample_cli"] = module
    return sys.modules["_dpo_sample_cli"]


def complete(path: Path, expected_rows: int) -> bool:
    """A samples file sample.py finished: merged (no part files left) with all its rows."""
    if not path.is_file() or list(path.parent.glob(path.name + ".rank*.part")):
        return False
    with open(path) as f:
        return sum(1 for line in f if line.strip()) >= expected_rows


# ---------------------------------------------------------------------------------------------------
# pairs: SFT samples ordered by ROUGE-L against the human summary

def label_pairs(samples: list[dict], split_of: dict, tie_tolerance: float = 0.0) -> tuple[dict, dict]:
    """Score each sample by ROUGE-L F1 against its row's "reference" and build every ordered pair per
    prompt (pairs.build_pairs: ties and empty samples dropped and counted). Returns ({split: pair rows},
    {split: counts}) for the splits of split_of {prompt_id: split}, in their first-seen order; each
    split's counts also hold "mean sample ROUGE-L"."""
    from dpo.evaluate.rewards import rouge_l
    by_split = {split: [] for split in dict.fromkeys(split_of.values())}
    for row in samples:
        if not row.get("reference"):
            raise ExperimentError(f"sample of prompt {row['prompt_id']!r} has no reference summary to score against")
        by_split[split_of[row["prompt_id"]]].append({**row, "reward": rouge_l(row["completion"], row["reference"])})
    out, counts = {}, {}
    for split, rows in by_split.items():
        out[split], counts[split] = pairs_lib.build_pairs(pairs_lib.group_samples(rows), tie_tolerance=tie_tolerance)
        counts[split]["mean sample ROUGE-L"] = round(sum(r["reward"] for r in rows) / max(1, len(rows)), 4)
    return out, counts


def stage_pairs(x: WinRateExperiment) -> None:
    p = paths(x)
    if x.preferences != "samples":
        print("pairs: not needed, preferences = human (the published comparisons)")
        return
    if p["pairs_summary"].is_file():
        print(f"skip: {p['pairs_summary']} exists")
        return
    prompts_path = write_pair_prompts(x)
    prompts = [r for _, r in data.read_jsonl(prompts_path)]
    if not complete(p["pair_samples"], len(prompts) * x.samples_per_prompt):
        run_sample(x, sft_dir(x), prompts_path, p["pair_samples"], temperature=x.pair_temperature,
                   n=x.samples_per_prompt)
    samples = [r for _, r in data.read_jsonl(p["pair_samples"])]
    split_of = {r["prompt_id"]: r["split"] for r in prompts}
    sampled = {r["prompt_id"] for r in samples}
    left_out = [pid for pid in split_of if pid not in sampled]
    by_split, counts = label_pairs(samples, split_of, x.tie_tolerance)
    summary = {"reward": "ROUGE-L F1 against the reference summary", "tie_tolerance": x.tie_tolerance,
               "prompts left out by sample.py (too long for the model)": len(left_out)}
    for split, rows in by_split.items():
        print(f"pairs {split} -> {p['pairs'] / f'{split}.jsonl'}\n{pairs_lib.format_pair_counts(counts[split])}\n"
              f"  mean sample ROUGE-L: {counts[split]['mean sample ROUGE-L']}")
        if not rows:
            raise ExperimentError(f"pairs: no {split} pairs: every pair of samples was tied or empty")
        write_jsonl(p["pairs"] / f"{split}.jsonl", rows)
        summary[split] = dict(counts[split])
    atomic_write(p["pairs_summary"], json.dumps(summary, indent=1) + "\n")


# ---------------------------------------------------------------------------------------------------
# reward_models, train: train.py runs from the SFT model

def preference_data(x: WinRateExperiment, split: str = "train") -> list[str]:
    """train.py overrides that point a preference run at the experiment's pairs (the configs name the
    format and splits): our sample pairs, the TL;DR comparisons, or the HH pairs."""
    p = paths(x)
    if x.preferences == "samples":
        require(p["pairs_summary"], "pairs")
        return ["data.format=preference_jsonl", f"data.path={p['pairs'] / f'{split}.jsonl'}",
                f"data.eval_path={p['pairs'] / 'eval.jsonl'}"]
    return [f"data.path={x.comparisons_path if x.task == 'tldr' else x.data_path}"]


def stage_reward_models(x: WinRateExperiment) -> None:
    p = paths(x)
    todo = [("reward_model", x.reward_model_config, "train"), ("judge_model", x.judge_model_config, "judge")]
    if not any(config for _, config, _ in todo):
        print("reward_models: none configured (reward_model_config and judge_model_config are empty)")
    for name, config, split in todo:
        if config:
            run_train(config, [f"model.name={sft_dir(x)}", *preference_data(x, split), f"train.out_dir={p[name]}",
                               f"wandb.name={x.task}-{name}"], run_dir=p[name], launcher=x.launcher)


def stage_train(x: WinRateExperiment, only=None) -> None:
    """One train.py run per entry of `methods`; in their overrides {out_dir} and {reward_model} (the reward_models
    stage's model, PPO's reward) are filled in."""
    p = paths(x)
    sft = sft_dir(x)
    for run in sweep(x, only):
        run_dir = p["runs"] / run["name"]
        if uses_reward_model(run):
            require(p["reward_model"] / "final", "reward_models")
        overrides = fill_in(run["overrides"], {"out_dir": x.out_dir, "reward_model": p["reward_model"] / "final"})
        run_train(run["config"] or x.train_config, [f"model.name={sft}", *preference_data(x),
                                                    f"train.out_dir={run_dir}", f"wandb.name={x.task}-{run['name']}",
                                                    *overrides], run_dir=run_dir, launcher=x.launcher)


# ---------------------------------------------------------------------------------------------------
# generate: samples of every policy at every temperature

def policies(x: WinRateExperiment, only=None) -> list[dict]:
    """{"run", "method", "model", "best_of"} of everything evaluated: the SFT model, every run's final
    policy and, with best_of, Best-of-N from the SFT model."""
    p = paths(x)
    items = [{"run": "sft", "method": "sft", "model": None, "best_of": 0}]
    items += [{"run": r["name"], "method": r["method"], "model": str(p["runs"] / r["name"] / "final"), "best_of": 0}
              for r in sweep(x, only)]
    if x.best_of:
        items.append({"run": f"best_of_{x.best_of}", "method": "best_of", "model": None, "best_of": x.best_of})
    return items


def generations_file(x: WinRateExperiment, run: str, temperature: float) -> Path:
    return paths(x)["generations"] / run / f"{temperature_name(temperature)}.jsonl"


def stage_generate(x: WinRateExperiment, only=None) -> None:
    """sample.py for each (policy, temperature). Best-of-N at T = 0 is the greedy sample itself (its N
    candidates would be identical), so it is sampled once (best_of 1 in its rows)."""
    p = paths(x)
    prompts_path = write_eval_prompts(x)
    n_prompts = sum(1 for _ in data.read_jsonl(prompts_path))
    for item in policies(x, only):
        model = item["model"] or sft_dir(x)
        if item["model"] and not train_done(Path(model).parent):
            raise ExperimentError(f"{model}: missing; run the train stage first")
        for t in x.temperatures:
            out = generations_file(x, item["run"], t)
            if complete(out, n_prompts):
                print(f"skip: {out} is complete")
                continue
            if item["best_of"]:
                reward = f"reward_model:{require(p['reward_model'] / 'final', 'reward_models')}"
                run_sample(x, model, prompts_path, out, temperature=t, best_of=item["best_of"] if t > 0 else 1,
                           reward=reward)
            else:
                run_sample(x, model, prompts_path, out, temperature=t)


# ---------------------------------------------------------------------------------------------------
# judge: win rates

def make_judge(x: WinRateExperiment, spec: dict):
    """A judge function (dpo/evaluate/judge.py interface) for one `judges` entry."""
    from dpo.evaluate import judge as judges
    from dpo.evaluate.rewards import load_scorer
    p = paths(x)
    kind = spec["judge"]
    if kind == "llm":
        config = judges.JudgeConfig.from_env(url=spec.get("url"), model=spec.get("model"), workers=spec.get("workers"))
        return judges.llm_judge(config, spec.get("task") or JUDGE_TASK[x.task], seed=x.seed)
    if kind == "rouge":
        return judges.rouge_judge()
    if kind in ("judge_model", "reward_model"):
        folder = require(p[kind] / "final", "reward_models")
        return judges.score_judge(load_scorer(f"reward_model:{folder}"), name=kind)
    return judges.score_judge(load_scorer(kind), name=kind)


def against_file(x: WinRateExperiment, against: str) -> str:
    if against == "reference":
        return "reference"
    run, _, t = against.partition("@")
    return str(require(generations_file(x, run, float(t)), "generate"))


def stage_judge(x: WinRateExperiment, only=None) -> list[dict]:
    """Every judge on every generations file; one results row per (judge, run, temperature), appended as
    soon as it is done (a rerun judges only what is missing; the LLM judge's answers are cached on disk)."""
    from dpo.evaluate.tables import winrate_table
    p = paths(x)
    done = {(r["judge"], r["run"], r["temperature"]) for _, r in data.read_jsonl(p["results"], resumable=True)}
    for spec in x.judges:
        judge = None
        against = spec.get("against", "reference")
        for item in policies(x, only):
            for t in x.temperatures:
                if (spec["name"], item["run"], float(t)) in done:
                    continue
                samples = require(generations_file(x, item["run"], t), "generate")
                judge = judge or make_judge(x, spec)
                table, details = winrate_table([samples], judge, judge_name=spec["name"],
                                               task=spec.get("task") or JUDGE_TASK[x.task],
                                               against=against_file(x, against))
                if len(table) != 1:
                    raise ExperimentError(f"{samples}: expected one model and temperature, found {len(table)} groups")
                row = results_row(spec, item, float(t), table[0], details, samples)
                write_jsonl(p["verdicts"] / spec["name"] / item["run"] / f"{temperature_name(t)}.jsonl", details)
                append_jsonl(p["results"], [row])
                print(f"judge {spec['name']}: {item['run']} T={t:g}: win rate {fmt(row['win_rate'])} "
                      f"[{fmt(row['ci_low'])}, {fmt(row['ci_high'])}] n={row['n']}"
                      + (f" unparseable={row['unparseable']} errors={row['errors']}"
                         if row["unparseable"] or row["errors"] else ""), flush=True)
        client = getattr(judge, "client", None)
        if client is not None:
            print(f"judge {spec['name']}: {client.requests} HTTP requests, {client.cache_hits} answers from the cache")
    results = sorted((r for _, r in data.read_jsonl(p["results"], resumable=True)), key=result_order(x))
    if not results:
        raise ExperimentError(f"{p['results']}: nothing judged")
    write_csv(p["results_csv"], results, RESULT_COLUMNS)
    print(f"results: {p['results_csv']} ({len(results)} rows)")
    for spec in x.judges:
        print(f"\n{spec['name']} (against {spec.get('against', 'reference')}):\n"
              + format_table([r for r in results if r["judge"] == spec["name"]]))
    return results


def results_row(spec: dict, item: dict, temperature: float, table_row: dict, details: list[dict], samples) -> dict:
    words = [len(d["candidate"].split()) for d in details]
    row = {"judge": spec["name"], "judge_spec": spec["judge"], "against": spec.get("against", "reference"),
           "run": item["run"], "method": item["method"], "temperature": temperature,
           "best_of": table_row.get("best_of") or 0}
    row.update({k: table_row[k] for k in ("n", "wins", "losses", "ties", "unparseable", "errors",
                                          "missing_baseline", "win_rate", "ci_low", "ci_high", "rouge_l_mean")})
    row["mean_words"] = sum(words) / len(words) if words else None
    row["samples"] = str(samples)
    return row


def result_order(x: WinRateExperiment):
    judges = [j["name"] for j in x.judges]
    return lambda r: (judges.index(r["judge"]) if r["judge"] in judges else len(judges), r["run"] != "sft",
                      r["run"].startswith("best_of"), r["run"], r["temperature"])


def fmt(v, digits: int = 3) -> str:
    return "—" if v is None or v == "" else f"{float(v):.{digits}f}"


def format_table(rows: list[dict]) -> str:
    """Markdown: one row per run, one column per temperature, cells "win rate [95% CI]"."""
    temps = sorted({float(r["temperature"]) for r in rows})
    runs = list(dict.fromkeys(r["run"] for r in rows))
    cell = {(r["run"], float(r["temperature"])): r for r in rows}
    lines = ["| run | " + " | ".join(f"T = {t:g}" for t in temps) + " |", "|---|" + "---:|" * len(temps)]
    for run in runs:
        cells = []
        for t in temps:
            r = cell.get((run, t))
            cells.append("" if r is None else
                         f"{fmt(r['win_rate'], 2)} [{fmt(r['ci_low'], 2)}, {fmt(r['ci_high'], 2)}]")
        lines.append(f"| {run} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------
# plot

def stage_plot(x: WinRateExperiment, publish: bool = False) -> None:
    """Execute the notebook headless on results.csv; it writes the figure and the CSV and table beside it
    under out_dir/figures/, and publish copies them to `figure` (common.execute_notebook)."""
    results = require(paths(x)["results_csv"], "judge")
    execute_notebook(NOTEBOOK, {"WINRATE_RESULTS": str(results.resolve()), "WINRATE_TASK": x.task}, results, x,
                     figure_var="WINRATE_FIGURE", publish=publish)


# ---------------------------------------------------------------------------------------------------
# CLI

def run_stages(x: WinRateExperiment, stages: list[str], only=None, publish: bool = False) -> None:
    check_experiment(x)
    sweep(x, only)  # a bad --runs fails now, not after hours of earlier stages
    save_config(x, Path(x.out_dir) / "experiment.yaml")
    actions = {"download": stage_download, "prepare": stage_prepare, "sft": stage_sft, "pairs": stage_pairs,
               "reward_models": stage_reward_models, "train": lambda x: stage_train(x, only),
               "generate": lambda x: stage_generate(x, only), "judge": lambda x: stage_judge(x, only),
               "plot": lambda x: stage_plot(x, publish)}
    run_actions(x, actions, stages)


def main(argv=None) -> int:
    return driver_main(argv, module_doc=__doc__, prog="python -m dpo.experiments.tldr", cls=WinRateExperiment,
                       stages=STAGES, run_stages=run_stages,
                       config_help="experiment config (configs/tldr/*.yaml, configs/hh/pipeline.yaml)",
                       runs_help="train/generate/judge only these runs of `methods` (comma-separated)")


if __name__ == "__main__":
    sys.exit(main())
