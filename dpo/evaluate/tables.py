"""Turn sample files (sample.py's output) into the paper's numbers, as JSON and CSV tables for notebooks.

    # IMDB (Figure 2, left): mean reward and KL(π_θ‖π_ref) per checkpoint → one frontier point per file
    python -m dpo.evaluate reward samples/step-*.jsonl --reward hf:siebert/sentiment-roberta-large-english \\
        --reference-model runs/imdb-sft/final --out results/imdb_frontier
    # TL;DR / HH (Figure 2 right, Figure 3): win rate against the reference response, per temperature
    python -m dpo.evaluate winrate samples/dpo-t*.jsonl --judge llm --task summary --out results/tldr_winrate
    python -m dpo.evaluate winrate samples/dpo-t*.jsonl --judge reward_model:runs/tldr-rm/final --out ...
    python -m dpo.evaluate winrate samples/dpo.jsonl --against samples/sft.jsonl --judge rouge --out ...

Each input file is split into groups by (model, temperature, top_k, top_p, best_of); a group is one row of
the table. `--out PREFIX` writes PREFIX.json ({"kind", "args", "rows"}), PREFIX.csv (the rows) and the
per-sample detail PREFIX.samples.jsonl (rewards and KLs) or PREFIX.verdicts.jsonl (every judgement), each
atomically.

reward rows: file, model, step (from "step-N" in the model path, else null), temperature, top_k, top_p,
best_of, n_samples, n_prompts, reward_mean, reward_sem, and with --reference-model: kl_exact_mean,
kl_exact_sem, kl_sampled_mean, kl_sampled_sem (dpo/evaluate/kl.py; the policy is each group's "model", or
--policy-model), kl_valid (T = 1 without top-k/top-p: only then are they the sequence KL of π_θ),
mean_completion_tokens, eos_fraction. (kl_valid is false for Best-of-N rows too: they are not draws from π_θ.)

winrate rows: file, model, temperature, ..., judge, task, against, n (judged), wins, losses, ties,
unparseable, errors, missing_baseline, win_rate = (wins + ties/2) / (wins + losses + ties), its 95% Wilson
interval ci_low..ci_high, and rouge_l_mean (the candidates' ROUGE-L F1 against the reference) when the
rows carry references. Unparseable answers and errors are reported, not counted as wins or losses.

The samples-file reader (read_samples: JSON lines through dpo.data.read_jsonl, each row with prompt_id and
sample_index) lives here too: sample.py and Best-of-N use it.
"""
import argparse
import csv
import io
import json
import math
import re
import sys
from pathlib import Path

from dpo import data
from dpo.errors import UserError, entry_point
from dpo.files import atomic_write, check_writable

GROUP_KEYS = ("model", "temperature", "top_k", "top_p", "best_of")


class SamplesFileError(data.DataError):
    """A samples file that cannot be read; the message names the file and line."""


# --------------------------------------------------------------------------------------------------
# Samples files


def read_samples(path, truncate_partial: bool = False) -> list[dict]:
    """Rows of a samples file: JSON lines (dpo.data.read_jsonl, bad lines are a DataError naming file and
    line), each with prompt_id and sample_index; a missing file has none. A last line without its newline
    is a write cut by a kill, or one still in progress (another rank's part file): it is left out, and cut
    off the file only with `truncate_partial` (a file this process appends to)."""
    rows = []
    for lineno, row in data.read_jsonl(path, resumable=True, truncate=truncate_partial):
        if "prompt_id" not in row or "sample_index" not in row:
            raise SamplesFileError(f"{path}:{lineno}: not a samples row (needs prompt_id and sample_index)")
        rows.append(row)
    return rows


def table_paths(prefix, detail_name: str) -> list[Path]:
    """PREFIX.json, PREFIX.csv and PREFIX.{detail_name}.jsonl."""
    prefix = Path(prefix)
    return [prefix.with_name(prefix.name + ext) for ext in (".json", ".csv", f".{detail_name}.jsonl")]


def write_tables(prefix, kind: str, args: dict, rows: list[dict], details: list[dict], detail_name: str) -> list[Path]:
    """PREFIX.json, PREFIX.csv and PREFIX.{detail_name}.jsonl, each atomically. Returns the paths."""
    paths = table_paths(prefix, detail_name)
    atomic_write(paths[0], json.dumps({"kind": kind, "args": args, "rows": rows}, indent=2) + "\n")
    columns = list(dict.fromkeys(k for r in rows for k in r))
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write(paths[1], buf.getvalue())
    atomic_write(paths[2], "".join(json.dumps(d, ensure_ascii=False) + "\n" for d in details))
    return paths


