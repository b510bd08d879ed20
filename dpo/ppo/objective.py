"""The math of PPO for language models (Ziegler et al., 2019; Stiennon et al., 2020), as small pure functions.

A rollout is N prompts with one sampled completion each, laid out as the [N, T−1] grid of dpo.logprobs
(position t holds the token at t + 1; `mask` is True on the completion's tokens, which are contiguous):

    rewards      r_t = −kl_coef · (log π_old(y_t) − log π_ref(y_t))   + score(x, y) at the last token
    advantages   GAE(γ, λ) of the rewards against the values V_t, backwards over each completion
    returns      advantages + values                                  (the value function's target)
    losses       clipped policy surrogate, clipped value loss         (masked means over the tokens)
    kl_coef      adaptive: moves so that the KL of the rollouts approaches kl_target

Every per-token tensor is [N, T−1] fp32 and 0 off the mask unless said otherwise.
"""
from dataclasses import dataclass

import torch


def masked_mean(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """values, mask [N, T] → the mean of values where mask is True (a scalar)."""
    return (values * mask).sum() / mask.sum().clamp(min=1)


def masked_var(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """values, mask [N, T] → the variance of values where mask is True, unbiased (n − 1), a scalar."""
    centred = (values - masked_mean(values, mask)) * mask
    n = mask.sum()
    return (centred ** 2).sum() / (n - 1).clamp(min=1)


def whiten(values: torch.Tensor, mask: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """values, mask [N, T] → (values − mean) / std over the masked entries (mean 0, variance 1 there), 0 off the
    mask. Whitened advantages make the policy loss's scale independent of the reward's."""
    whitened = (values - masked_mean(values, mask)) * torch.rsqrt(masked_var(values, mask) + eps)
    return whitened * mask


def token_rewards(policy_logps: torch.Tensor, reference_logps: torch.Tensor, scores: torch.Tensor,
                  mask: torch.Tensor, kl_coef: float) -> torch.Tensor:
    """policy_logps, reference_logps, mask [N, T]; scores [N] → rewards [N, T].

    r_t = −kl_coef · (log π(y_t) − log π_ref(y_t)) on every completion token, plus the score at the last one:
    the sum over t is the KL-regularised reward score − kl_coef · log(π(y|x) / π_ref(y|x))."""
    rewards = -kl_coef * (policy_logps - reference_logps) * mask
    last = last_index(mask)
    return rewards.index_put((torch.arange(len(scores), device=scores.device), last),
                             scores.to(rewards.dtype), accumulate=True)


def last_index(mask: torch.Tensor) -> torch.Tensor:
    """mask [N, T] → [N], the position of each row's last True."""
    positions = torch.arange(mask.shape[1], device=mask.device)
    return (positions * mask).argmax(-1)


def gae(rewards: torch.Tensor, values: torch.Tensor, mask: torch.Tensor, gamma: float, lam: float):
    """Generalised advantage estimation (Schulman et al., 2016) over each row's completion tokens.

    rewards, values, mask [N, T] → (advantages [N, T], returns [N, T]), both 0 off the mask:

        δ_t = r_t + γ · V_{t+1} − V_t         (V after the last token = 0: the episode ends there)
        A_t = δ_t + γλ · A_{t+1}              returns_t = A_t + V_t

    computed backwards over t. Completions are contiguous on the mask, so a masked-out t + 1 means the end."""
    advantages = torch.zeros_like(rewards)
    next_value = next_advantage = rewards.new_zeros(rewards.shape[0])
    for t in reversed(range(rewards.shape[1])):
        m = mask[:, t].to(rewards.dtype)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        advantages[:, t] = (delta + gamma * lam * next_advantage) * m
        next_value, next_advantage = values[:, t] * m, advantages[:, t]
    return advantages, (advantages + values) * mask


def policy_loss(policy_logps: torch.Tensor, old_logps: torch.Tensor, advantages: torch.Tensor,
                mask: torch.Tensor, clip_range: float) -> tuple[torch.Tensor, dict]:
    """The clipped surrogate (PPO, Schulman et al., 2017), per token:

        ratio = π(y_t) / π_old(y_t),  loss_t = max(−A_t · ratio, −A_t · clip(ratio, 1 − ε, 1 + ε))

    policy_logps (with gradient), old_logps, advantages, mask [N, T] → (masked mean of loss_t, metrics). Where the
    clipped term is the larger one (ratio > 1 + ε with A > 0, ratio < 1 − ε with A < 0) the gradient is 0: a
    rollout cannot push the policy further than ε from the policy that sampled it. Metrics: policy/clipfrac,
    the fraction of tokens where that happens; policy/approxkl = ½ · mean (log ratio)²."""
    log_ratio = policy_logps - old_logps
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1 - clip_range, 1 + clip_range)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        metrics = {"policy/clipfrac": masked_mean((clipped > unclipped).float(), mask),
                   "policy/approxkl": 0.5 * masked_mean(log_ratio ** 2, mask)}
    return loss, metrics


def value_loss(values: torch.Tensor, old_values: torch.Tensor, returns: torch.Tensor, mask: torch.Tensor,
               clip_range: float) -> tuple[torch.Tensor, dict]:
    """The clipped value loss, per token:

        V_clipped = V_old + clip(V − V_old, −ε, ε),  loss_t = ½ · max((V − R_t)², (V_clipped − R_t)²)

    values (with gradient), old_values, returns, mask [N, T] → (masked mean of loss_t, metrics): val/error, the
    mean (V − R)²; val/clipfrac, the fraction of tokens where the clipped error is the larger."""
    clipped_values = old_values + torch.clamp(values - old_values, -clip_range, clip_range)
    errors, clipped_errors = (values - returns) ** 2, (clipped_values - returns) ** 2
    loss = 0.5 * masked_mean(torch.maximum(errors, clipped_errors), mask)
    with torch.no_grad():
        metrics = {"val/error": masked_mean(errors, mask),
                   "val/clipfrac": masked_mean((clipped_errors > errors).float(), mask)}
    return loss, metrics


@dataclass
class KLController:
    """The KL penalty's coefficient: fixed (target = 0), or adaptive (Ziegler et al., 2019, section 2.2):

        e = clip(KL / target − 1, −0.2, 0.2),   coef ← coef · (1 + e · n / horizon)

    after each rollout of n samples whose mean KL(π‖π_ref) per sample is KL: a proportional controller that
    raises the penalty while the policy is further than the target from the reference and lowers it while it is
    nearer, by at most a factor 1 ± 0.2 · n / horizon per rollout."""
    coef: float
    target: float = 0.0
    horizon: int = 10000

    def update(self, kl: float, n_samples: int) -> None:
        if self.target <= 0:
            return
        error = min(max(kl / self.target - 1, -0.2), 0.2)
        self.coef *= 1 + error * n_samples / self.horizon
