"""Our DPO step against TRL's DPOTrainer, side by side: tokens/s, peak RSS, their ratios, % of the matmul limit.

    python benchmarks/bench_trl.py --shape both --rounds 3          # IMDB- and TL;DR-shaped pairs
    python benchmarks/bench_trl.py --shape imdb --ours-only         # a quick look at our side alone
    python benchmarks/bench_trl.py --shape tldr --device cuda --bf16 --model-shape gpt2-large   # on a GPU

What runs. One random-init GPT-2-shaped model (--model-shape, by default 6 layers x 384; the real 50,257-token
GPT-2 vocabulary and tokenizer, fp32, seed 0) saved as a Hugging Face folder that both sides load; real-text
pairs of two shapes from `--data` (a dev folder, default ../shared/data: aclImdb-mini, tldr-mini, gpt2):
  imdb: prompt = the first 2-8 words of a review, chosen = its next 40 words, rejected = words of a review of
        the other label at the same place (short prompt, ~40-word responses);
  tldr: prompt = a 40-100-word post in the TL;DR SFT format (SUBREDDIT / TITLE / POST / "TL;DR:"),
        chosen = its one-line summary, rejected = another post's summary (the prompt ~5x the response).
Responses start with a space, so both tokenizations agree token for token (checked: the counts of every
pair are compared, TRL's taken from its own prepared dataset).
  ours: `python train.py --config <temp yaml>` (its defaults: prompt shared, reference = frozen copy),
        step times from out_dir/metrics.jsonl (batch / examples_per_second: collate + step + update);
  TRL:  trl.DPOTrainer in a child of this script (--trl-child), ref_model=None (TRL loads a second copy),
        step times from a TrainerCallback (on_step_begin .. on_step_end; the batch is fetched before).
Same pairs, batch, steps, RMSprop lr 1e-6, sigmoid loss beta 0.1, fp32 (--bf16: bf16 autocast on both sides,
fp32 weights), 2 threads (OMP/MKL_NUM_THREADS=2, torch.set_num_threads(2)); TRL's other options are its
defaults and printed (gradient_checkpointing=True is one; --trl-no-gradient-checkpointing turns it off).
--trl-thp runs TRL with PyTorch's 2 MiB pages for large CPU tensors (THP_MEM_ALLOC_ENABLE=1); to give ours
the same, export it before running this script. The first --warmup steps are dropped; a run's step time
is the median of the rest. Peak RSS: ru_maxrss of each child process from os.wait4, the same for both; with
--device cuda, each side's torch.cuda.max_memory_allocated instead (ours from its metrics.jsonl).

Tokens, counted alike for both sides (as TRL counts them): per pair the non-pad tokens of prompt+chosen plus
prompt+rejected (the prompt twice, EOS included); tokens per step = mean over the pairs x batch (the sides
may order the pairs differently); tokens/s = that / the median step time.
Limit: this CPU's fp32 (--bf16: bf16) GFLOP/s on a 2048x2048 matmul (2 threads, best of 5; on a GPU 8192x8192),
measured in the parent just before each run (each round: before ours and before TRL).
State floor (CPU): the peak RSS of a child that holds only torch, the policy and the reference, the gradients,
RMSprop's state and the temporary of its update (no batch); what each side needs above it is printed.
FLOPs a step needs = sum over its pairs of 8*N_body*(P + C + R) + 8*V*d*(C + R)
(P, C, R: prompt, chosen, rejected tokens; N_body: the blocks' parameters, embeddings and head excluded;
6x policy forward+backward + 2x reference forward; each prompt once; the head on response positions only).

Noise. Other jobs share these 2 cores and `nice` does not isolate a run from them (the kernel shares the CPU
between process groups first), so runs alternate ours / TRL / ours / TRL ... and only the ratios of one
invocation mean anything: the summary gives the median of the per-round ratios and their range.
transformers and trl are dev-only (requirements-dev.txt); they are imported only where the model is built
and in the TRL child.
"""
import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
ENV = {"OMP_NUM_THREADS": "2", "MKL_NUM_THREADS": "2", "DPO_NO_PROGRESS": "1", "TOKENIZERS_PARALLELISM": "false"}
GPT2_VOCAB = dict(vocab_size=50257, n_positions=1024)
RESPONSE_WORDS, MAX_LENGTH = 40, 1024


