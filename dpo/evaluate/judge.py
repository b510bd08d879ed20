"""Pairwise judges for win rates: an LLM behind any OpenAI-compatible /v1/chat/completions endpoint (the
paper used GPT-4), and offline judges with the same interface (a reward model, or ROUGE-L vs a reference).

A judge is a function `judge(comparisons) -> verdicts`. A comparison is {"id", "prompt", "candidate",
"baseline"} (+ "reference" for ROUGE-L): is `candidate` (a model's sample) better than `baseline` (the human
reference summary, the chosen HH response, or another model's sample)? A verdict is {"id", "winner":
"candidate" | "baseline" | "tie" | None, "status": "ok" | "unparseable" | "error", ...}; winner is None
exactly when status is not "ok". Unparseable answers and errors are counted by the caller, never guessed.

LLM judge (`llm_judge`):
- Prompts: the paper's (Rafailov et al. 2023, appendix) in our own words with the same structure: the
  post or dialogue, response A, response B, then "a one-sentence comparison, then a final line
  `Preferred: A|B`" (summaries; `concise` also asks for the most important points without unimportant or
  irrelevant details) or "`More helpful: A|B`" (dialogue).
- Order: the candidate is A or B by a coin seeded with (seed, comparison id), recorded as
  "candidate_position", so a rerun asks the same questions and position bias averages out.
- Parsing is strict: the answer's last non-empty line must read exactly "Preferred: A" or "Preferred: B"
  ("More helpful: ..." for dialogue), spaces around the letter allowed. Anything else is unparseable.
- HTTP with urllib only: temperature 0, retries with exponential backoff (honouring Retry-After) on 429,
  5xx, timeouts and dropped connections; other HTTP errors (401, 404, ...) stop at once with the server's
  message, since every later request would fail the same way.
- Cache on disk ({cache_dir}/judge/ab/abcdef....json, keyed by sha256 of endpoint URL, model, messages,
  temperature and max_tokens): a rerun sends no request for questions already answered.
- `workers` requests in flight (a thread pool).
Configuration (JudgeConfig.from_env): DPO_JUDGE_URL (default https://api.openai.com/v1/chat/completions; a
base URL ending in /v1 gets /chat/completions appended), DPO_JUDGE_MODEL (default gpt-4), the key from
DPO_JUDGE_API_KEY or OPENAI_API_KEY (optional for local servers), cache under DPO_CACHE_DIR (~/.cache/dpo).
"""
import hashlib
import json
import os
import random
import re
import threading
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

from dpo.errors import UserError
from dpo.files import atomic_write

DEFAULT_URL = "https://api.openai.com/v1/chat/completions"
TASKS = ("summary", "summary_concise", "dialogue")

SUMMARY_PROMPT = """Here is a forum post followed by two candidate summaries of it. Which summary captures the main points of the post better?

Post:
{context}

Summary A:
{a}

Summary B:
{b}

Answer in two lines. First, in a single sentence, compare the two summaries and say which one you prefer and why. Then, on its own line, give only the letter of the better summary. Use exactly this format:
Comparison: <one sentence>
Preferred: <A or B>"""

SUMMARY_CONCISE_PROMPT = """Here is a forum post followed by two candidate summaries of it. Which summary states the most important points of the post more precisely and concisely, leaving out details that are unimportant or irrelevant?

Post:
{context}

Summary A:
{a}

Summary B:
{b}

Answer in two lines. First, in a single sentence, compare the two summaries and say which one you prefer and why. Then, on its own line, give only the letter of the better summary. Use exactly this format:
Comparison: <one sentence>
Preferred: <A or B>"""

DIALOGUE_PROMPT = """Here is a conversation between a person and an AI assistant, followed by two candidate replies for the assistant's next turn. Which reply is more helpful to the person?

Conversation:
{context}

Reply A:
{a}

Reply B:
{b}

Answer in two lines. First, in a single sentence, compare the two replies and say which one is more helpful and why. Then, on its own line, give only the letter of the more helpful reply. Use exactly this format:
Comparison: <one sentence>
More helpful: <A or B>"""

PROMPTS = {"summary": (SUMMARY_PROMPT, "Preferred"), "summary_concise": (SUMMARY_CONCISE_PROMPT, "Preferred"),
           "dialogue": (DIALOGUE_PROMPT, "More helpful")}
RETRY_STATUS = {408, 409, 429, 500, 502, 503, 504, 520, 521, 522, 524, 529}


class JudgeError(UserError, RuntimeError):
    """No usable answer for one question: every retry failed, or the reply was not a chat completion."""


class JudgeRefused(JudgeError):
    """The endpoint refused the request (bad key, unknown model, ...): every later request would fail too."""


