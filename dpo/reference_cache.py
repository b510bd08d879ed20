"""Reference log-probs computed once, before training, and cached on disk.

The reference model is frozen, so log π_ref(y|x) of every training pair is a constant: computing it once
lets a run (and every re-run on the same data) keep only the policy in memory and skip the reference
forward pass at every step.

The cache file is keyed by a sha256 of everything the numbers depend on:
    - the data's token ids (`data`: the tokenized examples, or the batches themselves),
    - the tokenization settings (max_length, truncation mode, ...; a plain dict),
    - the reference weights (`weights_sha256(model)`) or another identity of the checkpoint,
    - the gatherer's settings (e.g. average / ld_alpha) when they change the numbers.
Any change gives another key, hence another file, and the values are recomputed; a file whose stored
key does not match is recomputed too. Files are written atomically (temp file, then os.replace).

Distributed runs: compute on one rank (or shard `batches` per rank and gather the results) and
broadcast/barrier before training; this module is rank-agnostic.
"""
import hashlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from dpo.logprobs import chunked_sequence_logps, sequence_logps, split_chosen_rejected

CACHE_VERSION = 1  # bump when the stored layout or the meaning of the numbers changes


@dataclass(frozen=True)
class ReferenceLogps:
    """Reference log-probs per example (pair) index: all [N] tensors, fp32 / long."""
    chosen_logps: torch.Tensor
    rejected_logps: torch.Tensor
    chosen_lengths: torch.Tensor
    rejected_lengths: torch.Tensor

    def lookup(self, index: torch.Tensor):
        """index: [B] example indices -> (reference_chosen_logps [B], reference_rejected_logps [B])."""
        cpu_index = index.detach().cpu().long()
        n = self.chosen_logps.shape[0]
        if cpu_index.numel() and (cpu_index.min() < 0 or cpu_index.max() >= n):
            raise IndexError(f"example index out of range for a reference cache of {n} examples")
        return (self.chosen_logps[cpu_index].to(index.device), self.rejected_logps[cpu_index].to(index.device))


def _update_hash(h, obj) -> None:
    """Feed a nested structure of ints / floats / str / lists / dicts / tensors / arrays to a hash,
    with type tags and lengths so that different structures never hash alike."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    elif isinstance(obj, np.ndarray):
        h.update(f"A{obj.dtype}{obj.shape}".encode())
        h.update(np.ascontiguousarray(obj).tobytes())
    elif isinstance(obj, dict):
        h.update(f"D{len(obj)}".encode())
        for key in sorted(obj, key=str):
            _update_hash(h, str(key))
            _update_hash(h, obj[key])
    elif isinstance(obj, (list, tuple)):
        if obj and all(type(x) is int for x in obj):  # a token id list: hash as int64 bytes, fast
            h.update(f"I{len(obj)}".encode())
            h.update(np.asarray(obj, dtype=np.int64).tobytes())
        else:
            h.update(f"L{len(obj)}".encode())
            for x in obj:
                _update_hash(h, x)
    elif isinstance(obj, (str, int, float, bool)) or obj is None:
        h.update(f"S{type(obj).__name__}:{json.dumps(obj)}".encode())
    elif hasattr(obj, "__iter__"):
        _update_hash(h, list(obj))
    else:
        raise TypeError(f"cannot hash a {type(obj).__name__} for the reference cache key")


def weights_sha256(model_or_state_dict) -> str:
    """sha256 over (name, dtype, shape, bytes) of every tensor of a module's state_dict, in name order."""
    state = model_or_state_dict.state_dict() if hasattr(model_or_state_dict, "state_dict") else model_or_state_dict
    h = hashlib.sha256()
    for name in sorted(state):
        _update_hash(h, name)
        _update_hash(h, state[name])
    return h.hexdigest()


def reference_cache_key(data, tokenization: dict, reference_id: str, gatherer_settings: dict | None = None) -> str:
    """sha256 hex of (data token ids, tokenization settings, reference identity, gatherer settings).

    data: the tokenized examples in order (e.g. [(prompt_ids, chosen_ids, rejected_ids), ...]) or the list of
    batches; any nesting of lists, tuples, dicts, tensors and ints. reference_id: `weights_sha256(model)` or
    a checkpoint identity string that changes whenever the weights do."""
    h = hashlib.sha256()
    _update_hash(h, {"version": CACHE_VERSION, "tokenization": tokenization, "reference": reference_id,
                     "gatherer": gatherer_settings or {}})
    _update_hash(h, data)
    return h.hexdigest()


def logits_gatherer(model, batch: dict):
    """(logps [2B], n_tokens [2B]) from a model returning logits [2B, T, V]."""
    logits = model(batch["input_ids"], attention_mask=batch.get("attention_mask"))
    return sequence_logps(logits, batch["labels"])


def hidden_gatherer(model, batch: dict):
    """(logps [2B], n_tokens [2B]) from final hidden states, never materialising [2B, T, V] logits."""
    hidden = model(batch["input_ids"], attention_mask=batch.get("attention_mask"), return_hidden=True)
    return chunked_sequence_logps(hidden, model.lm_head.weight, model.lm_head.bias, batch["labels"])


