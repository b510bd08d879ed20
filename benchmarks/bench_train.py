"""DPO training-step throughput: tokens/s, peak memory and (on GPUs) MFU, for a model shape.

    python benchmarks/bench_train.py --shape gpt2 --batch 8 --seq-len 512 --steps 5          # CPU
    python benchmarks/bench_train.py --shape gpt2-large --batch 64 --micro 8 --seq-len 512 --bf16  # GPU

One step = the loop of train.py on a global batch of `batch` pairs: policy forward+backward on chosen and
rejected (2·batch sequences of seq-len tokens, the response being the last 1 − prompt-frac; with
--share-prompt all pairs in one row, each prompt computed once, no padding), a reference forward
without gradients, the DPO loss, clip, optimizer step. Random weights and random tokens: throughput does
not depend on their values. The first step (warm-up, allocations) is excluded from the timings.

MFU = the FLOPs a step needs per second / peak bf16 FLOPs of the GPU. Needed: per pair, the prompt once and
each response once (P + 2R tokens, whatever the layout computes), 2·N_body + 4·L·H·D·T per token (PaLM /
nanoGPT; N_body: the blocks' parameters) and the vocabulary head 2·V·C on the 2R response tokens only; 3× that
for the policy (forward + backward), 1× for the reference (forward). tokens/s counts the tokens of both
sequences of each pair (the prompt twice, as peers count it), whatever the layout.
"""
import argparse
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import train  # noqa: E402
from dpo.config import Config  # noqa: E402
from dpo.model import GPT, GPTConfig  # noqa: E402
from dpo.run_log import PEAK_FLOPS  # noqa: E402

SHAPES = {  # GPT-2 family shapes (vocab 50257, learned positions)
    "tiny": dict(n_layer=2, n_head=4, n_embd=128),
    "small": dict(n_layer=6, n_head=6, n_embd=384),  # the shape of benchmarks/bench_trl.py
    "gpt2": dict(n_layer=12, n_head=12, n_embd=768),
    "gpt2-medium": dict(n_layer=24, n_head=16, n_embd=1024),
    "gpt2-large": dict(n_layer=36, n_head=20, n_embd=1280),
    "gpt2-xl": dict(n_layer=48, n_head=25, n_embd=1600),
}


def random_batch(pairs: int, seq_len: int, vocab: int, device, prompt_frac: float = 0.25, share: bool = False) -> dict:
    """`pairs` pairs of random tokens: a prompt of prompt_frac·seq_len tokens shared by a chosen and a rejected
    response making up the rest; laid out as two rows per pair, or with the prompt shared (collate_shared)."""
    from dpo import batching
    g, n_prompt = torch.Generator().manual_seed(0), int(seq_len * prompt_frac)
    examples = []
    for i in range(pairs):
        prompt, chosen, rejected = (torch.randint(0, vocab, (n,), generator=g).tolist()
                                    for n in (n_prompt, seq_len - n_prompt, seq_len - n_prompt))
        examples.append({"prompt_input_ids": prompt, "chosen_input_ids": prompt + chosen, "index": i,
                         "chosen_labels": [-100] * n_prompt + chosen, "rejected_input_ids": prompt + rejected,
                         "rejected_labels": [-100] * n_prompt + rejected})
    batch = (batching.collate_shared if share else batching.collate_preference)(examples, 0)
    return {k: v.to(device) for k, v in batch.items()}


def needed_flops(model, n_prompt: int, n_response: int, seq_len: int) -> float:
    """Forward FLOPs one pair needs: the body on its prompt once and both responses, the head on the responses."""
    head = model.lm_head.weight.numel()
    body = model.num_params() - head
    cfg = model.config
    attention = 4 * cfg.n_layer * cfg.n_head * cfg.head_dim * seq_len
    return (2 * body + attention) * (n_prompt + 2 * n_response) + 2 * head * 2 * n_response


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--shape", default="gpt2", choices=list(SHAPES))
    p.add_argument("--batch", type=int, default=8, help="pairs per optimizer step")
    p.add_argument("--micro", type=int, default=0, help="pairs per forward (0 = batch)")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--steps", type=int, default=4, help="timed steps (after one warm-up step)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast (GPU)")
    p.add_argument("--activation-checkpointing", action="store_true")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--prompt-frac", type=float, default=0.25, help="share of each sequence that is prompt")
    p.add_argument("--share-prompt", action="store_true", help="[prompt | chosen | rejected] blocks in one row")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    args = p.parse_args()
    device = torch.device(args.device)
    micro = args.micro or args.batch
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=50257, max_seq_len=max(1024, args.seq_len), **SHAPES[args.shape])
    policy = GPT(cfg).to(device)
    reference = GPT(cfg).to(device).eval().requires_grad_(False)
    reference.load_state_dict(policy.state_dict())
    policy.activation_checkpointing = args.activation_checkpointing
    if args.compile:
        for block in policy.blocks:
            block.compile()
    config = Config()
    config.train.mixed_precision = "bf16" if args.bf16 else "none"
    config.train.device = device.type
    ctx = train.distributed.Dist(0, 1, 0, device)
    optimizer = torch.optim.RMSprop(policy.parameters(), lr=1e-6)
    batches = [random_batch(micro, args.seq_len, cfg.vocab_size, device, args.prompt_frac, args.share_prompt)
               for _ in range(args.batch // micro)]

    def step():
        for batch in batches:
            with train.autocast(config, ctx):
                losses, _ = train.preference_step(policy, reference, batch, config)
                (losses.sum() / args.batch).backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 10.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def sync():
        if device.type == "cuda":
            torch.cuda.synchronize()

    step()
    sync()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    for _ in range(args.steps):
        step()
    sync()
    seconds = (time.perf_counter() - start) / args.steps
    tokens = 2 * args.batch * args.seq_len
    n_prompt = int(args.seq_len * args.prompt_frac)
    flops = 4 * args.batch * needed_flops(policy, n_prompt, args.seq_len - n_prompt, args.seq_len)
    if device.type == "cuda":
        peak_gb = torch.cuda.max_memory_allocated() / 2**30
        name = torch.cuda.get_device_name()
        peak_flops = next((v for k, v in PEAK_FLOPS.items() if k in name), None)
    else:
        peak_gb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        name, peak_flops = "cpu", None
    print(f"{args.shape} ({policy.num_params() / 1e6:.0f}M non-embedding params) on {name}, "
          f"{'bf16' if args.bf16 else 'fp32'}, {args.batch} pairs x {args.seq_len} tokens "
          f"(micro-batch {micro}{', act. ckpt' if args.activation_checkpointing else ''}"
          f"{', compiled' if args.compile else ''})")
    print(f"  step {seconds * 1000:.0f} ms | {tokens / seconds:,.0f} tokens/s | "
          f"peak memory {peak_gb:.2f} GiB{' (process RSS)' if device.type == 'cpu' else ''}"
          + (f" | MFU {flops / seconds / peak_flops:.1%}" if peak_flops else ""))


if __name__ == "__main__":
    main()
