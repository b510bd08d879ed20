"""Reference log-probs computed once, before training, and cached on disk (train.reference_cache=true).

The reference model is frozen, so log π_ref(y|x) of every training pair is a constant: computing it once
lets a run (and every re-run on the same data) keep only the policy in memory and skip the reference
forward pass at every step. The numbers come from the same function as the live reference's in
train.preference_step (dpo.logprobs.batch_sequence_logps), so a cached run equals an uncached one.

A file is keyed by a sha256 of everything the numbers depend on: the examples' token ids and labels, the
settings that shape them (the data config, LD-DPO's α) and the reference checkpoint's identity (its path
and the names, sizes and modification times of its weight and config files). Any change gives another
key, hence another file; a file whose stored key does not match is recomputed. Files live under
$DPO_CACHE_DIR/reference_logps (default ~/.cache/dpo) and are written atomically.
"""
import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from dpo.batching import eval_micro_batches
from dpo.files import atomic_path
from dpo.logprobs import batch_sequence_logps

CACHE_VERSION = 2  # bump when the stored layout or the meaning of the numbers changes


@dataclass(frozen=True)
class ReferenceLogps:
    """log π_ref of every example (pair) by its index: chosen_logps, rejected_logps [N] fp32 on the CPU."""
    chosen_logps: torch.Tensor
    rejected_logps: torch.Tensor

    def lookup(self, index: torch.Tensor) -> torch.Tensor:
        """index: [B] example indices -> [2B] (chosen rows, then rejected rows: a preference batch's layout)."""
        cpu_index = index.detach().cpu().long()
        return torch.cat([self.chosen_logps[cpu_index], self.rejected_logps[cpu_index]]).to(index.device)


def cache_key(examples: list[dict], settings: dict, reference_dir: Path) -> str:
    """sha256 hex of (token ids and labels of every pair, settings, the reference checkpoint's identity)."""
    files = sorted(p for p in Path(reference_dir).iterdir() if p.suffix in (".safetensors", ".bin", ".json"))
    identity = [str(Path(reference_dir).resolve())] + [[p.name, p.stat().st_size, p.stat().st_mtime_ns]
                                                        for p in files]
    h = hashlib.sha256(json.dumps({"version": CACHE_VERSION, "settings": settings, "reference": identity},
                                  sort_keys=True, default=str).encode())
    for example in examples:
        for key in ("chosen_input_ids", "chosen_labels", "rejected_input_ids", "rejected_labels"):
            row = np.asarray(example[key], dtype=np.int64)
            h.update(len(row).to_bytes(8, "little") + row.tobytes())  # the length keeps rows apart
    return h.hexdigest()


def cache_path(key: str) -> Path:
    root = Path(os.environ.get("DPO_CACHE_DIR", "~/.cache/dpo")).expanduser() / "reference_logps"
    return root / f"reference_logps-{key[:32]}.pt"


def save(table: ReferenceLogps, key: str) -> Path:
    path = cache_path(key)
    with atomic_path(path) as tmp:
        torch.save({"key": key, "chosen_logps": table.chosen_logps, "rejected_logps": table.rejected_logps}, tmp)
    print(f"reference log-probs of {len(table.chosen_logps)} pairs cached in {path}", flush=True)
    return path


def load(key: str) -> ReferenceLogps | None:
    """The cached values stored under exactly `key`, else None (absent, stale or unreadable: recompute)."""
    path = cache_path(key)
    if not path.is_file():
        return None
    try:
        stored = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file: recompute rather than fail the run
        print(f"reference cache {path}: unreadable ({type(e).__name__}); recomputing", file=sys.stderr)
        return None
    if not isinstance(stored, dict) or stored.get("key") != key:
        print(f"reference cache {path}: key mismatch; recomputing", file=sys.stderr)
        return None
    return ReferenceLogps(stored["chosen_logps"], stored["rejected_logps"])


@torch.no_grad()
def compute(reference, examples: list[dict], collate, micro_batch_size: int, ctx, ld_alpha: float = 1.0
            ) -> ReferenceLogps:
    """log π_ref of every pair of `examples`: each rank computes its share (eval_micro_batches), the shares
    are summed across ranks (every example is computed by exactly one rank). Every rank calls it."""
    table = torch.zeros(2, len(examples), dtype=torch.float64, device=ctx.device)  # chosen, rejected
    for indices, is_real in eval_micro_batches(len(examples), micro_batch_size, ctx.world_size, ctx.rank):
        batch = collate([examples[i] for i in indices])
        logps, _ = batch_sequence_logps(reference, batch, ld_alpha)
        real = torch.tensor(is_real, device=ctx.device)
        table[:, batch["indices"][real]] = torch.stack(logps.chunk(2)).double()[:, real]
    if torch.distributed.is_initialized():
        torch.distributed.all_reduce(table)
    table = table.float().cpu()
    return ReferenceLogps(table[0], table[1])
