"""Rewards behind one interface: `score(prompts: list[str], completions: list[str]) -> Tensor [N]` (fp32, CPU).

    load_scorer("classifier:runs/imdb-clf/final")     p(positive) from our GPT classifier (the paper's IMDB
                                                       reward, when trained on IMDB labels)
    load_scorer("reward_model:runs/tldr-rm/final")    the scalar of our Bradley–Terry reward model
    load_scorer("hf:siebert/sentiment-roberta-large-english")   a transformers sequence classifier (the
                                                       paper's ground truth): p(label "POSITIVE"), the label
                                                       found by NAME in config.id2label, never by position;
                                                       "hf:NAME@LABEL" picks another label
    load_scorer("quickstart")                         the built-in task's ground truth (dpo/quickstart.py)
    load_scorer("vader")                              VADER's compound sentiment in [-1, 1] (Hutto & Gilbert
                                                       2014): a lexicon with rules, trained on no labels of
                                                       ours, the IMDB experiment's independent judge
                                                       (pip install vaderSentiment)
    rouge_l(candidate, reference)                     ROUGE-L F1 for offline judging (rouge_l_scorer)

What is scored: a classifier (ours or transformers') reads the text prompt + completion as one string (the
paper scores the whole review, prefix included); our reward model reads the prompt and the completion
tokenized apart and joined, as they were in training (dpo.reward_model). Too-long inputs lose their first
tokens (the completion, at the end, is what is being scored). Rows are scored in batches sorted by length.
"""
import re
from pathlib import Path

import torch

from dpo.batching import pad_rows
from dpo.errors import UserError


class RewardError(UserError, ValueError):
    pass


def _batches(lengths: list[int], batch_size: int):
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    return [order[k:k + batch_size] for k in range(0, len(order), batch_size)]


def _our_model(path, device, dtype, expect_kind):
    from dpo.reward_model import RewardModel
    from dpo.tokenizer import Tokenizer
    model = RewardModel.from_pretrained(path, dtype=dtype, device=device)
    if model.kind != expect_kind:
        raise RewardError(f"{path}: is a {model.kind} model, not a {expect_kind}")
    return model, Tokenizer.from_pretrained(path)


def _score_ids(model, rows: list[list[int]], pad_id: int, batch_size: int, device) -> torch.Tensor:
    """model.rewards of non-empty token rows, right-padded with pad_id in batches sorted by length."""
    out = torch.empty(len(rows), dtype=torch.float32)
    with torch.no_grad():
        for batch in _batches([len(r) for r in rows], batch_size):
            ids, mask = pad_rows([rows[i] for i in batch], pad_id)
            out[batch] = model.rewards(ids.to(device), mask.to(device)).float().cpu()
    return out


def classifier_scorer(path, *, device="cpu", dtype=None, batch_size: int = 32, max_length: int | None = None):
    """p(positive) of prompt + completion from our classifier (dpo.reward_model, n_outputs = 2)."""
    from dpo.reward_model import CLASSIFIER
    model, tokenizer = _our_model(path, device, dtype, CLASSIFIER)
    max_length = max_length or model.backbone.config.max_seq_len
    pad_id = tokenizer.pad_id_or_eos()

    def score(prompts: list[str], completions: list[str]) -> torch.Tensor:
        rows = [tokenizer.encode(p + c)[-max_length:] or [pad_id] for p, c in zip(prompts, completions)]
        return _score_ids(model, rows, pad_id, batch_size, device)
    return score


