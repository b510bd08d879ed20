"""dpo/ppo/objective.py against hand-computed values: GAE over completions of different lengths, the clipped
surrogate's gradient (zero exactly where the clip binds), the adaptive KL controller's bounded steps,
masked whitening, the per-token rewards and the clipped value loss."""
import pytest
import torch

from dpo.ppo import objective


def test_gae_matches_a_hand_computed_example():
    """Row 0: a prompt position, then 3 completion tokens; row 1: 2 prompt positions, 1 token, then padding
    holding values and rewards that must not leak into the result. γ = 0.9, λ = 0.8."""
    mask = torch.tensor([[False, True, True, True], [False, False, True, False]])
    rewards = torch.tensor([[0.0, 0.1, -0.2, 1.0], [0.0, 0.0, 0.7, 5.0]])
    values = torch.tensor([[9.0, 0.5, 0.3, 0.8], [9.0, 9.0, 0.2, 3.0]])
    advantages, returns = objective.gae(rewards, values, mask, gamma=0.9, lam=0.8)
    # row 0, backwards: δ3 = 1.0 − 0.8 = 0.2 (the episode ends: V after it is 0), A3 = 0.2
    #   δ2 = −0.2 + 0.9·0.8 − 0.3 = 0.22,   A2 = 0.22 + 0.72·0.2 = 0.364
    #   δ1 = 0.1 + 0.9·0.3 − 0.5 = −0.13,   A1 = −0.13 + 0.72·0.364 = 0.13208
    # row 1: δ = 0.7 − 0.2 = 0.5 = A (the padding's value 3.0 and reward 5.0 are not its successor)
    expected = torch.tensor([[0.0, 0.13208, 0.364, 0.2], [0.0, 0.0, 0.5, 0.0]])
    torch.testing.assert_close(advantages, expected)
    torch.testing.assert_close(returns, torch.tensor([[0.0, 0.63208, 0.664, 1.0], [0.0, 0.0, 0.7, 0.0]]))


def test_gae_with_lambda_1_and_gamma_1_is_the_reward_to_go_minus_the_value():
    mask = torch.tensor([[True, True, True, False]])
    rewards, values = torch.tensor([[1.0, 2.0, 3.0, 4.0]]), torch.tensor([[0.5, -1.0, 2.0, 7.0]])
    advantages, returns = objective.gae(rewards, values, mask, gamma=1.0, lam=1.0)
    torch.testing.assert_close(returns, torch.tensor([[6.0, 5.0, 3.0, 0.0]]))
    torch.testing.assert_close(advantages, torch.tensor([[5.5, 6.0, 1.0, 0.0]]))


def test_clipped_policy_loss_has_zero_gradient_exactly_where_the_clip_binds():
    """ε = 0.2. The clip binds (gradient 0) for ratio > 1.2 with A > 0 and for ratio < 0.8 with A < 0; inside the
    range, or where the unclipped term is the pessimistic one, the gradient is −A · ratio / n."""
    ratios = torch.tensor([1.5, 0.5, 1.05, 1.5, 0.5, 0.9])
    advantages = torch.tensor([1.0, -1.0, 1.0, -1.0, 1.0, -2.0])
    policy_logps = ratios.log()[None].clone().requires_grad_()
    old_logps, mask = torch.zeros(1, 6), torch.ones(1, 6, dtype=torch.bool)
    loss, metrics = objective.policy_loss(policy_logps, old_logps, advantages[None], mask, clip_range=0.2)
    loss.backward()
    expected = torch.tensor([0.0, 0.0, -1.05, 1.5, -0.5, 1.8]) / 6
    torch.testing.assert_close(policy_logps.grad[0], expected)
    assert (policy_logps.grad[0, :2] == 0).all()  # exactly zero, not small
    assert metrics["policy/clipfrac"].item() == pytest.approx(2 / 6)
    # the loss is the mean of max(−A·r, −A·clip(r, 0.8, 1.2)), term by term
    terms = torch.tensor([-1.2, 0.8, -1.05, 1.5, -0.5, 1.8])
    assert loss.item() == pytest.approx(terms.mean().item())
    assert metrics["policy/approxkl"].item() == pytest.approx(0.5 * (ratios.log() ** 2).mean().item())


