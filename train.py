"""Train a policy with SFT or a preference loss (DPO and its family), or a reward model, on one process,
DDP or FSDP2.

    python train.py --config configs/quickstart.yaml                       # one CPU / GPU
    torchrun --nproc_per_node=8 train.py --config configs/imdb/dpo.yaml loss.beta=0.5
    torchrun --nnodes=2 --node_rank=$R --nproc_per_node=8 --rdzv_backend=c10d \\
             --rdzv_endpoint=$HOST:29500 train.py --config ...            # several nodes

One DPO step, as the loop in `train` runs it:
    for each micro-batch of this rank's share of the global batch:
        reference log-probs of chosen and rejected, without gradients (or from the precomputed cache)
        policy log-probs of the same, one forward over each pair's [prompt | chosen | rejected], the
        prompt computed once (or over the chosen rows and the rejected rows, padded)    (preference_step)
        loss = mean over pairs of −log σ(β·[(π_w − ref_w) − (π_l − ref_l)])           (dpo.losses)
        (loss · micro / per-rank batch).backward()   — gradients all-reduced on the last micro-batch only
    clip the gradient norm, optimizer step, learning-rate schedule step.

The kind of run follows from the data and loss.name, once (`run_kind`); it picks the step function and
the collate function (STEPS, `collate_fn`):
    preference       {prompt, chosen, rejected} -> a preference loss           preference_step
    sft              {prompt, completion}       -> NLL of the completion        sft_step
    classification   {text, label}              -> GPT + linear head, loss.name=classifier     classifier_step
    reward_pairs     {prompt, chosen, rejected} -> Bradley–Terry, loss.name=reward_model      reward_pairs_step
loss.name=ppo runs PPO instead, a loop of its own on the prompts of the data (dpo/ppo/loop.py); the building
blocks both loops use are in dpo/training.py.
A reference model is loaded only for preference losses that read it (dpo.losses.uses_reference); with LoRA
(lora.rank > 0) it is the policy itself with its adapters switched off. Every check runs before any work
(`check_run`), and a failure anywhere is one line per problem on stderr (dpo.errors).
"""
import argparse
import dataclasses
import os
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

from dpo import batching, checkpoint, distributed, lora, losses, quickstart, reference_cache, reward_model
from dpo.config import Config, ConfigError, load_config
from dpo.errors import PeerFailed, entry_point
from dpo.generation import completion_text, generate, stop_ids
from dpo.interop.hub import resolve_model_dir
from dpo.logprobs import (batch_sequence_logps, model_token_logps, response_mask, sequence_logps,
                          sequence_unlikelihood, shared_sequence_logps, wpo_weights)
from dpo.model import GPT, GPTConfig
from dpo.ppo.loop import train_ppo
from dpo.run_log import RunLog, progress_bar, step_flops, throughput_metrics
from dpo.tokenizer import Tokenizer
from dpo.training import (add_adapters, autocast, check_run, grad_scaler, load_data, load_model, load_tokenizer,
                          lr_factor, make_optimizer, parallel_mode, restore, save_final, update)

REWARDS = {"quickstart": lambda prompts, completions: [quickstart.reward(c) for c in completions]}


# ---------------------------------------------------------------------------------------------------
# The math of one micro-batch: log-probs from a forward pass, then the loss. Each step function returns
# (per-example losses [B], per-example metrics {name: [B]}).

