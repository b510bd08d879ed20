"""Sample completions from a checkpoint: batched with the KV cache, resumable, split across ranks by torchrun.

    python sample.py --model runs/imdb-dpo/final --prompts imdb:data/aclImdb:test --out samples/dpo.jsonl \\
        --max-new-tokens 60 --temperature 1.0 --subsample 1000
    python sample.py --model runs/tldr-dpo/final --prompts tldr:data/tldr:test --temperature 0 --out s.jsonl
    python sample.py --model gpt2 --prompts prompts.jsonl --num-samples 4 --top-p 0.9 --out s.jsonl
    torchrun --nproc_per_node=8 sample.py --model ... --prompts ... --out s.jsonl      # prompts split over ranks
    python sample.py ... --best-of 128 --reward reward_model:runs/tldr-rm/final     # Best-of-N (dpo/evaluate/best_of_n.py)

Prompts (--prompts): a JSON-lines file with a "prompt" field per line (optional "prompt_id" or "id", and
"reference" or "chosen" as the reference response for win rates), or a dataset split by name:
    imdb:PATH[:SPLIT]        the first 2-8 tokens of each review (lengths drawn with --prompt-seed; the paper)
    tldr:PATH[:SPLIT]        "SUBREDDIT: r/...\\nTITLE: ...\\nPOST: ...\\nTL;DR:", reference = the human summary
    hh:PATH[:SPLIT]          the dialogue up to the last "\\n\\nAssistant:", reference = the chosen response
    quickstart[:SPLIT]       the built-in quickstart task's prompts (dpo/quickstart.py)
SPLIT defaults to test. Dataset prompts get prompt_id = their position in the split (before --single-turn
and --limit, so an id names the same prompt whatever the filters).

Output: JSON lines, one per (prompt_id, sample_index), in prompt order then sample_index:
    {prompt_id, sample_index, prompt, completion, reference?, label?, model, temperature, top_k, top_p,
     max_new_tokens, seed, finish_reason ("eos" | "length"), prompt_token_ids, completion_token_ids}
completion_token_ids are the generated ids (dpo.generation.generate: with the stop token when the sample
ended on one, finish_reason "eos"); completion is their text without it. The KL code scores exactly these
ids, since decode-then-encode need not give the same ids back.

Randomness. The sample for (prompt_id, sample_index) depends only on (seed, prompt_id, sample_index), the
model and the settings, never on which other rows share its batch, the rank that made it or where a run was
resumed: each row draws its own uniforms u_1..u_n from a generator seeded by sha256(seed:prompt_id:index),
and token t is the inverse-CDF draw of u_t from the filtered next-token distribution (temperature, then
top-k, then top-p, the rules of dpo.generation.sample_token). Temperature 0 is greedy (argmax). Batches are still
fixed (rows sorted by prompt length, longest first, then cut into --batch-size rows), so a resumed run
recomputes a half-written batch with the same neighbours and gives bit-identical logits too.

Resuming. Every rank appends whole batches to OUT.rank{R}.part (one write + flush per batch); on start an
incomplete last line of its own part file (a kill mid-write) is cut off, and rows already present in OUT or
any part file are not sampled again (another rank's incomplete last line is left out, never cut: that rank
may be writing it). Rank 0 then merges OUT and the part files (deduplicated, in prompt order) into OUT with
one atomic rename and removes the parts. Rows written with other settings (model, temperature, ...) are an
error: use another --out. Ranks need only a shared filesystem; they meet once at the end (a gloo barrier
with a long timeout, so no NCCL watchdog fires while a slower rank finishes).
"""
import argparse
import datetime
import hashlib
import json
import os
import sys
from collections import Counter
from pathlib import Path

import torch

from dpo import batching, data, formats
from dpo.data import DataError
from dpo.errors import UserError, entry_point
from dpo.evaluate.tables import read_samples
from dpo.files import atomic_write, check_writable
from dpo.generation import completion_text, generate, stop_ids
from dpo.interop.hf_checkpoint import load_pretrained
from dpo.interop.hub import resolve_model_dir
from dpo.model import GPT
from dpo.run_log import progress_bar

