"""Sampling speed of a GPT-2-small-shaped model (random init: 12 layers, 768 wide, 12 heads, vocab 50,257):
dpo.generation.generate (the loop sample.py, train.py and the experiments use: KV cache) against no cache
(the whole sequence recomputed for every new token). A script that prints figures, not a test.

    python benchmarks/bench_sampling.py                                    # CPU, small: ~30 s on 2 cores
    python benchmarks/bench_sampling.py --device cuda --batch-size 32 --prompt-len 128 --new-tokens 128 --dtype bfloat16

Both paths draw each token from the same per-row uniforms (dpo.generation.sample_token, T = 1), so they
should produce the same tokens; the script reports whether they did (float rounding differs between a
cached and a recomputed forward, so a rare early divergence on a near-tie is possible, not a bug).
tokens/s counts generated tokens (batch × new tokens) over wall-clock time, prefill included; no EOS
stops a row early (the model has no end id and the stand-in tokenizer no EOS). The cached path's time includes
generate's own work around the loop (padding the prompts into a batch, the completions back to lists).
CPU: one run after a warm-up; CUDA: synchronised, median of --repeat runs after a warm-up.
"""
import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

import sample  # noqa: E402
from dpo.generation import attention_backends, generate, sample_token  # noqa: E402
from dpo.model import GPT, GPTConfig  # noqa: E402


class NoEosTokenizer:
    """What generate asks of a tokenizer, for random token ids: no EOS (no row stops early), pad id 0
    (the prompts all have the same length: nothing is padded)."""
    eos_id = None

    def pad_id_or_eos(self) -> int:
        return 0


@torch.no_grad()
def generate_without_cache(model, input_ids, max_new_tokens, uniforms):
    """The naive loop (nanoGPT's generate): run the full, growing sequence through the blocks for every
    token; the output projection only at the last position, as nanoGPT does at inference."""
    seq = input_ids
    for step in range(max_new_tokens):
        with attention_backends(seq.device):  # the same attention kernels as the cached path
            logits = model.lm_head(model(seq, return_hidden=True)[:, -1])
        token = sample_token(logits, 1.0, uniforms=uniforms[:, step])
        seq = torch.cat([seq, token[:, None]], dim=1)
    return seq[:, input_ids.shape[1]:]


def with_cache(model, input_ids, max_new_tokens, uniforms):
    return generate(model, NoEosTokenizer(), input_ids.tolist(), max_new_tokens=max_new_tokens, temperature=1.0,
                    uniforms=uniforms)


def timed(fn, device, repeat):
    def once():
        if device.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - start, out
    times, out = [], None
    for _ in range(repeat):
        t, out = once()
        times.append(t)
    return statistics.median(times), out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cpu")
    p.add_argument("--dtype", default="float32", choices=("float32", "bfloat16", "float16"))
    p.add_argument("--batch-size", type=int, default=4)
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--repeat", type=int, default=None, help="timed runs (median); default 1 on CPU, 5 on CUDA")
    p.add_argument("--threads", type=int, default=1,
                   help="CPU threads (default 1: on a shared 2-core machine 2 threads ran 4-6x slower; "
                        "0 = torch's choice)")
    p.add_argument("--skip-no-cache", action="store_true")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    repeat = args.repeat or (5 if device.type == "cuda" else 1)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50257, n_layer=12, n_head=12, n_embd=768, max_seq_len=1024))
    model = model.to(device=device, dtype=getattr(torch, args.dtype)).eval()
    B, T, n = args.batch_size, args.prompt_len, args.new_tokens
    input_ids = torch.randint(0, 50257, (B, T), device=device)
    uniforms = sample.row_uniforms(list(range(B)), n).to(device)
    import os
    name = (torch.cuda.get_device_name(device) if device.type == "cuda" else
            f"CPU, {torch.get_num_threads()} threads, load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"GPT-2 small shape ({model.num_params() / 1e6:.0f}M params), {args.dtype}, {name}; batch {B}, "
          f"prompt {T} tokens, {n} new tokens; torch {torch.__version__}")
    # warm-up (kernels, allocator) on a short run
    with_cache(model, input_ids, 2, uniforms)
    generate_without_cache(model, input_ids, 2, uniforms)
    results = {}
    t, cached = timed(lambda: with_cache(model, input_ids, n, uniforms), device, repeat)
    results["KV cache"] = t
    if not args.skip_no_cache:
        t, naive = timed(lambda: generate_without_cache(model, input_ids, n, uniforms), device, repeat)
        results["no cache"] = t
    for label, seconds in results.items():
        print(f"  {label:9s} {B * n / seconds:9.1f} tokens/s   ({seconds:.2f} s)")
    if "no cache" in results:
        same = cached == naive.tolist()
        print(f"  speed-up {results['no cache'] / results['KV cache']:.1f}x; identical tokens: {same}")


if __name__ == "__main__":
    main()
