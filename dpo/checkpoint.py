"""Training checkpoints: the policy in Hugging Face layout plus everything needed to resume exactly.

    out_dir/checkpoints/step-000120/
        config.json, model.safetensors, tokenizer files   # loadable by hf_checkpoint.load_pretrained and transformers
        optimizer/                                        # torch.distributed.checkpoint (sharded under FSDP)
        trainer_state.json                                # step, examples, data position, scheduler, metrics
        rng-rank{r}.pt                                    # every rank's RNG states
    out_dir/checkpoints/latest                            # text: the name of the newest complete checkpoint

A checkpoint is written into `step-N.tmp/`; its trainer_state.json is written last, so a folder holding one
is complete. Then it is renamed to `step-N` and `latest` is replaced atomically. A complete checkpoint is
never deleted before its replacement is complete: saving a step a second time (a resumed finished run)
renames the old `step-N` aside to `step-N.old`, renames the new one in, and only then deletes the old one;
a folder being deleted loses its trainer_state.json first. So a kill at any moment leaves a complete
checkpoint on disk, and `latest_checkpoint` finds it even when `latest` names nothing (see there).
Multi-node runs need out_dir on a filesystem every node sees (the optimizer shards are written by each rank).
"""
import dataclasses
import json
import os
import random
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from dpo import lora
from dpo.config import ConfigError
from dpo.distributed import Dist, barrier, unwrap
from dpo.files import atomic_write
from dpo.interop.hf_checkpoint import CheckpointError, save_pretrained
from dpo.reward_model import RewardModel, save_reward_model

TRAINER_STATE = "trainer_state.json"  # written last: a checkpoint folder holding it is complete
NAME = re.compile(r"step-(\d+)(\.tmp|\.old)?")
# Among complete folders of one step: the renamed one, else the newer copy (.tmp), else the older one (.old).
PREFERENCE = {None: 2, ".tmp": 1, ".old": 0}


# torch.distributed.checkpoint is imported where it is used: importing it costs about 50 MB of resident memory
# (and a second of start-up) that every training step would carry, and a run needs it only to save and load.

def full_state_dict(model) -> dict[str, torch.Tensor]:
    """The unsharded policy weights on CPU, on rank 0 (other ranks get {}). Collective under FSDP."""
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))


def save_hf(model, out: Path, ctx: Dist, tokenizer=None, lora_base: str = "") -> None:
    """Write the policy in Hugging Face layout into `out` (must not exist yet) from rank 0. A LoRA policy is
    written merged (it loads as a plain model), and its adapters also in PEFT's layout in out/adapter/
    (`lora_base`: the base model they apply to); resuming reads the adapters back onto the base."""
    state = full_state_dict(model)
    if ctx.is_main:
        inner = unwrap(model)
        if isinstance(inner, RewardModel):  # *ForSequenceClassification layout
            save_reward_model(inner, out, state_dict=state, lora_base=lora_base)
        elif lora.lora_modules(inner):
            save_pretrained(inner, out, state_dict=lora.merged_state_dict(inner, state))
            lora.save_adapter(inner, out / "adapter", lora_base, state_dict=state)
        else:
            save_pretrained(inner, out, state_dict=state)
        if tokenizer is not None:
            tokenizer.save_pretrained(out)


def save_checkpoint(out_dir, step: int, model, optimizer, trainer_state: dict, ctx: Dist, tokenizer=None,
                    lora_base: str = "", extra_models: dict | None = None,
                    extra_lora_bases: dict | None = None) -> Path:
    """Collective: every rank calls it. Returns the checkpoint folder. `extra_models` {name: model}: models the
    same optimizer trains beside the policy (PPO's value model), each written in Hugging Face layout into the
    subfolder of its name; `extra_lora_bases` {name: the base model its adapters apply to}."""
    root = Path(out_dir) / "checkpoints"
    final = root / f"step-{step:06d}"
    tmp, old = final.with_name(final.name + ".tmp"), final.with_name(final.name + ".old")
    if ctx.is_main:
        remove_checkpoint(tmp)
        tmp.mkdir(parents=True)
    barrier()
    save_hf(model, tmp, ctx, tokenizer, lora_base)
    for name, extra in (extra_models or {}).items():
        save_hf(extra, tmp / name, ctx, lora_base=(extra_lora_bases or {}).get(name, ""))
    owner = optimizer_owner(model, extra_models)
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict
    dcp.save({"optimizer": get_optimizer_state_dict(owner, optimizer)}, checkpoint_id=str(tmp / "optimizer"))
    torch.save(rng_state(), tmp / f"rng-rank{ctx.rank}.pt")
    barrier()
    if ctx.is_main:
        atomic_write(tmp / TRAINER_STATE, json.dumps(trainer_state, indent=1))  # tmp is complete from here on
        if final.exists():  # a re-save of this step: the old copy steps aside until the new one is in place
            remove_checkpoint(old)
            os.replace(final, old)
        os.replace(tmp, final)
        atomic_write(root / "latest", final.name)
        remove_checkpoint(old)
    barrier()
    return final


def optimizer_owner(model, extra_models: dict | None) -> nn.Module:
    """The module whose parameters the optimizer holds: the policy alone, or the policy and the models trained
    beside it (their optimizer state is saved under the names "policy.…" and "<name>.…")."""
    return nn.ModuleDict({"policy": model, **extra_models}) if extra_models else model


def remove_checkpoint(path: Path) -> None:
    """Delete a checkpoint folder (if there is one); its trainer_state.json goes first, so a kill part-way
    leaves a folder that no longer counts as complete."""
    if path.is_dir():
        (path / TRAINER_STATE).unlink(missing_ok=True)
        shutil.rmtree(path, ignore_errors=True)