def preference_step(policy, reference, batch: dict, config: Config):
    """B pairs (rows 0..B−1 chosen, B..2B−1 rejected; or [prompt | chosen | rejected] blocks: shares_prompt).
    `reference` is a model, its cached log-probs (reference_cache.ReferenceLogps) or None (reference-free
    losses: log π_ref taken as 0)."""
    loss = config.loss
    reference_logps = None  # the reference first: its logits are freed before the policy's activations exist
    if isinstance(reference, reference_cache.ReferenceLogps):
        reference_logps = reference.lookup(batch["indices"])
    elif reference is not None:
        with torch.no_grad():
            reference_logps, _ = batch_sequence_logps(reference, batch, loss.ld_alpha)
    if "segments" in batch:  # the prompt computed once, no padding (batching.collate_shared)
        policy_logps, lengths = shared_sequence_logps(policy, batch)
    else:
        mask = response_mask(batch["labels"])
        policy_token_logps, policy_log_sum_sq = model_token_logps(policy, batch, with_log_sum_sq=loss.wpo)
        policy_logps, lengths = sequence_logps(policy_token_logps, mask, loss.ld_alpha)
    if reference_logps is None:  # reference-free losses: log π_ref taken as 0
        reference_logps = torch.zeros_like(policy_logps)
    policy_chosen_logps, policy_rejected_logps = policy_logps.chunk(2)
    reference_chosen_logps, reference_rejected_logps = reference_logps.chunk(2)
    chosen_lengths, rejected_lengths = lengths.chunk(2)

    options = loss.loss_options()
    if "unlikelihood" in losses.parse_loss_names(loss.name):  # needs per-token probabilities
        options["policy_rejected_unlikelihood"] = sequence_unlikelihood(policy_token_logps, mask).chunk(2)[1]
    pair_losses = losses.preference_loss(
        policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps,
        loss_type=loss.name, beta=loss.beta, rpo_alpha=loss.rpo_alpha, chosen_lengths=chosen_lengths,
        rejected_lengths=rejected_lengths,
        wpo_weights=wpo_weights(policy_token_logps, policy_log_sum_sq, mask) if loss.wpo else None, **options)
    metrics = losses.preference_metrics(
        policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps,
        pair_losses, beta=loss.beta, chosen_lengths=chosen_lengths, rejected_lengths=rejected_lengths)
    return pair_losses, metrics


def sft_step(policy, reference, batch: dict, config: Config):
    """B sequences. loss.name sft: the summed NLL of each target (the reference code); sft_mean: its
    per-token mean."""
    logps, lengths = sequence_logps(model_token_logps(policy, batch)[0], response_mask(batch["labels"]))
    seq_losses = losses.sft_mean_loss(logps, chosen_lengths=lengths) if config.loss.name == "sft_mean" \
        else losses.sft_loss(logps)
    return seq_losses, {"loss/train": seq_losses.detach(), "logps_train/chosen": logps.detach(),
                        "lengths_train/chosen": lengths.float()}


def classifier_step(model, reference, batch: dict, config: Config):
    """B texts with labels: cross-entropy of a GPT with a linear head (dpo/reward_model.py)."""
    logits = model(batch["input_ids"], batch["attention_mask"])
    example_losses = reward_model.classification_loss(logits, batch["labels"])
    metrics = reward_model.classification_metrics(logits, batch["labels"])
    return example_losses, {"loss/train": example_losses.detach(), **{f"{k}/train": v for k, v in metrics.items()}}


def reward_pairs_step(model, reference, batch: dict, config: Config):
    """B pairs: the Bradley–Terry loss −log σ(r_w − r_l) of a GPT with a scalar head."""
    chosen_scores, rejected_scores = model(batch["input_ids"], batch["attention_mask"])[:, 0].chunk(2)
    example_losses = reward_model.bradley_terry_loss(chosen_scores, rejected_scores)
    metrics = reward_model.bradley_terry_metrics(chosen_scores, rejected_scores)
    return example_losses, {"loss/train": example_losses.detach(),
                            **{k.replace("rewards/", "rewards_train/"): v for k, v in metrics.items()}}


STEPS = {"preference": preference_step, "sft": sft_step, "classification": classifier_step,
         "reward_pairs": reward_pairs_step}


def collate_fn(kind: str, tokenizer: Tokenizer, config: Config, device):
    """examples -> a batch of tensors on `device`. Preference and SFT examples come tokenized (batching.py);
    reward-model examples are tokenized here (reward_model.py)."""
    pad_id, multiple, max_length = tokenizer.pad_id_or_eos(), config.data.pad_to_multiple_of or None, config.data.max_length
    pairs = batching.collate_shared if shares_prompt(config) else batching.collate_preference
    fn = {"preference": lambda ex: pairs(ex, pad_id, multiple),
          "sft": lambda ex: batching.collate_sft(ex, pad_id, multiple),
          "classification": lambda ex: reward_model.collate_classification(ex, tokenizer, max_length),
          "reward_pairs": lambda ex: reward_model.collate_reward_pairs(ex, tokenizer, max_length)}[kind]
    return lambda examples: {k: v.to(device) for k, v in fn(examples).items()}