def judge_context(prompt: str, task: str) -> str:
    """What the judge reads as the post or conversation: for a TL;DR-formatted prompt the post alone
    (between "POST:" and "TL;DR:"); for a dialogue the turns without the final empty "Assistant:"."""
    if task.startswith("summary"):
        match = re.search(r"POST:\s*(.*?)\s*TL;DR:\s*$", prompt, re.DOTALL)
        return match.group(1) if match else prompt.strip()
    return prompt.removesuffix("Assistant:").strip()


def parse_verdict(answer: str, label: str) -> str | None:
    """'A' or 'B' from the answer's last non-empty line "<label>: A|B"; None if it is anything else."""
    lines = [line.strip() for line in answer.strip().splitlines() if line.strip()]
    if not lines:
        return None
    match = re.fullmatch(rf"{re.escape(label)}:\s*([AB])", lines[-1])
    return match.group(1) if match else None


def candidate_position(seed: int, comparison_id) -> str:
    """'A' or 'B': where the candidate goes, a fair coin seeded by (seed, comparison id)."""
    return "A" if random.Random(f"{seed}:{json.dumps(comparison_id)}").random() < 0.5 else "B"


def judge_messages(comparison: dict, task: str, position: str) -> list[dict]:
    template, _ = PROMPTS[task]
    a, b = ((comparison["candidate"], comparison["baseline"]) if position == "A"
            else (comparison["baseline"], comparison["candidate"]))
    text = template.format(context=judge_context(comparison["prompt"], task), a=a.strip(), b=b.strip())
    return [{"role": "user", "content": text}]


# --------------------------------------------------------------------------------------------------
# The HTTP client


def _cache_root() -> Path:
    return Path(os.environ.get("DPO_CACHE_DIR") or "~/.cache/dpo").expanduser() / "judge"


@dataclass
class JudgeConfig:
    url: str = DEFAULT_URL
    model: str = "gpt-4"
    api_key: str | None = None
    temperature: float = 0.0
    max_tokens: int = 256
    timeout: float = 120.0
    max_retries: int = 6
    backoff: float = 2.0        # seconds before the first retry; doubles each time
    max_backoff: float = 120.0
    workers: int = 4            # requests in flight
    cache_dir: Path | None = None  # None: {DPO_CACHE_DIR or ~/.cache/dpo}/judge

    def __post_init__(self):
        if not self.url.rstrip("/").endswith("/chat/completions"):
            self.url = self.url.rstrip("/") + "/chat/completions"
        self.cache_dir = Path(self.cache_dir) if self.cache_dir is not None else _cache_root()

    @classmethod
    def from_env(cls, **overrides) -> "JudgeConfig":
        env = {"url": os.environ.get("DPO_JUDGE_URL"), "model": os.environ.get("DPO_JUDGE_MODEL"),
               "api_key": os.environ.get("DPO_JUDGE_API_KEY") or os.environ.get("OPENAI_API_KEY")}
        values = {k: v for k, v in env.items() if v}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


@dataclass
class ChatClient:
    """POST chat completions with retries and an on-disk cache. Thread-safe; `requests` counts HTTP requests."""
    config: JudgeConfig
    requests: int = 0
    cache_hits: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def _key(self, messages: list[dict]) -> str:
        c = self.config
        blob = json.dumps({"url": c.url, "model": c.model, "messages": messages, "temperature": c.temperature,
                           "max_tokens": c.max_tokens}, sort_keys=True, ensure_ascii=False)
        return hashlib.sha256(blob.encode("utf-8")).hexdigest()

    def _cache_path(self, key: str) -> Path:
        return self.config.cache_dir / key[:2] / f"{key}.json"

    def _post(self, body: bytes) -> bytes:
        c = self.config
        headers = {"Content-Type": "application/json"}
        if c.api_key:
            headers["Authorization"] = f"Bearer {c.api_key}"
        last = None
        for attempt in range(c.max_retries + 1):
            with self._lock:
                self.requests += 1
            wait = min(c.max_backoff, c.backoff * 2 ** attempt)
            try:
                with urllib.request.urlopen(urllib.request.Request(c.url, body, headers, method="POST"),
                                            timeout=c.timeout) as response:
                    return response.read()
            except urllib.error.HTTPError as e:
                detail = " ".join(e.read()[:300].decode("utf-8", "replace").split())  # one line
                if e.code not in RETRY_STATUS:
                    raise JudgeRefused(f"{c.url}: HTTP {e.code} {e.reason}: {detail}") from None
                last = f"HTTP {e.code} {e.reason}"
                retry_after = e.headers.get("Retry-After") if e.headers else None
                if retry_after and retry_after.strip().replace(".", "", 1).isdigit():
                    wait = min(c.max_backoff, float(retry_after))
            except (urllib.error.URLError, TimeoutError, ConnectionError, OSError) as e:
                last = f"{type(e).__name__}: {getattr(e, 'reason', e)}"
            if attempt < c.max_retries:
                time.sleep(wait)
        raise JudgeError(f"{c.url}: no answer after {c.max_retries + 1} attempts (last: {last})")

    def complete(self, messages: list[dict]) -> tuple[str, bool]:
        """The assistant's reply to `messages` → (text, came from the cache)."""
        key = self._key(messages)
        path = self._cache_path(key)
        if path.is_file():
            try:
                text = json.loads(path.read_text(encoding="utf-8"))["answer"]
                with self._lock:
                    self.cache_hits += 1
                return text, True
            except (json.JSONDecodeError, KeyError, UnicodeDecodeError):
                pass  # a damaged cache entry: ask again and overwrite it
        c = self.config
        body = json.dumps({"model": c.model, "messages": messages, "temperature": c.temperature,
                           "max_tokens": c.max_tokens}).encode("utf-8")
        raw = self._post(body)
        try:
            text = json.loads(raw)["choices"][0]["message"]["content"]
            if not isinstance(text, str):
                raise TypeError("content is not a string")
        except (json.JSONDecodeError, KeyError, IndexError, TypeError, UnicodeDecodeError) as e:
            raise JudgeError(f"{c.url}: response is not a chat completion ({e}): {raw[:200]!r}") from None
        # atomic (dpo.files: the temporary name holds the pid and thread id, so workers writing the same
        # question at once never share one)
        atomic_write(path, json.dumps({"model": c.model, "messages": messages, "answer": text}, ensure_ascii=False))
        return text, False