def model_shape(args) -> dict:
    """--model-shape (a shape of benchmarks/bench_train.py) with GPT-2's vocabulary and context."""
    from bench_train import SHAPES
    return {**SHAPES[args.model_shape], **GPT2_VOCAB}


def memory_name(args) -> str:
    return "peak GPU memory" if args.device == "cuda" else "peak RSS"


# ---------------------------------------------------------------------------------------------------- pairs

def review_words(path: Path) -> list[str]:
    return path.read_text(encoding="utf-8").replace("<br />", " ").split()


def imdb_pairs(folder: Path, n: int, seed: int = 0) -> list[dict]:
    """Prompt = the first 2-8 words of a review, chosen = its next 40 words, rejected = the same span of a
    review of the other label."""
    reviews = {label: [w for p in sorted((folder / "train" / label).glob("*.txt"))
                       if len(w := review_words(p)) >= 8 + RESPONSE_WORDS] for label in ("pos", "neg")}
    rng, pairs = random.Random(seed), []
    for i in range(n):
        label, other = ("pos", "neg") if i % 2 == 0 else ("neg", "pos")
        a, b, k = rng.choice(reviews[label]), rng.choice(reviews[other]), rng.randint(2, 8)
        pairs.append({"prompt": " ".join(a[:k]), "chosen": " " + " ".join(a[k:k + RESPONSE_WORDS]),
                      "rejected": " " + " ".join(b[k:k + RESPONSE_WORDS])})
    return pairs


def tldr_pairs(path: Path, n: int, seed: int = 0) -> list[dict]:
    """Prompt = a 40-100-word post in the TL;DR SFT format, chosen = its summary, rejected = another's."""
    from dpo.formats import TLDR_TEMPLATE
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    rows = [r for r in rows if 40 <= len(r["post"].split()) <= 100 and r["summary"].strip()]
    rng = random.Random(seed)
    picked, pairs = rng.sample(rows, n), []
    for row in picked:
        other = row
        while other["summary"] == row["summary"]:
            other = rng.choice(rows)
        pairs.append({"prompt": TLDR_TEMPLATE.format(subreddit=row["subreddit"], title=row["title"], post=row["post"]),
                      "chosen": " " + row["summary"].strip(), "rejected": " " + other["summary"].strip()})
    return pairs


# ---------------------------------------------------------------------------------------------------- model and tokens

def build_model(folder: Path, gpt2: Path, shape: dict) -> int:
    """The shared random-init model + the real GPT-2 tokenizer, in HF layout; returns N_body."""
    import torch
    from transformers import GPT2Config, GPT2LMHeadModel, GPT2TokenizerFast
    torch.manual_seed(0)
    config = GPT2Config(**shape, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, summary_first_dropout=0.0)
    model = GPT2LMHeadModel(config)
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer = GPT2TokenizerFast.from_pretrained(gpt2)  # a local folder: vocab.json + merges.txt
    tokenizer.pad_token = tokenizer.eos_token
    tokenizer.save_pretrained(folder)
    return sum(p.numel() for name, p in model.transformer.named_parameters() if not name.startswith(("wte", "wpe")))


def our_counts(folder: Path, pairs: list[dict]) -> list[tuple]:
    """(P, C, R) per pair as train.py tokenizes them (responses + EOS)."""
    from dpo.batching import encode_example
    from dpo.tokenizer import Tokenizer
    tok = Tokenizer.from_pretrained(folder)
    ids = [encode_example(p, tok) for p in pairs]
    return [(len(e["prompt"]), len(e["chosen"]), len(e["rejected"])) for e in ids]