def reward_model_scorer(path, *, device="cpu", dtype=None, batch_size: int = 16, max_length: int | None = None):
    """r(prompt, completion) from our Bradley–Terry reward model (dpo.reward_model, n_outputs = 1)."""
    from dpo.reward_model import BRADLEY_TERRY, pair_ids
    model, tokenizer = _our_model(path, device, dtype, BRADLEY_TERRY)
    max_length = max_length or model.backbone.config.max_seq_len
    pad_id = tokenizer.pad_id_or_eos()
    prompt_cache = {}

    def score(prompts: list[str], completions: list[str]) -> torch.Tensor:
        rows = []
        for p, c in zip(prompts, completions):
            if p not in prompt_cache:
                prompt_cache[p] = tokenizer.encode(p)
            rows.append(pair_ids(prompt_cache[p], tokenizer.encode(c), max_length) or [pad_id])
        return _score_ids(model, rows, pad_id, batch_size, device)
    return score


def label_index(id2label: dict, label: str, where: str) -> int:
    """The index whose name is `label` (case-insensitive) in a config's id2label {index: name}."""
    matches = [int(i) for i, name in id2label.items() if str(name).lower() == label.lower()]
    if len(matches) != 1:
        raise RewardError(f"{where}: no single label named {label!r} in id2label {dict(id2label)}; "
                          f"name the label to score with hf:NAME@LABEL")
    return matches[0]


def hf_classifier_scorer(name_or_dir: str, *, label: str = "POSITIVE", device="cpu", batch_size: int = 32,
                         max_length: int = 512):
    """p(label) from a transformers AutoModelForSequenceClassification (e.g. the paper's
    siebert/sentiment-roberta-large-english), on prompt + completion. transformers is imported only here:
    it is not a dependency of this codebase (pip install transformers to use this scorer)."""
    try:
        import transformers
    except ImportError:
        raise RewardError(f"hf:{name_or_dir}: scoring with a Hugging Face classifier needs the transformers "
                          f"package (pip install transformers); it is not a dependency of this codebase") from None
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(name_or_dir)
        model = transformers.AutoModelForSequenceClassification.from_pretrained(name_or_dir).to(device).eval()
    except (OSError, ValueError) as e:  # not found (offline, a typo), not a sequence classifier
        raise RewardError(f"hf:{name_or_dir}: cannot load a transformers sequence classifier: "
                          + " ".join(str(e).split())) from None
    index = label_index(model.config.id2label, label, f"hf:{name_or_dir}")

    def score(prompts: list[str], completions: list[str]) -> torch.Tensor:
        texts = [p + c for p, c in zip(prompts, completions)]
        out = torch.empty(len(texts), dtype=torch.float32)
        with torch.no_grad():
            for batch in _batches([len(t) for t in texts], batch_size):
                enc = tokenizer([texts[i] for i in batch], padding=True, truncation=True, max_length=max_length,
                                return_tensors="pt").to(device)
                out[batch] = model(**enc).logits.float().softmax(-1)[:, index].cpu()
        return out
    return score


def vader_scorer():
    """VADER's compound score of prompt + completion, in [-1, 1] (> 0: positive). vaderSentiment is imported
    only here: it is not a dependency of this codebase (it is in requirements-dev.txt)."""
    try:
        from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer
    except ImportError:
        raise RewardError("vader: the independent sentiment judge needs the vaderSentiment package "
                          "(pip install vaderSentiment, or pip install -r requirements-dev.txt)") from None
    analyzer = SentimentIntensityAnalyzer()
    return lambda prompts, completions: torch.tensor(
        [analyzer.polarity_scores(p + c)["compound"] for p, c in zip(prompts, completions)], dtype=torch.float32)


def quickstart_scorer():
    from dpo import quickstart
    return lambda prompts, completions: torch.tensor([quickstart.reward(c) for c in completions], dtype=torch.float32)


# --------------------------------------------------------------------------------------------------
# ROUGE-L (Lin 2004): our own implementation, for offline judging against a reference


def rouge_tokens(text: str) -> list[str]:
    """Lowercased words: runs of letters and digits (punctuation and whitespace separate them)."""
    return re.findall(r"[a-z0-9]+", text.lower())


