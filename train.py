"""Train a policy with SFT or a preference loss (DPO and its family), on one process, DDP or FSDP2.

    python train.py --config configs/quickstart.yaml                       # one CPU / GPU
    torchrun --nproc_per_node=8 train.py --config configs/imdb/dpo.yaml loss.beta=0.5
    torchrun --nnodes=2 --node_rank=$R --nproc_per_node=8 --rdzv_backend=c10d \\
             --rdzv_endpoint=$HOST:29500 train.py --config ...            # several nodes

One DPO step, as the loop below runs it (SPEC §1):
    for each micro-batch of this rank's share of the global batch:
        policy log-probs of chosen + rejected, one forward over the concatenated batch  (policy_logps)
        reference log-probs of the same, without gradients (or from the precomputed cache)
        loss = mean over pairs of −log σ(β·[(π_w − ref_w) − (π_l − ref_l)])   (dpo.losses)
        (loss · micro / per-rank batch).backward()   — gradients all-reduced on the last micro-batch only
    clip the gradient norm, optimizer step, learning-rate schedule step.
"""
import argparse
import contextlib
import dataclasses
import json
import math
import os
import resource
import shutil
import sys
import time
from pathlib import Path

import torch
import torch.nn as nn

from dpo import batching, checkpoint, data, distributed, losses, quickstart, reference_cache, reward_model
from dpo.interop import hf_checkpoint
from dpo.config import Config, ConfigError, load_config, save_config
from dpo.logprobs import chunked_token_logps, reduce_token_logps, response_mask, sequence_unlikelihood
from dpo.model import GPT, GPTConfig
from dpo.run_log import RunLog
from dpo.tokenizer import Tokenizer, train_sentencepiece

REWARDS = {"quickstart": lambda prompts, completions: [quickstart.reward(c) for c in completions]}
REWARD_MODEL_LOSSES = ("classifier", "reward_model")  # a GPT + linear head (dpo/reward_model.py), not a policy
PEAK_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12, "A10G": 125e12}  # bf16 dense


# ---------------------------------------------------------------------------------------------------
# The math of one step: log-probs from a forward pass, then the loss.

def token_logps(model: nn.Module, batch: dict) -> torch.Tensor:
    """log π(y_t | x, y_<t) of every next token: [N, T−1] fp32 (0 where labels are −100), N = 2B for pairs.

    The forward returns final hidden states [N, T, C]; the log-probs are gathered from them and the output
    projection chunk by chunk (dpo.logprobs), so the [N, T, V] logits never exist in memory."""
    hidden = model(batch["input_ids"], batch["attention_mask"], return_hidden=True)
    head = distributed.unwrap(model).lm_head
    # FSDP2 keeps the root's parameters (lm_head among them) gathered after forward; should they be
    # sharded DTensors, gather them (differentiably: the gradient is scattered back to the shards).
    weight, bias = (p.full_tensor() if hasattr(p, "full_tensor") else p for p in (head.weight, head.bias))
    return chunked_token_logps(hidden, weight, bias, batch["labels"])


