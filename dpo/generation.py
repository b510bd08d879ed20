"""Sampling from a GPT: the one generation loop, used by train.py, sample.py and the experiments.

End of sequence, one rule everywhere: a row ends at its first token in `stop_ids(model, tokenizer)` (the
tokenizer's EOS plus any end ids the model's config lists, e.g. Llama-3-Instruct's <|eot_id|>). `generate`
returns each completion up to and including that token; a completion that did not end has max_new_tokens
ids. Callers decode the text without the final stop token (`completion_text`).

Prompts are left-padded into one batch (positions come from the attention mask, so a padded prompt sees
the same positions as an unpadded one) and continued with a KV cache: the prompt's forward computes logits
at its last position only, then one position per new token.
"""
import contextlib

import torch

from dpo.batching import pad_rows
from dpo.model import KVCache


def stop_ids(model, tokenizer) -> list[int]:
    """The tokenizer's EOS and the model config's end-of-sequence ids (an int or a list, or None)."""
    ids = {tokenizer.eos_id} if tokenizer.eos_id is not None else set()
    config_eos = model.config.eos_id
    ids |= set(config_eos if isinstance(config_eos, list) else [] if config_eos is None else [config_eos])
    return sorted(ids)


def completion_text(tokenizer, completion: list[int], stop: list[int]) -> str:
    """The text of a completion from `generate`, without its final stop token."""
    return tokenizer.decode(completion[:-1] if completion and completion[-1] in stop else completion)


def filter_logits(logits: torch.Tensor, temperature: float = 1.0, top_k: int | None = None,
                  top_p: float | None = None) -> torch.Tensor:
    """logits [B, V] / temperature, fp32, with every token outside the top-k and then outside the top-p
    nucleus set to −inf: top_k keeps the k largest (ties with the k-th too); top_p keeps the smallest set
    of most likely tokens whose probability reaches top_p (the most likely one always stays)."""
    logits = logits.float() / temperature
    if top_k is not None:
        kth = torch.topk(logits, min(top_k, logits.shape[-1]), dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p is not None and top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(dim=-1)
        mass_before = probs.cumsum(dim=-1) - probs  # the first token always stays (mass_before = 0)
        sorted_logits = sorted_logits.masked_fill(mass_before >= top_p, float("-inf"))
        logits = torch.full_like(logits, float("-inf")).scatter(-1, order, sorted_logits)
    return logits


def sample_token(logits, temperature=1.0, top_k=None, top_p=None, generator=None, uniforms=None):
    """One token per row from logits [B, V] → [B]. temperature 0: argmax. Otherwise a draw from the
    filtered distribution (filter_logits): by torch.multinomial with `generator`, or, given uniforms [B] in
    [0, 1), by the inverse CDF: the first v with cdf[v] > u · cdf[V−1] (cdf in float64; tokens of
    probability 0 are never picked, their cdf step is empty)."""
    if temperature == 0:
        return logits.argmax(dim=-1)
    probs = filter_logits(logits, temperature, top_k, top_p).softmax(dim=-1)
    if uniforms is None:
        return torch.multinomial(probs, 1, generator=generator).squeeze(-1)
    cdf = probs.double().cumsum(dim=-1)
    total = cdf[:, -1:]
    # u · total can round up to total; kept strictly below it, the search never passes the last token
    # that has probability
    target = torch.minimum(uniforms.to(cdf.device, torch.float64)[:, None] * total,
                           torch.nextafter(total, torch.zeros_like(total)))
    return torch.searchsorted(cdf, target, right=True).squeeze(1)


def attention_backends(device: torch.device):
    """On CUDA, SDPA without the cuDNN backend: torch picks cuDNN for masked attention on recent GPUs and
    builds a plan for every new key length, and decoding meets a new length at every step (~40 ms each on
    an H100, far more than the step itself). Elsewhere nothing changes (the context itself costs time)."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    from torch.nn.attention import SDPBackend, sdpa_kernel
    return sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH])


@torch.no_grad()
def generate(model, tokenizer, prompts: list[list[int]], *, max_new_tokens: int = 64, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, generator: torch.Generator | None = None,
             uniforms: torch.Tensor | None = None) -> list[list[int]]:
    """Continue each prompt (token ids) → its completion ids, ending at the first stop token (see above).

    temperature 0 is greedy. Random draws come from `generator` (torch.multinomial), or from `uniforms`
    [len(prompts), >= max_new_tokens]: one number in [0, 1) per row and step, so that a row's sample does
    not depend on which rows share its batch (sample.py seeds them per prompt). The model runs in eval
    mode (no dropout) on its own device; its previous mode is restored."""
    device = model.lm_head.weight.device
    stop = stop_ids(model, tokenizer)
    B, T = len(prompts), max(map(len, prompts))
    if T + max_new_tokens > model.config.max_seq_len:
        raise ValueError(f"prompt length {T} + max_new_tokens {max_new_tokens} exceeds "
                         f"max_seq_len {model.config.max_seq_len}")
    if uniforms is not None and uniforms.shape[1] < max_new_tokens:
        raise ValueError(f"uniforms has {uniforms.shape[1]} draws per row, need max_new_tokens={max_new_tokens}")
    input_ids, mask = pad_rows(prompts, tokenizer.pad_id_or_eos(), left=True)
    input_ids, mask = input_ids.to(device), mask.to(device)
    stop_tensor = torch.tensor(stop, dtype=torch.long, device=device)
    cache = KVCache.empty(model.config, B, T + max_new_tokens, device, model.wte.weight.dtype)
    was_training = model.training
    model.eval()
    try:
        tokens, done = [], torch.zeros(B, dtype=torch.bool, device=device)
        with attention_backends(device):  # only the prompt's last position needs logits
            logits = model.lm_head(model(input_ids, mask, kv_cache=cache, return_hidden=True)[:, -1])
        for step in range(max_new_tokens):
            u = uniforms[:, step] if uniforms is not None else None
            token = sample_token(logits.float(), temperature, top_k, top_p, generator, u)
            tokens.append(token)
            done = done | torch.isin(token, stop_tensor)
            # bool(done.all()) waits for the GPU: on CUDA ask every 8 steps so the CPU can queue ahead
            # (rows that have ended draw tokens that are cut off below)
            if step == max_new_tokens - 1 or ((device.type == "cpu" or step % 8 == 7) and bool(done.all())):
                break
            mask = torch.cat([mask, torch.ones_like(token)[:, None]], dim=1)
            with attention_backends(device):
                logits = model(token[:, None], mask, kv_cache=cache)[:, -1]
    finally:
        model.train(was_training)
    completions = []
    for row in torch.stack(tokens, dim=1).tolist():
        end = next((k for k, t in enumerate(row) if t in stop), None)
        completions.append(row if end is None else row[:end + 1])
    return completions