def shares_prompt(config: Config) -> bool:
    """Whether pairs are laid out as [prompt | chosen | rejected] blocks, the prompt computed once
    (data.share_prompt): exact for every loss that reads sequence log-probs only, so not for the per-token
    unlikelihood, WPO or LD-DPO."""
    needs_tokens = config.loss.wpo or config.loss.ld_alpha != 1.0 or "unlikelihood" in config.loss.name
    return config.data.share_prompt and not needs_tokens


# ---------------------------------------------------------------------------------------------------
# The models (the shared building blocks are in dpo/training.py).

def build_policy(config: Config, tokenizer: Tokenizer, ctx: distributed.Dist, kind: str, resume_from,
                 meta: bool) -> nn.Module:
    """The model being trained: from the latest checkpoint on resume, else from model.name, else new. Reward
    models (kind classification / reward_pairs) put a zero-initialised linear head on that GPT. With `meta`
    only the shapes are built (FSDP ranks > 0 receive rank 0's weights when the model is sharded)."""
    m, is_reward_model, rank = config.model, kind in ("classification", "reward_pairs"), config.lora.rank
    if is_reward_model and resume_from is not None and not meta:
        model = reward_model.load_reward_model(resume_from, getattr(torch, m.dtype), ctx.device).requires_grad_()
    elif resume_from is not None or m.name:  # (LoRA: the frozen base, and the checkpoint's adapters below)
        base = resume_from if resume_from is not None and not rank else resolve_model_dir(m.name)
        model = load_model(base, config, ctx, True, meta)
    else:
        with torch.device("meta" if meta else ctx.device):
            model = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, n_layer=m.n_layer, n_head=m.n_head,
                                  n_embd=m.n_embd, max_seq_len=m.max_seq_len, dropout=m.dropout,
                                  eos_id=tokenizer.eos_id, bos_id=tokenizer.bos_id)).to(getattr(torch, m.dtype))
    if is_reward_model and isinstance(model, GPT):
        with torch.device("meta" if meta else ctx.device):
            model = reward_model.RewardModel(model, 2 if kind == "classification" else 1,
                                             pad_id=tokenizer.pad_id_or_eos())
    if rank:
        add_adapters(model, config, resume_from / "adapter" if resume_from is not None else None)
    context = getattr(model, "backbone", model).config.max_seq_len
    if config.data.max_length > context:
        raise ConfigError(f"data.max_length: expected <= {context}, the context of model {m.name}, "
                          f"got {config.data.max_length}")
    if config.train.compile:  # block by block, the unit FSDP2 shards
        for block in model.blocks:
            block.compile()
    return model.train()


def build_reference(config, policy, tokenizer, ctx, mode, resume_from, out_dir, examples, collate):
    """The frozen reference, wrapped like the policy; or, with train.reference_cache, its log-probs of every
    example in `examples` (a list per split), computed once across ranks and kept on disk. Returns one entry
    per split."""
    path = config.reference or config.model.name
    adapters_off = bool(config.lora.rank) and path == config.model.name  # LoRA: the base is the policy itself
    if not path:  # a new model: the reference is the initial policy, kept on disk for resumes
        path = out_dir / "reference"
        if resume_from is None:
            checkpoint.save_hf(policy, path, ctx, tokenizer)
            distributed.barrier()
    path, on_meta = resolve_model_dir(str(path)), mode == "fsdp" and not ctx.is_main

    def load():
        if adapters_off:
            return lora.WithoutAdapters(policy)
        return distributed.wrap(load_model(path, config, ctx, trainable=False, meta=on_meta), mode, ctx,
                                mixed_precision=config.train.mixed_precision, trainable=False)
    if not config.train.reference_cache:
        return [load()] * len(examples)
    settings = {"data": dataclasses.asdict(config.data), "ld_alpha": config.loss.ld_alpha}
    keys = [reference_cache.cache_key(split, settings, path) for split in examples]
    tables = [reference_cache.load(key) for key in keys]
    if any(table is None for table in tables):
        reference = load()
        for i, split in enumerate(examples):
            if tables[i] is None:
                with autocast(config, ctx):
                    tables[i] = reference_cache.compute(reference, split, collate, config.train.micro_batch_size,
                                                        ctx, config.loss.ld_alpha)
                if ctx.is_main:
                    reference_cache.save(tables[i], keys[i])
        del reference
    distributed.barrier()
    return tables