def group_rows(path) -> list[tuple[dict, list[dict]]]:
    """[(group key dict with "file", rows)] of one samples file, groups in order of first appearance."""
    rows = read_samples(path)
    if not rows:
        raise SamplesFileError(f"{path}: no samples (missing or empty file)")
    groups = {}
    for row in rows:
        key = tuple(row.get(k) for k in GROUP_KEYS)
        groups.setdefault(key, []).append(row)
    return [({"file": str(path), **dict(zip(GROUP_KEYS, key))}, g) for key, g in groups.items()]


def step_of(model: str | None) -> int | None:
    match = re.search(r"step-0*(\d+)", model or "")
    return int(match.group(1)) if match else None


# --------------------------------------------------------------------------------------------------
# Statistics


def mean_sem(values: list[float]) -> tuple[float | None, float | None]:
    """Mean and its standard error (sample std / sqrt(n)); None for no values, sem None for one."""
    n = len(values)
    if n == 0:
        return None, None
    mean = sum(values) / n
    if n == 1:
        return mean, None
    var = sum((v - mean) ** 2 for v in values) / (n - 1)
    return mean, math.sqrt(var / n)


def spearman(x: list[float], y: list[float]) -> float | None:
    """Spearman's rank correlation: the Pearson correlation of the ranks (ties get their mean rank); None for
    fewer than 2 points or a constant input."""
    def ranks(values):
        order = sorted(range(len(values)), key=values.__getitem__)
        out, i = [0.0] * len(values), 0
        while i < len(order):
            j = i
            while j + 1 < len(order) and values[order[j + 1]] == values[order[i]]:
                j += 1
            for k in order[i:j + 1]:
                out[k] = (i + j) / 2 + 1
            i = j + 1
        return out
    if len(x) != len(y):
        raise ValueError(f"spearman: {len(x)} values against {len(y)}")
    if len(x) < 2:
        return None
    rx, ry = ranks(x), ranks(y)
    mx, my = sum(rx) / len(rx), sum(ry) / len(ry)
    sxy = sum((a - mx) * (b - my) for a, b in zip(rx, ry))
    sxx, syy = sum((a - mx) ** 2 for a in rx), sum((b - my) ** 2 for b in ry)
    return sxy / math.sqrt(sxx * syy) if sxx > 0 and syy > 0 else None


def wilson_interval(successes: float, n: int, z: float = 1.959964) -> tuple[float | None, float | None]:
    """95% Wilson score interval of a proportion successes / n (successes may count ties as halves)."""
    if n == 0:
        return None, None
    p = successes / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


# --------------------------------------------------------------------------------------------------
# Reward and KL (IMDB)


def _token_ids(rows: list[dict], tokenizer) -> tuple[list[list[int]], list[list[int]], int]:
    """(prompt ids, completion ids as generated, number of rows re-tokenized because they carry no ids)."""
    prompts, completions, retokenized = [], [], 0
    for row in rows:
        if "prompt_token_ids" in row and "completion_token_ids" in row:
            prompts.append(row["prompt_token_ids"])
            completions.append(row["completion_token_ids"])
            continue
        retokenized += 1
        prompts.append(tokenizer.encode(row["prompt"]))
        eos = [tokenizer.eos_id] if row.get("finish_reason") == "eos" else []
        completions.append(tokenizer.encode(row["completion"]) + eos)
    return prompts, completions, retokenized


def group_kl(rows: list[dict], policy, reference, tokenizer, *, device="cpu", batch_size: int = 8) -> dict:
    """Per-sample KL estimates (dpo.evaluate.kl.sequence_kl) of one group's rows."""
    from dpo.evaluate.kl import sequence_kl
    prompts, completions, retokenized = _token_ids(rows, tokenizer)
    out = sequence_kl(policy, reference, prompts, completions, batch_size=batch_size, device=device,
                      pad_id=tokenizer.pad_id_or_eos())
    out["retokenized"] = retokenized
    return out