SETTINGS = ("model", "temperature", "top_k", "top_p", "max_new_tokens", "seed")  # must match to resume
DATASETS = ("imdb", "tldr", "hh", "quickstart")


class SampleError(UserError, ValueError):
    """Bad arguments or an output file that cannot be resumed; the message says which and why."""


# --------------------------------------------------------------------------------------------------
# Prompts


def _dataset_prompts(kind: str, path: str, split: str, tokenizer, prompt_seed: int, counts: Counter) -> list[dict]:
    if kind == "imdb":
        reviews = formats.read_imdb(path, split)
        return [{"prompt": p["prompt"], "prompt_input_ids": p["prompt_input_ids"], "label": p["label"],
                 "source": p["source"]}
                for p in formats.imdb_prefix_prompts(reviews, tokenizer, prompt_seed, counts=counts)]
    if kind == "tldr":
        return [{"prompt": ex["prompt"], "reference": ex["completion"], "source": ex["source"]}
                for ex in formats.read_tldr_sft(path, split, counts)]
    if kind == "hh":
        return [{"prompt": ex["prompt"], "reference": ex["chosen"], "source": ex["source"]}
                for ex in formats.read_hh(path, split, counts)]
    _, examples, _ = formats.load_examples("quickstart_preference", "", split)
    return [{"prompt": ex["prompt"], "source": f"quickstart:{split}:{i}"} for i, ex in enumerate(examples)]


def _jsonl_prompts(path: str, counts: Counter) -> list[dict]:
    prompts, seen = [], {}
    for lineno, obj in data.read_jsonl(path, counts):
        where = f"{path}:{lineno}"
        prompt = obj.get("prompt")
        if not isinstance(prompt, list):
            prompt = data.get_field(obj, "prompt", where)
        elif (problem := data.check_messages(prompt)) is not None:  # a conversation: the chat template renders it
            raise DataError(f"{where}: prompt: {problem}")
        prompt_id = obj.get("prompt_id", obj.get("id", len(prompts)))
        if not isinstance(prompt_id, (int, str)) or isinstance(prompt_id, bool):
            raise DataError(f"{where}: prompt_id must be an integer or a string, got {type(prompt_id).__name__}")
        if prompt_id in seen:
            raise DataError(f"{where}: prompt_id {prompt_id!r} repeats line {seen[prompt_id]}")
        seen[prompt_id] = lineno
        row = {"prompt_id": prompt_id, "prompt": prompt, "source": where}
        reference = obj.get("reference", obj.get("chosen"))
        if reference is not None:
            row["reference"] = data.get_field({"reference": reference}, "reference", where)
        prompts.append(row)
    if not prompts:
        raise DataError(f"{path}: no prompts (expected JSON lines with a \"prompt\" field)")
    return prompts


def is_single_turn(dialogue: str) -> bool:
    """One human turn and the assistant's reply to come (the paper's HH evaluation prompts)."""
    return dialogue.count("\n\nHuman:") == 1 and dialogue.count("\n\nAssistant:") == 1