def is_complete(path: Path) -> bool:
    return (path / TRAINER_STATE).is_file()


def latest_checkpoint(out_dir) -> Path | None:
    """The checkpoint to resume from, or None when out_dir holds no complete one (the caller decides).

    Normally the folder `checkpoints/latest` names. When a kill left `latest` missing, or naming a folder that is
    gone or incomplete, it is the newest complete checkpoint on disk (`step-N`, or a complete `step-N.tmp` /
    `step-N.old` that a kill left mid-rename), and a line on stderr says which. Raises CheckpointError when that
    checkpoint's trainer_state.json cannot be read."""
    root = Path(out_dir) / "checkpoints"
    pointer = root / "latest"
    name, problem = _read_pointer(pointer)
    if name is not None and is_complete(root / name):
        path = root / name
    else:
        path = newest_complete(root)
        if problem is None and name is not None:
            problem = f"names {name}, which is not a complete checkpoint"
        if problem is not None and os.environ.get("RANK", "0") == "0":
            found = f"using {path}, the newest complete checkpoint" if path else "no complete checkpoint is on disk"
            print(f"{pointer}: {problem}; {found}", file=sys.stderr, flush=True)
        if path is None:
            return None
    read_trainer_state(path)
    return path


def _read_pointer(pointer: Path) -> tuple[str | None, str | None]:
    """(the checkpoint name in `latest` or None, what is wrong with `latest` or None). No `latest` at all and
    no checkpoints folder is a new run, not a problem."""
    if not pointer.is_file():
        return None, ("is missing" if pointer.parent.is_dir() and any(pointer.parent.iterdir()) else None)
    try:
        name = pointer.read_text().strip()
    except (OSError, UnicodeDecodeError) as e:
        return None, f"cannot be read ({e})"
    if not NAME.fullmatch(name):
        return None, f"holds {name[:80]!r}, not a checkpoint name like step-000120"
    return name, None


def newest_complete(root: Path) -> Path | None:
    """The complete checkpoint folder under `root` with the highest step (see PREFERENCE for ties), or None."""
    found = [(int(m[1]), PREFERENCE[m[2]], p) for p in (root.iterdir() if root.is_dir() else ())
             if (m := NAME.fullmatch(p.name)) and is_complete(p)]
    return max(found, key=lambda f: f[:2])[2] if found else None


def read_trainer_state(path: Path) -> dict:
    """The trainer state saved in checkpoint `path`; CheckpointError naming the file when it cannot be read."""
    file = path / TRAINER_STATE
    try:
        state = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{file}: cannot read this checkpoint's trainer state ({e})") from e
    if not isinstance(state, dict):
        raise CheckpointError(f"{file}: expected a JSON object (the trainer state), found {type(state).__name__}")
    return state


def load_training_state(path: Path, model, optimizer, ctx: Dist, extra_models: dict | None = None) -> dict:
    """Restore optimizer and RNG states from `path` (the weights were loaded when the models were built)
    and return the trainer state (step, examples, data position, scheduler)."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict, set_optimizer_state_dict
    trainer_state = read_trainer_state(path)
    owner = optimizer_owner(model, extra_models)
    state = {"optimizer": get_optimizer_state_dict(owner, optimizer)}
    dcp.load(state, checkpoint_id=str(path / "optimizer"))
    set_optimizer_state_dict(owner, optimizer, state["optimizer"])
    rng_file = path / f"rng-rank{ctx.rank}.pt"
    if rng_file.is_file():
        set_rng_state(torch.load(rng_file, weights_only=False))
    return trainer_state


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


# A resumed run must continue the run its checkpoint belongs to: these settings must match (train.resume_changed).
RESUME_KEYS = ("model", "reference", "data", "loss", "lora", "ppo", "train.seed", "train.batch_size", "train.optimizer")


def resume_point(config) -> Path:
    """The checkpoint train.resume continues from: the latest complete one in train.out_dir, made with the
    same model, data and loss settings (RESUME_KEYS) unless train.resume_changed says to go on anyway.
    Anything else is a ConfigError saying what differs."""
    out_dir = Path(config.train.out_dir)
    path = latest_checkpoint(out_dir)
    if path is None:
        raise ConfigError(f"train.resume: {out_dir / 'checkpoints'} holds no complete checkpoint to resume; "
                          f"set train.resume=false to start a new run")
    saved = read_trainer_state(path).get("config", {})
    changed = [f"train.resume: {key} was {before!r} in {path}, is {after!r} now"
               for key, before, after in changed_settings(saved, dataclasses.asdict(config))] if saved else []
    if changed and not config.train.resume_changed:
        raise ConfigError("\n".join(changed + ["train.resume: set train.resume_changed=true to resume anyway, "
                                                "or use another train.out_dir"]))
    return path


def changed_settings(saved: dict, now: dict) -> list[tuple[str, object, object]]:
    """(dotted key, value in the checkpoint's config, value now) for every RESUME_KEYS setting that differs. A
    section the checkpoint's config lacks (saved before the section existed) is not compared."""
    out = []
    for key in RESUME_KEYS:
        before, after = saved, now
        for part in key.split("."):
            before, after = before.get(part), after.get(part)
        if isinstance(after, dict) and before is None:
            continue
        if isinstance(after, dict):
            before = before if isinstance(before, dict) else {}
            out += [(f"{key}.{k}", before.get(k), v) for k, v in after.items() if before.get(k) != v]
        elif before != after:
            out.append((key, before, after))
    return out
