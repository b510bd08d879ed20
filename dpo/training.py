"""The parts of a training run both loops share: train.py's (SFT, DPO and its family, reward models) and
dpo/ppo/loop.py's (PPO).

    check_run, restore, save_final     every check before any work; the trainer state on resume; out_dir/final/
    load_tokenizer, load_data          the tokenizer (a new SentencePiece one when asked) and the tokenized data
    load_model, parallel_mode          a GPT from a Hugging Face folder; none | ddp | fsdp
    add_adapters                       LoRA adapters on a frozen model: new, or a checkpoint's on resume
    make_optimizer, lr_factor          the optimizer; the learning-rate schedule (warmup, then constant / linear / cosine)
    autocast, grad_scaler              bf16 / fp16 compute; fp16's dynamic loss scaling
    update, clip_grad_norm             one optimizer step: clip, check finite, step, schedule
"""
import contextlib
import json
import math
from pathlib import Path

import torch
import torch.nn as nn

from dpo import batching, checkpoint, data, distributed, formats, lora
from dpo.config import Config, ConfigError, check_paths, save_config, validate
from dpo.errors import UserError
from dpo.files import atomic_dir
from dpo.interop.hf_checkpoint import config_from_hf, load_pretrained
from dpo.interop.hub import resolve_model_dir
from dpo.model import GPT
from dpo.tokenizer import Tokenizer, train_sentencepiece


class NonFiniteLoss(UserError):
    """The loss or the gradient norm is NaN or infinite: the run stops before the update."""


# ---------------------------------------------------------------------------------------------------
# Start and end of a run: the checks before any work, resuming, the final model.


def check_run(config: Config, ctx: distributed.Dist, out_dir: Path):
    """Every check before any work, every problem at once (on every rank; the first failing rank reports):
    the config's values, the paths, and what there is to resume. Then out_dir/config.yaml records the run.
    Returns the checkpoint to resume from, or None."""
    with distributed.fail_together():
        validate(config)
        check_paths(config)
        resume_from = checkpoint.resume_point(config) if config.train.resume else None
    if ctx.is_main:
        save_config(config, out_dir / "config.yaml")
    distributed.barrier()
    return resume_from


def restore(resume_from, policy, optimizer, scheduler, scaler, schedule, ctx, extra_models=None) -> dict:
    """The trainer state: {"step": 0, "examples": 0} for a new run; on resume the optimizer, RNG, data position,
    schedule and loss scale come back from the checkpoint (its weights were loaded when the policy was built).
    extra_models: the models the optimizer trains beside the policy (checkpoint.save_checkpoint)."""
    if resume_from is None:
        return {"step": 0, "examples": 0}
    state = checkpoint.load_training_state(resume_from, policy, optimizer, ctx, extra_models)
    schedule.load_state_dict(state["data"])
    scheduler.load_state_dict(state["scheduler"])
    if state.get("scaler"):
        scaler.load_state_dict(state["scaler"])
    if ctx.is_main:
        print(f"resumed from {resume_from} at step {state['step']} ({state['examples']} examples)", flush=True)
    return state


def save_final(policy, out_dir: Path, ctx, tokenizer, name: str = "final", lora_base: str = "") -> Path:
    """out_dir/final/ (or best/): the policy in Hugging Face layout, written aside and renamed (a kill keeps
    the old one). Every rank calls it (gathering FSDP shards is collective); rank 0 writes."""
    folder = out_dir / name
    with atomic_dir(folder) if ctx.is_main else contextlib.nullcontext() as tmp:
        checkpoint.save_hf(policy, tmp, ctx, tokenizer, lora_base)
    distributed.barrier()
    return folder


# ---------------------------------------------------------------------------------------------------
# Tokenizer, data, models.


def run_kind(config: Config, data_kind: str) -> str:
    """preference | sft | classification | reward_pairs, from loss.name and the data's kind; checks they fit.
    (SFT losses also run on pairs: on the chosen responses, the paper's Preferred-FT. PPO reads only the prompts
    of preference or SFT data.)"""
    name, fmt = config.loss.name, config.data.format
    needs = {"classifier": "classification", "reward_model": "preference"}.get(name)
    if needs is None and data_kind == "sft" and name not in ("sft", "sft_mean", "ppo"):
        needs = "preference"
    if needs is None and data_kind == "classification":
        needs = "preference or sft"
    if needs is not None and needs != data_kind:
        raise ConfigError(f"loss.name={name} needs {needs} data; data.format {fmt!r} holds {data_kind} examples")
    return {"classifier": "classification", "reward_model": "reward_pairs"}.get(name, data_kind)