def load_prompts(source: str, tokenizer, *, prompt_seed: int = 0, single_turn: bool = False,
                 limit: int | None = None, subsample: int | None = None, chat_template: str = ""
                 ) -> tuple[list[dict], Counter]:
    """Prompts from a JSON-lines file or "dataset:PATH[:SPLIT]" (see the module docstring), tokenized.

    Returns ([{"prompt_id", "prompt", "prompt_input_ids", "reference"?, "label"?, "source"}], counts of
    what was left out). After --single-turn, `subsample` keeps a random subset of that many prompts
    (dpo.data.seeded_subset with prompt_seed, kept in order; the IMDB split is sorted by polarity, so its
    first prompts are all negative reviews) and `limit` then keeps the first `limit`. Conversational prompts
    (message lists) are rendered as training renders them: the chat template (`chat_template`, else the
    tokenizer's own) with the generation prompt."""
    counts = Counter()
    kind, _, rest = source.partition(":")
    if kind == "quickstart" or (kind in DATASETS and rest):
        if kind == "quickstart":
            path, split = "", rest
        else:
            path, _, split = rest.rpartition(":") if ":" in rest else (rest, "", "")
        prompts = _dataset_prompts(kind, path, split or "test", tokenizer, prompt_seed, counts)
        for i, p in enumerate(prompts):
            p["prompt_id"] = i
    else:
        prompts = _jsonl_prompts(source, counts)
    if single_turn:
        kept = [p for p in prompts if is_single_turn(p["prompt"])]
        counts["multi-turn dialogues (--single-turn)"] += len(prompts) - len(kept)
        prompts = kept
    if subsample is not None and subsample < len(prompts):
        keep = data.seeded_subset(len(prompts), subsample, prompt_seed)
        counts[f"prompts outside a random subset of {subsample} (--subsample)"] += len(prompts) - subsample
        prompts = [prompts[i] for i in keep]
    if limit is not None and limit < len(prompts):
        counts[f"prompts after the first {limit} (--limit)"] += len(prompts) - limit
        prompts = prompts[:limit]
    conversations = [p for p in prompts if isinstance(p["prompt"], list)]
    family = batching.chat_family(conversations, tokenizer, chat_template) if conversations else None
    for p in prompts:
        if isinstance(p["prompt"], list):
            p["prompt_input_ids"] = batching.encode_conversation(p, tokenizer, family)["prompt"]
            p["prompt"] = tokenizer.decode(p["prompt_input_ids"])
        elif "prompt_input_ids" not in p:
            p["prompt_input_ids"] = tokenizer.encode(p["prompt"])
    return prompts, counts


# --------------------------------------------------------------------------------------------------
# Drawing tokens: per-row uniforms and the inverse CDF


def row_seed(seed: int, prompt_id, sample_index: int) -> int:
    """A 63-bit seed for one (prompt_id, sample_index): sha256 of "seed:json(prompt_id):index"."""
    key = f"{seed}:{json.dumps(prompt_id)}:{sample_index}".encode()
    return int.from_bytes(hashlib.sha256(key).digest()[:8], "little") >> 1


def row_uniforms(seeds: list[int], n_steps: int) -> torch.Tensor:
    """[len(seeds), n_steps] float64 uniforms in [0, 1), row i from a CPU generator seeded by seeds[i]."""
    return torch.stack([torch.rand(n_steps, dtype=torch.float64, generator=torch.Generator().manual_seed(s))
                        for s in seeds]) if seeds else torch.zeros(0, n_steps, dtype=torch.float64)


# --------------------------------------------------------------------------------------------------
# Output files: resumable appends per rank, one atomic merge


def part_files(out: Path) -> list[Path]:
    return sorted(out.parent.glob(out.name + ".rank*.part"))


def _check_settings(rows: list[dict], settings: dict, where: Path):
    for row in rows:
        for key in SETTINGS:
            if row.get(key) != settings[key]:
                raise SampleError(f"{where}: holds samples with {key}={row.get(key)!r}, this run has "
                                  f"{key}={settings[key]!r}; resume with the same settings or use another --out")


def done_rows(out: Path, settings: dict, mine: Path | None = None) -> set:
    """Keys (json prompt_id, sample_index) of the rows already in OUT and its part files, each file checked
    to hold rows of these settings (else a SampleError); an incomplete last line is cut off `mine` (this
    rank's part file) only."""
    done = set()
    for path in [out] + part_files(out):
        rows = read_samples(path, truncate_partial=path == mine)
        _check_settings(rows, settings, path)
        done.update((json.dumps(r["prompt_id"]), r["sample_index"]) for r in rows)
    return done


