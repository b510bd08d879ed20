"""Log-probabilities of response tokens: the quantity every preference loss is built from.

    log π(y|x) = Σ_t log softmax(z_t)[y_t] = Σ_t (z_t[y_t] − logsumexp(z_t))

summed over the response tokens only. Labels are the input ids with −100 on prompt and padding
positions and are NOT shifted: the logits at position t predict the label at position t + 1, so every
per-token tensor here is [B, T−1] and lines up with `labels[:, 1:]`.

The logits are never built for the prompt: `chunked_token_logps` takes the final hidden states and the
output projection and forms logits only for the response rows, as many rows at a time as fit
LOGITS_MEMORY_BUDGET bytes of fp32. The softmax of as many rows as fit the budget is kept from the forward
for the backward (all of them when the batch's response rows fit); for the other rows forward keeps one
logsumexp each and backward recomputes their logits chunk by chunk. That is where DPO's memory goes on small
and medium models (batch × length × vocab × 4 bytes, twice with the gradient); the values and gradients equal
those of log_softmax(lm_head(hidden)).gather(labels).

Everything is returned in fp32 whatever the model's dtype: sums of hundreds of bf16 log-probs lose the
small differences between chosen and rejected that the loss is made of. The per-token tensors also feed
the per-token quantities some losses need: the unlikelihood term, LD-DPO's shared/tail split and WPO's
weights (functions at the end of this file).
"""
import torch
import torch.nn.functional as F

from dpo.batching import IGNORE_INDEX
from dpo.distributed import unwrap

# Bytes of fp32 logits held at once (834 rows of GPT-2's 50,257-token vocabulary): the ~750 response rows of 8
# IMDB-length pairs keep their softmax whole. Larger: fewer logits recomputed in backward, more memory (256 MiB
# ran 16 such pairs ~4% faster at ~60 MiB more peak RSS on CPU; the grad-weight matmul ran ~190 GFLOP/s in
# 834-row chunks, ~130 in 208-row ones).
LOGITS_MEMORY_BUDGET = 160 * 2**20


def response_mask(labels: torch.Tensor) -> torch.Tensor:
    """labels: [B, T] -> [B, T−1] bool, True where labels[:, 1:] is a response token."""
    return labels[:, 1:] != IGNORE_INDEX


def response_rows(labels: torch.Tensor):
    """Flattened view of the (position t predicts label t+1) pairing.

    Returns rows [M] (indices into the [B*T] flattened positions whose next label is a response token)
    and targets [M] (that next label). Only these M rows ever need logits."""
    B, T = labels.shape
    next_labels = torch.full_like(labels, IGNORE_INDEX)
    next_labels[:, :-1] = labels[:, 1:]
    next_labels = next_labels.reshape(-1)
    rows = (next_labels != IGNORE_INDEX).nonzero().squeeze(1)
    return rows, next_labels[rows]


def _to_token_grid(values: torch.Tensor, rows: torch.Tensor, B: int, T: int) -> torch.Tensor:
    """Scatter per-row values [M] back to a [B, T−1] grid (0 at prompt/padding positions)."""
    grid = values.new_zeros(B * T)
    grid = grid.index_put((rows,), values)  # out of place, so autograd routes grads back to `values`
    return grid.view(B, T)[:, :-1]