def step_tokens_and_flops(counts: list[tuple], batch: int, n_body: int, shape: dict) -> tuple[float, float]:
    """Mean tokens per step (prompt twice, as TRL counts) and mean FLOPs a step needs (prompt once)."""
    d, vocab = shape["n_embd"], shape["vocab_size"]
    tokens = statistics.fmean(2 * p + c + r for p, c, r in counts) * batch
    flops = statistics.fmean(8 * n_body * (p + c + r) + 8 * vocab * d * (c + r) for p, c, r in counts) * batch
    return tokens, flops


def matmul_gflops(bf16: bool, device: str, repeats: int = 5) -> float:
    """fp32 (or bf16) GFLOP/s of an n x n matmul (2,048 on 2 CPU threads, 8,192 on a GPU): the best of `repeats`
    after one warm-up (other jobs only ever slow it down, so the best is the closest to what the device can do)."""
    import torch
    torch.set_num_threads(2)
    n, dtype = 2048 if device == "cpu" else 8192, torch.bfloat16 if bf16 else torch.float32
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    a @ b
    times = []
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    for _ in range(repeats):
        sync()
        start = time.perf_counter()
        a @ b
        sync()
        times.append(time.perf_counter() - start)
    return 2 * n ** 3 / min(times) / 1e9


# ---------------------------------------------------------------------------------------------------- the two sides

def spawn(cmd: list[str], log: Path, env: dict | None = None) -> int:
    """Run cmd with the benchmark's env; return its peak RSS in KiB (os.wait4's ru_maxrss); fail with its log."""
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env={**os.environ, **ENV, **(env or {})}, stdout=out,
                                stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(cmd[:3])} failed (exit {proc.returncode}); the end of {log}:\n"
                 + "\n".join(log.read_text().splitlines()[-30:]))
    return usage.ru_maxrss


def run_ours(work: Path, model: Path, data: Path, args, n_steps: int) -> tuple[list[float], float]:
    out_dir = work / "ours"
    shutil.rmtree(out_dir, ignore_errors=True)
    config = {
        "model": {"name": str(model), "dtype": "float32", "dropout": 0.0}, "reference": "",
        "data": {"format": "preference_jsonl", "path": str(data), "eval_path": str(data), "eval_examples": 2,
                 "max_length": MAX_LENGTH, "max_prompt_length": MAX_LENGTH - 64},
        "loss": {"name": "sigmoid", "beta": 0.1},
        "train": {"out_dir": str(out_dir), "seed": 0, "batch_size": args.batch, "micro_batch_size": args.batch,
                  "max_examples": args.batch * n_steps, "optimizer": "rmsprop", "lr": 1e-6, "warmup_steps": 0,
                  "sample_every": 0, "sample_reward": "", "sample_prompts": 0, "log_every": 1, "device": args.device,
                  "mixed_precision": "bf16" if args.bf16 else "none"},
        "wandb": {"mode": "disabled"}}
    yaml_path = work / "ours.yaml"
    yaml_path.write_text(json.dumps(config, indent=1))  # JSON is YAML
    rss = spawn([sys.executable, "train.py", "--config", str(yaml_path), *args.ours], work / "ours.log")
    lines = [json.loads(x) for x in (out_dir / "metrics.jsonl").read_text().splitlines() if x.strip()]
    times = [args.batch / m["examples_per_second"] for m in lines if "examples_per_second" in m]
    if args.device == "cuda":  # train.py logs torch.cuda.max_memory_allocated as peak_memory_gb (GiB)
        return times, max(m["peak_memory_gb"] for m in lines if "peak_memory_gb" in m) * 1024
    return times, rss / 1024


def run_trl(work: Path, model: Path, data: Path, args, n_steps: int) -> tuple[list[float], float, dict]:
    result = work / "trl.json"
    cmd = [sys.executable, str(Path(__file__).resolve()), "--trl-child", str(model), str(data), str(result),
           "--batch", str(args.batch), "--steps", str(n_steps)] + (["--trl-no-gradient-checkpointing"]
                                                                    if args.trl_no_gradient_checkpointing else []) \
        + (["--bf16"] if args.bf16 else []) + ["--device", args.device]
    rss = spawn(cmd, work / "trl.log", {"THP_MEM_ALLOC_ENABLE": "1"} if args.trl_thp else None)
    out = json.loads(result.read_text())
    return out["step_times"], out["peak_gpu_mib"] if args.device == "cuda" else rss / 1024, out


