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


def throughput_metrics(policy, reference, last_batch: dict, n_micro_batches: int, tokens: torch.Tensor,
                       batch_size: int, elapsed: float, ctx, max_length: int) -> dict:
    """examples_per_second, tokens_per_second (non-pad tokens, all ranks), peak_memory_gb, and on known GPUs
    mfu: model FLOPs (policy forward + backward, reference forward) over all padded positions processed,
    per GPU, over the GPU's bf16 dense peak."""
    tokens_total = all_reduce_mean({"tokens": tokens})["tokens"] * ctx.world_size
    out = {"examples_per_second": batch_size / elapsed, "tokens_per_second": tokens_total / elapsed,
           "peak_memory_gb": peak_memory_gb(ctx.device)}
    if ctx.device.type == "cuda":
        name = torch.cuda.get_device_name(ctx.device)
        peak = next((v for k, v in PEAK_FLOPS.items() if k in name), None)
        if peak:
            flops = unwrap(policy).flops_per_token(max_length) + (
                unwrap(reference).flops_per_token(max_length, backward=False) if isinstance(reference, torch.nn.Module) else 0)
            out["mfu"] = flops * last_batch["input_ids"].numel() * n_micro_batches / elapsed / peak
    return out


def progress_bar(total: int, initial: int, enabled: bool, desc: str = "train", **kwargs):
    """A tqdm progress bar on stderr (train.py's, PPO's, sample.py's): drawn only when `enabled` (the caller's
    rank 0) and DPO_NO_PROGRESS is not 1. kwargs go to tqdm (e.g. unit)."""
    from tqdm import tqdm
    return tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True,
                disable=not enabled or os.environ.get("DPO_NO_PROGRESS") == "1", **kwargs)
