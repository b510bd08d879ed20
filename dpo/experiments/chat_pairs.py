"""Conversational preference pairs from labelled review sentences, for the offline chat example
(configs/chat/smollm2_dpo_lora.yaml): the user asks for a one-sentence movie review, the chosen reply is a
real positive sentence and the rejected one a real negative sentence, so a policy trained with DPO should
come to answer with praise, and held-out preference accuracy says how well it learnt to tell them apart.

    python -m dpo.experiments.chat_pairs --labelled DIR --out data/chat_pairs

DIR holds train.jsonl and test.jsonl of {"text", "label"} lines (label 1 = positive), e.g. the Pang & Lee
sentence-polarity sentences; the outputs are TRL-style conversational rows (prompt / chosen / rejected as
lists of {"role", "content"} messages) in OUT/train.jsonl and OUT/test.jsonl.
"""
import argparse
import json
import random
from pathlib import Path

from dpo import data
from dpo.errors import entry_point
from dpo.files import atomic_write, check_writable

PROMPTS = ("Write a one-sentence review of a movie.", "In one sentence, what did you think of the film?",
           "Give me a short review of the last movie you saw.", "Describe the movie in a sentence.")


def pairs(rows: list[dict], seed: int) -> list[dict]:
    """Each positive sentence paired with a different negative one (seeded), under a seeded prompt."""
    rng = random.Random(seed)
    positive = [r["text"] for r in rows if r["label"] == 1]
    negative = [r["text"] for r in rows if r["label"] == 0]
    rng.shuffle(negative)
    return [{"prompt": [{"role": "user", "content": rng.choice(PROMPTS)}],
             "chosen": [{"role": "assistant", "content": good}],
             "rejected": [{"role": "assistant", "content": bad}]} for good, bad in zip(positive, negative)]


@entry_point
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dpo.experiments.chat_pairs", description=__doc__.split("\n\n")[0])
    parser.add_argument("--labelled", required=True, help="folder with train.jsonl and test.jsonl of {text, label}")
    parser.add_argument("--out", required=True, help="folder for the conversational pairs")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    out = check_writable(args.out, "--out", folder=True)
    for split in ("train", "test"):
        source = Path(args.labelled) / f"{split}.jsonl"
        rows = [{"text": data.get_field(obj, "text", f"{source}:{n}", nonempty=True),
                 "label": data.get_field(obj, "label", f"{source}:{n}", kind=int)} for n, obj in data.read_jsonl(source)]
        written = pairs(rows, args.seed)
        atomic_write(out / f"{split}.jsonl", "".join(json.dumps(r) + "\n" for r in written))
        print(f"{out / f'{split}.jsonl'}: {len(written)} pairs from {len(rows)} sentences")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