def trl_child(args) -> None:
    """Runs in the child process: TRL's DPOTrainer on the pairs; writes step times, counts and options."""
    import torch
    torch.set_num_threads(2)
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import DPOConfig, DPOTrainer
    model, data, result = args.trl_child[0], Path(args.trl_child[1]), Path(args.trl_child[2])
    pairs = [json.loads(x) for x in data.read_text().splitlines() if x.strip()]
    times, begin = [], [0.0]

    class StepTimer(TrainerCallback):
        def on_step_begin(self, *_, **__):
            begin[0] = time.perf_counter()

        def on_step_end(self, *_, **__):
            times.append(time.perf_counter() - begin[0])

    config = DPOConfig(
        output_dir=str(data.parent / "trl_out"), per_device_train_batch_size=args.batch, gradient_accumulation_steps=1,
        max_steps=args.steps, learning_rate=1e-6, lr_scheduler_type="constant", warmup_steps=0, optim="rmsprop",
        beta=0.1, loss_type=["sigmoid"], logging_steps=1, report_to="none", save_strategy="no",
        use_cpu=args.device == "cpu",
        bf16=args.bf16, fp16=False, max_length=MAX_LENGTH, precompute_ref_log_probs=False, dataloader_num_workers=0,
        gradient_checkpointing=not args.trl_no_gradient_checkpointing, seed=0)
    trainer = DPOTrainer(model=model, ref_model=None, args=config, train_dataset=Dataset.from_list(pairs),
                         callbacks=[StepTimer()])
    counts = [(len(e["prompt_ids"]), len(e["chosen_ids"]), len(e["rejected_ids"])) for e in trainer.train_dataset]
    trainer.train()
    options = {k: getattr(config, k) for k in ("gradient_checkpointing", "padding_free", "pad_to_multiple_of",
                                               "max_length", "truncation_mode", "precompute_ref_log_probs",
                                               "max_grad_norm", "optim", "lr_scheduler_type", "disable_dropout",
                                               "bf16", "dataset_num_proc")}
    options["optimizer"] = type(trainer.optimizer.optimizer if hasattr(trainer.optimizer, "optimizer")
                                else trainer.optimizer).__name__
    options["ref_model"] = "a second load of the model (ref_model=None)" if trainer.ref_model is not None else "none"
    peak = torch.cuda.max_memory_allocated() / 2**20 if args.device == "cuda" else None
    result.write_text(json.dumps({"step_times": times, "counts": counts, "options": options, "peak_gpu_mib": peak},
                                 default=str))


def state_floor_child(model: str) -> None:
    """Runs in a child process: only the state every live-reference RMSprop DPO step holds (torch, the policy
    and the reference, the policy's gradients, RMSprop's square averages and the temporary of its update), no
    batch. Its peak RSS is the floor both sides stand on."""
    import torch
    from dpo.interop.hf_checkpoint import load_pretrained
    torch.set_num_threads(2)
    policy = load_pretrained(model, dtype=torch.float32, device="cpu")
    reference = load_pretrained(model, dtype=torch.float32, device="cpu").requires_grad_(False)
    for p in reference.parameters():  # read every weight once, as a forward does: resident from here on
        p.sum()
    optimizer = torch.optim.RMSprop(policy.parameters(), lr=1e-6)
    for p in policy.parameters():
        p.grad = torch.ones_like(p)
    optimizer.step()


# ---------------------------------------------------------------------------------------------------- the benchmark

def describe(side: str, rnd: int, times: list[float], memory_mib: float, need: tuple, gflops: float, warmup: int,
             memory_name: str) -> dict:
    tokens, flops = need
    timed = times[warmup:]
    if not timed:
        sys.exit(f"{side}: {len(times)} step times, none left after {warmup} warm-up steps")
    step = statistics.median(timed)
    row = {"tps": tokens / step, "memory": memory_mib, "limit": flops / step / (gflops * 1e9), "step": step}
    print(f"  {side:4s} round {rnd}: step {step * 1000:6.0f} ms (median of {len(timed)}) | {row['tps']:5.0f} tokens/s"
          f" | {memory_name} {row['memory']:5.0f} MiB | matmul {gflops:3.0f} GFLOP/s, limit "
          f"{tokens / flops * gflops * 1e9:4.0f} tokens/s: {row['limit']:5.1%} of it", flush=True)
    return row


