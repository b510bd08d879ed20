"""Sequence-level KL(π_θ ‖ π_ref) of sampled completions, the x-axis of the paper's reward-vs-KL frontier.

For a prompt x and a completion y = (y_1..y_n) drawn from π_θ (T = 1, no top-k / top-p):

    KL(π_θ(·|x) ‖ π_ref(·|x)) = E_y [ Σ_t log π_θ(y_t | x, y_<t) − log π_ref(y_t | x, y_<t) ]

Two estimates from the same samples, both summed over the generated tokens (the EOS included when the
sample ended on one; prompt and padding excluded):

    sampled   Σ_t log π_θ(y_t|·) − log π_ref(y_t|·)                        unbiased, can be negative per sample
    exact     Σ_t Σ_v π_θ(v|·) (log π_θ(v|·) − log π_ref(v|·))             the per-token KL over the whole
                                                                           vocabulary at each visited prefix:
                                                                           same expectation, lower variance, >= 0

Both are means over samples of the sequence KL only when the samples come from π_θ at temperature 1 with no
truncation; on other samples they are still computed, but measure something else (dpo.evaluate warns).
Log-probs are taken in fp32 (logits are upcast chunk by chunk; the [B, T, V] logits never exist whole).
"""
import torch

from dpo.batching import IGNORE_INDEX, pad_rows
from dpo.logprobs import response_rows


def _row_log_probs(model, ids, mask, rows: torch.Tensor, chunk_size: int):
    """Yield (chunk slice, log-softmax [n, V] fp32) over the given flattened positions, chunk by chunk."""
    hidden = model(ids, mask, return_hidden=True)
    hidden = hidden.reshape(-1, hidden.shape[-1]).index_select(0, rows)
    for start in range(0, hidden.shape[0], chunk_size):
        logits = model.lm_head(hidden[start:start + chunk_size])
        yield slice(start, start + chunk_size), logits.float().log_softmax(-1)


@torch.no_grad()
def sequence_kl(policy, reference, prompt_ids: list[list[int]], completion_ids: list[list[int]], *,
                batch_size: int = 8, device="cpu", pad_id: int = 0, chunk_size: int = 1024) -> dict:
    """Per-sample KL estimates. prompt_ids, completion_ids: N lists of token ids (the completion as generated).
    Rows are right-padded with pad_id (callers pass tokenizer.pad_id_or_eos(); padding is masked out).

    Returns {"kl_exact": [N], "kl_sampled": [N], "policy_logps": [N], "reference_logps": [N],
    "n_tokens": [N] long}: fp32 CPU tensors in the input order (sums over completion tokens; 0 for an
    empty completion)."""
    if policy.config.vocab_size != reference.config.vocab_size:
        raise ValueError(f"policy and reference vocabularies differ ({policy.config.vocab_size} vs "
                         f"{reference.config.vocab_size}): KL needs the same tokenizer")
    if len(prompt_ids) != len(completion_ids):
        raise ValueError(f"{len(prompt_ids)} prompts but {len(completion_ids)} completions")
    N = len(prompt_ids)
    out = {k: torch.zeros(N) for k in ("kl_exact", "kl_sampled", "policy_logps", "reference_logps")}
    out["n_tokens"] = torch.tensor([len(c) for c in completion_ids], dtype=torch.long)
    was_training = (policy.training, reference.training)
    policy.eval(), reference.eval()
    # longest first, empty completions (nothing to score) left out
    order = sorted((i for i in range(N) if completion_ids[i]),
                   key=lambda i: -(len(prompt_ids[i]) + len(completion_ids[i])))
    try:
        for first in range(0, len(order), batch_size):
            batch = order[first:first + batch_size]
            # prompt + completion, right-padded; labels IGNORE_INDEX off the completion
            ids, mask = pad_rows([prompt_ids[i] + completion_ids[i] for i in batch], pad_id)
            labels, _ = pad_rows([[IGNORE_INDEX] * len(prompt_ids[i]) + completion_ids[i] for i in batch],
                                 IGNORE_INDEX)
            ids, mask, labels = ids.to(device), mask.to(device), labels.to(device)
            rows, targets = response_rows(labels)
            seq = torch.div(rows, ids.shape[1], rounding_mode="floor")  # [M] row → sequence in the batch
            per_token = {name: torch.zeros(rows.shape[0], device=device) for name in ("exact", "policy", "reference")}
            for (sl, logp_policy), (_, logp_reference) in zip(_row_log_probs(policy, ids, mask, rows, chunk_size),
                                                              _row_log_probs(reference, ids, mask, rows, chunk_size)):
                t = targets[sl, None]
                per_token["exact"][sl] = (logp_policy.exp() * (logp_policy - logp_reference)).sum(-1)
                per_token["policy"][sl] = logp_policy.gather(-1, t).squeeze(-1)
                per_token["reference"][sl] = logp_reference.gather(-1, t).squeeze(-1)
            sums = {name: torch.zeros(len(batch), device=device).index_add_(0, seq, v) for name, v in per_token.items()}
            index = torch.tensor(batch)
            out["kl_exact"][index] = sums["exact"].cpu()
            out["policy_logps"][index] = sums["policy"].cpu()
            out["reference_logps"][index] = sums["reference"].cpu()
    finally:
        policy.train(was_training[0]), reference.train(was_training[1])
    out["kl_sampled"] = out["policy_logps"] - out["reference_logps"]
    return out
