"""Best-of-N: of N samples per prompt, keep the one a reward model scores highest (the paper's Best-of-128
baseline for TL;DR, with a reward model trained on the human comparisons).

    python sample.py --model SFT_DIR --prompts tldr:data/tldr:test --temperature 0.5 --best-of 128 \\
        --reward reward_model:runs/tldr-rm/final --out samples/best-of-128-t0.5.jsonl
    # or, from candidates already sampled (sample.py --n 128 --out candidates.jsonl):
    python -m dpo.evaluate.best_of_n --samples candidates.jsonl --reward reward_model:DIR --n 128 --out best.jsonl

Output rows are the chosen samples' rows plus "best_of" (N), "reward" (its score), "best_sample_index"
(its index among the candidates), "candidate_rewards" (all N scores by sample_index, so best-of-k for any
k <= N can be read off later) and "sample_index" 0 (one row per prompt). Ties go to the lowest index.
"""
import argparse
import json
import sys
from pathlib import Path

from dpo.errors import UserError, entry_point


class BestOfNError(UserError, ValueError):
    pass


def best_of_n(rows: list[dict], scorer, n: int | None = None) -> list[dict]:
    """rows: samples with prompt_id, sample_index, prompt, completion → one row per prompt (first-seen order)
    holding its best completion by scorer(prompts, completions) [N]. n: require exactly n per prompt."""
    groups = {}
    for row in rows:
        groups.setdefault(json.dumps(row["prompt_id"]), []).append(row)
    for key, group in groups.items():
        if n is not None and len(group) != n:
            raise BestOfNError(f"prompt_id {key}: {len(group)} candidates, expected {n} (is the sampling complete?)")
        group.sort(key=lambda r: r["sample_index"])
    ordered = [r for group in groups.values() for r in group]
    scores = scorer([r["prompt"] for r in ordered], [r["completion"] for r in ordered]).tolist() if ordered else []
    best, k = [], 0
    for group in groups.values():
        group_scores = scores[k:k + len(group)]
        k += len(group)
        i = max(range(len(group)), key=lambda j: (group_scores[j], -j))
        best.append({**group[i], "sample_index": 0, "best_of": len(group), "reward": group_scores[i],
                     "best_sample_index": group[i]["sample_index"], "candidate_rewards": group_scores})
    return best


def select_file(candidates, out, scorer, n: int | None = None) -> int:
    """best_of_n over a samples file, written atomically to `out`. Returns the number of prompts."""
    from dpo.evaluate.tables import read_samples
    from dpo.files import atomic_write
    rows = read_samples(Path(candidates))
    if not rows:
        raise BestOfNError(f"{candidates}: no samples")
    best = best_of_n(rows, scorer, n)
    atomic_write(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in best))
    return len(best)


@entry_point
def main(argv=None) -> int:
    from dpo.evaluate import rewards
    from dpo.files import check_writable
    p = argparse.ArgumentParser(description="Best-of-N selection from a samples file by a reward")
    p.add_argument("--samples", required=True, help="candidates: a sample.py output with N samples per prompt")
    p.add_argument("--reward", required=True, help="reward_model:DIR | classifier:DIR | hf:NAME | quickstart")
    p.add_argument("--out", required=True)
    p.add_argument("--n", type=int, default=None, help="require exactly N candidates per prompt")
    p.add_argument("--device", default="cpu")
    args = p.parse_args(argv)
    if args.n is not None and args.n < 1:
        raise BestOfNError(f"--n must be >= 1, got {args.n}")
    check_writable(args.out, "--out")
    rewards.check_spec(args.reward)
    rewards.check_device(args.device)
    if not Path(args.samples).is_file():
        raise BestOfNError(f"--samples {args.samples}: not a file (expected sample.py's JSON lines)")
    kept = select_file(args.samples, args.out, rewards.load_scorer(args.reward, device=args.device), args.n)
    print(f"{args.out}: best of {args.n or 'all'} by {args.reward} for {kept} prompts", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