def check_trl_counts(out: dict, counts: list[tuple]) -> None:
    trl_counts = [tuple(x) for x in out["counts"]]
    print(f"  TRL first pair: prompt {trl_counts[0][0]}, chosen {trl_counts[0][1]}, rejected {trl_counts[0][2]} "
          f"tokens; all {len(counts)} pairs' counts equal ours: {trl_counts == counts}")
    assert trl_counts == counts, "TRL tokenizes the pairs differently from us"
    print("  TRL options: " + ", ".join(f"{k}={v}" for k, v in out["options"].items()))


def bench_shape(name: str, pairs: list[dict], work: Path, model: Path, n_body: int, floor: float | None,
                args) -> None:
    n_steps = args.warmup + args.steps
    data = work / f"{name}.jsonl"
    data.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    counts = our_counts(model, pairs)
    need = step_tokens_and_flops(counts, args.batch, n_body, model_shape(args))
    p, c, r = counts[0]
    print(f"\n{name}: {len(pairs)} pairs, batch {args.batch}, {n_steps} steps ({args.warmup} warm-up); "
          f"{need[0]:.0f} tokens per step (mean {need[0] / args.batch:.1f} per pair), {need[1] / 1e9:.1f} GFLOP "
          f"needed per step; first pair ours: prompt {p}, chosen {c}, rejected {r} tokens (EOS included)", flush=True)
    assert max(p + max(c, r) for p, c, r in counts) < MAX_LENGTH, "a pair would be truncated"
    rows = {"ours": [], "trl": []}
    for rnd in range(1, args.rounds + 1):
        for side in ("ours",) if args.ours_only else ("ours", "trl"):
            gflops = matmul_gflops(args.bf16, args.device)  # just before each run: it moves with the other jobs' load
            if side == "ours":
                times, memory = run_ours(work, model, data, args, n_steps)
            else:
                times, memory, out = run_trl(work, model, data, args, n_steps)
                if rnd == 1:
                    check_trl_counts(out, counts)
            rows[side].append(describe(side, rnd, times, memory, need, gflops, args.warmup, memory_name(args)))
    summarize(name, rows, floor, memory_name(args))