# ---------------------------------------------------------------------------------------------------
# The run.

def train(config: Config) -> dict:
    """Run one training job; returns the final evaluation metrics."""
    ctx = distributed.setup(config.train.device)
    t, out_dir = config.train, Path(config.train.out_dir)
    resume_from = check_run(config, ctx, out_dir)
    torch.manual_seed(t.seed)

    tokenizer = load_tokenizer(config, ctx, out_dir)
    with distributed.fail_together():
        kind, train_examples, eval_examples = load_data(config, tokenizer, ctx)
    step_fn, collate = STEPS[kind], collate_fn(kind, tokenizer, config, ctx.device)
    schedule = batching.BatchSchedule(len(train_examples), t.batch_size, t.micro_batch_size,
                                      world_size=ctx.world_size, rank=ctx.rank, seed=t.seed, epochs=t.epochs,
                                      max_examples=t.max_examples)
    if ctx.is_main:
        print(schedule.describe(), flush=True)

    mode = parallel_mode(config, ctx)
    with distributed.fail_together():
        policy = build_policy(config, tokenizer, ctx, kind, resume_from, meta=mode == "fsdp" and not ctx.is_main)
    train_reference = eval_reference = None
    if kind == "preference" and losses.uses_reference(config.loss.name):
        train_reference, eval_reference = build_reference(config, policy, tokenizer, ctx, mode, resume_from,
                                                          out_dir, [train_examples, eval_examples], collate)
    policy = distributed.wrap(policy, mode, ctx, mixed_precision=t.mixed_precision,
                              activation_checkpointing=t.activation_checkpointing, cpu_offload=t.cpu_offload)
    optimizer = make_optimizer(policy, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, config, schedule.n_steps))
    scaler = grad_scaler(config, ctx, mode)
    state = restore(resume_from, policy, optimizer, scheduler, scaler, schedule, ctx)
    step, examples_seen, saved_step = state["step"], state["examples"], state["step"]
    early = state.get("early_stopping", {"best": None, "bad_evals": 0, "stopped": False})
    log = RunLog(out_dir, dataclasses.asdict(config), config.wandb, enabled=ctx.is_main, resume=resume_from is not None)
    log.truncate(state.get("log_lines"))  # back to what was logged when the checkpoint was saved
    sample_prompts = [ex["prompt_input_ids"] for ex in eval_examples[:t.sample_prompts]] \
        if kind in ("preference", "sft") else []  # reward models do not generate
    sample_reference = None if isinstance(train_reference, reference_cache.ReferenceLogps) else train_reference

    def sample_now() -> tuple[dict, list]:
        return write_samples(policy, sample_reference, sample_prompts, tokenizer, config, ctx, step, examples_seen,
                             log)

    def checkpoint_now():
        trainer_state = {"step": step, "examples": examples_seen, "data": schedule.state_dict(),
                         "scheduler": scheduler.state_dict(), "log_lines": log.line_counts(),
                         "early_stopping": early, "scaler": scaler.state_dict(), "config": dataclasses.asdict(config)}
        checkpoint.save_checkpoint(out_dir, step, policy, optimizer, trainer_state, ctx, tokenizer, config.model.name)

    progress = progress_bar(schedule.n_steps, step, enabled=ctx.is_main)
    per_rank_batch = t.batch_size // ctx.world_size
    for micro_batches in schedule if not early["stopped"] else ():
        start = time.perf_counter()
        sums, tokens, flops = {}, torch.zeros((), device=ctx.device), torch.zeros((), device=ctx.device)
        for i, indices in enumerate(micro_batches):
            batch = collate([train_examples[j] for j in indices])
            with distributed.gradient_sync(policy, enabled=i == len(micro_batches) - 1), autocast(config, ctx):
                example_losses, metrics = step_fn(policy, train_reference, batch, config)
                # sum / per-rank batch: k micro-batches add up to the mean over the rank's share, and
                # DDP / FSDP average the ranks' gradients: the mean over the global batch.
                scaler.scale(example_losses.sum() / per_rank_batch).backward()
            for name, values in metrics.items():
                sums[name] = sums.get(name, 0) + values.detach().float().sum()
            tokens += batch["attention_mask"].sum()
            flops += step_flops(policy, train_reference, batch)
        metrics = distributed.all_reduce_mean(sums, torch.tensor(float(per_rank_batch), device=ctx.device))
        grad_norm = update(policy, optimizer, scheduler, scaler, metrics["loss/train"], step + 1, config)
        step, examples_seen = step + 1, examples_seen + t.batch_size

        if step % t.log_every == 0 or step == schedule.n_steps:
            metrics.update(grad_norm=grad_norm, lr=scheduler.get_last_lr()[0], **{"counters/updates": step},
                           **({"loss_scale": scaler.get_scale()} if scaler.is_enabled() else {}),
                           **throughput_metrics(flops, tokens, t.batch_size, time.perf_counter() - start, ctx))
            log.log(metrics, examples_seen)
            progress.set_postfix(loss=f"{metrics['loss/train']:.4f}", refresh=False)
        if t.eval_every and step % t.eval_every == 0 and step < schedule.n_steps:
            eval_metrics = evaluate(policy, eval_reference, eval_examples, step_fn, collate, config, ctx)
            log.log(eval_metrics, examples_seen)
            if t.early_stopping_patience and watch(early, eval_metrics, t):  # a new best: keep it
                save_final(policy, out_dir, ctx, tokenizer, name="best", lora_base=config.model.name)
        if t.sample_every and step % t.sample_every == 0:
            sample_now()
        if t.save_every and step % t.save_every == 0 and step < schedule.n_steps:
            checkpoint_now()
        progress.update(1)
        if early["stopped"]:
            break
    progress.close()

    if step != saved_step or resume_from is None:  # (a resumed finished run has this checkpoint already)
        checkpoint_now()  # before the final evaluation and samples: a resume after a kill redoes them once
    final_metrics = evaluate(policy, eval_reference, eval_examples, step_fn, collate, config, ctx)
    log.log(final_metrics, examples_seen)
    final_dir = save_final(policy, out_dir, ctx, tokenizer, lora_base=config.model.name)
    rewards, rows = sample_now() if sample_prompts and (t.sample_reward or t.sample_every) else ({}, [])
    if ctx.is_main:
        print(summary(final_metrics, rewards, rows, len(eval_examples), final_dir), flush=True)
    log.finish()
    return final_metrics