# --------------------------------------------------------------------------------------------------
# Judges


def llm_judge(config: JudgeConfig | None = None, task: str = "summary", seed: int = 0):
    """A judge asking an LLM (see the module docstring). The returned function has `.client` (its
    ChatClient, with request and cache-hit counts)."""
    if task not in TASKS:
        raise JudgeError(f"judge task must be one of {', '.join(TASKS)}; got {task!r}")
    client = ChatClient(config or JudgeConfig.from_env())
    _, label = PROMPTS[task]

    def one(comparison: dict) -> dict:
        position = candidate_position(seed, comparison["id"])
        verdict = {"id": comparison["id"], "candidate_position": position, "judge": f"llm:{client.config.model}",
                   "task": task}
        try:
            answer, cached = client.complete(judge_messages(comparison, task, position))
        except JudgeRefused:
            raise
        except JudgeError as e:
            return {**verdict, "winner": None, "status": "error", "error": str(e)}
        letter = parse_verdict(answer, label)
        winner = None if letter is None else ("candidate" if letter == position else "baseline")
        return {**verdict, "winner": winner, "status": "ok" if letter else "unparseable", "answer": answer,
                "cached": cached}

    def judge(comparisons: list[dict]) -> list[dict]:
        if client.config.workers <= 1:
            return [one(c) for c in comparisons]
        with ThreadPoolExecutor(max_workers=client.config.workers) as pool:
            return list(pool.map(one, comparisons))

    judge.client = client
    return judge


def score_judge(scorer, name: str = "reward_model"):
    """An offline judge from a reward `scorer(prompts, completions) -> [N]`: the higher score wins
    (equal scores: a tie)."""
    def judge(comparisons: list[dict]) -> list[dict]:
        prompts = [c["prompt"] for c in comparisons]
        if not comparisons:
            return []
        cand = scorer(prompts, [c["candidate"] for c in comparisons]).tolist()
        base = scorer(prompts, [c["baseline"] for c in comparisons]).tolist()
        return [{"id": c["id"], "judge": name, "status": "ok", "candidate_score": s, "baseline_score": t,
                 "winner": "candidate" if s > t else "baseline" if s < t else "tie"}
                for c, s, t in zip(comparisons, cand, base)]
    return judge


def rouge_judge():
    """An offline judge: the response with the higher ROUGE-L F1 against comparison["reference"] wins.
    (Against the reference itself the baseline always scores 1, so use it to compare two models' samples.)"""
    from dpo.evaluate.rewards import rouge_l

    def judge(comparisons: list[dict]) -> list[dict]:
        out = []
        for c in comparisons:
            if not c.get("reference"):
                out.append({"id": c["id"], "judge": "rouge_l", "status": "error", "winner": None,
                            "error": "no reference text for ROUGE-L"})
                continue
            s, t = rouge_l(c["candidate"], c["reference"]), rouge_l(c["baseline"], c["reference"])
            out.append({"id": c["id"], "judge": "rouge_l", "status": "ok", "candidate_score": s,
                        "baseline_score": t, "winner": "candidate" if s > t else "baseline" if s < t else "tie"})
        return out
    return judge
