"""Where a run's numbers go: metrics.jsonl (and samples.jsonl) in the run directory, always, and wandb
(online, offline or off). Only rank 0 logs. Also the throughput figures logged with each step.

wandb mode "auto" is online when an API key is configured (WANDB_API_KEY or a `wandb login`), else
offline (the run can be uploaded later with `wandb sync`). As in the authors' reference code, the wandb
step is the number of training examples seen, so runs with different batch sizes line up.
"""
import json
import os
import resource
from pathlib import Path

import torch

from dpo.batching import IGNORE_INDEX
from dpo.distributed import all_reduce_mean, unwrap
from dpo.files import atomic_write

PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12}  # bf16 dense


def _wandb_mode(mode: str) -> str:
    if mode != "auto":
        return mode
    if os.environ.get("WANDB_MODE"):
        return os.environ["WANDB_MODE"]
    netrc = Path.home() / ".netrc"
    has_key = bool(os.environ.get("WANDB_API_KEY")) or (netrc.is_file() and "api.wandb.ai" in netrc.read_text())
    return "online" if has_key else "offline"


class RunLog:
    """Appends one JSON object per call to out_dir/metrics.jsonl and mirrors it to wandb."""

    def __init__(self, out_dir, config_dict: dict, wandb_config, enabled: bool, resume: bool):
        self.enabled = enabled
        self.path = Path(out_dir) / "metrics.jsonl"
        self.wandb = None
        if not enabled:
            return
        if not resume and self.path.exists():
            self.path.unlink()
        mode = _wandb_mode(wandb_config.mode)
        if mode != "disabled":
            import wandb
            self.wandb = wandb.init(project=wandb_config.project, name=wandb_config.name or Path(out_dir).name,
                                    config=config_dict, dir=str(out_dir), mode=mode,
                                    resume="allow" if resume else None)

    def log(self, metrics: dict, examples: int) -> None:
        if not self.enabled:
            return
        record = {"counters/examples": examples, **metrics}
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
        if self.wandb is not None:
            self.wandb.log(metrics, step=examples)

    def append_rows(self, name: str, rows: list[dict], examples: int) -> None:
        """Append rows to out_dir/{name}.jsonl and log them to wandb as a table."""
        if not self.enabled:
            return
        with open(self.path.with_name(f"{name}.jsonl"), "a") as f:
            f.write("".join(json.dumps(row) + "\n" for row in rows))
        if self.wandb is not None:
            import wandb
            columns = list(rows[0])
            self.wandb.log({name: wandb.Table(columns=columns, data=[[r.get(c) for c in columns] for r in rows])},
                           step=examples)

    def line_counts(self) -> dict:
        """{file name: lines} of metrics.jsonl and samples.jsonl now (saved with each checkpoint)."""
        files = [self.path, self.path.with_name("samples.jsonl")]
        return {p.name: p.read_bytes().count(b"\n") if p.is_file() else 0 for p in files} if self.enabled else {}

    def truncate(self, line_counts: dict | None) -> None:
        """On resume: keep the first lines of each file that `line_counts` gives (what was logged when the
        checkpoint was saved), so the files end up equal to an uninterrupted run's. None: leave them."""
        for name, n in (line_counts or {}).items() if self.enabled else ():
            path = self.path.with_name(name)
            if path.is_file():
                atomic_write(path, b"".join(path.read_bytes().splitlines(keepends=True)[:n]))

    def finish(self) -> None:
        if self.wandb is not None:
            self.wandb.finish()


def peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


def batch_flops(model, batch: dict, backward: bool) -> torch.Tensor:
    """Matmul FLOPs of one forward of `batch` (3x that with backward), counted as PaLM and nanoGPT count them,
    but not on padding nor for logits that are never formed: on each non-pad token 2·N for the blocks' N
    weights and 4·L·H·D·T for attention over the T keys of its row (a packed block's length; causal halving
    ignored); and 2·V·C for the vocabulary head on each position whose log-prob is read (the response tokens'
    of a batch with [B, T] labels; a reward model's batches have none: it reads a scalar head). A 0-dim tensor
    on the batch's device: summing it over micro-batches makes the GPU wait for nothing."""
    model = unwrap(getattr(model, "model", model))  # (a LoRA reference: the policy with its adapters off)
    gpt = getattr(model, "backbone", model)
    cfg, head = gpt.config, gpt.lm_head.weight.numel()
    tokens, labels = batch["attention_mask"].sum(), batch.get("labels")
    if "segments" in batch:  # one packed row (batching.collate_shared)
        keys, scored = (batch["segments"].diff() ** 2).sum(), batch["gather_rows"].numel()
    else:
        keys = tokens * batch["attention_mask"].shape[1]
        scored = (labels[:, 1:] != IGNORE_INDEX).sum() if labels is not None and labels.dim() == 2 else 0
    forward = 2 * (gpt.num_params() - head) * tokens + 4 * cfg.n_layer * cfg.n_head * cfg.head_dim * keys \
        + 2 * head * scored
    return 3 * forward if backward else forward


def step_flops(policy, reference, batch: dict) -> torch.Tensor:
    """batch_flops of a training step: the policy's forward and backward, and the reference's forward when it is
    a model (not cached log-probs or none)."""
    return batch_flops(policy, batch, True) + (batch_flops(reference, batch, False) if callable(reference) else 0)


def throughput_metrics(flops: torch.Tensor, tokens: torch.Tensor, batch_size: int, elapsed: float, ctx) -> dict:
    """examples_per_second, tokens_per_second (non-pad tokens, all ranks), peak_memory_gb, tflops_per_second
    (step_flops of this step's micro-batches per second, per device), and on known GPUs mfu: that over the
    GPU's bf16 dense peak."""
    sums = all_reduce_mean({"tokens": tokens, "flops": flops})
    flops_per_second = sums["flops"] / elapsed
    out = {"examples_per_second": batch_size / elapsed, "tokens_per_second": sums["tokens"] * ctx.world_size / elapsed,
           "peak_memory_gb": peak_memory_gb(ctx.device), "tflops_per_second": flops_per_second / 1e12}
    if ctx.device.type == "cuda":
        name = torch.cuda.get_device_name(ctx.device)
        peak = next((v for k, v in PEAK_FLOPS.items() if k in name), None)
        if peak:
            out["mfu"] = flops_per_second / peak
    return out


def progress_bar(total: int, initial: int, enabled: bool, desc: str = "train", **kwargs):
    """A tqdm progress bar on stderr (train.py's, PPO's, sample.py's): drawn only when `enabled` (the caller's
    rank 0) and DPO_NO_PROGRESS is not 1. kwargs go to tqdm (e.g. unit)."""
    from tqdm import tqdm
    return tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True,
                disable=not enabled or os.environ.get("DPO_NO_PROGRESS") == "1", **kwargs)
