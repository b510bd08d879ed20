"""dpo/logprobs.py: the chunked path (hidden states + output projection) against the reference code's
definition written out here with plain autograd (F.linear, log_softmax, gather) and a naive loop: values,
gradients, bf16 and autocast, the memory promise, empty rows and bad labels; `model_token_logps` on a GPT;
and the per-token helpers (unlikelihood, LD-DPO, WPO)."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode

from dpo.logprobs import (chunk_bounds, chunked_token_logps, model_token_logps, response_mask, response_rows,
                          sequence_logps, sequence_unlikelihood, wpo_weights)
from dpo.model import GPT, GPTConfig
from helpers import tokenized_pair


def reference_code_batch_logps(logits, labels, average_log_prob=False):
    """_get_batch_logps of eric-mitchell/direct-preference-optimization (trainers.py), written out."""
    labels = labels[:, 1:].clone()
    logits = logits[:, :-1, :]
    loss_mask = labels != -100
    labels[labels == -100] = 0  # dummy token; masked out below
    per_token_logps = torch.gather(logits.log_softmax(-1), dim=2, index=labels.unsqueeze(2)).squeeze(2)
    if average_log_prob:
        return (per_token_logps * loss_mask).sum(-1) / loss_mask.sum(-1)
    return (per_token_logps * loss_mask).sum(-1)


def plain_token_logps(hidden, weight, bias, labels):
    """The plain path: the full logits [B, T, V] (F.linear in the inputs' dtype, as lm_head would run, then
    fp32 as the reference trainer's `.logits.to(torch.float32)`), log_softmax and gather, plain autograd.
    Returns [B, T−1], 0 where labels[:, 1:] is −100."""
    logits = F.linear(hidden, weight, bias).float()
    targets = labels[:, 1:].clamp(min=0)
    per_token = logits[:, :-1].log_softmax(-1).gather(2, targets.unsqueeze(2)).squeeze(2)
    return per_token.masked_fill(labels[:, 1:] == -100, 0)


def plain_sequence_logps(hidden, weight, bias, labels):
    """reference_code_batch_logps on the plain path's fp32 logits: (logps [B], n_tokens [B])."""
    logits = F.linear(hidden, weight, bias).float()
    return reference_code_batch_logps(logits, labels), (labels[:, 1:] != -100).sum(-1)


def rows_budget(rows: int, weight) -> int:
    """The memory budget (bytes) that holds `rows` rows of fp32 logits."""
    return rows * weight.shape[0] * 4


def chunked_sequence_logps(hidden, weight, bias, labels, chunk_size=1024):
    """What the trainer computes: per-token log-probs, `chunk_size` rows of logits at a time, summed over
    the response."""
    token_logps, log_sum_sq = chunked_token_logps(hidden, weight, bias, labels,
                                                  memory_budget=rows_budget(chunk_size, weight))
    assert log_sum_sq is None  # only with with_log_sum_sq
    return sequence_logps(token_logps, response_mask(labels))


def make_batch(B=4, T=9, V=13, C=6, seed=0, dtype=torch.float32):
    """Prompt positions and right padding at -100, different lengths per row."""
    g = torch.Generator().manual_seed(seed)
    hidden = torch.randn(B, T, C, generator=g).to(dtype)
    weight = (torch.randn(V, C, generator=g) * 0.7).to(dtype)
    bias = (torch.randn(V, generator=g) * 0.3).to(dtype)
    labels = torch.randint(0, V, (B, T), generator=g)
    prompt_len = [2, 3, 1, 4][:B] + [2] * max(0, B - 4)
    end = [T, T - 2, T - 1, T - 3][:B] + [T] * max(0, B - 4)
    for b in range(B):
        labels[b, :prompt_len[b]] = -100
        labels[b, end[b]:] = -100
    return hidden, weight, bias, labels


def test_sum_and_mean_equal_reference_code_definition():
    hidden, weight, bias, labels = make_batch()
    logits = F.linear(hidden, weight, bias)
    logps, n = chunked_sequence_logps(hidden, weight, bias, labels)
    torch.testing.assert_close(logps, reference_code_batch_logps(logits, labels), rtol=0, atol=1e-5)
    # the mean (the reference code's average_log_prob) is the sum over n response tokens
    torch.testing.assert_close(logps / n, reference_code_batch_logps(logits, labels, True), rtol=0, atol=1e-5)
    assert n.tolist() == (labels[:, 1:] != -100).sum(-1).tolist() == [7, 4, 7, 2]


def test_shift_and_masking_against_naive_loop():
    """Position t's logits score the label at t+1; -100 labels (prompt, padding) contribute nothing."""
    hidden, weight, bias, labels = make_batch(seed=1)
    logits = F.linear(hidden, weight, bias).double()
    B, T, _ = logits.shape
    expected, counts = [], []
    for b in range(B):
        total, count = 0.0, 0
        for t in range(1, T):
            if labels[b, t] == -100:
                continue
            row = logits[b, t - 1].tolist()
            top = max(row)
            log_z = top + math.log(sum(math.exp(x - top) for x in row))
            total += row[int(labels[b, t])] - log_z
            count += 1
        expected.append(total)
        counts.append(count)
    for fn in (lambda: chunked_sequence_logps(hidden, weight, bias, labels, chunk_size=3),
               lambda: plain_sequence_logps(hidden, weight, bias, labels)):  # the reference used below
        logps, n = fn()
        assert logps.dtype == torch.float32
        assert n.tolist() == counts
        assert max(abs(a - e) for a, e in zip(logps.tolist(), expected)) < 1e-5


def test_response_rows_pair_each_position_with_the_next_label():
    _, _, _, labels = make_batch(seed=9)
    rows, targets = response_rows(labels)
    B, T = labels.shape
    expected = [(b * T + t, int(labels[b, t + 1])) for b in range(B) for t in range(T - 1) if labels[b, t + 1] != -100]
    assert list(zip(rows.tolist(), targets.tolist())) == expected
    assert len(expected) == int(response_mask(labels).sum())


@pytest.mark.parametrize("use_bias", [True, False])
@pytest.mark.parametrize("chunk_size", [1, 3, 1024])
def test_chunked_equals_plain_values_and_grads(use_bias, chunk_size):
    hidden, weight, bias, labels = make_batch(B=4, T=11, V=17, C=8, seed=3)
    coef = torch.tensor([1.0, -0.5, 2.0, 0.25])
    results = []
    for chunked in (False, True):
        h = hidden.clone().requires_grad_()
        w = weight.clone().requires_grad_()
        b = bias.clone().requires_grad_() if use_bias else None
        if chunked:
            logps, n = chunked_sequence_logps(h, w, b, labels, chunk_size=chunk_size)
        else:
            logps, n = plain_sequence_logps(h, w, b, labels)
        (logps * coef).sum().backward()
        results.append((logps.detach(), n, h.grad, w.grad, None if b is None else b.grad))
    (lp0, n0, *g0), (lp1, n1, *g1) = results
    torch.testing.assert_close(lp1, lp0, rtol=0, atol=1e-5)
    assert n0.tolist() == n1.tolist()
    for a, e in zip(g1, g0):
        if e is not None:
            torch.testing.assert_close(a, e, rtol=0, atol=1e-5)
    # prompt and padding rows of hidden get exactly zero gradient (the last position predicts nothing)
    rows_scored = torch.zeros_like(labels, dtype=torch.bool)
    rows_scored[:, :-1] = labels[:, 1:] != -100
    assert g1[0][~rows_scored].abs().max() == 0 and g1[0][:, -1].abs().max() == 0
    assert g1[0][rows_scored].abs().min() > 0


def test_chunked_equals_plain_for_per_token_losses():
    """A gradient that differs per token (the unlikelihood term, a per-token weighting) flows the same way."""
    hidden, weight, bias, labels = make_batch(B=3, T=10, V=9, C=5, seed=8)
    mask = response_mask(labels)
    token_weights = torch.linspace(-1, 2, mask.numel()).reshape(mask.shape)
    grads = []
    for chunked in (False, True):
        h, w, b = (x.clone().requires_grad_() for x in (hidden, weight, bias))
        tok = chunked_token_logps(h, w, b, labels, memory_budget=rows_budget(4, w))[0] if chunked else plain_token_logps(h, w, b, labels)
        assert tok.shape == mask.shape and tok[~mask].abs().max() == 0
        (sequence_unlikelihood(tok, mask).sum() + (tok * token_weights).sum()).backward()
        grads.append((h.grad, w.grad, b.grad))
    for a, e in zip(*grads):
        torch.testing.assert_close(a, e, rtol=0, atol=1e-5)


def test_chunked_bf16_matches_plain_bf16():
    """bf16 hidden and weight: the projection runs in bf16 like lm_head, the softmax math in fp32."""
    hidden, weight, bias, labels = make_batch(B=2, T=10, V=64, C=16, seed=4, dtype=torch.bfloat16)
    grads = []
    for chunked in (False, True):
        h, w, b = (x.clone().requires_grad_() for x in (hidden, weight, bias))
        if chunked:
            logps, _ = chunked_sequence_logps(h, w, b, labels, chunk_size=3)
        else:
            logps, _ = plain_sequence_logps(h, w, b, labels)
        assert logps.dtype == torch.float32
        logps.sum().backward()
        assert h.grad.dtype == w.grad.dtype == b.grad.dtype == torch.bfloat16
        grads.append((logps.detach(), h.grad.float(), w.grad.float(), b.grad.float()))
    for a, e in zip(grads[1], grads[0]):
        torch.testing.assert_close(a, e, rtol=2e-2, atol=2e-2)
    # the values are those of bf16 logits exactly as the plain path forms them, and close to fp32's
    torch.testing.assert_close(grads[1][0], grads[0][0], rtol=0, atol=1e-4)
    exact, _ = plain_sequence_logps(hidden.float(), weight.float(), bias.float(), labels)
    torch.testing.assert_close(grads[1][0], exact, rtol=0, atol=0.5)


def test_chunked_under_autocast_matches_plain():
    hidden, weight, bias, labels = make_batch(B=2, T=8, V=32, C=8, seed=5)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert F.linear(hidden, weight, bias).dtype == torch.bfloat16  # the plain path's logits are bf16
        plain, _ = plain_sequence_logps(hidden, weight, bias, labels)
        chunked, _ = chunked_sequence_logps(hidden, weight, bias, labels, chunk_size=2)
    assert chunked.dtype == torch.float32
    torch.testing.assert_close(chunked, plain, rtol=0, atol=1e-4)
    fp32, _ = chunked_sequence_logps(hidden, weight, bias, labels, chunk_size=2)
    assert not torch.equal(chunked, fp32)  # the projection really ran in autocast's dtype


class _LargestTensor(TorchDispatchMode):
    """Records the largest number of elements any op produces (forward and backward)."""

    def __init__(self):
        super().__init__()
        self.largest = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in out if isinstance(out, (tuple, list)) else (out,):
            if isinstance(t, torch.Tensor):
                self.largest = max(self.largest, t.numel())
        return out


def test_chunked_path_never_builds_full_logits():
    B, T, C, V, chunk = 2, 64, 8, 500, 16
    hidden = torch.randn(B, T, C, requires_grad=True)
    weight = torch.randn(V, C, requires_grad=True)
    bias = torch.randn(V, requires_grad=True)
    labels = torch.randint(0, V, (B, T))
    with _LargestTensor() as mode:
        logps, _ = chunked_sequence_logps(hidden, weight, bias, labels, chunk_size=chunk)
        logps.sum().backward()
    assert mode.largest <= chunk * V  # the biggest tensor is one chunk of logits (weight: V*C < chunk*V)
    with _LargestTensor() as mode:
        logps, _ = plain_sequence_logps(hidden, weight, bias, labels)
        logps.sum().backward()
    assert mode.largest == B * T * V  # the plain path holds the full logits and their gradient


class _CountProducts(TorchDispatchMode):
    """Counts the matrix products (mm, addmm, addmm_; forward and backward) and their multiply-adds."""

    def __init__(self):
        super().__init__()
        self.count, self.multiply_adds = 0, 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in (torch.ops.aten.mm, torch.ops.aten.addmm, torch.ops.aten.addmm_):
            a, b = args[-2:]
            self.count += 1
            self.multiply_adds += a.shape[0] * a.shape[1] * b.shape[1]
        return func(*args, **(kwargs or {}))


def test_logits_within_the_budget_are_not_recomputed_in_backward():
    """All M response rows fit the budget: forward keeps the softmax, so one product forward and two backward
    (grad_hidden, grad_weight), 3·M·V·C multiply-adds. One row over the budget (n = M − 1 rows fit): the first
    n − n/4 rows keep their softmax and the other rows go in two chunks recomputed in backward (forward 3
    products, backward 2 + 2 × 3), so only those rows pay a fourth product. Same values and gradients either
    way, and a second backward (retain_graph) recomputes what the first used up."""
    hidden, weight, bias, labels = make_batch(B=4, T=11, V=17, C=8, seed=3)
    M, (V, C) = int(response_mask(labels).sum()), weight.shape
    kept_rows = (M - 1) - max(1, (M - 1) // 4)
    results = {}
    for rows, products, multiply_adds in ((M, 3, 3 * M * V * C), (M - 1, 11, (4 * M - kept_rows) * V * C)):
        h, w, b = (x.clone().requires_grad_() for x in (hidden, weight, bias))
        with _CountProducts() as mode:
            token_logps, _ = chunked_token_logps(h, w, b, labels, memory_budget=rows_budget(rows, w))
            token_logps.sum().backward(retain_graph=True)
        assert (mode.count, mode.multiply_adds) == (products, multiply_adds)
        first = (h.grad.clone(), w.grad.clone(), b.grad.clone())
        token_logps.sum().backward()  # gradients accumulate: twice the first
        for once, twice in zip(first, (h.grad, w.grad, b.grad)):
            torch.testing.assert_close(twice, 2 * once, rtol=0, atol=1e-6)
        results[rows] = (token_logps.detach(), *first)
    for kept, recomputed in zip(results[M], results[M - 1]):
        torch.testing.assert_close(kept, recomputed, rtol=0, atol=1e-6)


def test_chunk_bounds_keep_what_fits_and_recompute_the_rest():
    """Chunks cover the rows in order; kept rows plus any one recomputed chunk never exceed the n that fit."""
    assert chunk_bounds(10, 8, with_grad=False) == ([0, 2, 4, 6, 8, 10], 0)  # no gradient: chunks of n/4
    assert chunk_bounds(0, 8, with_grad=False) == ([0], 0)
    assert chunk_bounds(10, 16, with_grad=True) == ([0, 10], 10)
    assert chunk_bounds(10, 8, with_grad=True) == ([0, 6, 8, 10], 6)
    assert chunk_bounds(3, 1, with_grad=True) == ([0, 1, 2, 3], 0)
    assert chunk_bounds(0, 8, with_grad=True) == ([0], 0)
    for M, n in ((100, 7), (1500, 1304), (5, 2), (64, 64), (65, 64)):
        bounds, kept = chunk_bounds(M, n, with_grad=True)
        sizes = [j - i for i, j in zip(bounds, bounds[1:])]
        assert bounds[0] == 0 and bounds[-1] == M and all(x > 0 for x in sizes)
        assert kept in (0, sizes[0]) and kept + max(sizes[1:], default=0) <= n


def test_rows_without_response_tokens():
    hidden, weight, bias, labels = make_batch(B=2, seed=6)
    labels[1] = -100
    h = hidden.clone().requires_grad_()
    logps, n = chunked_sequence_logps(h, weight, bias, labels)
    mean = logps / n.clamp(min=1)
    assert n[1] == 0 and logps[1] == 0 and mean[1] == 0
    expected, _ = plain_sequence_logps(hidden, weight, bias, labels)
    torch.testing.assert_close(logps, expected, rtol=0, atol=1e-5)
    (logps.sum() + mean.sum()).backward()
    assert torch.isfinite(h.grad).all() and h.grad[1].abs().max() == 0 and h.grad[0].abs().max() > 0
    # no response token anywhere: zeros, and a backward that runs (zero gradient everywhere)
    labels[:] = -100
    h = hidden.clone().requires_grad_()
    w = weight.clone().requires_grad_()
    logps, n = chunked_sequence_logps(h, w, bias, labels)
    assert logps.tolist() == [0.0, 0.0] and n.tolist() == [0, 0]
    logps.sum().backward()
    assert h.grad.abs().max() == 0 and w.grad.abs().max() == 0


def test_log_sum_sq_probs():
    hidden, weight, bias, labels = make_batch(seed=7)
    logits = F.linear(hidden, weight, bias)
    p = logits[:, :-1].double().softmax(-1)
    mask = response_mask(labels)
    expected = torch.log((p ** 2).sum(-1)) * mask
    token_logps, chunked = chunked_token_logps(hidden, weight, bias, labels, memory_budget=rows_budget(5, weight),
                                                  with_log_sum_sq=True)
    torch.testing.assert_close(chunked.double(), expected, rtol=0, atol=1e-5)
    torch.testing.assert_close(token_logps, plain_token_logps(hidden, weight, bias, labels), rtol=0, atol=1e-5)
    assert chunked_token_logps(hidden, weight, bias, labels)[1] is None


def tiny_gpt(**kw):
    torch.manual_seed(0)
    cfg = GPTConfig(vocab_size=29, n_layer=2, n_head=2, n_embd=16, max_seq_len=32, **kw)
    model = GPT(cfg)
    with torch.no_grad():
        for p in model.parameters():  # biases and norm gains random too
            p.add_(torch.randn_like(p) * 0.2)
    return model.eval()


@pytest.mark.parametrize("head", ["tied", "untied_with_bias"])
def test_model_token_logps_equals_the_plain_path_on_a_gpt(head):
    """One forward to the hidden states, then the chunked gather: the values and the parameter gradients
    of log_softmax(model(ids, mask)) gathered at the labels, with right padding masked."""
    kw = {} if head == "tied" else dict(tie_embeddings=False, lm_head_bias=True)
    model = tiny_gpt(**kw)
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(0, 29, (3, 12), generator=g)
    mask = torch.ones_like(ids)
    mask[1, 8:] = 0
    mask[2, 5:] = 0
    labels = ids.masked_fill(mask == 0, -100)
    labels[:, :3] = -100  # a prompt
    batch = {"input_ids": ids, "attention_mask": mask, "labels": labels}
    coef = torch.tensor([0.5, -1.0, 2.0])
    token_logps, log_sum_sq = model_token_logps(model, batch, with_log_sum_sq=True)
    (sequence_logps(token_logps, response_mask(labels))[0] * coef).sum().backward()
    ours = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    logits = model(ids, mask).float()
    expected = reference_code_batch_logps(logits, labels)
    (expected * coef).sum().backward()
    torch.testing.assert_close(sequence_logps(token_logps, response_mask(labels))[0], expected.detach(),
                               rtol=0, atol=1e-5)
    for name, p in model.named_parameters():
        torch.testing.assert_close(ours[name], p.grad, rtol=0, atol=1e-5, msg=name)
    p = logits[:, :-1].double().softmax(-1)
    torch.testing.assert_close(log_sum_sq.double(), torch.log((p ** 2).sum(-1)) * response_mask(labels),
                               rtol=0, atol=1e-5)
    assert model_token_logps(model, batch)[1] is None


def test_unlikelihood_term():
    token_logps_ = torch.tensor([[math.log(0.5), math.log(0.2), 0.0], [math.log(0.9), 0.0, 0.0]])
    mask = torch.tensor([[True, True, False], [True, False, False]])
    out = sequence_unlikelihood(token_logps_, mask)
    torch.testing.assert_close(out, torch.tensor([math.log(0.5) + math.log(0.8), math.log(0.1)]))
    # a certain token (p = 1) stays finite, with no gradient through the clamp
    x = torch.tensor([[0.0]], requires_grad=True)
    y = sequence_unlikelihood(x, torch.tensor([[True]]))
    y.sum().backward()
    assert torch.isfinite(y).all() and x.grad.item() == 0


def test_ld_sequence_logps_against_loop():
    """Public length l_p = min(|y_w|, |y_l|); tokens after it count with weight alpha."""
    token_logps_ = -torch.arange(1, 25, dtype=torch.float32).reshape(4, 6) / 10
    mask = torch.tensor([[0, 1, 1, 1, 0, 0],   # chosen 0: 3 tokens
                         [1, 1, 1, 1, 1, 0],   # chosen 1: 5 tokens
                         [0, 0, 1, 1, 1, 1],   # rejected 0: 4 tokens
                         [0, 1, 1, 0, 0, 0]], dtype=torch.bool)  # rejected 1: 2 tokens
    alpha = 0.3
    expected = []
    public = [3, 2, 3, 2]
    for row in range(4):
        total, k = 0.0, 0
        for t in range(6):
            if mask[row, t]:
                k += 1
                total += token_logps_[row, t].item() * (1.0 if k <= public[row] else alpha)
        expected.append(total)
    logps, n = sequence_logps(token_logps_, mask, alpha)
    assert n.tolist() == [3, 5, 4, 2]
    assert max(abs(a - e) for a, e in zip(logps.tolist(), expected)) < 1e-6
    plain, plain_n = sequence_logps(token_logps_, mask)
    torch.testing.assert_close(plain, (token_logps_ * mask).sum(-1))
    assert plain_n.tolist() == [3, 5, 4, 2]
    full, _ = sequence_logps(token_logps_, mask, 1.0)
    torch.testing.assert_close(full, plain)
    with pytest.raises(ValueError, match="ld_alpha"):
        sequence_logps(token_logps_, mask, 1.5)


def test_wpo_weights():
    token_logps_ = torch.log(torch.tensor([[0.5, 0.25], [0.2, 0.0], [0.1, 0.4], [0.9, 0.0]]))
    log_sum_sq = torch.log(torch.tensor([[0.5, 0.5], [0.25, 1.0], [0.2, 0.5], [0.81, 1.0]]))
    mask = torch.tensor([[1, 1], [1, 0], [1, 1], [1, 0]], dtype=torch.bool)
    w = [math.exp((math.log(0.5 / 0.5) + math.log(0.25 / 0.5)) / 2), 0.2 / 0.25,
         math.exp((math.log(0.1 / 0.2) + math.log(0.4 / 0.5)) / 2), 0.9 / 0.81]
    out = wpo_weights(token_logps_, log_sum_sq, mask)
    torch.testing.assert_close(out, torch.tensor([w[0] * w[2], w[1] * w[3]]))


def test_bad_labels_are_clear_errors():
    hidden, weight, bias, labels = make_batch()
    with pytest.raises(ValueError, match="outside"):
        chunked_token_logps(hidden, weight, bias, labels.clamp(min=0) + 100)
    with pytest.raises(ValueError, match="outside"):
        chunked_token_logps(hidden, weight, bias, labels.masked_fill(labels == -100, -1))
    with pytest.raises(ValueError, match="does not match"):
        chunked_token_logps(hidden, weight, bias, labels[:, :-1])
    with pytest.raises(ValueError, match="does not match hidden size"):
        chunked_token_logps(hidden, weight[:, :-1], bias, labels)


# ----- prompt sharing: [prompt | chosen | rejected], the prompt computed once----------------------------------------

SHARED_FAMILIES = {  # GPTConfig switches of each family (learned positions, the rotary variants, q/k norm, NoPE)
    "gpt2": dict(),
    "neox": dict(position="rotary", rotary_dim=4, parallel_residual=True, tie_embeddings=False),
    "gptj": dict(position="rotary", rotary_dim=4, rotary_interleaved=True, parallel_residual=True, shared_norm=True,
                 tie_embeddings=False, lm_head_bias=True),
    "llama": dict(position="rotary", norm="rmsnorm", activation="silu", gated_mlp=True, n_kv_head=1, qkv_bias=False,
                  attn_out_bias=False, mlp_bias=False),
    "qwen3": dict(position="rotary", norm="rmsnorm", activation="silu", gated_mlp=True, qk_norm=True, qkv_bias=False,
                  attn_out_bias=False, mlp_bias=False),
    "smollm3": dict(position="rotary", norm="rmsnorm", activation="silu", gated_mlp=True, nope_layers=[1],
                    qkv_bias=False, attn_out_bias=False, mlp_bias=False),
}


@pytest.mark.parametrize("family", sorted(SHARED_FAMILIES))
def test_shared_prompt_equals_separate_rows_values_and_gradients(family):
    """collate_shared + shared_sequence_logps (one forward over [prompt | chosen | rejected], two pairs packed
    in one row) equals collate_preference + model_token_logps (chosen and rejected rows apart), log-probs
    and their gradients, for pairs of different lengths, one with an empty prompt."""
    from dpo import batching
    from dpo.logprobs import batch_sequence_logps, shared_sequence_logps
    from dpo.model import GPT, GPTConfig
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=50, n_layer=2, n_head=2, n_embd=16, max_seq_len=32,
                          **SHARED_FAMILIES[family])).double()
    g = torch.Generator().manual_seed(1)
    pairs = []
    for i, (p, c, r) in enumerate([(5, 3, 6), (0, 4, 2), (2, 7, 1), (3, 2, 3)]):
        ids = lambda n: torch.randint(0, 50, (n,), generator=g).tolist()  # noqa: E731
        pairs.append(tokenized_pair(ids(p), ids(c), ids(r), i))
    coef = torch.randn(8, generator=g, dtype=torch.float64)
    results = []
    for collate in (batching.collate_preference, batching.collate_shared):
        model.zero_grad()
        logps, n = batch_sequence_logps(model, collate(pairs, 0))
        (logps * coef).sum().backward()
        results.append((logps.detach(), n, {k: p.grad.clone() for k, p in model.named_parameters()}))
    (apart, n_apart, grads_apart), (shared, n_shared, grads_shared) = results
    # (the softmax math runs in fp32 even for a float64 model: agreement to fp32 rounding; a wrong mask or
    # position is off by far more)
    torch.testing.assert_close(shared, apart, rtol=1e-6, atol=1e-5)
    assert n_shared.tolist() == n_apart.tolist() == [3, 3, 7, 2, 6, 1, 1, 3]  # an empty prompt: first tokens unscored
    for name in grads_apart:
        torch.testing.assert_close(grads_shared[name], grads_apart[name], rtol=1e-5, atol=1e-6, msg=name)
    # the prompts once, all pairs back to back in one row without padding, attention block by block
    packed = batching.collate_shared(pairs, 0)
    assert packed["input_ids"].shape == (1, 14 + 6 + 10 + 8) and packed["segments"].tolist() == [0, 14, 20, 30, 38]
    assert packed["block_masks"].numel() == 14 ** 2 + 6 ** 2 + 10 ** 2 + 8 ** 2  # Σ L², not N²
    with torch.no_grad():  # and the batch's own entry point agrees with the layout-specific one
        torch.testing.assert_close(shared_sequence_logps(model, batching.collate_shared(pairs, 0))[0], shared)