def policy_logps(model: nn.Module, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """log π(y|x) of every row, summed over its response tokens: (logps [N] fp32, response lengths [N])."""
    return reduce_token_logps(token_logps(model, batch), response_mask(batch["labels"]))


def preference_step(policy, reference, batch: dict, config: Config, cached_reference=None):
    """One micro-batch of pairs → (per-pair losses [B], per-pair metrics {name: [B]})."""
    policy_token_logps, mask = token_logps(policy, batch), response_mask(batch["labels"])
    logps, lengths = reduce_token_logps(policy_token_logps, mask)
    policy_chosen_logps, policy_rejected_logps = logps.chunk(2)
    chosen_lengths, rejected_lengths = lengths.chunk(2)
    if cached_reference is not None:
        index = batch["indices"]
        reference_chosen_logps = cached_reference.chosen_logps[index.cpu()].to(logps.device)
        reference_rejected_logps = cached_reference.rejected_logps[index.cpu()].to(logps.device)
    elif reference is not None:
        with torch.no_grad():
            reference_chosen_logps, reference_rejected_logps = policy_logps(reference, batch)[0].chunk(2)
    else:  # reference-free: log π_ref taken as 0
        reference_chosen_logps = torch.zeros_like(policy_chosen_logps)
        reference_rejected_logps = torch.zeros_like(policy_rejected_logps)
    options = dict(config.loss.options)
    if config.loss.label_smoothing:
        options["label_smoothing"] = config.loss.label_smoothing
    if "unlikelihood" in losses.parse_loss_names(config.loss.name):  # needs per-token probabilities
        options["policy_rejected_unlikelihood"] = sequence_unlikelihood(policy_token_logps, mask).chunk(2)[1]
    pair_losses = losses.preference_loss(
        policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps,
        loss_type=config.loss.name, beta=config.loss.beta, rpo_alpha=config.loss.rpo_alpha,
        chosen_lengths=chosen_lengths, rejected_lengths=rejected_lengths, **options)
    metrics = losses.preference_metrics(
        policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps,
        pair_losses, beta=config.loss.beta, chosen_lengths=chosen_lengths, rejected_lengths=rejected_lengths)
    return pair_losses, metrics


def sft_step(policy, batch: dict, config: Config):
    """One micro-batch of SFT sequences → (per-sequence losses [B], metrics). loss.name sft: the summed
    NLL of each target (the reference code); sft_mean: its per-token mean."""
    logps, lengths = policy_logps(policy, batch)
    seq_losses = losses.sft_mean_loss(logps, chosen_lengths=lengths) if config.loss.name == "sft_mean" \
        else losses.sft_loss(logps)
    return seq_losses, {"loss/train": seq_losses.detach(), "logps_train/chosen": logps.detach(),
                        "lengths_train/chosen": lengths.float()}


def reward_model_step(model, batch: dict, config: Config):
    """A sequence classifier (loss.name classifier: cross-entropy on labels) or a Bradley–Terry reward model
    (loss.name reward_model: −log σ(r_w − r_l) on pairs), both a GPT with a linear head (dpo/reward_model.py)."""
    scores = model(batch["input_ids"], batch["attention_mask"])
    if config.loss.name == "classifier":
        example_losses = reward_model.classification_loss(scores, batch["labels"])
        metrics = {f"{k}/train": v for k, v in reward_model.classification_metrics(scores, batch["labels"]).items()}
    else:
        chosen_scores, rejected_scores = scores[:, 0].chunk(2)
        example_losses = reward_model.bradley_terry_loss(chosen_scores, rejected_scores)
        metrics = {k.replace("rewards/", "rewards_train/"): v
                   for k, v in reward_model.bradley_terry_metrics(chosen_scores, rejected_scores).items()}
    return example_losses, {"loss/train": example_losses.detach(), **metrics}


def micro_batch_losses(policy, reference, batch, config, kind, cached_reference=None):
    if kind == "preference":
        return preference_step(policy, reference, batch, config, cached_reference)
    if kind in ("classification", "reward_pairs"):
        return reward_model_step(policy, batch, config)
    return sft_step(policy, batch, config)


# ---------------------------------------------------------------------------------------------------
# Building blocks: tokenizer, data, models, optimizer.

def resolve_model_dir(name: str) -> Path:
    """A local checkpoint folder as is; a hub name ("gpt2-large", "org/name") downloaded into the cache."""
    path = Path(name)
    if path.is_dir():
        return path
    if path.is_absolute() or name.startswith(".") or name.count("/") > 1:
        raise FileNotFoundError(f"{name}: no such checkpoint directory")
    from dpo.interop.hub import snapshot_download
    return snapshot_download(name)


def load_tokenizer(config: Config, ctx: distributed.Dist, out_dir: Path) -> Tokenizer:
    if config.model.tokenizer:
        return Tokenizer.from_pretrained(config.model.tokenizer)
    if config.model.name:
        return Tokenizer.from_pretrained(resolve_model_dir(config.model.name))
    trained = out_dir / "tokenizer"
    if not (trained / "tokenizer.model").is_file():
        if config.model.tokenizer_vocab_size <= 0:
            raise ConfigError("model.tokenizer: a new model (model.name empty) needs model.tokenizer or "
                              "model.tokenizer_vocab_size > 0 to train a SentencePiece tokenizer")
        if ctx.is_main:  # train on the training texts, once
            _, examples, _ = data.load_examples(config.data.format, config.data.path, config.data.split)
            corpus = out_dir / "tokenizer_corpus.txt"
            corpus.write_text("\n".join(" ".join(v for k, v in ex.items() if k in ("prompt", "completion",
                                        "chosen", "rejected")) for ex in examples))
            trained.mkdir(parents=True, exist_ok=True)
            train_sentencepiece([corpus], trained / "tokenizer", config.model.tokenizer_vocab_size)
            corpus.unlink()
        distributed.barrier()
    return Tokenizer.from_pretrained(trained)


def load_data(config: Config, tokenizer: Tokenizer, ctx: distributed.Dist):
    """Tokenized train and eval examples (lists of dicts) and their kind (preference | sft)."""
    d = config.data
    if config.loss.name in REWARD_MODEL_LOSSES:  # raw examples: the collate functions tokenize them
        expected = "classification" if config.loss.name == "classifier" else "preference"
        kind, train_examples, counts = data.load_examples(d.format, d.path, d.split)
        _, eval_examples, eval_counts = data.load_examples(d.format, d.eval_path or d.path, d.eval_split)
        if kind != expected:
            raise ConfigError(f"loss.name={config.loss.name} needs {expected} data; format {d.format!r} gives {kind}")
        if 0 < d.eval_examples < len(eval_examples):
            keep = torch.randperm(len(eval_examples), generator=torch.Generator().manual_seed(config.train.seed))
            eval_examples = [eval_examples[i] for i in sorted(keep[:d.eval_examples].tolist())]
        if ctx.is_main:
            print(data.format_summary(f"{d.format} {d.path} [{d.split}]", counts) + "\n"
                  + data.format_summary(f"{d.format} {d.eval_path or d.path} [{d.eval_split}]", eval_counts)
                  + f" ({len(eval_examples)} used)", flush=True)
        return ("classification" if kind == "classification" else "reward_pairs"), train_examples, eval_examples
    args = dict(max_length=d.max_length, max_prompt_length=d.max_prompt_length, truncation=d.truncation,
                prompt_truncation_side=d.prompt_truncation_side or None)
    kind, train_examples, train_summary = batching.load_tokenized(d.format, d.path, d.split, tokenizer, **args)
    _, eval_examples, eval_summary = batching.load_tokenized(
        d.format, d.eval_path or d.path, d.eval_split, tokenizer, limit=d.eval_examples,
        seed=config.train.seed, **args)
    if ctx.is_main:
        print(train_summary + "\n" + eval_summary, flush=True)
    return kind, train_examples, eval_examples


def new_model(config: Config, tokenizer: Tokenizer) -> GPT:
    m = config.model
    return GPT(GPTConfig(vocab_size=tokenizer.vocab_size, n_layer=m.n_layer, n_head=m.n_head, n_embd=m.n_embd,
                         max_seq_len=m.max_seq_len, dropout=m.dropout, eos_id=tokenizer.eos_id,
                         bos_id=tokenizer.bos_id))


def load_model(path, config: Config, ctx: distributed.Dist, trainable: bool, meta: bool = False) -> GPT:
    """A GPT from a Hugging Face folder; with `meta`, only its shape (FSDP ranks > 0: weights come from rank 0)."""
    dtype = getattr(torch, config.model.dtype)
    if meta:
        with torch.device("meta"):
            model = GPT(hf_checkpoint.config_from_hf(json.loads((Path(path) / "config.json").read_text())))
    else:
        model = GPT.from_pretrained(path, dtype=dtype, device=ctx.device)
    model.config.dropout = config.model.dropout
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = config.model.dropout
    model.requires_grad_(trainable)
    return model.train(trainable)


def build_policy(config: Config, tokenizer: Tokenizer, ctx: distributed.Dist, kind: str, resume_from,
                 meta: bool) -> nn.Module:
    """The model being trained: from the latest checkpoint on resume, else from model.name, else new. Reward
    models (kind classification / reward_pairs) put a zero-initialised linear head on that GPT. With `meta`
    only the shapes are built (FSDP ranks > 0 receive rank 0's weights when the model is sharded)."""
    dtype = getattr(torch, config.model.dtype)
    is_reward_model = kind in ("classification", "reward_pairs")
    if is_reward_model and resume_from is not None and not meta:
        return reward_model.load_reward_model(resume_from, dtype, ctx.device).requires_grad_(True).train()
    if resume_from is not None or config.model.name:
        gpt = load_model(resume_from or resolve_model_dir(config.model.name), config, ctx, True, meta)
    else:
        with torch.device("meta" if meta else ctx.device):
            gpt = new_model(config, tokenizer).to(dtype)
    if is_reward_model:
        n_outputs = 2 if kind == "classification" else 1
        with torch.device("meta" if meta else ctx.device):
            return reward_model.RewardModel(gpt, n_outputs, pad_id=batching.pad_id_for(tokenizer)).train()
    return gpt


def parallel_mode(config: Config, ctx: distributed.Dist) -> str:
    mode = config.train.parallel
    if mode == "auto":
        mode = "ddp" if ctx.world_size > 1 else "none"
    if mode in ("ddp", "fsdp") and ctx.world_size == 1:
        mode = "none"  # one process: nothing to parallelise, same arithmetic
    return mode


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


# ---------------------------------------------------------------------------------------------------
# Evaluation and sampling.

def collate(examples: list[dict], kind: str, tokenizer: Tokenizer, config: Config, device) -> dict:
    if kind == "classification":
        batch = reward_model.collate_classification(examples, tokenizer, config.data.max_length)
    elif kind == "reward_pairs":
        batch = reward_model.collate_reward_pairs(examples, tokenizer, config.data.max_length)
    else:
        fn = batching.collate_preference if kind == "preference" else batching.collate_sft
        batch = fn(examples, batching.pad_id_for(tokenizer), config.data.pad_to_multiple_of or None)
    return {k: v.to(device) for k, v in batch.items()}


@torch.no_grad()
def evaluate(policy, reference, eval_examples, kind, tokenizer, config, ctx, cached_reference=None) -> dict:
    """Metrics averaged over every evaluation example (all ranks), with the reference code's names."""
    policy.eval()
    sums, count = {}, torch.zeros((), device=ctx.device)
    for indices, is_real in batching.eval_micro_batches(len(eval_examples), config.train.micro_batch_size,
                                                        ctx.world_size, ctx.rank):
        batch = collate([eval_examples[i] for i in indices], kind, tokenizer, config, ctx.device)
        with autocast(config, ctx):
            _, metrics = micro_batch_losses(policy, reference, batch, config, kind, cached_reference)
        weight = torch.tensor(is_real, dtype=torch.float32, device=ctx.device)
        for name, values in metrics.items():
            name = name.replace("_train/", "_eval/").replace("/train", "/eval")
            sums[name] = sums.get(name, 0) + (values.float() * weight).sum()
        count += weight.sum()
    policy.train()
    return distributed.all_reduce_mean(sums, count)


@contextlib.contextmanager
def unsharded_for_generation(model: nn.Module):
    """Under FSDP2, gather each block's parameters once for the whole generation instead of once per token
    (per forward), and without collectives in the token loop, so ranks may stop after different numbers
    of tokens without hanging. A no-op for unsharded models."""
    from torch.distributed.fsdp import FSDPModule
    fsdp_modules = [m for m in model.modules() if isinstance(m, FSDPModule)]
    for m in fsdp_modules:
        m.unshard()
        m.set_reshard_after_forward(False, recurse=False)
    try:
        yield
    finally:
        for m in fsdp_modules:
            m.reshard()
            # blocks reshard after forward in training; the root keeps FSDP2's default (it does not)
            m.set_reshard_after_forward(m is not model, recurse=False)


@torch.no_grad()
def sample(policy, reference, prompts: list[list[int]], tokenizer, config, ctx, step) -> list[dict]:
    """Completions of the policy and the reference for this rank's prompts (temperature sampling). Every
    rank calls it, with or without prompts: under FSDP2 gathering the parameters is collective."""
    t = config.train
    rows = [{"step": step, "prompt": tokenizer.decode(p)} for p in prompts]
    for name, model in (("policy", policy), ("reference", reference)):
        if model is None:
            continue
        with unsharded_for_generation(model):
            if not prompts:
                continue
            batch = batching.collate_prompts(prompts, batching.pad_id_for(tokenizer))
            ids, mask = batch["input_ids"].to(ctx.device), batch["attention_mask"].to(ctx.device)
            generator = torch.Generator(device=ctx.device).manual_seed(t.seed + step + ctx.rank)
            out = distributed.unwrap(model).generate(
                ids, mask, max_new_tokens=t.sample_max_new_tokens, temperature=t.sample_temperature,
                eos_id=tokenizer.eos_id, pad_id=batching.pad_id_for(tokenizer), generator=generator)
        for row, new in zip(rows, out[:, ids.shape[1]:].tolist()):
            if tokenizer.eos_id in new:
                new = new[:new.index(tokenizer.eos_id)]
            row[name] = tokenizer.decode(new)
    if t.sample_reward and rows:
        for name in ("policy", "reference"):
            if name in rows[0]:
                scores = REWARDS[t.sample_reward]([r["prompt"] for r in rows], [r[name] for r in rows])
                for row, score in zip(rows, scores):
                    row[f"reward_{name}"] = score
    return rows


@torch.no_grad()
def cached_reference_logps(reference_path: Path, examples: list[dict], tokenizer: Tokenizer, config: Config,
                           ctx: distributed.Dist, mode: str) -> reference_cache.ReferenceLogps:
    """log π_ref of every pair's chosen and rejected, from the disk cache or computed once here: the ranks
    share the examples, sum their parts, rank 0 writes the file. The key covers the token ids, the
    tokenization settings and the reference checkpoint's files (dpo/reference_cache.py)."""
    weights = sorted(p for p in reference_path.iterdir() if p.suffix in (".safetensors", ".bin", ".json"))
    identity = [str(reference_path.resolve())] + [(p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in weights]
    key = reference_cache.reference_cache_key(
        [(ex["chosen_input_ids"], ex["chosen_labels"], ex["rejected_input_ids"], ex["rejected_labels"]) for ex in examples],
        dataclasses.asdict(config.data), repr(identity))
    path = reference_cache.cache_path(key)
    cached = reference_cache.load_reference_logps(key, path)
    if cached is not None:
        return cached
    on_meta = mode == "fsdp" and not ctx.is_main
    reference = distributed.wrap(load_model(reference_path, config, ctx, False, meta=on_meta), mode, ctx,
                                 mixed_precision=config.train.mixed_precision, trainable=False)
    n = len(examples)
    table = torch.zeros(4, n, dtype=torch.float64, device=ctx.device)  # chosen, rejected logps; their lengths
    for indices, is_real in batching.eval_micro_batches(n, config.train.micro_batch_size, ctx.world_size, ctx.rank):
        batch = collate([examples[i] for i in indices], "preference", tokenizer, config, ctx.device)
        with autocast(config, ctx):
            logps, lengths = policy_logps(reference, batch)
        real = torch.tensor(is_real, device=ctx.device)
        index = batch["indices"][real]
        table[:, index] = torch.stack([*logps.chunk(2), *lengths.chunk(2)]).double()[:, real]
    if torch.distributed.is_initialized():
        torch.distributed.all_reduce(table)  # every example was computed by exactly one rank
    table = table.cpu()
    result = reference_cache.ReferenceLogps(table[0].float(), table[1].float(), table[2].long(), table[3].long())
    if ctx.is_main:
        reference_cache.save_reference_logps(result, key, path)
        print(f"reference log-probs of {n} pairs cached in {path}", flush=True)
    distributed.barrier()
    return result


def autocast(config: Config, ctx: distributed.Dist):
    """bf16 autocast without FSDP (FSDP2 casts through its MixedPrecisionPolicy instead)."""
    enabled = config.train.mixed_precision == "bf16" and parallel_mode(config, ctx) != "fsdp"
    return torch.autocast(ctx.device.type, dtype=torch.bfloat16, enabled=enabled)


def peak_memory_gb(device: torch.device) -> float:
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux: KiB


# ---------------------------------------------------------------------------------------------------
# The run.

def train(config: Config) -> dict:
    """Run one training job; returns the final evaluation metrics."""
    ctx = distributed.setup(config.train.device)
    t = config.train
    out_dir = Path(t.out_dir)
    if ctx.is_main:
        out_dir.mkdir(parents=True, exist_ok=True)
        save_config(config, out_dir / "config.yaml")
    distributed.barrier()
    torch.manual_seed(t.seed)

    tokenizer = load_tokenizer(config, ctx, out_dir)
    kind, train_examples, eval_examples = load_data(config, tokenizer, ctx)
    if kind == "sft" and config.loss.name not in ("sft", "sft_mean"):
        raise ConfigError(f"loss.name: data format {config.data.format!r} holds SFT examples; use sft or sft_mean")
    schedule = batching.BatchSchedule(len(train_examples), t.batch_size, t.micro_batch_size,
                                      world_size=ctx.world_size, rank=ctx.rank, seed=t.seed, epochs=t.epochs,
                                      max_examples=t.max_examples)
    if ctx.is_main:
        print(schedule.describe(), flush=True)

    resume_from = checkpoint.latest_checkpoint(out_dir) if t.resume else None
    mode = parallel_mode(config, ctx)
    on_meta = mode == "fsdp" and not ctx.is_main  # under FSDP only rank 0 reads weights
    policy = build_policy(config, tokenizer, ctx, kind, resume_from, meta=on_meta)
    reference = None
    needs_reference = kind == "preference" and not config.loss.reference_free
    if needs_reference:
        reference_path = config.reference or config.model.name
        if not reference_path:  # a new model: the reference is the initial policy, kept on disk for resumes
            reference_path = out_dir / "reference"
            if resume_from is None:
                checkpoint.save_hf(policy, reference_path, ctx, tokenizer)
                distributed.barrier()
        reference_path = resolve_model_dir(str(reference_path))

    train_reference_logps = eval_reference_logps = None
    if needs_reference and t.reference_cache:  # log π_ref once for every pair; only the policy stays in memory
        train_reference_logps = cached_reference_logps(reference_path, train_examples, tokenizer, config, ctx, mode)
        eval_reference_logps = cached_reference_logps(reference_path, eval_examples, tokenizer, config, ctx, mode)
    elif needs_reference:
        reference = load_model(reference_path, config, ctx, trainable=False, meta=on_meta)
    if t.compile:
        for block in policy.blocks:
            block.compile()
    policy = distributed.wrap(policy, mode, ctx, mixed_precision=t.mixed_precision,
                              activation_checkpointing=t.activation_checkpointing, cpu_offload=t.cpu_offload)
    if reference is not None:
        reference = distributed.wrap(reference, mode, ctx, mixed_precision=t.mixed_precision, trainable=False)
    optimizer = make_optimizer(policy, config)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: lr_factor(s, config, schedule.n_steps))

    examples_seen, step = 0, 0
    if resume_from is not None:
        state = checkpoint.load_training_state(resume_from, policy, optimizer, ctx)
        schedule.load_state_dict(state["data"])
        scheduler.load_state_dict(state["scheduler"])
        examples_seen, step = state["examples"], state["step"]
        if ctx.is_main:
            print(f"resumed from {resume_from} at step {step} ({examples_seen} examples)", flush=True)
    log = RunLog(out_dir, dataclasses.asdict(config), config.wandb, enabled=ctx.is_main, resume=resume_from is not None)
    if resume_from is not None:
        log.truncate_after(examples_seen)

    sample_prompts = [ex["prompt_input_ids"] for ex in eval_examples[:t.sample_prompts]] \
        if kind in ("preference", "sft") else []  # reward models do not generate
    my_prompts = sample_prompts[ctx.rank::ctx.world_size]
    per_rank_batch = t.batch_size // ctx.world_size
    flops_per_token = distributed.unwrap(policy).flops_per_token(config.data.max_length) + (
        distributed.unwrap(reference).flops_per_token(config.data.max_length, backward=False) if reference else 0)
    progress = None
    if ctx.is_main:
        from tqdm import tqdm
        progress = tqdm(total=schedule.n_steps, initial=step, desc="train", dynamic_ncols=True,
                        disable=os.environ.get("DPO_NO_PROGRESS") == "1")

    def checkpoint_now():
        trainer_state = {"step": step, "examples": examples_seen, "data": schedule.state_dict(),
                         "scheduler": scheduler.state_dict()}
        checkpoint.save_checkpoint(out_dir, step, policy, optimizer, trainer_state, ctx, tokenizer)

    for micro_batches in schedule:
        start = time.perf_counter()
        sums, tokens = {}, torch.zeros((), device=ctx.device)
        for i, indices in enumerate(micro_batches):
            batch = collate([train_examples[j] for j in indices], kind, tokenizer, config, ctx.device)
            with distributed.gradient_sync(policy, enabled=i == len(micro_batches) - 1), autocast(config, ctx):
                example_losses, metrics = micro_batch_losses(policy, reference, batch, config, kind,
                                                             train_reference_logps)
                # sum / per-rank batch: k micro-batches add up to the mean over the rank's share, and
                # DDP / FSDP average the ranks' gradients: the mean over the global batch.
                (example_losses.sum() / per_rank_batch).backward()
            for name, values in metrics.items():
                sums[name] = sums.get(name, 0) + values.detach().float().sum()
            tokens += batch["attention_mask"].sum()
        grad_norm = clip_grad_norm(policy, t.max_grad_norm)
        metrics = distributed.all_reduce_mean(sums, torch.tensor(float(per_rank_batch), device=ctx.device))
        if not (math.isfinite(metrics["loss/train"]) and math.isfinite(grad_norm)):
            raise FloatingPointError(
                f"non-finite loss ({metrics['loss/train']}) or gradient norm ({grad_norm}) at step {step + 1}; "
                f"stopping without an update. The last good checkpoint is in {out_dir / 'checkpoints'}")
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        examples_seen += t.batch_size
        elapsed = time.perf_counter() - start

        if step % t.log_every == 0 or step == schedule.n_steps:
            tokens_total = distributed.all_reduce_mean({"tokens": tokens})["tokens"] * ctx.world_size
            metrics.update({"grad_norm": grad_norm, "lr": scheduler.get_last_lr()[0],
                            "examples_per_second": t.batch_size / elapsed, "tokens_per_second": tokens_total / elapsed,
                            "peak_memory_gb": peak_memory_gb(ctx.device), "counters/updates": step})
            if ctx.device.type == "cuda":
                name = torch.cuda.get_device_name(ctx.device)
                peak = next((v for k, v in PEAK_FLOPS.items() if k in name), None)
                if peak:  # model FLOPs over all padded positions processed, per GPU
                    padded = batch["input_ids"].numel() * len(micro_batches)
                    metrics["mfu"] = flops_per_token * padded / elapsed / peak
            log.log(metrics, examples_seen)
            if progress is not None:
                progress.set_postfix(loss=f"{metrics['loss/train']:.4f}", refresh=False)
        if t.eval_every and step % t.eval_every == 0 and step < schedule.n_steps:
            log.log(evaluate(policy, reference, eval_examples, kind, tokenizer, config, ctx, eval_reference_logps),
                    examples_seen)
        if t.sample_every and step % t.sample_every == 0:
            write_samples(policy, reference, my_prompts, tokenizer, config, ctx, step, examples_seen, log, out_dir)
        if t.save_every and step % t.save_every == 0 and step < schedule.n_steps:
            checkpoint_now()
        if progress is not None:
            progress.update(1)
    if progress is not None:
        progress.close()

    final_metrics = evaluate(policy, reference, eval_examples, kind, tokenizer, config, ctx, eval_reference_logps)
    log.log(final_metrics, examples_seen)
    checkpoint_now()
    final_dir, final_tmp = out_dir / "final", out_dir / "final.tmp"  # written aside, then renamed
    if ctx.is_main:
        shutil.rmtree(final_tmp, ignore_errors=True)
    distributed.barrier()
    checkpoint.save_hf(policy, final_tmp, ctx, tokenizer)
    if ctx.is_main:
        shutil.rmtree(final_dir, ignore_errors=True)
        os.replace(final_tmp, final_dir)
    distributed.barrier()
    rewards = {}
    if t.sample_reward and sample_prompts:
        rewards = write_samples(policy, reference, my_prompts, tokenizer, config, ctx, step, examples_seen, log,
                                out_dir)
    if ctx.is_main:
        print(summary(final_metrics, rewards, len(eval_examples), len(sample_prompts), final_dir), flush=True)
    log.finish()
    return final_metrics


def summary(final_metrics: dict, rewards: dict, n_eval: int, n_prompts: int, final_dir: Path) -> str:
    """The end of a run in words: where the model is, and the numbers a newcomer should look at."""
    lines = [f"final model: {final_dir}", f"evaluation on {n_eval} held-out examples:"]
    lines += [f"  {k}: {v:.4f}" for k, v in sorted(final_metrics.items())]
    if "rewards_eval/accuracies" in final_metrics:  # DPO's implicit reward β·log(π/π_ref), or a reward model's
        which = "the implicit reward" if "logps_eval/chosen" in final_metrics else "the reward model"
        lines.append(f"held-out preference accuracy of {which}: "
                     f"{final_metrics['rewards_eval/accuracies']:.1%} (chance: 50%)")
    if "samples/reward_policy" in rewards:
        before = rewards.get("samples/reward_reference")
        lines.append(f"ground-truth reward of samples on {n_prompts} held-out prompts: "
                     + (f"reference {before:.3f} -> " if before is not None else "")
                     + f"policy {rewards['samples/reward_policy']:.3f}")
    return "\n".join(lines)


def write_samples(policy, reference, prompts, tokenizer, config, ctx, step, examples_seen, log, out_dir) -> dict:
    """Sample on every rank, gather, append to samples.jsonl and wandb; return the mean sample rewards."""
    rows = sample(policy, reference, prompts, tokenizer, config, ctx, step)
    if torch.distributed.is_initialized():
        gathered = [None] * ctx.world_size
        torch.distributed.all_gather_object(gathered, rows)
        rows = [r for part in gathered for r in part]
    if not ctx.is_main or not rows:
        return {}
    with open(out_dir / "samples.jsonl", "a") as f:
        for row in rows:
            f.write(json.dumps({"examples": examples_seen, **row}) + "\n")
    columns = list(rows[0])
    log.table("samples", columns, [[row.get(c) for c in columns] for row in rows], examples_seen)
    rewards = {f"samples/{k}": sum(r[k] for r in rows) / len(rows) for k in rows[0] if k.startswith("reward_")}
    if rewards:
        log.log(rewards, examples_seen)
    return rewards


def clip_grad_norm(model: nn.Module, max_norm: float) -> float:
    """Clip to max_norm (0 = no clipping) and return the norm before clipping (a plain float on every rank)."""
    params = [p for p in model.parameters() if p.grad is not None]
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))
    if hasattr(norm, "full_tensor"):  # FSDP2: a DTensor
        norm = norm.full_tensor()
    return float(norm)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", help="YAML config file (see configs/)")
    parser.add_argument("overrides", nargs="*", help="key=value overrides, e.g. loss.beta=0.5 train.lr=1e-6")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config, args.overrides)
        while True:
            train(config)
            if not config.next_config:
                break
            config = load_config(config.next_config)
    except (ConfigError, data.DataError, FloatingPointError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    finally:
        distributed.teardown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