def summarize(name: str, rows: dict, floor: float | None, memory: str) -> None:
    ours, trl = rows["ours"], rows["trl"]
    med = lambda rs, k: statistics.median(x[k] for x in rs)  # noqa: E731
    above = lambda x: f" ({x - floor:.0f} above the state floor)" if floor is not None else ""  # noqa: E731
    print(f"  summary {name}: ours {med(ours, 'tps'):.0f} tokens/s, {memory} {med(ours, 'memory'):.0f} MiB"
          f"{above(med(ours, 'memory'))}, {med(ours, 'limit'):.1%} of the limit", end="")
    if not trl:
        print()
        return
    ratios = [o["tps"] / t["tps"] for o, t in zip(ours, trl)]
    memory_ratios = [o["memory"] / t["memory"] for o, t in zip(ours, trl)]
    print(f"; TRL {med(trl, 'tps'):.0f} tokens/s, {memory} {med(trl, 'memory'):.0f} MiB{above(med(trl, 'memory'))}, "
          f"{med(trl, 'limit'):.1%} of the limit\n  => ours / TRL tokens/s {statistics.median(ratios):.2f}x (per round "
          f"{', '.join(f'{x:.2f}' for x in ratios)}; range {min(ratios):.2f}-{max(ratios):.2f}x), "
          f"{memory} {statistics.median(memory_ratios):.2f}x (range {min(memory_ratios):.2f}-{max(memory_ratios):.2f}x)"
          + (f"; above the state floor {(med(ours, 'memory') - floor) / (med(trl, 'memory') - floor):.2f}x"
             if floor is not None else ""))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", default="both", choices=["imdb", "tldr", "both"])
    p.add_argument("--batch", type=int, default=8, help="pairs per optimizer step (both sides)")
    p.add_argument("--steps", type=int, default=5, help="timed steps per run (after the warm-up steps)")
    p.add_argument("--warmup", type=int, default=2, help="first steps of each run left out of the timings")
    p.add_argument("--rounds", type=int, default=3, help="ours/TRL alternations per shape")
    p.add_argument("--pairs", type=int, default=0, help="pairs per shape (0 = batch x (warmup + steps))")
    p.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data",
                   help="folder with aclImdb-mini/, tldr-mini/ and gpt2/ (vocab.json, merges.txt)")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder (configs, logs, model)")
    p.add_argument("--ours-only", action="store_true", help="skip TRL (a quick check of our side)")
    p.add_argument("--trl-thp", action="store_true",
                   help="run TRL with THP_MEM_ALLOC_ENABLE=1 (2 MiB pages for large CPU tensors)")
    p.add_argument("--ours", nargs="*", default=[], metavar="KEY=VALUE",
                   help="overrides for our side's config, e.g. train.activation_checkpointing=true")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"],
                   help="cuda: both sides on the GPU; memory is then each side's torch.cuda.max_memory_allocated")
    p.add_argument("--model-shape", default="small", choices=["small", "gpt2", "gpt2-medium", "gpt2-large"],
                   help="the random-init model's shape (benchmarks/bench_train.py's shapes, GPT-2's vocabulary)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast on both sides (train.mixed_precision=bf16, "
                   "TRL's bf16=True), fp32 weights; the limit is then the bf16 matmul's")
    p.add_argument("--trl-no-gradient-checkpointing", action="store_true",
                   help="TRL without its default gradient_checkpointing=True")
    p.add_argument("--trl-child", nargs=3, metavar=("MODEL", "PAIRS", "RESULT"), help=argparse.SUPPRESS)
    p.add_argument("--floor-child", metavar="MODEL", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.trl_child:
        return trl_child(args)
    if args.floor_child:
        return state_floor_child(args.floor_child)
    needed = [args.data / "aclImdb-mini" / "train", args.data / "tldr-mini" / "train.jsonl",
              args.data / "gpt2" / "merges.txt"]
    if missing := [str(x) for x in needed if not x.exists()]:
        sys.exit(f"bench_trl: data folder incomplete, missing {', '.join(missing)} (pass --data FOLDER)")
    n_pairs = args.pairs or args.batch * (args.warmup + args.steps)
    work = Path(tempfile.mkdtemp(prefix="bench_trl_"))
    try:
        model = work / "model"
        shape = model_shape(args)
        n_body = build_model(model, args.data / "gpt2", shape)
        print(f"model: GPT-2 shape {shape}, N_body {n_body / 1e6:.2f}M, fp32 weights, random init "
              f"(seed 0), in {model}; device {args.device}{', bf16 autocast' if args.bf16 else ''}")
        print("tokens per step = mean over the pairs of (2*prompt + chosen + rejected, EOS included) x batch; "
              "tokens/s = that / median step time")
        floor = None
        if args.device == "cpu":  # (a GPU's memory floor is not measured)
            floor = spawn([sys.executable, str(Path(__file__).resolve()), "--floor-child", str(model)],
                          work / "floor.log") / 1024
            print(f"state floor: {floor:.0f} MiB peak RSS for torch, the policy and the reference, the gradients, "
                  "RMSprop's state and its update, without a batch (the same for both sides)")
        builders = {"imdb": lambda: imdb_pairs(args.data / "aclImdb-mini", n_pairs),
                    "tldr": lambda: tldr_pairs(args.data / "tldr-mini" / "train.jsonl", n_pairs)}
        for name in ("imdb", "tldr") if args.shape == "both" else (args.shape,):
            bench_shape(name, builders[name](), work, model, n_body, floor, args)
    finally:
        if args.keep:
            print(f"kept {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