def _exp_shifted_(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """In place on logits z [n, V] fp32: z becomes exp(z − max z) (no new [n, V] tensor, unlike
    torch.logsumexp). Returns (max z [n, 1], Σ_v exp(z − max z) [n, 1]): logsumexp z = max + log Σ, and
    z / Σ is softmax z."""
    top = z.amax(dim=1, keepdim=True)
    return top, z.sub_(top).exp_().sum(dim=1, keepdim=True)


def _probs_(z: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
    """In place on logits z [n, V] fp32, given logsumexp z [n]: softmax z = exp(z − logsumexp z)."""
    return z.sub_(lse[:, None]).exp_()


def _grad_from_probs_(p: torch.Tensor, targets: torch.Tensor, grad: torch.Tensor, total=None) -> torch.Tensor:
    """In place on probabilities p [n, V] (or on exp(z − max z) and its row sums total [n, 1], normalised in the
    same pass): d(grad · log p[target]) / dz = grad · (onehot − p), the gradient with respect to the logits."""
    p.mul_(-grad[:, None] if total is None else -grad[:, None] / total)
    p[torch.arange(p.shape[0], device=p.device), targets] += grad
    return p


def _projection_dtype(hidden: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The dtype the plain path's `lm_head(hidden)` would run in: autocast's if active, else the weight's."""
    device_type = hidden.device.type
    if torch.is_autocast_enabled(device_type):
        return torch.get_autocast_dtype(device_type)
    return weight.dtype


def rows_per_chunk(vocab_size: int, memory_budget: int) -> int:
    """How many rows of fp32 logits [rows, V] fit in `memory_budget` bytes (at least one)."""
    return max(1, memory_budget // (4 * vocab_size))


def chunk_bounds(M: int, n: int, with_grad: bool) -> tuple[list[int], int]:
    """(row boundaries of the logits chunks, rows whose softmax is kept for backward) for M rows, n of which fit
    the budget. Without a gradient: chunks of n/4, none kept (a large chunk saves no matmul there; a small one
    keeps the reference's and evaluation's peak down). With one: all M kept if they fit; else the first n − n/4
    are kept and the rest go in chunks of n/4, recomputed in backward: the kept rows and one recomputed chunk
    fit the budget together."""
    step = max(1, n // 4)
    if not with_grad or M > n:
        kept = n - step if with_grad else 0
        return ([0] if kept else []) + [*range(kept, M, step), M], kept
    return [*range(0, M, n), M], M


class _TokenLogpsFromHidden(torch.autograd.Function):
    """(hidden_rows [M, C], weight [V, C], bias [V] | None, targets [M]) -> (logps [M], log Σ p² [M] | empty).

    Logits z = hidden_rows @ weight.T + bias are formed in chunks that fit `memory_budget` bytes of fp32
    (`chunk_bounds`) and kept only as a logsumexp per row. Backward needs softmax z again: when a gradient is
    wanted, forward keeps exp(z − max z) and its row sums for the first chunk, as many rows as fit the budget
    (all M when they fit; one matmul less for them), and backward recomputes the other chunks. Each chunk's
    gradient g·(onehot − softmax z) is multiplied out into grad_hidden, grad_weight and grad_bias at once."""

    @staticmethod
    def forward(ctx, hidden_rows, weight, bias, targets, memory_budget, with_log_sum_sq, dtype):
        # (without a gradient to come, nothing is kept: ctx goes as soon as forward returns)
        M, with_grad = hidden_rows.shape[0], any(ctx.needs_input_grad[:3])
        bounds, kept_rows = chunk_bounds(M, rows_per_chunk(weight.shape[0], memory_budget), with_grad)
        w = weight.to(dtype)
        b = None if bias is None else bias.to(dtype)
        logps = torch.zeros(M, dtype=torch.float32, device=hidden_rows.device)
        lse = torch.zeros_like(logps)
        log_sum_sq = torch.zeros_like(logps) if with_log_sum_sq else logps.new_empty(0)
        ctx.probs = None
        with torch.autocast(hidden_rows.device.type, enabled=False):
            for i, j in zip(bounds, bounds[1:]):
                z = F.linear(hidden_rows[i:j].to(dtype), w, b).float()
                target_logits = z.gather(1, targets[i:j, None]).squeeze(1)
                top, total = _exp_shifted_(z)
                lse[i:j] = (top + total.log()).squeeze(1)
                logps[i:j] = target_logits - lse[i:j]
                if with_log_sum_sq:  # log Σ p² = 2 log ‖exp(z − max)‖ − 2 log Σ exp(z − max)
                    log_sum_sq[i:j] = 2 * (torch.linalg.vector_norm(z, dim=1) / total.squeeze(1)).log()
                if i == 0 and kept_rows:  # (normalised in backward, in the pass that scales them)
                    ctx.probs = (z, total)
        ctx.save_for_backward(hidden_rows, weight, bias, targets, lse)
        ctx.bounds, ctx.dtype = bounds, dtype
        ctx.mark_non_differentiable(log_sum_sq)
        return logps, log_sum_sq

    @staticmethod
    def backward(ctx, grad_logps, _grad_log_sum_sq):
        hidden_rows, weight, bias, targets, lse = ctx.saved_tensors
        dtype, bounds = ctx.dtype, ctx.bounds
        kept, ctx.probs = ctx.probs, None  # the first chunk's, used up in place below (a second backward recomputes)
        w = weight.to(dtype)
        b = None if bias is None else bias.to(dtype)
        need_h, need_w, need_b = ctx.needs_input_grad[:3]
        grad_hidden = torch.zeros_like(hidden_rows) if need_h else None
        # grad_weight accumulates over chunks in fp32, so a bf16 weight's gradient is rounded once, not once per
        # chunk (one fp32 [V, C] buffer; the [B, T, V] logits it replaces are far larger).
        grad_weight = None
        grad_bias = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if need_b else None
        with torch.autocast(hidden_rows.device.type, enabled=False):
            for i, j in zip(bounds, bounds[1:]):
                h = hidden_rows[i:j].to(dtype)
                p, total = kept if kept is not None else (_probs_(F.linear(h, w, b).float(), lse[i:j]), None)
                g = _grad_from_probs_(p, targets[i:j], grad_logps[i:j].float(), total)
                if need_b:
                    grad_bias.add_(g.sum(0))
                # the matmuls read g in the projection's dtype; a bf16/fp16 copy frees the fp32 one before they run
                p = kept = None
                g = g.to(dtype)
                if need_h:
                    grad_hidden[i:j] = (g @ w).to(hidden_rows.dtype)
                if need_w:
                    if grad_weight is None:
                        grad_weight = (g.T @ h).float()
                    elif dtype == torch.float32:
                        grad_weight.addmm_(g.T, h)
                    else:
                        grad_weight.add_(g.T @ h)
        if need_w:
            grad_weight = torch.zeros_like(weight) if grad_weight is None else grad_weight.to(weight.dtype)
        if need_b:
            grad_bias = grad_bias.to(bias.dtype)
        return grad_hidden, grad_weight, grad_bias, None, None, None, None


def chunked_token_logps(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                        labels: torch.Tensor, *, memory_budget: int = LOGITS_MEMORY_BUDGET,
                        with_log_sum_sq: bool = False):
    """Per-token log-probs of the labels from final hidden states and the output projection.

    hidden: [B, T, C] (the model's final normalised hidden states); weight: [V, C]; bias: [V] or None
    (so logits == F.linear(hidden, weight, bias) == model.lm_head(hidden)); labels: [B, T] unshifted.
    Returns (token_logps [B, T−1] fp32, 0 off the response, equal in value and gradient (w.r.t. hidden,
    weight, bias) to log_softmax(F.linear(hidden, weight, bias))[label], without ever holding more than
    `memory_budget` bytes of fp32 logits; log Σ_v p_v² [B, T−1] with `with_log_sum_sq` (no gradient; WPO), else None).
    The projection runs in the dtype `lm_head` would use (autocast's, else the weight's); the softmax math
    in fp32."""
    B, T, C = hidden.shape
    if labels.shape != (B, T):
        raise ValueError(f"labels shape {tuple(labels.shape)} does not match hidden {tuple(hidden.shape)}")
    if weight.shape[1] != C:
        raise ValueError(f"weight shape {tuple(weight.shape)} does not match hidden size {C}")
    rows, targets = response_rows(labels)
    if targets.numel() and (targets.min() < 0 or targets.max() >= weight.shape[0]):
        raise ValueError(f"labels hold token ids outside [0, {weight.shape[0]}) other than {IGNORE_INDEX}")
    # Only response rows get logits; index_select's backward scatters grad_hidden back (prompt rows get 0).
    hidden_rows = hidden.reshape(B * T, C).index_select(0, rows)
    logps, log_sum_sq = _TokenLogpsFromHidden.apply(hidden_rows, weight, bias, targets, memory_budget, with_log_sum_sq,
                                                    _projection_dtype(hidden, weight))
    out = _to_token_grid(logps, rows, B, T)
    return out, (_to_token_grid(log_sum_sq, rows, B, T) if with_log_sum_sq else None)


def head_weights(model):
    """The output projection's (weight [V, C], bias [V] | None). FSDP2 keeps the root's parameters (lm_head
    among them) gathered after forward; should they be sharded DTensors, gather them (differentiably: the
    gradient is scattered back to the shards)."""
    head = unwrap(model).lm_head
    return tuple(p.full_tensor() if hasattr(p, "full_tensor") else p for p in (head.weight, head.bias))


def model_token_logps(model, batch: dict, with_log_sum_sq: bool = False):
    """log π(y_t | x, y_<t) of every label of a batch: (token_logps [N, T−1] fp32, log Σ_v p_v² or None).

    One forward to the final hidden states [N, T, C]; the log-probs are gathered from them and the
    output projection chunk by chunk (`chunked_token_logps`), so the [N, T, V] logits never exist."""
    hidden = model(batch["input_ids"], batch["attention_mask"], return_hidden=True)
    return chunked_token_logps(hidden, *head_weights(model), batch["labels"], with_log_sum_sq=with_log_sum_sq)


def shared_sequence_logps(model, batch: dict):
    """(logps [2B], n_tokens [2B]) of each pair's chosen (rows 0..B−1) and rejected (B..2B−1) response from
    one forward over [prompt | chosen | rejected] (batching.collate_shared): the prompt is computed once."""
    hidden = model(batch["input_ids"], positions=batch["positions"], segments=batch["segments"],
                   block_masks=batch["block_masks"], return_hidden=True)
    weight, bias = head_weights(model)
    rows = hidden.reshape(-1, hidden.shape[-1]).index_select(0, batch["gather_rows"])
    token_logps, _ = _TokenLogpsFromHidden.apply(rows, weight, bias, batch["gather_targets"], LOGITS_MEMORY_BUDGET,
                                                 False, _projection_dtype(hidden, weight))
    n = 2 * batch["indices"].shape[0]
    return (token_logps.new_zeros(n).index_add(0, batch["gather_sequence"], token_logps),
            torch.bincount(batch["gather_sequence"], minlength=n))


def batch_sequence_logps(model, batch: dict, ld_alpha: float | None = 1.0):
    """(logps [N], n_tokens [N]) of every response of a batch, laid out shared (collate_shared) or not."""
    if "segments" in batch:
        return shared_sequence_logps(model, batch)
    return sequence_logps(model_token_logps(model, batch)[0], response_mask(batch["labels"]), ld_alpha)


def sequence_logps(token_logps: torch.Tensor, mask: torch.Tensor, ld_alpha: float | None = 1.0):
    """log π(y|x) per row: token_logps, mask [N, T−1] -> (logps [N], n_tokens [N]), the sum over response tokens.

    With ld_alpha, LD-DPO's length-desensitised log-prob (Liu et al., 2024, "Length Desensitization in
    DPO"), for rows laid out as a preference batch (chosen rows, then rejected rows):

        log π̃(y|x) = Σ_{t ≤ l_p} log p_t + α · Σ_{t > l_p} log p_t,   l_p = min(|y_w|, |y_l|)

    the "public length" of each pair: the first l_p response tokens count in full, the verbose tail is
    down-weighted by α ∈ [0, 1] (α = 1 or None: the plain sum). Applied to policy and reference alike, as TRL
    does."""
    n_tokens = mask.sum(-1)
    if ld_alpha is None or ld_alpha == 1.0:
        return token_logps.masked_fill(~mask, 0).sum(-1), n_tokens
    if not 0.0 <= ld_alpha <= 1.0:
        raise ValueError(f"ld_alpha must be in [0, 1], got {ld_alpha}")
    position = mask.cumsum(-1)  # 1-based index of each response token within its response
    chosen_n, rejected_n = n_tokens.chunk(2)
    public = torch.minimum(chosen_n, rejected_n).repeat(2)[:, None]
    shared = mask & (position <= public)
    tail = mask & (position > public)
    logps = token_logps.masked_fill(~shared, 0).sum(-1) + ld_alpha * token_logps.masked_fill(~tail, 0).sum(-1)
    return logps, n_tokens


# ----- per-token quantities some losses and options need -------------------------------------------------

def sequence_unlikelihood(token_logps: torch.Tensor, mask: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Σ_t log(1 − p_t) per sequence, for the Unlikelihood baseline (Welleck et al., 2019).

    token_logps, mask: [B, T−1] -> [B]. 1 − p_t = −expm1(log p_t) is clamped to ≥ eps so a token the model
    is certain of gives a finite term (log eps) with zero gradient instead of −inf/NaN."""
    one_minus_p = (-torch.expm1(token_logps)).clamp(min=eps)
    return torch.log(one_minus_p).masked_fill(~mask, 0).sum(-1)


def wpo_weights(token_logps: torch.Tensor, token_log_sum_sq: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """WPO pair weights (Zhou et al., 2024, "WPO: Enhancing RLHF with Weighted Preference Optimization", Eq. 2,
    with the sampling-aligned normalisation TRL uses):

        w(x, y) = exp( (1/|y|) Σ_t [log p_t − log Σ_v p_v,t²] ),   weight of a pair = w(x, y_w) · w(x, y_l)

    token_logps, token_log_sum_sq, mask: [2B, T−1] (policy, from `*token_logps(..., with_log_sum_sq=True)`)
    -> [B], detached (a weight, not a target)."""
    with torch.no_grad():
        aligned = (token_logps - token_log_sum_sq).masked_fill(~mask, 0).sum(-1) / mask.sum(-1).clamp(min=1)
        chosen_w, rejected_w = torch.exp(aligned).chunk(2)
        return chosen_w * rejected_w
