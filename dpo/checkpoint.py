"""Training checkpoints: the policy in Hugging Face layout plus everything needed to resume exactly.

    out_dir/checkpoints/step-000120/
        config.json, model.safetensors, tokenizer files   # loadable by hf_checkpoint.load_pretrained and transformers
        optimizer/                                        # torch.distributed.checkpoint (sharded under FSDP)
        trainer_state.json                                # step, examples, data position, scheduler, metrics
        rng-rank{r}.pt                                    # every rank's RNG states
    out_dir/checkpoints/latest                            # text: the name of the newest complete checkpoint

A checkpoint is written into `step-N.tmp/` and renamed only when every file is in place, and `latest` is
replaced atomically after that, so a kill during a save leaves the previous checkpoint as the newest good
one. Multi-node runs need out_dir on a filesystem every node sees (the optimizer shards are written by
each rank).
"""
import json
import os
import random
import shutil
from pathlib import Path

import numpy as np
import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions, get_model_state_dict, get_optimizer_state_dict, set_optimizer_state_dict,
)

from dpo.distributed import Dist, barrier, unwrap
from dpo.files import atomic_write
from dpo.interop.hf_checkpoint import save_pretrained
from dpo.reward_model import RewardModel, save_reward_model


def full_state_dict(model) -> dict[str, torch.Tensor]:
    """The unsharded policy weights on CPU, on rank 0 (other ranks get {}). Collective under FSDP."""
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def save_hf(model, out: Path, ctx: Dist, tokenizer=None) -> None:
    """Write the policy in Hugging Face layout into `out` (must not exist yet) from rank 0."""
    state = full_state_dict(model)
    if ctx.is_main:
        inner = unwrap(model)
        if isinstance(inner, RewardModel):  # *ForSequenceClassification layout
            save_reward_model(inner, out, state_dict=state)
        else:
            save_pretrained(inner, out, state_dict=state)
        if tokenizer is not None:
            tokenizer.save_pretrained(out)


def save_checkpoint(out_dir, step: int, model, optimizer, trainer_state: dict, ctx: Dist, tokenizer=None) -> Path:
    """Collective: every rank calls it. Returns the checkpoint folder."""
    root = Path(out_dir) / "checkpoints"
    final = root / f"step-{step:06d}"
    tmp = root / f"step-{step:06d}.tmp"
    if ctx.is_main:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    barrier()
    save_hf(model, tmp, ctx, tokenizer)
    dcp.save({"optimizer": get_optimizer_state_dict(model, optimizer)}, checkpoint_id=str(tmp / "optimizer"))
    torch.save(rng_state(), tmp / f"rng-rank{ctx.rank}.pt")
    barrier()
    if ctx.is_main:
        (tmp / "trainer_state.json").write_text(json.dumps(trainer_state, indent=1))
        if final.exists():  # a re-run of the same step: replace it, the old one stays until now
            shutil.rmtree(final)
        os.replace(tmp, final)
        atomic_write(root / "latest", final.name)
    barrier()
    return final


def latest_checkpoint(out_dir) -> Path | None:
    pointer = Path(out_dir) / "checkpoints" / "latest"
    if not pointer.is_file():
        return None
    path = pointer.parent / pointer.read_text().strip()
    if not (path / "trainer_state.json").is_file():
        raise RuntimeError(f"{pointer}: points to {path}, which is not a complete checkpoint")
    return path


def load_training_state(path: Path, model, optimizer, ctx: Dist) -> dict:
    """Restore optimizer and RNG states from `path` (the weights were loaded when the model was built)
    and return the trainer state (step, examples, data position, scheduler)."""
    state = {"optimizer": get_optimizer_state_dict(model, optimizer)}
    dcp.load(state, checkpoint_id=str(path / "optimizer"))
    set_optimizer_state_dict(model, optimizer, state["optimizer"])
    rng_file = path / f"rng-rank{ctx.rank}.pt"
    if rng_file.is_file():
        set_rng_state(torch.load(rng_file, weights_only=False))
    return json.loads((path / "trainer_state.json").read_text())


def rng_state() -> dict:
    return {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
    }


def set_rng_state(state: dict) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