def watch(early: dict, eval_metrics: dict, t) -> bool:
    """Early stopping: record one evaluation in `early` ({"best", "bad_evals", "stopped"}, saved with the
    checkpoints). Returns True when train.early_stopping_metric improved on the best by more than min_delta;
    after early_stopping_patience evaluations in a row without that, early["stopped"] is set."""
    if t.early_stopping_metric not in eval_metrics:
        raise ConfigError(f"train.early_stopping_metric: {t.early_stopping_metric!r} is not an evaluation metric "
                          f"of this run; it has {', '.join(sorted(eval_metrics))}")
    value, best, sign = eval_metrics[t.early_stopping_metric], early["best"], 1 if t.early_stopping_mode == "max" else -1
    improved = best is None or sign * (value - best) > t.early_stopping_min_delta
    early.update(best=value if improved else best, bad_evals=0 if improved else early["bad_evals"] + 1)
    early["stopped"] = early["bad_evals"] >= t.early_stopping_patience
    return improved


@torch.no_grad()
def evaluate(policy, reference, eval_examples, step_fn, collate, config, ctx) -> dict:
    """Metrics averaged over every evaluation example (all ranks), with the reference code's names."""
    policy.eval()
    sums, count = {}, torch.zeros((), device=ctx.device)
    for indices, is_real in batching.eval_micro_batches(len(eval_examples), config.train.micro_batch_size,
                                                        ctx.world_size, ctx.rank):
        with autocast(config, ctx):
            _, metrics = step_fn(policy, reference, collate([eval_examples[i] for i in indices]), config)
        weight = torch.tensor(is_real, dtype=torch.float32, device=ctx.device)
        for name, values in metrics.items():
            name = name.replace("_train/", "_eval/").replace("/train", "/eval")
            sums[name] = sums.get(name, 0) + (values.float() * weight).sum()
        count += weight.sum()
    policy.train()
    return distributed.all_reduce_mean(sums, count)