def merge(out: Path, prompts: list[dict]) -> int:
    """OUT + OUT.rank*.part → OUT (atomically), one row per (prompt_id, sample_index), in prompt order then
    sample_index (rows of prompts not in this run last, by id); removes the parts. Returns the row count."""
    order = {p["prompt_id"]: i for i, p in enumerate(prompts)}
    rows = {}
    for path in [out] + part_files(out):
        for row in read_samples(path):
            rows.setdefault((json.dumps(row["prompt_id"]), row["sample_index"]), row)
    ordered = sorted(rows.values(), key=lambda r: (order.get(r["prompt_id"], len(order)),
                                                    json.dumps(r["prompt_id"]), r["sample_index"]))
    atomic_write(out, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in ordered))
    for path in part_files(out):
        path.unlink()
    return len(ordered)


# --------------------------------------------------------------------------------------------------
# The run


def plan_batches(prompts: list[dict], n: int, batch_size: int) -> list[list[tuple[int, int]]]:
    """All (prompt position, sample_index) rows sorted by prompt length (longest first, so an out-of-memory
    shows at once), then position and index, cut into batches of batch_size. Deterministic."""
    rows = sorted(((i, s) for i in range(len(prompts)) for s in range(n)),
                  key=lambda r: (-len(prompts[r[0]]["prompt_input_ids"]), r[0], r[1]))
    return [rows[k:k + batch_size] for k in range(0, len(rows), batch_size)]


def sample_batch(model: GPT, tokenizer, prompts: list[dict], batch: list[tuple[int, int]], settings: dict,
                 device) -> list[dict]:
    """Generate one batch of (prompt position, sample_index) rows → output rows (see the module docstring).
    With temperature > 0 each row draws from its own uniforms (row_seed, row_uniforms), moved to `device`."""
    uniforms = None
    if settings["temperature"] > 0:
        seeds = [row_seed(settings["seed"], prompts[i]["prompt_id"], s) for i, s in batch]
        uniforms = row_uniforms(seeds, settings["max_new_tokens"]).to(device)
    completions = generate(model, tokenizer, [prompts[i]["prompt_input_ids"] for i, _ in batch],
                           max_new_tokens=settings["max_new_tokens"], temperature=settings["temperature"],
                           top_k=settings["top_k"], top_p=settings["top_p"], uniforms=uniforms)
    stop = stop_ids(model, tokenizer)
    rows = []
    for (i, s), ids in zip(batch, completions):
        p = prompts[i]
        row = {"prompt_id": p["prompt_id"], "sample_index": s, "prompt": p["prompt"],
               "completion": completion_text(tokenizer, ids, stop)}
        for key in ("reference", "label"):
            if key in p:
                row[key] = p[key]
        row.update(settings)
        row.update(finish_reason="eos" if ids and ids[-1] in stop else "length",
                   prompt_token_ids=p["prompt_input_ids"], completion_token_ids=ids)
        rows.append(row)
    return rows