def lcs_length(a: list, b: list) -> int:
    """Length of the longest common subsequence, O(len(a)·len(b)) time, O(len(b)) memory."""
    if not a or not b:
        return 0
    prev = [0] * (len(b) + 1)
    for x in a:
        cur = [0]
        for j, y in enumerate(b):
            cur.append(prev[j] + 1 if x == y else max(prev[j + 1], cur[j]))
        prev = cur
    return prev[-1]


def rouge_l(candidate: str, reference: str) -> float:
    """ROUGE-L F1 = 2PR / (P + R), P = LCS / |candidate|, R = LCS / |reference| over rouge_tokens."""
    c, r = rouge_tokens(candidate), rouge_tokens(reference)
    lcs = lcs_length(c, r)
    if lcs == 0:
        return 0.0
    p, rec = lcs / len(c), lcs / len(r)
    return 2 * p * rec / (p + rec)


def rouge_l_scorer(references: dict[str, str]):
    """score(prompts, completions) = ROUGE-L F1 of each completion against references[prompt]."""
    def score(prompts: list[str], completions: list[str]) -> torch.Tensor:
        missing = next((p for p in prompts if p not in references), None)
        if missing is not None:
            raise RewardError(f"rouge-l: no reference for prompt {missing[:60]!r}")
        return torch.tensor([rouge_l(c, references[p]) for p, c in zip(prompts, completions)], dtype=torch.float32)
    return score


# --------------------------------------------------------------------------------------------------
# Names → scorers

SCORERS = {
    "classifier": lambda arg, **kw: classifier_scorer(arg, **kw),
    "reward_model": lambda arg, **kw: reward_model_scorer(arg, **kw),
    "hf": lambda arg, device="cpu", **kw: hf_classifier_scorer(arg.partition("@")[0], device=device,
                                                               label=arg.partition("@")[2] or "POSITIVE"),
    "quickstart": lambda arg, **kw: quickstart_scorer(),
    "vader": lambda arg, **kw: vader_scorer(),
}
WITHOUT_ARGUMENT = ("quickstart", "vader")


def check_device(device: str) -> torch.device:
    """--device as a torch.device, checked before any work: a UserError for a name torch does not know or
    a CUDA device this machine does not have."""
    try:
        d = torch.device(device)
    except RuntimeError:
        raise UserError(f"--device {device!r}: not a device (expected cpu, cuda or cuda:N)") from None
    if d.type == "cuda" and (d.index or 0) >= torch.cuda.device_count():
        raise UserError(f"--device {device}: no such CUDA device ({torch.cuda.device_count()} available)")
    return d


def check_spec(spec: str, folders: bool = True) -> tuple[str, str]:
    """(kind, ARG) of a reward spec "kind:ARG", checked without loading anything (a command checks its
    --reward before any work); a RewardError naming the spec and what was expected otherwise.
    folders=False checks the form only, not that a classifier or reward model folder exists."""
    kind, _, arg = spec.partition(":")
    if kind not in SCORERS:
        raise RewardError(f"unknown reward {spec!r}; expected one of classifier:DIR, reward_model:DIR, "
                          f"hf:NAME_OR_DIR[@LABEL], quickstart, vader")
    if kind not in WITHOUT_ARGUMENT and not arg:
        raise RewardError(f"reward {spec!r}: {kind} needs a path or name after the colon")
    if folders and kind in ("classifier", "reward_model") and not Path(arg).is_dir():
        raise RewardError(f"reward {spec!r}: {arg} is not a folder")
    return kind, arg


def load_scorer(spec: str, *, device="cpu", dtype=None):
    """A scorer from "kind:ARG" (see the module docstring): classifier:DIR, reward_model:DIR,
    hf:NAME_OR_DIR[@LABEL], quickstart, vader."""
    kind, arg = check_spec(spec)
    if kind in ("classifier", "reward_model"):
        return SCORERS[kind](arg, device=device, dtype=dtype)
    if kind == "hf":
        return SCORERS[kind](arg, device=device)
    return SCORERS[kind](arg)