def reward_table(sample_files: list, scorer, *, reference_model=None, policy_model=None, device="cpu",
                 dtype=None, batch_size: int = 8) -> tuple[list[dict], list[dict]]:
    """Rows of the reward (and KL) table and per-sample details, see the module docstring."""
    import torch
    from dpo.interop.hf_checkpoint import load_pretrained
    from dpo.interop.hub import resolve_model_dir
    from dpo.tokenizer import Tokenizer
    reference = tokenizer = None
    if reference_model:
        reference_model = resolve_model_dir(reference_model)
        reference = load_pretrained(reference_model, dtype=dtype or torch.float32, device=device).eval()
        tokenizer = Tokenizer.from_pretrained(reference_model)
    table, details = [], []
    for path in sample_files:
        for key, rows in group_rows(path):
            rewards = scorer([r["prompt"] for r in rows], [r["completion"] for r in rows]).tolist()
            row = {**key, "step": step_of(key["model"]), "n_samples": len(rows),
                   "n_prompts": len({json.dumps(r["prompt_id"]) for r in rows})}
            row["reward_mean"], row["reward_sem"] = mean_sem(rewards)
            kl = None
            if reference is not None:
                policy_dir = policy_model or key["model"]
                if not policy_dir:
                    raise SamplesFileError(f"{path}: rows name no model; pass --policy-model")
                policy = load_pretrained(policy_dir, dtype=dtype or torch.float32, device=device).eval()
                kl = group_kl(rows, policy, reference, tokenizer, device=device, batch_size=batch_size)
                del policy
                row["kl_exact_mean"], row["kl_exact_sem"] = mean_sem(kl["kl_exact"].tolist())
                row["kl_sampled_mean"], row["kl_sampled_sem"] = mean_sem(kl["kl_sampled"].tolist())
                row["kl_valid"] = (key["temperature"] == 1 and key["top_k"] is None and key["top_p"] in (None, 1, 1.0)
                                   and not key["best_of"])
                row["retokenized"] = kl["retokenized"]
            lengths = [len(r["completion_token_ids"]) for r in rows if "completion_token_ids" in r]
            row["mean_completion_tokens"] = sum(lengths) / len(lengths) if lengths else None
            row["eos_fraction"] = sum(r.get("finish_reason") == "eos" for r in rows) / len(rows)
            table.append(row)
            for i, r in enumerate(rows):
                d = {"file": str(path), "model": r.get("model"), "temperature": r.get("temperature"),
                     "prompt_id": r["prompt_id"], "sample_index": r["sample_index"], "reward": rewards[i]}
                if kl is not None:
                    d.update(kl_exact=kl["kl_exact"][i].item(), kl_sampled=kl["kl_sampled"][i].item(),
                             n_tokens=int(kl["n_tokens"][i]))
                details.append(d)
    return table, details


# --------------------------------------------------------------------------------------------------
# Win rates (TL;DR, HH)


def comparisons_for(rows: list[dict], against: str = "reference", baseline_rows: list[dict] | None = None):
    """(comparisons for a judge, number of rows without a baseline). The baseline of a row is its
    "reference" (against="reference") or the completion of the baseline row with the same prompt_id and
    sample_index (else sample_index 0)."""
    by_key = {}
    for b in baseline_rows or []:
        by_key.setdefault((json.dumps(b["prompt_id"]), b["sample_index"]), b)
    comparisons, missing = [], 0
    for r in rows:
        if against == "reference":
            baseline = r.get("reference")
        else:
            pid = json.dumps(r["prompt_id"])
            b = by_key.get((pid, r["sample_index"])) or by_key.get((pid, 0))
            baseline = b["completion"] if b else None
        if not baseline:
            missing += 1
            continue
        comparisons.append({"id": [r.get("model"), r.get("temperature"), r["prompt_id"], r["sample_index"]],
                            "prompt": r["prompt"], "candidate": r["completion"], "baseline": baseline,
                            "reference": r.get("reference")})
    return comparisons, missing


def summarize_verdicts(verdicts: list[dict]) -> dict:
    """Counts, win rate (ties as halves) and its Wilson 95% interval."""
    count = lambda what: sum(v.get("winner") == what for v in verdicts)  # noqa: E731
    wins, losses, ties = count("candidate"), count("baseline"), count("tie")
    decided = wins + losses + ties
    rate = (wins + ties / 2) / decided if decided else None
    low, high = wilson_interval(wins + ties / 2, decided)
    return {"n": decided, "wins": wins, "losses": losses, "ties": ties,
            "unparseable": sum(v.get("status") == "unparseable" for v in verdicts),
            "errors": sum(v.get("status") == "error" for v in verdicts),
            "win_rate": rate, "ci_low": low, "ci_high": high}


def winrate_table(sample_files: list, judge, *, judge_name: str, task: str = "", against: str = "reference"):
    """Rows of the win-rate table and every verdict, see the module docstring."""
    from dpo.evaluate.rewards import rouge_l
    baseline_rows = None if against == "reference" else read_samples(against)
    if against != "reference" and not baseline_rows:
        raise SamplesFileError(f"--against {against}: no samples (missing or empty file)")
    table, details = [], []
    for path in sample_files:
        for key, rows in group_rows(path):
            comparisons, missing = comparisons_for(rows, against, baseline_rows)
            verdicts = judge(comparisons)
            row = {**key, "judge": judge_name, "task": task, "against": against, **summarize_verdicts(verdicts),
                   "missing_baseline": missing}
            with_ref = [c for c in comparisons if c.get("reference")]
            row["rouge_l_mean"] = (sum(rouge_l(c["candidate"], c["reference"]) for c in with_ref) / len(with_ref)
                                   if with_ref else None)
            table.append(row)
            for c, v in zip(comparisons, verdicts):
                details.append({"file": str(path), **{k: c[k] for k in ("id", "candidate", "baseline")}, **v})
    return table, details


