"""Peak memory and time of the log-prob gatherers, forward + backward (a script that prints figures, not a test).

    python benchmarks/bench_logprobs.py                       # CPU: small sizes
    python benchmarks/bench_logprobs.py --device cuda --T 256 512 1024 2048 --dtype bfloat16

Two ways to get d(Σ response log-probs)/d(hidden, lm_head weight, bias) from final hidden states [B, T, C]:
    naive    the reference code: logits = lm_head(hidden); log_softmax(logits.float()); gather
    chunked  dpo.logprobs.chunked_token_logps(hidden, weight, bias, labels) then sequence_logps: logits
             of response rows only, as many rows at a time as fit --memory-mb (the softmax of the rows
             that fit kept for the backward, the other rows' logits recomputed chunk by chunk)

Every position after the first is a response token (the worst case for `chunked`, which skips prompt rows).

What "peak memory" means here:
- CUDA: torch.cuda.max_memory_allocated() during forward + backward, minus the memory allocated before it
  (inputs and parameters). Exact for tensors; excludes the caching allocator's slack and cuBLAS workspaces.
- CPU: each case runs in a fresh subprocess; peak = ru_maxrss after forward + backward minus the resident
  set size measured just before it (inputs already allocated and touched). This counts every page the
  computation touched at its high-water mark, including allocator and library buffers, so it is an upper
  bound on tensor memory; the allocator returning freed memory between steps can only lower it.
Times are wall-clock (CUDA: synchronised, median of --repeat runs after one warm-up; CPU: one run after a
warm-up at the smallest size, as the process is fresh).
"""
import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from dpo.logprobs import LOGITS_MEMORY_BUDGET, chunked_token_logps, response_mask, sequence_logps  # noqa: E402

PATHS = ("naive", "chunked")


def naive_logps(hidden, weight, bias, labels):
    logits = F.linear(hidden, weight, bias)
    shifted = labels[:, 1:].clone()
    mask = shifted != -100
    shifted[~mask] = 0
    per_token = torch.gather(logits[:, :-1].float().log_softmax(-1), 2, shifted.unsqueeze(2)).squeeze(2)
    return (per_token * mask).sum(-1)


def step(path, hidden, weight, bias, labels, memory_budget):
    if path == "naive":
        logps = naive_logps(hidden, weight, bias, labels)
    else:
        token_logps, _ = chunked_token_logps(hidden, weight, bias, labels, memory_budget=memory_budget)
        logps, _ = sequence_logps(token_logps, response_mask(labels))
    logps.sum().backward()


def make_inputs(B, T, C, V, dtype, device):
    g = torch.Generator(device="cpu").manual_seed(0)
    hidden = torch.randn(B, T, C, generator=g).to(device, dtype).requires_grad_()
    weight = (torch.randn(V, C, generator=g) * 0.02).to(device, dtype).requires_grad_()
    bias = torch.zeros(V, device=device, dtype=dtype).requires_grad_()
    labels = torch.randint(0, V, (B, T), generator=g).to(device)
    labels[:, 0] = -100
    return hidden, weight, bias, labels


def rss_bytes() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def run_cpu_case(path, B, T, C, V, dtype, memory_budget) -> dict:
    """Runs inside a fresh subprocess: see the module docstring."""
    small = make_inputs(2, 16, C, 64, dtype, "cpu")
    step(path, *small, memory_budget)  # warm up kernels and allocator on tiny sizes
    del small
    inputs = make_inputs(B, T, C, V, dtype, "cpu")
    before = rss_bytes()
    start = time.perf_counter()
    step(path, *inputs, memory_budget)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux
    return {"peak_bytes": max(0, peak - before), "seconds": seconds}


def run_cuda_case(path, B, T, C, V, dtype, memory_budget, repeat) -> dict:
    inputs = make_inputs(B, T, C, V, dtype, "cuda")
    times, peaks = [], []
    for i in range(repeat + 1):
        for x in inputs[:3]:
            x.grad = None
        torch.cuda.synchronize()
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        step(path, *inputs, memory_budget)
        torch.cuda.synchronize()
        if i:  # the first run is a warm-up
            times.append(time.perf_counter() - start)
            peaks.append(torch.cuda.max_memory_allocated() - base)
    return {"peak_bytes": max(peaks), "seconds": statistics.median(times)}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--vocab", type=int, nargs="+", default=[50257, 128256])
    parser.add_argument("--B", type=int, default=4)
    parser.add_argument("--T", type=int, nargs="+", default=None, help="default: 256 512 (CPU), 256..2048 (CUDA)")
    parser.add_argument("--C", type=int, default=768)
    parser.add_argument("--dtype", default=None, help="float32 | bfloat16 (default: float32 CPU, bfloat16 CUDA)")
    parser.add_argument("--memory-mb", type=int, default=LOGITS_MEMORY_BUDGET // 2**20,
                        help="the chunked path's budget for fp32 logits, MiB")
    parser.add_argument("--paths", nargs="+", default=list(PATHS), choices=PATHS)
    parser.add_argument("--repeat", type=int, default=3, help="timed runs per case on CUDA")
    parser.add_argument("--case", help=argparse.SUPPRESS)  # internal: one CPU case, in a subprocess
    args = parser.parse_args()

    if args.case:
        c = json.loads(args.case)
        print(json.dumps(run_cpu_case(c["path"], c["B"], c["T"], c["C"], c["V"], getattr(torch, c["dtype"]),
                                      c["memory_budget"])))
        return

    device = args.device
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype_name = args.dtype or ("bfloat16" if device == "cuda" else "float32")
    Ts = args.T or ([256, 512, 1024, 2048] if device == "cuda" else [256, 512])
    where = torch.cuda.get_device_name() if device == "cuda" else f"CPU ({os.cpu_count()} cores)"
    print(f"# {where}, torch {torch.__version__}, B={args.B}, C={args.C}, {dtype_name}, "
          f"logits budget {args.memory_mb} MiB; forward + backward w.r.t. hidden, weight, bias")
    print(f"{'vocab':>7} {'T':>5} {'path':>8} {'peak MiB':>10} {'time ms':>9} {'peak vs chunked':>16}")
    for V in args.vocab:
        for T in Ts:
            results = {}
            for path in args.paths:
                if device == "cuda":
                    try:
                        r = run_cuda_case(path, args.B, T, args.C, V, getattr(torch, dtype_name),
                                          args.memory_mb * 2**20, args.repeat)
                    except torch.cuda.OutOfMemoryError:
                        r = None
                    torch.cuda.empty_cache()
                else:
                    case = json.dumps({"path": path, "B": args.B, "T": T, "C": args.C, "V": V,
                                       "dtype": dtype_name, "memory_budget": args.memory_mb * 2**20})
                    out = subprocess.run([sys.executable, __file__, "--case", case], capture_output=True, text=True)
                    if out.returncode:
                        raise RuntimeError(f"case {case} failed:\n{out.stderr}")
                    r = json.loads(out.stdout.strip().splitlines()[-1])
                results[path] = r
            for path, r in results.items():
                if r is None:
                    print(f"{V:>7} {T:>5} {path:>8} {'OOM':>10}")
                    continue
                ratio = ""
                if results.get("chunked") and path != "chunked":
                    ratio = f"{r['peak_bytes'] / max(results['chunked']['peak_bytes'], 1):.1f}x"
                print(f"{V:>7} {T:>5} {path:>8} {r['peak_bytes'] / 2**20:>10.0f} {r['seconds'] * 1e3:>9.0f} "
                      f"{ratio:>16}", flush=True)


if __name__ == "__main__":
    main()
