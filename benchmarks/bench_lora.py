"""A DPO step with LoRA against full fine-tuning with a loaded reference: tokens/s and peak memory (a script
that prints figures, not a test).

    python benchmarks/bench_lora.py --model checkpoints/smollm2-135m-instruct [--steps 3] [--rounds 2]

Both modes run train.py's preference_step on the same random batch (pairs of `--prompt-len` prompt tokens and
`--response-len` response tokens): full = every weight trained, AdamW over all of them, the reference a second
copy loaded from the same folder; lora = rank-`--rank` adapters on every attention and MLP projection, AdamW
over the adapters only, the reference the same model with its adapters off. Each mode runs in a fresh
process (peak memory: ru_maxrss on CPU, torch.cuda.max_memory_allocated on CUDA), and the modes alternate
`--rounds` times, because on a shared machine only side-by-side ratios mean something.
"""
import argparse
import json
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import train  # noqa: E402
from dpo import lora  # noqa: E402
from dpo.config import Config  # noqa: E402
from dpo.interop.hf_checkpoint import load_pretrained  # noqa: E402


def batch(pairs: int, prompt_len: int, response_len: int, vocab: int, device) -> dict:
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(0, vocab, (2 * pairs, prompt_len + response_len), generator=g)
    ids[pairs:, :prompt_len] = ids[:pairs, :prompt_len]  # chosen and rejected share their prompt
    labels = ids.clone()
    labels[:, :prompt_len] = -100
    return {"input_ids": ids.to(device), "attention_mask": torch.ones_like(ids).to(device), "labels": labels.to(device),
            "indices": torch.arange(pairs).to(device)}


def one_mode(args) -> dict:
    device = torch.device(args.device)
    policy = load_pretrained(args.model, device=device).train()
    if args.mode == "lora":
        lora.add_lora(policy, args.rank, 2 * args.rank, 0.0, ["attn.qkv", "attn.proj", "mlp.fc", "mlp.proj"])
        reference = lora.WithoutAdapters(policy)
    else:
        reference = load_pretrained(args.model, device=device).eval().requires_grad_(False)
    config = Config()
    optimizer = torch.optim.AdamW([p for p in policy.parameters() if p.requires_grad], lr=1e-5)
    b = batch(args.pairs, args.prompt_len, args.response_len, policy.config.vocab_size, device)

    def step():
        losses, _ = train.preference_step(policy, reference, b, config)
        losses.mean().backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    step()  # warm-up (allocations, optimizer state)
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - start) / args.steps
    peak = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else \
        resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    trainable = sum(p.numel() for p in policy.parameters() if p.requires_grad)
    return {"mode": args.mode, "seconds": seconds, "tokens_per_second": b["input_ids"].numel() / seconds,
            "peak_gb": peak, "trainable": trainable}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--pairs", type=int, default=8)
    p.add_argument("--prompt-len", type=int, default=40)
    p.add_argument("--response-len", type=int, default=40)
    p.add_argument("--rank", type=int, default=8)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--mode", help=argparse.SUPPRESS)  # internal: one mode in this process
    args = p.parse_args()
    if args.mode:
        print(json.dumps(one_mode(args)))
        return 0
    results = {"full": [], "lora": []}
    for _ in range(args.rounds):
        for mode in ("full", "lora"):
            out = subprocess.run([sys.executable, __file__, *sys.argv[1:], "--mode", mode], capture_output=True,
                                 text=True, check=True)
            results[mode].append(json.loads(out.stdout.strip().splitlines()[-1]))
    print(f"DPO step on {args.model} ({args.device}), {args.pairs} pairs x {args.prompt_len}+{args.response_len} "
          f"tokens, {args.steps} steps x {args.rounds} alternating rounds (medians)")
    med = {m: {k: statistics.median(r[k] for r in rs) for k in ("tokens_per_second", "peak_gb")}
           for m, rs in results.items()}
    for mode, rs in results.items():
        print(f"  {mode:5s} trainable {rs[0]['trainable']:>11,d}  {med[mode]['tokens_per_second']:8.1f} tokens/s  "
              f"peak {med[mode]['peak_gb']:.2f} GiB")
    print(f"  lora / full: {med['lora']['tokens_per_second'] / med['full']['tokens_per_second']:.2f}x tokens/s, "
          f"{med['lora']['peak_gb'] / med['full']['peak_gb']:.2f}x peak memory")
    return 0


if __name__ == "__main__":
    sys.exit(main())
