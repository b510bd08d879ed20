"""PPO for language models: one explicit loop, run by train.py when loss.name is ppo.

    python train.py --config configs/quickstart_ppo.yaml
    torchrun --nproc_per_node=8 train.py --config ...      # DDP: each rank generates and trains on its share

For each iteration (one rollout):
    take ppo.rollout_prompts prompts of the data (the seeded, rank-aware, resumable batching.BatchSchedule)
    sample one completion per prompt from the policy (dpo.generation.generate at ppo.temperature)
    score each with ppo.reward (dpo.evaluate.rewards: classifier:DIR for PPO-GT, reward_model:DIR, quickstart)
    without gradients, on the completion tokens: log π_old, log π_ref, the values V
    rewards (score at the last token, −kl_coef · per-token KL) → GAE advantages and returns (objective.py)
    ppo.ppo_epochs passes over the rollout in minibatches of ppo.minibatch_size:
        clipped policy loss + vf_coef · clipped value loss → backward → clip the gradient norm → optimizer step
    move kl_coef towards ppo.kl_target (the adaptive controller), log, checkpoint every train.save_every
Then the last checkpoint, samples of the policy and of the reference on the held-out prompts (their reward and
the policy's exact KL to the reference), and out_dir/final/: the policy in Hugging Face layout.

Models: the policy (model.name, trained), the reference (a frozen copy of the same initial policy: `reference`
or model.name) and the value model, a separate critic (`value_model`). One optimizer (train.optimizer, train.lr)
updates policy and critic together, from one loss, as in Ziegler et al. (2019) and TRL: one schedule, one
gradient clip, one checkpointed optimizer state. With a separate critic and an adaptive optimizer (Adam,
RMSprop), ppo.vf_coef changes the critic's steps only through the shared gradient-norm clipping.
With LoRA (lora.rank > 0) the bases stay frozen and only the adapters (and the critic's head) are trained and
have optimizer state: the policy is model.name with adapters (it generates with them on), the reference is the
policy with its adapters off unless `reference` names another model (no second copy), and the critic's trunk
gets adapters of the same settings. Checkpoints hold each model merged plus its adapters (adapter/); a resume
puts the saved adapters (and the critic's saved head) back onto the bases, so it continues bit for bit.

Sampling draws its random numbers from a generator seeded by (train.seed, iteration), one row per prompt of
the global rollout, so a completion does not depend on the rank or batch that samples it, and a resumed run
samples what the uninterrupted one did. The minibatch order comes from torch's global generator, saved with
every checkpoint.
"""
import dataclasses
from pathlib import Path

import torch
import torch.nn as nn

from dpo import batching, checkpoint, distributed, lora
from dpo.config import Config, ConfigError
from dpo.evaluate.kl import sequence_kl
from dpo.evaluate.rewards import check_spec, load_scorer
from dpo.generation import completion_text, generate, stop_ids
from dpo.interop.hub import resolve_model_dir
from dpo.interop.safetensors import load_file
from dpo.logprobs import model_token_logps, response_mask
from dpo.ppo import objective
from dpo.reward_model import BRADLEY_TERRY, RewardModel, RewardModelError, is_reward_model_dir, load_reward_model
from dpo.run_log import RunLog, progress_bar
from dpo.training import (add_adapters, autocast, check_run, grad_scaler, load_data, load_model, load_tokenizer,
                          lr_factor, make_optimizer, parallel_mode, restore, save_final, update)

VALUE_MODEL = "value_model"  # the critic's folder in each checkpoint


