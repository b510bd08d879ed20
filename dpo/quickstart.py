"""A built-in task with a known ground truth, so the quickstart needs no downloads: a miniature of the
paper's IMDB controlled-sentiment experiment.

Short "reviews" are generated from a template. Each review describes an aspect of a film with three
adjectives, each positive or negative at random. The ground-truth reward of a text is the fraction of its
adjectives that are positive (in [0, 1], like the paper's p(positive) from a sentiment classifier).

- SFT data: prompt = the opening words ("the acting"), completion = the rest of a random review; the SFT
  model learns the 50/50 mix, so its samples score about 0.5.
- Preference data: for each prompt, two random completions; the one with the higher reward is chosen
  (ties are not generated). DPO should move samples towards positive adjectives.
"""
import random

ASPECTS = ["the film", "the movie", "the plot", "the acting", "the ending", "the soundtrack", "the script",
           "the cast", "the director", "the story", "the dialogue", "the camera work", "the pacing",
           "the music", "the characters", "the sequel"]
POSITIVE = ["great", "wonderful", "brilliant", "moving", "charming", "superb", "delightful", "clever",
            "beautiful", "gripping", "funny", "touching"]
NEGATIVE = ["boring", "awful", "dull", "terrible", "clumsy", "bland", "tedious", "weak", "silly",
            "predictable", "messy", "lifeless"]
ADVERBS = ["really", "quite", "truly", "rather", "very", "simply"]
JOINERS = [", ", " and ", " but also "]


def _completion(rng: random.Random, n_positive: int) -> str:
    """One completion with 3 adjectives, `n_positive` of them positive, in random order."""
    kinds = [True] * n_positive + [False] * (3 - n_positive)
    rng.shuffle(kinds)
    words = [rng.choice(POSITIVE if k else NEGATIVE) for k in kinds]
    return (f" was {rng.choice(ADVERBS)} {words[0]}{rng.choice(JOINERS)}{words[1]}"
            f" and {words[2]}.")


def reward(completion: str) -> float:
    """Ground truth: the fraction of known adjectives in `completion` that are positive (0.5 if none)."""
    tokens = completion.replace(",", " ").replace(".", " ").split()
    pos = sum(t in POSITIVE for t in tokens)
    neg = sum(t in NEGATIVE for t in tokens)
    return pos / (pos + neg) if pos + neg else 0.5


def sft_examples(n: int, seed: int) -> list[dict]:
    """{"prompt", "completion"} examples with the number of positive adjectives ~ Binomial(3, 1/2)."""
    rng = random.Random(seed)
    return [{"prompt": rng.choice(ASPECTS),
             "completion": _completion(rng, sum(rng.random() < 0.5 for _ in range(3)))}
            for _ in range(n)]


def preference_examples(n: int, seed: int) -> list[dict]:
    """{"prompt", "chosen", "rejected"} with reward(chosen) > reward(rejected), both drawn like the SFT data."""
    rng = random.Random(seed)
    examples = []
    while len(examples) < n:
        a, b = (sum(rng.random() < 0.5 for _ in range(3)) for _ in range(2))
        if a == b:
            continue
        prompt = rng.choice(ASPECTS)
        better, worse = _completion(rng, max(a, b)), _completion(rng, min(a, b))
        examples.append({"prompt": prompt, "chosen": better, "rejected": worse})
    return examples


def prompts(n: int, seed: int) -> list[str]:
    rng = random.Random(seed)
    return [rng.choice(ASPECTS) for _ in range(n)]
