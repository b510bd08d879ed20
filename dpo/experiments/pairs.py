"""Preference pairs from scored samples: the paper's IMDB recipe, reusable for any ground-truth reward.

For each prompt the SFT model draws k completions, a reward scores each one, and every one of the
k(k−1)/2 unordered pairs becomes a preference pair with chosen = the higher-reward completion (paper §6.1:
4 samples for each of 25,000 IMDB prefixes -> 150,000 pairs). Pairs the reward cannot order are dropped
and counted, never guessed:

    tie                  |r_i − r_j| <= tie_tolerance (identical completions always tie)
    empty completion     one side is empty (a sample that stopped at once; a pair needs two responses)
    single sample        a prompt with fewer than 2 usable completions gives no pair

    groups = group_samples(rows)                   # {prompt id: [row, ...]} in first-seen order
    pairs, counts = build_pairs(groups)            # rows {"prompt", "chosen", "rejected", ...}

Rows of `pairs` are ready for the `preference_jsonl` data format of train.py (extra keys are ignored there).
"""
from collections import Counter

TIE = "pairs dropped: tied reward"
EMPTY = "pairs dropped: empty completion"
SINGLE = "prompts without a pair (fewer than 2 samples)"


def ordered_pairs(completions: list[str], rewards: list[float], *, tie_tolerance: float = 0.0,
                  counts: Counter | None = None) -> list[tuple[int, int]]:
    """All (chosen index, rejected index) pairs among k scored completions of one prompt, chosen having the
    strictly higher reward (by more than tie_tolerance). Pairs come in (i, j), i < j order of the inputs.

    k completions -> at most k(k−1)/2 pairs; each tie or pair with an empty completion is counted in
    `counts` under TIE / EMPTY instead."""
    if len(completions) != len(rewards):
        raise ValueError(f"{len(completions)} completions but {len(rewards)} rewards")
    counts = Counter() if counts is None else counts
    pairs = []
    for i in range(len(completions)):
        for j in range(i + 1, len(completions)):
            if not completions[i].strip() or not completions[j].strip():
                counts[EMPTY] += 1
            elif completions[i] == completions[j] or abs(rewards[i] - rewards[j]) <= tie_tolerance:
                counts[TIE] += 1
            else:
                pairs.append((i, j) if rewards[i] > rewards[j] else (j, i))
    return pairs


def group_samples(rows, key: str = "prompt_id") -> dict:
    """Scored sample rows -> {row[key]: [rows]}, keys and rows in first-seen order."""
    groups = {}
    for row in rows:
        groups.setdefault(row[key], []).append(row)
    return groups


def build_pairs(groups: dict, *, reward_key: str = "reward", completion_key: str = "completion",
                tie_tolerance: float = 0.0, keep: tuple = ("prompt_id",)) -> tuple[list[dict], Counter]:
    """{prompt id: [scored sample rows]} -> (pair rows, counts).

    Each pair row: {"prompt", "chosen", "rejected", "reward_chosen", "reward_rejected"} plus the `keep`
    keys of the chosen sample. counts: "prompts", "samples", "pairs", "pairs possible" (Σ k(k−1)/2) and
    the reasons pairs were dropped (TIE, EMPTY, SINGLE). A group whose rows disagree on the prompt is an
    error (the ids were mixed up upstream)."""
    counts = Counter()
    pairs = []
    for group_id, rows in groups.items():
        prompts = {row["prompt"] for row in rows}
        if len(prompts) != 1:
            raise ValueError(f"samples of prompt id {group_id!r} have {len(prompts)} different prompts")
        counts["prompts"] += 1
        counts["samples"] += len(rows)
        counts["pairs possible"] += len(rows) * (len(rows) - 1) // 2
        completions = [row[completion_key] for row in rows]
        rewards = [float(row[reward_key]) for row in rows]
        group_pairs = ordered_pairs(completions, rewards, tie_tolerance=tie_tolerance, counts=counts)
        if not group_pairs and len([c for c in completions if c.strip()]) < 2:
            counts[SINGLE] += 1
        for i, j in group_pairs:
            pair = {"prompt": rows[i]["prompt"], "chosen": completions[i], "rejected": completions[j],
                    "reward_chosen": rewards[i], "reward_rejected": rewards[j]}
            pair.update({k: rows[i][k] for k in keep if k in rows[i]})
            pairs.append(pair)
    counts["pairs"] = len(pairs)
    return pairs, counts


def format_pair_counts(counts: Counter) -> str:
    """One line per count, for the driver's log and the README."""
    order = ["prompts", "samples", "pairs possible", "pairs", TIE, EMPTY, SINGLE]
    return "\n".join(f"  {name}: {counts[name]}" for name in order if name in counts or name in order[:4])