@torch.no_grad()
def write_samples(policy, reference, prompts, tokenizer, config, ctx, step, examples_seen, log) -> tuple[dict, list]:
    """Completions of the policy and the reference for this rank's share of the prompts (token ids), gathered,
    appended to samples.jsonl and wandb; returns (their mean rewards, the rows) on rank 0. Every rank calls
    it, with or without prompts of its own: under FSDP2 gathering the parameters is collective."""
    t = config.train
    prompts = prompts[ctx.rank::ctx.world_size]
    rows = [{"step": step, "prompt": tokenizer.decode(p)} for p in prompts]
    for name, model in (("policy", policy), ("reference", reference)):
        if model is None:
            continue
        with distributed.unsharded_for_generation(model):
            if not prompts:
                continue
            generator = torch.Generator(device=ctx.device).manual_seed(t.seed + step + ctx.rank)
            completions = generate(distributed.unwrap(model), tokenizer, prompts, max_new_tokens=t.sample_max_new_tokens,
                                   temperature=t.sample_temperature, generator=generator)
        stop = stop_ids(distributed.unwrap(model), tokenizer)
        for row, completion in zip(rows, completions):
            row[name] = completion_text(tokenizer, completion, stop)
    for name in ("policy", "reference"):
        if t.sample_reward and rows and name in rows[0]:
            scores = REWARDS[t.sample_reward]([r["prompt"] for r in rows], [r[name] for r in rows])
            for row, score in zip(rows, scores):
                row[f"reward_{name}"] = score
    rows = distributed.gather_objects(rows)
    if not ctx.is_main or not rows:
        return {}, []
    log.append_rows("samples", [{"examples": examples_seen, **row} for row in rows], examples_seen)
    rewards = {f"samples/{k}": sum(r[k] for r in rows) / len(rows) for k in rows[0] if k.startswith("reward_")}
    if rewards:
        log.log(rewards, examples_seen)
    return rewards, rows


def summary(final_metrics: dict, rewards: dict, samples: list, n_eval: int, final_dir: Path) -> str:
    """The end of a run in words: where the model is, the numbers a newcomer should look at, a few samples."""
    lines = [f"final model: {final_dir}", f"evaluation on {n_eval} held-out examples:"]
    lines += [f"  {k}: {v:.4f}" for k, v in sorted(final_metrics.items())]
    if "rewards_eval/accuracies" in final_metrics:  # DPO's implicit reward β·log(π/π_ref), or a reward model's
        which = "the implicit reward" if "logps_eval/chosen" in final_metrics else "the reward model"
        lines.append(f"held-out preference accuracy of {which}: "
                     f"{final_metrics['rewards_eval/accuracies']:.1%} (chance: 50%)")
    if "samples/reward_policy" in rewards:
        before = rewards.get("samples/reward_reference")
        lines.append(f"ground-truth reward of samples on {len(samples)} held-out prompts: "
                     + (f"reference {before:.3f} -> " if before is not None else "")
                     + f"policy {rewards['samples/reward_policy']:.3f}")
    for row in samples[:3] if not rewards else ():
        lines.append(f"sample: ...{row['prompt'][-60:]!r}")
        lines += [f"  {name}: {row[name]!r}" for name in ("reference", "policy") if name in row]
    return "\n".join(lines)


@entry_point
def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="YAML config file (see configs/)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. loss.beta=0.5 train.lr=1e-6")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config, args.overrides)
        while True:
            train_ppo(config) if config.loss.name == "ppo" else train(config)  # PPO: a loop of its own (dpo/ppo/)
            if not config.next_config:
                break
            config = load_config(config.next_config)
    except RuntimeError as e:  # a collective broke because another rank stopped; that rank printed why
        transport = isinstance(e, torch.distributed.DistBackendError) or any(
            word in str(e) for word in ("gloo", "NCCL", "by peer", "Broken pipe"))
        if transport and int(os.environ.get("WORLD_SIZE", 1)) > 1:
            raise PeerFailed("a collective failed: another rank stopped (its error is above)") from None
        raise
    # Only after success: after an error the other ranks may be waiting for this one in a collective, and
    # destroy_process_group would wait for them, forever. Exiting closes the connections, which stops them.
    distributed.teardown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