def load_tokenizer(config: Config, ctx: distributed.Dist, out_dir: Path) -> Tokenizer:
    if config.model.tokenizer or config.model.name:
        return Tokenizer.from_pretrained(config.model.tokenizer or resolve_model_dir(config.model.name))
    trained = out_dir / "tokenizer"
    if not (trained / "tokenizer.model").is_file():
        if config.model.tokenizer_vocab_size <= 0:
            raise ConfigError("model.tokenizer: a new model (model.name empty) needs model.tokenizer or "
                              "model.tokenizer_vocab_size > 0 to train a SentencePiece tokenizer")
        if ctx.is_main:  # train on the training texts, once
            _, examples, _ = formats.load_examples(config.data.format, config.data.path, config.data.split)
            corpus = out_dir / "tokenizer_corpus.txt"
            corpus.write_text("\n".join(" ".join(v for k, v in ex.items() if k in ("prompt", "completion",
                                        "chosen", "rejected") and isinstance(v, str)) for ex in examples))
            train_sentencepiece([corpus], trained / "tokenizer", config.model.tokenizer_vocab_size)
            corpus.unlink()
        distributed.barrier()
    return Tokenizer.from_pretrained(trained)


def load_data(config: Config, tokenizer: Tokenizer, ctx: distributed.Dist):
    """(kind, train examples, eval examples). Preference and SFT examples are tokenized with explicit
    truncation (batching.load_tokenized); reward-model examples stay text (their collate tokenizes)."""
    d = config.data
    sources = [(d.path, d.split, 0), (d.eval_path or d.path, d.eval_split, d.eval_examples)]
    if config.loss.name in ("classifier", "reward_model"):
        loaded = [formats.load_examples(d.format, path, split) for path, split, _ in sources]
        kind = run_kind(config, loaded[0][0])
        (_, train_examples, counts), (_, all_eval, eval_counts) = loaded
        eval_examples = [all_eval[i] for i in data.seeded_subset(len(all_eval), d.eval_examples, config.train.seed)]
        summaries = [data.format_summary(f"{d.format} {path} [{split}]", c) for (path, split, _), c
                     in zip(sources, (counts, eval_counts))]
        summaries[1] += f" ({len(eval_examples)} used)"
    else:
        args = dict(max_length=d.max_length, max_prompt_length=d.max_prompt_length, truncation=d.truncation,
                    prompt_truncation_side=d.prompt_truncation_side or None, seed=config.train.seed,
                    chat_template_family=d.chat_template)
        (data_kind, train_examples, train_summary), (_, eval_examples, eval_summary) = [
            batching.load_tokenized(d.format, path, split, tokenizer, limit=limit, **args)
            for path, split, limit in sources]
        kind, summaries = run_kind(config, data_kind), [train_summary, eval_summary]
    if ctx.is_main:
        print("\n".join(summaries), flush=True)
    for examples, summary_text in ((train_examples, summaries[0]), (eval_examples, summaries[1])):
        if not examples:  # say which file and why (what the reader and the tokenization left out)
            head, *lines = summary_text.splitlines()
            reasons = [r.strip() for r in lines if r.strip().startswith(("left out", "dropped:"))]
            raise data.DataError(f"{head.removeprefix('data ')}: no examples left to use"
                                 + "".join(f"; {r}" for r in reasons))
    return kind, train_examples, eval_examples


def load_model(path, config: Config, ctx: distributed.Dist, trainable: bool, meta: bool = False) -> GPT:
    """A GPT from a Hugging Face folder; with `meta`, only its shape (FSDP ranks > 0: weights come from rank 0)."""
    if meta:
        with torch.device("meta"):
            model = GPT(config_from_hf(json.loads((Path(path) / "config.json").read_text())))
    else:
        model = load_pretrained(path, dtype=getattr(torch, config.model.dtype), device=ctx.device)
    model.config.dropout = config.model.dropout
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = config.model.dropout
    return model.requires_grad_(trainable).train(trainable)


def add_adapters(model: nn.Module, config: Config, saved) -> None:
    """Freeze `model` (a GPT) and add LoRA adapters to it: those in folder `saved` (a checkpoint's, on resume),
    else new ones with the lora section's settings."""
    if saved:
        lora.load_adapter(model, saved)
    else:
        lora.add_lora(model, config.lora.rank, config.lora.alpha, config.lora.dropout, config.lora.target_modules)