def run_sampling(model: GPT, tokenizer, prompts: list[dict], out, *, n: int = 1, batch_size: int = 16,
                 settings: dict, rank: int = 0, world_size: int = 1, device="cpu", progress: bool = True,
                 stop_after_batches: int | None = None) -> dict:
    """Sample this rank's share of the rows into OUT.rank{rank}.part, skipping rows already done.
    Returns counts {"rows", "done_before", "sampled"}. The caller merges (see `merge`) after all ranks end.
    stop_after_batches: stop early (tests simulate an interrupted run with it)."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    mine = out.with_name(f"{out.name}.rank{rank}.part")
    done = done_rows(out, settings, mine)
    batches = plan_batches(prompts, n, batch_size)[rank::world_size]
    key = lambda i, s: (json.dumps(prompts[i]["prompt_id"]), s)  # noqa: E731
    todo = [b for b in batches if any(key(i, s) not in done for i, s in b)]
    counts = {"rows": sum(len(b) for b in batches), "sampled": 0}
    counts["done_before"] = counts["rows"] - sum(len(b) for b in todo)
    bar = progress_bar(counts["rows"], counts["done_before"], enabled=progress and rank == 0, desc=f"sample[{rank}]",
                       unit="sample")
    with open(mine, "a", encoding="utf-8") as f:
        for b, batch in enumerate(todo):
            if stop_after_batches is not None and b >= stop_after_batches:
                break
            rows = [r for r in sample_batch(model, tokenizer, prompts, batch, settings, device)
                    if (json.dumps(r["prompt_id"]), r["sample_index"]) not in done]
            f.write("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))  # one write per batch
            f.flush()
            counts["sampled"] += len(rows)
            bar.update(len(batch))
    bar.close()
    return counts


def pick_device(device: str, local_rank: int = 0) -> torch.device:
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        if not torch.cuda.is_available():
            raise SampleError("--device cuda: no CUDA device is available")
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device(device)


def pick_dtype(dtype: str, device: torch.device) -> torch.dtype:
    if dtype == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    return getattr(torch, dtype)


def load_model_and_tokenizer(model_dir, tokenizer_dir=None, device="cpu", dtype=torch.float32):
    from dpo.tokenizer import Tokenizer
    path = resolve_model_dir(str(model_dir))
    model = load_pretrained(path, dtype=dtype, device=device).eval()
    tokenizer = Tokenizer.from_pretrained(tokenizer_dir or path)
    return model, tokenizer


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="checkpoint folder (Hugging Face layout) or hub name")
    p.add_argument("--prompts", required=True, help="prompts.jsonl, or imdb:PATH[:SPLIT], tldr:..., hh:..., quickstart")
    p.add_argument("--out", required=True, help="output JSON-lines file (resumed if it exists)")
    p.add_argument("--tokenizer", default=None, help="tokenizer folder (default: the model's)")
    p.add_argument("--num-samples", type=int, default=1, help="samples per prompt")
    p.add_argument("--temperature", type=float, default=1.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=None)
    p.add_argument("--top-p", type=float, default=None)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--batch-size", type=int, default=16, help="rows (prompt, sample) per forward")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prompt-seed", type=int, default=0, help="seed of the IMDB prefix lengths and --subsample")
    p.add_argument("--limit", type=int, default=None, help="use only the first N prompts")
    p.add_argument("--subsample", type=int, default=None,
                   help="use a random subset of N prompts (seeded by --prompt-seed, in their order)")
    p.add_argument("--single-turn", action="store_true", help="keep single-turn dialogues only (HH evaluation)")
    p.add_argument("--chat-template", default="", help="conversational prompts: a template family (default: the "
                   "tokenizer's own template)")
    p.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    p.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                   help="auto: bfloat16 on CUDA, float32 on CPU")
    p.add_argument("--best-of", type=int, default=None, metavar="N",
                   help="Best-of-N: sample N per prompt into OUT.candidates.jsonl, keep the best by --reward in OUT")
    p.add_argument("--reward", default=None, help="reward for --best-of (see dpo/evaluate/rewards.py: reward_model:DIR, ...)")
    return p


def check_args(args):
    def need(ok, msg):
        if not ok:
            raise SampleError(msg)
    need(args.num_samples >= 1, f"--num-samples must be >= 1, got {args.num_samples}")
    need(args.temperature >= 0, f"--temperature must be >= 0, got {args.temperature}")
    need(args.top_k is None or args.top_k >= 1, f"--top-k must be >= 1, got {args.top_k}")
    need(args.top_p is None or 0 < args.top_p <= 1, f"--top-p must be in (0, 1], got {args.top_p}")
    need(args.max_new_tokens >= 1, f"--max-new-tokens must be >= 1, got {args.max_new_tokens}")
    need(args.batch_size >= 1, f"--batch-size must be >= 1, got {args.batch_size}")
    need(args.limit is None or args.limit >= 1, f"--limit must be >= 1, got {args.limit}")
    need(args.subsample is None or args.subsample >= 1, f"--subsample must be >= 1, got {args.subsample}")
    need((args.best_of is None) == (args.reward is None), "--best-of and --reward go together")
    need(args.best_of is None or args.best_of >= 1, f"--best-of must be >= 1, got {args.best_of}")
    need(args.best_of is None or args.num_samples == 1,
         "--best-of N samples N per prompt itself; leave --num-samples at 1")
    if args.reward is not None:
        from dpo.evaluate.rewards import check_spec
        check_spec(args.reward)  # a bad --reward fails now, not after the sampling


def output_paths(args) -> tuple[Path, Path]:
    """(OUT, the file the samples go to: OUT itself, or OUT.candidates.jsonl with --best-of), both checked
    writable before any work (dpo.files.check_writable)."""
    out = check_writable(args.out, "--out")
    if not args.best_of:
        return out, out
    return out, check_writable(out.with_name(out.name.removesuffix(".jsonl") + ".candidates.jsonl"), "--out")


@entry_point
def main(argv=None) -> int:
    args = build_parser().parse_args(argv)
    rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    check_args(args)
    out, samples_out = output_paths(args)
    settings = {"model": args.model, "temperature": args.temperature, "top_k": args.top_k,
                "top_p": args.top_p, "max_new_tokens": args.max_new_tokens, "seed": args.seed}
    done_rows(samples_out, settings)  # an OUT this run cannot resume fails now, not after loading the model
    device = pick_device(args.device, int(os.environ.get("LOCAL_RANK", 0)))
    started_group = False
    try:
        if world_size > 1:
            import torch.distributed as dist
            dist.init_process_group("gloo", timeout=datetime.timedelta(days=7))
            started_group = True
        model, tokenizer = load_model_and_tokenizer(args.model, args.tokenizer, device, pick_dtype(args.dtype, device))
        prompts, counts = load_prompts(args.prompts, tokenizer, prompt_seed=args.prompt_seed,
                                       single_turn=args.single_turn, limit=args.limit, subsample=args.subsample,
                                       chat_template=args.chat_template)
        if args.max_new_tokens >= model.config.max_seq_len:
            raise SampleError(f"--max-new-tokens {args.max_new_tokens} leaves no room for a prompt in the "
                              f"model's max_seq_len {model.config.max_seq_len}")
        room = model.config.max_seq_len - args.max_new_tokens
        kept = [p for p in prompts if 0 < len(p["prompt_input_ids"]) <= room]
        if len(kept) < len(prompts):
            counts[f"prompts empty or longer than {room} tokens (max_seq_len - max_new_tokens)"] += \
                len(prompts) - len(kept)
            prompts = kept
        left_out = "; left out: " + ", ".join(f"{v} {k}" for k, v in counts.items()) if counts else ""
        if not prompts:
            raise SampleError(f"{args.prompts}: no prompts left to sample{left_out}")
        if rank == 0:
            print(f"{args.prompts}: {len(prompts)} prompts{left_out}", file=sys.stderr)
        n = args.best_of or args.num_samples
        result = run_sampling(model, tokenizer, prompts, samples_out, n=n, batch_size=args.batch_size,
                              settings=settings, rank=rank, world_size=world_size, device=device)
        if started_group:
            import torch.distributed as dist
            dist.barrier()
        if rank == 0:
            total = merge(samples_out, prompts)
            print(f"{samples_out}: {total} samples ({result['done_before']} of rank 0's were already there, "
                  f"{result['sampled']} sampled now)", file=sys.stderr)
            if args.best_of:
                from dpo.evaluate import best_of_n, rewards
                del model
                scorer = rewards.load_scorer(args.reward, device=device)
                kept = best_of_n.select_file(samples_out, out, scorer, n=args.best_of)
                print(f"{out}: best of {args.best_of} by {args.reward} for {kept} prompts", file=sys.stderr)
    finally:  # (only after success: another rank may be waiting for this one, and destroying would wait too)
        if started_group and sys.exc_info()[0] is None:
            import torch.distributed as dist
            dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