def train_ppo(config: Config) -> dict:
    """Run one PPO job; returns the final held-out metrics (eval/...)."""
    ctx = distributed.setup(config.train.device)
    t, p, out_dir = config.train, config.ppo, Path(config.train.out_dir)
    resume_from = check_run(config, ctx, out_dir)
    torch.manual_seed(t.seed)

    tokenizer = load_tokenizer(config, ctx, out_dir)
    with distributed.fail_together():
        _, train_examples, eval_examples = load_data(config, tokenizer, ctx)
        check_shares(config, ctx)
    prompts = [ex["prompt_input_ids"] for ex in train_examples]
    eval_prompts = [ex["prompt_input_ids"] for ex in eval_examples]
    schedule = batching.BatchSchedule(len(prompts), p.rollout_prompts, p.rollout_prompts // ctx.world_size,
                                      world_size=ctx.world_size, rank=ctx.rank, seed=t.seed,
                                      max_examples=p.iterations * p.rollout_prompts)
    mode = parallel_mode(config, ctx)
    with distributed.fail_together():
        policy = build_policy(config, ctx, resume_from)
        check_context(config, policy, prompts + eval_prompts)
        reference = build_reference(config, policy, ctx)
        critic = build_value_model(config, tokenizer, ctx, resume_from)
        scorer = load_scorer(p.reward, device=ctx.device)
    policy, critic = (distributed.wrap(m, mode, ctx, mixed_precision=t.mixed_precision) for m in (policy, critic))
    models = nn.ModuleDict({"policy": policy, VALUE_MODEL: critic})  # what the optimizer trains
    optimizer = make_optimizer(models, config)
    n_updates = p.iterations * p.ppo_epochs * (p.rollout_prompts // p.minibatch_size)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, config, n_updates))
    scaler = grad_scaler(config, ctx, mode)
    state = restore(resume_from, policy, optimizer, scheduler, scaler, schedule, ctx, {VALUE_MODEL: critic})
    iteration, saved_iteration, updates = state["step"], state["step"], state.get("updates", 0)
    kl = objective.KLController(state.get("kl_coef", p.kl_coef), p.kl_target, p.kl_horizon)
    log = RunLog(out_dir, dataclasses.asdict(config), config.wandb, enabled=ctx.is_main, resume=resume_from is not None)
    log.truncate(state.get("log_lines"))

    def checkpoint_now():
        trainer_state = {"step": iteration, "examples": iteration * p.rollout_prompts, "updates": updates,
                         "kl_coef": kl.coef, "data": schedule.state_dict(), "scheduler": scheduler.state_dict(),
                         "scaler": scaler.state_dict(), "log_lines": log.line_counts(),
                         "config": dataclasses.asdict(config)}
        checkpoint.save_checkpoint(out_dir, iteration, policy, optimizer, trainer_state, ctx, tokenizer,
                                   config.model.name, extra_models={VALUE_MODEL: critic},
                                   extra_lora_bases={VALUE_MODEL: value_model_start(config)})

    progress = progress_bar(schedule.n_steps, iteration, enabled=ctx.is_main)
    for [indices] in schedule:  # one micro-batch per rank and iteration: this rank's share of the prompts
        share = slice(ctx.rank * len(indices), (ctx.rank + 1) * len(indices))
        uniforms = sampling_draws(t.seed, iteration, p.rollout_prompts, p.max_new_tokens)[share]
        rollout, rollout_metrics = make_rollout(policy, reference, critic, scorer, [prompts[i] for i in indices],
                                                uniforms, kl.coef, tokenizer, config, ctx)
        train_metrics, updates = train_on_rollout(models, optimizer, scheduler, scaler, rollout, updates, config, ctx)
        iteration += 1
        metrics = {**rollout_metrics, **train_metrics, "kl_coef": kl.coef, "lr": scheduler.get_last_lr()[0],
                   "counters/iterations": iteration}
        kl.update(rollout_metrics["objective/kl"], p.rollout_prompts)  # (the coefficient logged is the one used)
        if iteration % t.log_every == 0 or iteration == schedule.n_steps:
            log.log(metrics, iteration * p.rollout_prompts)
            progress.set_postfix(score=f"{metrics['objective/scores']:.3f}", kl=f"{metrics['objective/kl']:.2f}",
                                 refresh=False)
        if t.eval_every and iteration % t.eval_every == 0 and iteration < schedule.n_steps:
            eval_metrics = evaluate(policy, reference, scorer, eval_prompts, tokenizer, config, ctx)
            log.log(eval_metrics, iteration * p.rollout_prompts)
        if t.save_every and iteration % t.save_every == 0 and iteration < schedule.n_steps:
            checkpoint_now()
        progress.update(1)
    progress.close()

    if iteration != saved_iteration or resume_from is None:  # (a resumed finished run has this checkpoint)
        checkpoint_now()
    final_metrics = evaluate(policy, reference, scorer, eval_prompts, tokenizer, config, ctx)
    log.log(final_metrics, iteration * p.rollout_prompts)
    final_dir = save_final(policy, out_dir, ctx, tokenizer, lora_base=config.model.name)
    if ctx.is_main:
        print(summary(final_metrics, len(eval_prompts), final_dir, config), flush=True)
    log.finish()
    return final_metrics


def check_shares(config: Config, ctx: distributed.Dist) -> None:
    """Every rank takes an equal share of each rollout and of each minibatch."""
    p = config.ppo
    for key, value in (("ppo.rollout_prompts", p.rollout_prompts), ("ppo.minibatch_size", p.minibatch_size)):
        if value % ctx.world_size:
            raise ConfigError(f"{key}: expected a multiple of the number of ranks ({ctx.world_size}), got {value}")


def check_context(config: Config, policy, prompts: list[list[int]]) -> None:
    """The longest prompt and ppo.max_new_tokens fit in the model's context."""
    longest, context = max(map(len, prompts)), policy.config.max_seq_len
    if longest + config.ppo.max_new_tokens > context:
        raise ConfigError(f"ppo.max_new_tokens: the longest prompt ({longest} tokens) + {config.ppo.max_new_tokens} "
                          f"exceed the context of model {config.model.name} ({context}); lower it or "
                          f"data.max_prompt_length")


def build_policy(config: Config, ctx: distributed.Dist, resume_from) -> nn.Module:
    """The model being trained: model.name, or the checkpoint's weights on resume. With LoRA, the frozen
    model.name with adapters: new ones, or on resume the checkpoint's adapter/ (its model.safetensors holds the
    merged weights, which are not the base)."""
    if not config.lora.rank:
        return load_model(resume_from or resolve_model_dir(config.model.name), config, ctx, trainable=True)
    policy = load_model(resolve_model_dir(config.model.name), config, ctx, trainable=True)
    add_adapters(policy, config, resume_from and resume_from / "adapter")
    return policy


def build_reference(config: Config, policy: nn.Module, ctx: distributed.Dist):
    """The frozen reference, the initial policy: `reference` (or model.name) loaded without gradients; with LoRA
    and the reference being model.name, the policy itself with its adapters off (lora.WithoutAdapters)."""
    path = config.reference or config.model.name
    if config.lora.rank and path == config.model.name:
        return lora.WithoutAdapters(policy)
    return load_model(resolve_model_dir(path), config, ctx, trainable=False)


def value_model_start(config: Config) -> str:
    """The model the critic starts from, as the config names it (see build_value_model)."""
    kind, arg = check_spec(config.ppo.reward)
    return config.ppo.value_model or (arg if kind == "reward_model" else config.model.name)


def build_value_model(config: Config, tokenizer, ctx: distributed.Dist, resume_from) -> RewardModel:
    """The critic: a GPT with a scalar head read at every position (RewardModel(..., every_position=True)).

    Separate from the policy, so that the policy and value losses do not compete for one trunk; started from a
    model that already reads the task, so that the first values are not noise: ppo.value_model if given (a
    reward-model folder, or a causal LM that gets a zero head), else the reward model when ppo.reward is
    reward_model:DIR (as OpenAI's summarize-from-feedback and TRL's PPOTrainer do), else the initial policy's
    weights with a zero head (every value 0 at the start). On resume, the checkpoint's copy. With LoRA the trunk
    is that start, frozen, with adapters (on resume the checkpoint's adapter/ and head), and the head trains."""
    start = value_model_start(config)
    if start == config.model.name:  # (a hub name is fetched; ppo.value_model and reward_model:DIR are folders)
        start = resolve_model_dir(start)
    saved = resume_from and resume_from / VALUE_MODEL
    source = saved if saved and not config.lora.rank else start
    if is_reward_model_dir(source):
        critic = load_reward_model(source, getattr(torch, config.model.dtype), ctx.device)
        if critic.kind != BRADLEY_TERRY:
            raise RewardModelError(f"ppo.value_model: {source} is a {critic.kind}; the value model needs one "
                                   f"output (a reward model, or a causal LM)")
    else:
        backbone = load_model(source, config, ctx, trainable=True)
        critic = RewardModel(backbone, 1, pad_id=tokenizer.pad_id_or_eos())
    critic.requires_grad_().train()
    if config.lora.rank:  # adapters on the trunk alone: add_lora freezes what it is given, and the head must train
        add_adapters(critic.backbone, config, saved and saved / "adapter")
        if saved:  # (the checkpoint's trunk is merged, not the base: only its head is read)
            head = load_file(saved / "model.safetensors", names=["score.weight"])["score.weight"]
            with torch.no_grad():
                critic.score.weight.copy_(head)
    return critic


def sampling_draws(seed: int, iteration: int, n_prompts: int, max_new_tokens: int) -> torch.Tensor:
    """[n_prompts, max_new_tokens] uniforms in [0, 1) for the sampling of rollout `iteration` (−1: the held-out
    samples), one row per prompt of the global rollout, from a generator seeded by batching.epoch_seed("ppo:seed",
    iteration)."""
    generator = torch.Generator().manual_seed(batching.epoch_seed(f"ppo:{seed}", iteration))
    return torch.rand(n_prompts, max_new_tokens, dtype=torch.float64, generator=generator)


def sample(model, tokenizer, prompt_ids: list[list[int]], uniforms, config: Config):
    """(completion ids as generated, the completions' texts): one per prompt, at ppo.temperature."""
    model = distributed.unwrap(model)
    completions = generate(model, tokenizer, prompt_ids, max_new_tokens=config.ppo.max_new_tokens,
                           temperature=config.ppo.temperature, uniforms=uniforms)
    stop = stop_ids(model, tokenizer)
    return completions, [completion_text(tokenizer, c, stop) for c in completions]


def token_values(critic, batch: dict) -> torch.Tensor:
    """V [N, T−1] on the grid of dpo.logprobs: the critic read at position t values the state before the token at
    t + 1 (labels[:, t + 1]) is drawn."""
    return critic(batch["input_ids"], batch["attention_mask"], every_position=True)[:, :-1, 0]


@torch.no_grad()
def make_rollout(policy, reference, critic, scorer, prompt_ids, uniforms, kl_coef: float, tokenizer, config: Config,
                 ctx) -> tuple[dict, dict]:
    """This rank's share of one rollout → (tensors [n, ...] on the device: the batch (input_ids, attention_mask,
    labels: −100 off the completion), mask, old_logps, old_values, advantages, returns; the rollout's metrics
    averaged over every rank's samples)."""
    p = config.ppo
    completions, texts = sample(policy, tokenizer, prompt_ids, uniforms, config)
    scores = scorer([tokenizer.decode(x) for x in prompt_ids], texts).to(ctx.device)
    batch = batching.collate([x + c for x, c in zip(prompt_ids, completions)],
                             [[batching.IGNORE_INDEX] * len(x) + c for x, c in zip(prompt_ids, completions)],
                             list(range(len(prompt_ids))), tokenizer.pad_id_or_eos())
    batch = {k: v.to(ctx.device) for k, v in batch.items() if k != "indices"}
    mask = response_mask(batch["labels"])
    chunk = p.minibatch_size // ctx.world_size  # forward passes no larger than the training ones
    parts = []
    for i in range(0, len(prompt_ids), chunk):
        rows = {k: v[i:i + chunk] for k, v in batch.items()}
        with autocast(config, ctx):
            parts.append((model_token_logps(policy, rows)[0], model_token_logps(reference, rows)[0],
                          token_values(critic, rows).float()))
    old_logps, reference_logps, old_values = (torch.cat(x) for x in zip(*parts))
    rewards = objective.token_rewards(old_logps, reference_logps, scores, mask, kl_coef)
    advantages, returns = objective.gae(rewards, old_values, mask, p.gamma, p.lam)
    if p.whiten_advantages:
        advantages = objective.whiten(advantages, mask)
    sequence_kl_sampled = ((old_logps - reference_logps) * mask).sum(-1)  # Σ_t log π/π_ref, [n]
    sums = {"objective/kl": sequence_kl_sampled.sum(), "objective/scores": scores.sum(),
            "objective/rlhf_reward": (scores - kl_coef * sequence_kl_sampled).sum(),
            "objective/entropy": -(old_logps * mask).sum(), "objective/length": mask.sum().float()}
    metrics = distributed.all_reduce_mean(sums, torch.tensor(float(len(prompt_ids))))
    return {**batch, "mask": mask, "old_logps": old_logps, "old_values": old_values, "advantages": advantages,
            "returns": returns}, metrics


def train_on_rollout(models, optimizer, scheduler, scaler, rollout: dict, updates: int, config: Config, ctx):
    """ppo.ppo_epochs passes over this rank's rollout in shuffled minibatches, one optimizer step each (the
    ranks' gradients averaged by DDP). Returns (the metrics averaged over minibatches and ranks, the number of
    optimizer steps taken so far)."""
    p, policy, critic = config.ppo, models["policy"], models[VALUE_MODEL]
    n, size = len(rollout["mask"]), p.minibatch_size // ctx.world_size
    sums = {}
    for _ in range(p.ppo_epochs):
        order = torch.randperm(n).to(ctx.device)
        for start in range(0, n, size):
            minibatch = {k: v[order[start:start + size]] for k, v in rollout.items()}
            mask = minibatch["mask"]
            with autocast(config, ctx):
                policy_logps = model_token_logps(policy, minibatch)[0]
                values = token_values(critic, minibatch).float()
            policy_loss, policy_metrics = objective.policy_loss(policy_logps, minibatch["old_logps"],
                                                                minibatch["advantages"], mask, p.clip_range)
            value_loss, value_metrics = objective.value_loss(values, minibatch["old_values"], minibatch["returns"],
                                                             mask, p.value_clip_range)
            loss = policy_loss + p.vf_coef * value_loss
            scaler.scale(loss).backward()
            updates += 1
            grad_norm = update(models, optimizer, scheduler, scaler, loss.item(), updates, config)
            step_metrics = {"loss/policy": policy_loss.detach(), "loss/value": value_loss.detach(),
                            "grad_norm": torch.tensor(grad_norm), **policy_metrics, **value_metrics}
            for name, value in step_metrics.items():
                sums[name] = sums.get(name, 0) + value.float().to(ctx.device)
    return distributed.all_reduce_mean(sums, torch.tensor(float(p.ppo_epochs * n // size))), updates


@torch.no_grad()
def evaluate(policy, reference, scorer, prompt_ids: list[list[int]], tokenizer, config: Config, ctx) -> dict:
    """Held-out samples of the policy and of the reference from the same random draws (this rank's share of the
    prompts), scored with ppo.reward: eval/scores_policy, eval/scores_reference, and eval/kl, the policy's exact
    KL(π‖π_ref) per sample summed over its tokens (dpo.evaluate.kl; the sequence KL at ppo.temperature 1)."""
    per_rank = -(-len(prompt_ids) // ctx.world_size)
    share = slice(ctx.rank * per_rank, (ctx.rank + 1) * per_rank)
    mine = prompt_ids[share]
    sums = {name: torch.zeros((), device=ctx.device) for name in ("eval/scores_policy", "eval/scores_reference",
                                                                   "eval/kl")}
    if mine:
        uniforms = sampling_draws(config.train.seed, -1, len(prompt_ids), config.ppo.max_new_tokens)[share]
        texts = [tokenizer.decode(x) for x in mine]
        for name, model in (("policy", policy), ("reference", reference)):
            completions, completion_texts = sample(model, tokenizer, mine, uniforms, config)
            sums[f"eval/scores_{name}"] += scorer(texts, completion_texts).sum().to(ctx.device)
            if name == "policy":
                kl = sequence_kl(distributed.unwrap(policy), reference, mine, completions, device=ctx.device,
                                 pad_id=tokenizer.pad_id_or_eos())["kl_exact"]
                sums["eval/kl"] += kl.sum().to(ctx.device)
    return distributed.all_reduce_mean(sums, torch.tensor(float(len(mine))))


def summary(final_metrics: dict, n_prompts: int, final_dir: Path, config: Config) -> str:
    """The end of a run in words: where the model is, reward before and after, and the KL it cost."""
    p = config.ppo
    target = f"target {p.kl_target:g}" if p.kl_target else f"fixed kl_coef {p.kl_coef:g}"
    return "\n".join([
        f"final model: {final_dir}",
        f"reward ({p.reward}) of samples on {n_prompts} held-out prompts: reference "
        f"{final_metrics['eval/scores_reference']:.3f} -> policy {final_metrics['eval/scores_policy']:.3f}",
        f"KL(policy || reference) of the policy's samples: {final_metrics['eval/kl']:.3f} nats per sample ({target})"])