def parallel_mode(config: Config, ctx: distributed.Dist) -> str:
    """none | ddp | fsdp: train.parallel, with auto = ddp on several ranks; ddp and fsdp on one process are
    none (the same arithmetic, nothing to parallelise)."""
    mode = config.train.parallel
    if mode == "auto":
        mode = "ddp" if ctx.world_size > 1 else "none"
    return "none" if mode in ("ddp", "fsdp") and ctx.world_size == 1 else mode


# ---------------------------------------------------------------------------------------------------
# The update: optimizer, schedule, mixed precision, gradient clipping.


def make_optimizer(model: nn.Module, config: Config) -> torch.optim.Optimizer:
    t = config.train
    params = [p for p in model.parameters() if p.requires_grad]
    if t.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, lr=t.lr, weight_decay=t.weight_decay)
    if t.optimizer == "sgd":  # plain SGD: its update is linear in the gradient (the invariance tests use it)
        return torch.optim.SGD(params, lr=t.lr, weight_decay=t.weight_decay)
    if t.optimizer == "adamw":
        return torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay, betas=(0.9, 0.95))
    raise ConfigError(f"train.optimizer: expected rmsprop | adamw | sgd, got {t.optimizer!r}")


def lr_factor(step: int, config: Config, total_steps: int) -> float:
    """Linear warmup over warmup_steps, then constant (the paper), linear decay to 0, or cosine to 0."""
    t = config.train
    if step < t.warmup_steps:
        return (step + 1) / (t.warmup_steps + 1)
    progress = (step - t.warmup_steps) / max(1, total_steps - t.warmup_steps)
    if t.schedule == "constant":
        return 1.0
    if t.schedule == "linear":
        return max(0.0, 1.0 - progress)
    if t.schedule == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    raise ConfigError(f"train.schedule: expected constant | linear | cosine, got {t.schedule!r}")


def autocast(config: Config, ctx: distributed.Dist):
    """bf16 / fp16 autocast without FSDP (FSDP2 casts through its MixedPrecisionPolicy instead)."""
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(config.train.mixed_precision)
    return torch.autocast(ctx.device.type, dtype=dtype, enabled=dtype is not None and parallel_mode(config, ctx) != "fsdp")


def grad_scaler(config: Config, ctx: distributed.Dist, mode: str):
    """fp16's dynamic loss scaling (a no-op otherwise): the loss is multiplied by a scale so that small fp16
    gradients do not flush to zero; a step whose gradients hold inf/NaN is skipped and the scale halves, and
    it doubles after 2,000 good steps. Under FSDP2 the ranks agree on skipping (ShardedGradScaler)."""
    enabled = config.train.mixed_precision == "fp16"
    if enabled and mode == "fsdp":
        from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler
        return ShardedGradScaler(ctx.device.type)
    return torch.amp.GradScaler(ctx.device.type, enabled=enabled)


def update(policy, optimizer, scheduler, scaler, loss: float, step: int, config: Config) -> float:
    """Clip the gradient, check the step is finite, take the optimizer and schedule steps; returns the
    gradient norm before clipping. A NaN/inf loss or gradient norm stops the run before the update; under
    fp16 an overflowing gradient is expected now and then: the scaler skips that step and lowers the scale."""
    scaler.unscale_(optimizer)  # (no-op without fp16)
    grad_norm = clip_grad_norm(policy, config.train.max_grad_norm)
    if not (math.isfinite(loss) and (scaler.is_enabled() or math.isfinite(grad_norm))):
        raise NonFiniteLoss(f"non-finite loss ({loss}) or gradient norm ({grad_norm}) at step {step}; stopping "
                            f"without an update. The last good checkpoint is in {config.train.out_dir}/checkpoints")
    scaler.step(optimizer)  # optimizer.step(), unless fp16 gradients overflowed
    scaler.update()
    scheduler.step()
    optimizer.zero_grad(set_to_none=True)
    return grad_norm


def clip_grad_norm(model: nn.Module, max_norm: float) -> float:
    """Clip to max_norm (0 = no clipping) and return the norm before clipping (a plain float on every rank)."""
    params = [p for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))
    if hasattr(norm, "full_tensor"):  # FSDP2: a DTensor
        norm = norm.full_tensor()
    return float(norm)