def make_judge(spec: str, *, task: str, seed: int, device="cpu", url=None, model=None, workers=None):
    """"llm" (JudgeConfig.from_env + overrides), "rouge", or a reward spec (dpo.evaluate.rewards.load_scorer)."""
    from dpo.evaluate import judge as judges
    if spec == "llm":
        return judges.llm_judge(judges.JudgeConfig.from_env(url=url, model=model, workers=workers), task, seed)
    if spec == "rouge":
        return judges.rouge_judge()
    from dpo.evaluate.rewards import load_scorer
    return judges.score_judge(load_scorer(spec, device=device), name=spec)


# --------------------------------------------------------------------------------------------------
# CLI


def _fmt(v):
    return "-" if v is None else f"{v:.3f}" if isinstance(v, float) else str(v)


@entry_point
def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("reward", help="mean reward (and KL to a reference model) per samples file / group")
    r.add_argument("samples", nargs="+")
    r.add_argument("--reward", required=True, help="classifier:DIR | reward_model:DIR | hf:NAME[@LABEL] | quickstart | vader")
    r.add_argument("--reference-model", default=None, help="π_ref checkpoint: adds KL(π_θ‖π_ref) columns")
    r.add_argument("--policy-model", default=None, help="π_θ checkpoint (default: each row's 'model')")
    r.add_argument("--batch-size", type=int, default=8)
    w = sub.add_parser("winrate", help="win rate against a baseline with a 95%% CI per samples file / group")
    w.add_argument("samples", nargs="+")
    w.add_argument("--judge", required=True, help="llm | rouge | reward_model:DIR | classifier:DIR | hf:NAME")
    w.add_argument("--task", default="summary", choices=("summary", "summary_concise", "dialogue"),
                   help="the LLM judge's prompt")
    w.add_argument("--against", default="reference", help="'reference' (the rows' reference) or a samples file")
    w.add_argument("--seed", type=int, default=0, help="seed of the A/B order")
    w.add_argument("--judge-url", default=None, help="chat-completions URL (default: $DPO_JUDGE_URL or OpenAI)")
    w.add_argument("--judge-model", default=None, help="default: $DPO_JUDGE_MODEL or gpt-4")
    w.add_argument("--workers", type=int, default=None, help="requests in flight (default 4)")
    for s in (r, w):
        s.add_argument("--out", required=True, help="output prefix: writes PREFIX.json, PREFIX.csv, PREFIX.*.jsonl")
        s.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    from dpo.evaluate.rewards import check_device, check_spec, load_scorer
    detail_name = "samples" if args.command == "reward" else "verdicts"
    for path in [args.out, *table_paths(args.out, detail_name)]:
        check_writable(path, "--out")
    check_device(args.device)
    against = [] if args.command == "reward" or args.against == "reference" else [args.against]
    for path in args.samples + against:
        if not Path(path).is_file():
            raise SamplesFileError(f"{path}: no samples (no such file)")
    if args.command == "reward":
        check_spec(args.reward)
        if args.batch_size < 1:
            raise UserError(f"--batch-size must be >= 1, got {args.batch_size}")
        rows, details = reward_table(args.samples, load_scorer(args.reward, device=args.device),
                                     reference_model=args.reference_model, policy_model=args.policy_model,
                                     device=args.device, batch_size=args.batch_size)
        columns = ["model", "temperature", "n_samples", "reward_mean", "kl_exact_mean", "kl_sampled_mean"]
    else:
        judge = make_judge(args.judge, task=args.task, seed=args.seed, device=args.device, url=args.judge_url,
                           model=args.judge_model, workers=args.workers)
        rows, details = winrate_table(args.samples, judge, judge_name=args.judge, task=args.task,
                                      against=args.against)
        columns = ["model", "temperature", "n", "win_rate", "ci_low", "ci_high", "unparseable", "errors"]
        client = getattr(judge, "client", None)
        if client is not None:
            print(f"judge: {client.requests} HTTP requests, {client.cache_hits} answers from the cache",
                  file=sys.stderr)
    paths = write_tables(args.out, args.command, vars(args), rows, details, detail_name)
    print("\t".join(columns))
    for row in rows:
        print("\t".join(_fmt(row.get(c)) for c in columns))
    print("wrote " + ", ".join(map(str, paths)), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