def _model_device(model) -> torch.device:
    try:
        return next(model.parameters()).device
    except (StopIteration, AttributeError):
        return torch.device("cpu")


@torch.no_grad()
def compute_reference_logps(model, batches, gatherer=logits_gatherer, *, num_examples: int | None = None,
                            progress: bool = True) -> ReferenceLogps:
    """Run the reference model once over `batches` and collect its per-example log-probs.

    batches: iterable of dicts with input_ids [2B, T], attention_mask [2B, T], labels [2B, T] (chosen rows
    first, rejected rows after) and, preferably, `indices` [B]: the example index of each pair. Without
    `indices`, pairs are numbered 0, 1, 2, ... in iteration order (so the order must then be fixed).
    gatherer(model, batch) -> (logps [2B], n_tokens [2B]). The model is put in eval mode (no dropout)
    for the pass and restored after. Every index in [0, N) must appear exactly once (N = num_examples,
    else max index + 1)."""
    device = _model_device(model)
    was_training = getattr(model, "training", False)
    if hasattr(model, "eval"):
        model.eval()
    indices, chosen, rejected, chosen_n, rejected_n = [], [], [], [], []
    position = 0
    try:
        for batch in tqdm(batches, desc="reference log-probs", disable=not progress):
            on_device = {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
            logps, n_tokens = gatherer(model, on_device)
            c, r = split_chosen_rejected(logps.float().cpu())
            cn, rn = split_chosen_rejected(n_tokens.long().cpu())
            if "indices" in batch:
                index = torch.as_tensor(batch["indices"]).long().cpu().reshape(-1)
                if index.shape[0] != c.shape[0]:
                    raise ValueError(f"batch index has {index.shape[0]} entries for {c.shape[0]} pairs")
            else:
                index = torch.arange(position, position + c.shape[0])
            position += c.shape[0]
            indices.append(index)
            chosen.append(c)
            rejected.append(r)
            chosen_n.append(cn)
            rejected_n.append(rn)
    finally:
        if was_training:
            model.train()
    index = torch.cat(indices) if indices else torch.zeros(0, dtype=torch.long)
    n = num_examples if num_examples is not None else (int(index.max()) + 1 if index.numel() else 0)
    if index.numel() and (index.min() < 0 or index.max() >= n):
        raise ValueError(f"example index out of range [0, {n})")
    counts = torch.bincount(index, minlength=n)
    if (counts > 1).any():
        raise ValueError(f"{int((counts > 1).sum())} example indices appear more than once in the batches")
    if (counts == 0).any():
        raise ValueError(f"{int((counts == 0).sum())} of {n} examples are missing from the batches")

    def scatter(parts, dtype):
        out = torch.zeros(n, dtype=dtype)
        if parts:
            out[index] = torch.cat(parts).to(dtype)
        return out

    return ReferenceLogps(scatter(chosen, torch.float32), scatter(rejected, torch.float32),
                          scatter(chosen_n, torch.long), scatter(rejected_n, torch.long))


def default_cache_dir() -> Path:
    return Path(os.environ.get("DPO_CACHE_DIR", "~/.cache/dpo")).expanduser() / "reference_logps"


def cache_path(key: str, cache_dir=None) -> Path:
    return Path(cache_dir or default_cache_dir()) / f"reference_logps-{key[:32]}.pt"


def save_reference_logps(ref: ReferenceLogps, key: str, path) -> None:
    """Write atomically: a temp file in the same folder, then os.replace."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    torch.save({"key": key, "version": CACHE_VERSION, "chosen_logps": ref.chosen_logps,
                "rejected_logps": ref.rejected_logps, "chosen_lengths": ref.chosen_lengths,
                "rejected_lengths": ref.rejected_lengths}, tmp)
    os.replace(tmp, path)


def load_reference_logps(key: str, path) -> ReferenceLogps | None:
    """The cached values if `path` holds them under exactly `key`, else None (absent, stale or unreadable)."""
    path = Path(path)
    if not path.is_file():
        return None
    try:
        stored = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file: recompute rather than fail the run
        print(f"reference cache {path}: unreadable ({type(e).__name__}); recomputing", file=sys.stderr)
        return None
    if not isinstance(stored, dict) or stored.get("key") != key or stored.get("version") != CACHE_VERSION:
        print(f"reference cache {path}: key mismatch; recomputing", file=sys.stderr)
        return None
    return ReferenceLogps(stored["chosen_logps"], stored["rejected_logps"], stored["chosen_lengths"],
                          stored["rejected_lengths"])


def load_or_compute_reference_logps(model, batches, *, key: str, cache_dir=None, gatherer=logits_gatherer,
                                    num_examples: int | None = None, progress: bool = True):
    """Return (ReferenceLogps, hit: bool): from the cache file for `key`, or computed and written there.

    key: `reference_cache_key(...)`. `model` and `batches` are only used on a miss; a caller that wants to
    avoid even loading the reference model can try `load_reference_logps(key, cache_path(key))` first."""
    path = cache_path(key, cache_dir)
    cached = load_reference_logps(key, path)
    if cached is not None:
        return cached, True
    ref = compute_reference_logps(model, batches, gatherer, num_examples=num_examples, progress=progress)
    save_reference_logps(ref, key, path)
    return ref, False
