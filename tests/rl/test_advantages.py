"""Masked statistics, whitening and GAE against hand-computed values and the for-loop reference."""

from __future__ import annotations

import math

import pytest
import torch

from rlaif.rl.advantages import gae, gae_reference, masked_mean, masked_var, masked_whiten


def test_masked_mean_and_population_variance() -> None:
    values = torch.tensor([1.0, 2.0, 3.0, 100.0])
    mask = torch.tensor([True, True, True, False])
    # mean(1, 2, 3) = 2; the 100 is masked out.
    assert masked_mean(values, mask).item() == pytest.approx(2.0)
    # var = ((1-2)^2 + 0 + (3-2)^2) / 3 = 2/3 (unbiased=False); with Bessel's correction 2/2 = 1.
    assert masked_var(values, mask).item() == pytest.approx(2 / 3)
    assert masked_var(values, mask, unbiased=True).item() == pytest.approx(1.0)


def test_masked_mean_along_a_dimension() -> None:
    values = torch.tensor([[1.0, 3.0, 9.0], [4.0, 4.0, 4.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    # row 0: (1 + 3) / 2 = 2; row 1: 4 / 1 = 4.
    assert masked_mean(values, mask, dim=1).tolist() == [2.0, 4.0]


def test_unbiased_variance_needs_two_values() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        masked_var(torch.tensor([1.0, 2.0]), torch.tensor([True, False]), unbiased=True)


def test_whiten_with_and_without_mean_shift() -> None:
    values = torch.tensor([1.0, 2.0, 3.0, 50.0])
    mask = torch.tensor([True, True, True, False])
    # mean 2, std sqrt(2/3) = 0.816497: (x - 2) / 0.816497 = [-1.224745, 0, 1.224745].
    shifted = masked_whiten(values, mask, shift_mean=True)
    assert shifted[:3].tolist() == pytest.approx([-1.224745, 0.0, 1.224745], rel=1e-5)
    # shift_mean=False adds the mean back: [0.775255, 2, 3.224745]; the spread is whitened, the mean kept.
    scaled = masked_whiten(values, mask, shift_mean=False)
    assert scaled[:3].tolist() == pytest.approx([0.775255, 2.0, 3.224745], rel=1e-5)
    assert masked_mean(scaled, mask).item() == pytest.approx(2.0)
    assert masked_var(scaled, mask).item() == pytest.approx(1.0, rel=1e-5)


def test_gae_three_step_hand_example() -> None:
    # Row 0: rewards [0, 0, 1], values [0.5, 0.6, 0.7], gamma 1, lam 0.5; V after the end = 0.
    #   delta_2 = 1 + 0 - 0.7 = 0.3              A_2 = 0.3
    #   delta_1 = 0 + 0.7 - 0.6 = 0.1            A_1 = 0.1 + 0.5 * 0.3  = 0.25
    #   delta_0 = 0 + 0.6 - 0.5 = 0.1            A_0 = 0.1 + 0.5 * 0.25 = 0.225
    #   returns = A + V = [0.725, 0.85, 1.0]
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.6, 0.7]])
    advantages, returns = gae(rewards, values, gamma=1.0, lam=0.5)
    assert advantages[0].tolist() == pytest.approx([0.225, 0.25, 0.3])
    assert returns[0].tolist() == pytest.approx([0.725, 0.85, 1.0])


def test_gae_discounts_with_gamma() -> None:
    # rewards [0, 0, 2], values 0, gamma 0.9, lam 1: A_t = gamma^(2-t) * 2 = [1.62, 1.8, 2].
    advantages, returns = gae(torch.tensor([[0.0, 0.0, 2.0]]), torch.zeros(1, 3), gamma=0.9, lam=1.0)
    assert advantages[0].tolist() == pytest.approx([1.62, 1.8, 2.0])
    assert returns[0].tolist() == pytest.approx([1.62, 1.8, 2.0])


@pytest.mark.parametrize(("gamma", "lam"), [(1.0, 0.95), (0.99, 0.9), (0.5, 0.0), (1.0, 1.0)])
def test_gae_vectorised_matches_the_loop(gamma: float, lam: float) -> None:
    generator = torch.Generator().manual_seed(int(gamma * 100 + lam * 10))
    rewards = torch.randn(5, 17, generator=generator)
    values = torch.randn(5, 17, generator=generator)
    advantages, returns = gae(rewards, values, gamma, lam)
    ref_advantages, ref_returns = gae_reference(rewards.tolist(), values.tolist(), gamma, lam)
    torch.testing.assert_close(advantages, torch.tensor(ref_advantages), rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(returns, torch.tensor(ref_returns), rtol=1e-5, atol=1e-5)


def test_gae_zero_padding_after_the_end_changes_nothing() -> None:
    # A response that ended at t = 2 followed by zero rewards and zero values bootstraps from V = 0,
    # exactly as the unpadded episode does.
    rewards, values = torch.tensor([[0.1, -0.2, 1.0]]), torch.tensor([[0.3, 0.4, 0.5]])
    padded_rewards = torch.cat([rewards, torch.zeros(1, 4)], dim=1)
    padded_values = torch.cat([values, torch.zeros(1, 4)], dim=1)
    advantages, _ = gae(rewards, values, 1.0, 0.95)
    padded_advantages, _ = gae(padded_rewards, padded_values, 1.0, 0.95)
    torch.testing.assert_close(padded_advantages[:, :3], advantages)
    assert padded_advantages[:, 3:].abs().max().item() == 0.0


def test_gae_with_lam_zero_is_the_one_step_td_error() -> None:
    # lam = 0: A_t = r_t + gamma V_{t+1} - V_t. Row: r [1, 2], V [0.5, 0.25], gamma 1 -> [1 + 0.25 - 0.5, 2 - 0.25].
    advantages, _ = gae(torch.tensor([[1.0, 2.0]]), torch.tensor([[0.5, 0.25]]), gamma=1.0, lam=0.0)
    assert advantages[0].tolist() == pytest.approx([0.75, 1.75])
    assert not math.isnan(advantages.sum().item())