def test_masked_tokens_do_not_count_in_the_policy_loss():
    policy_logps = torch.tensor([[0.3, 5.0]], requires_grad=True)
    loss, _ = objective.policy_loss(policy_logps, torch.zeros(1, 2), torch.ones(1, 2),
                                    torch.tensor([[True, False]]), clip_range=0.2)
    loss.backward()
    assert loss.item() == pytest.approx(-1.2) and policy_logps.grad[0, 1] == 0


def test_clipped_value_loss():
    """ε = 0.2: a value that moved 0.5 from its rollout value is held at 0.2 when that is further from the
    return (the clipped error is the larger: its gradient is 0), and not when it is nearer."""
    values = torch.tensor([[1.5, 1.5, 0.1]], requires_grad=True)
    old_values, returns = torch.tensor([[1.0, 1.0, 0.0]]), torch.tensor([[0.0, 2.0, 0.0]])
    mask = torch.ones(1, 3, dtype=torch.bool)
    loss, metrics = objective.value_loss(values, old_values, returns, mask, clip_range=0.2)
    loss.backward()
    # errors (V − R)²: 2.25, 0.25, 0.01; clipped values 1.2, 1.2, 0.1 → 1.44, 0.64, 0.01
    assert loss.item() == pytest.approx(0.5 * (2.25 + 0.64 + 0.01) / 3)
    torch.testing.assert_close(values.grad, torch.tensor([[1.5 / 3, 0.0, 0.1 / 3]]))
    assert metrics["val/error"].item() == pytest.approx((2.25 + 0.25 + 0.01) / 3)
    assert metrics["val/clipfrac"].item() == pytest.approx(1 / 3)


def test_token_rewards_put_the_score_on_the_last_token_and_the_kl_penalty_on_every_token():
    mask = torch.tensor([[False, True, True, False], [True, False, False, False]])
    policy_logps = torch.tensor([[0.0, -1.0, -2.0, 0.0], [-0.5, 0.0, 0.0, 0.0]])
    reference_logps = torch.tensor([[9.0, -1.5, -1.0, 9.0], [-1.0, 9.0, 9.0, 9.0]])
    rewards = objective.token_rewards(policy_logps, reference_logps, torch.tensor([2.0, -3.0]), mask, kl_coef=0.1)
    torch.testing.assert_close(rewards, torch.tensor([[0.0, -0.05, 0.1 + 2.0, 0.0], [-0.05 - 3.0, 0.0, 0.0, 0.0]]))


def test_whitening_gives_masked_mean_0_and_variance_1():
    torch.manual_seed(0)
    values = 3.0 + 5.0 * torch.randn(4, 7)
    mask = torch.rand(4, 7) < 0.6
    whitened = objective.whiten(values, mask)
    assert objective.masked_mean(whitened, mask).item() == pytest.approx(0.0, abs=1e-6)
    assert objective.masked_var(whitened, mask).item() == pytest.approx(1.0, abs=1e-5)
    assert (whitened[~mask] == 0).all()
    kept = values[mask]
    torch.testing.assert_close(whitened[mask], (kept - kept.mean()) / kept.std())


@pytest.mark.parametrize("kl, factor", [(12.0, 1 + 0.2 * 64 / 10000),   # far above: the step is capped at +0.2
                                        (6.6, 1 + 0.1 * 64 / 10000),    # 10% above: proportional
                                        (5.4, 1 - 0.1 * 64 / 10000),
                                        (0.0, 1 - 0.2 * 64 / 10000)])   # far below: capped at −0.2
def test_adaptive_kl_controller_moves_towards_the_target_by_the_bounded_factor(kl, factor):
    controller = objective.KLController(coef=0.1, target=6.0, horizon=10000)
    controller.update(kl, n_samples=64)
    assert controller.coef == pytest.approx(0.1 * factor, rel=1e-12)
    assert (controller.coef > 0.1) == (kl > 6.0)


def test_a_fixed_kl_coefficient_stays():
    controller = objective.KLController(coef=0.1, target=0.0)
    controller.update(50.0, n_samples=64)
    assert controller.coef == 0.1
