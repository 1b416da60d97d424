"""PPO, value, entropy and Bradley-Terry losses against hand-computed values (style guide 13)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from rlaif.rl.losses import bradley_terry_loss, clipped_value_loss, entropy_from_logits, ppo_policy_loss


def _policy_loss_one_token(logratio: float, advantage: float, cliprange: float = 0.2):
    t = torch.tensor
    return ppo_policy_loss(t([[logratio]]), t([[0.0]]), t([[advantage]]), t([[True]]), cliprange)


def test_policy_loss_inside_the_clip_range_is_the_plain_surrogate() -> None:
    # ratio = 1.1 (inside [0.8, 1.2]), A = 2: pg_loss1 = pg_loss2 = -2 * 1.1 = -2.2; nothing clipped.
    # approxkl = 0.5 * log(1.1)^2 = 0.5 * 0.09531^2 = 0.0045421
    out = _policy_loss_one_token(math.log(1.1), 2.0)
    assert out.loss.item() == pytest.approx(-2.2)
    assert out.clipfrac.item() == 0.0
    assert out.approxkl.item() == pytest.approx(0.0045421, rel=1e-4)
    assert out.ratio.item() == pytest.approx(1.1)


def test_policy_loss_clips_a_large_ratio_with_positive_advantage() -> None:
    # ratio = e = 2.71828, A = 1: pg_loss1 = -e, pg_loss2 = -clip(e, 0.8, 1.2) = -1.2;
    # loss = max(-e, -1.2) = -1.2, and the clipped term is the active one: clipfrac = 1.
    out = _policy_loss_one_token(1.0, 1.0)
    assert out.loss.item() == pytest.approx(-1.2)
    assert out.clipfrac.item() == 1.0
    assert out.approxkl.item() == pytest.approx(0.5)  # 0.5 * 1^2


def test_policy_loss_clips_a_small_ratio_with_negative_advantage() -> None:
    # ratio = 0.5, A = -1: pg_loss1 = 0.5, pg_loss2 = -(-1) * clip(0.5, 0.8, 1.2) = 0.8; loss = max = 0.8 (clipped).
    out = _policy_loss_one_token(math.log(0.5), -1.0)
    assert out.loss.item() == pytest.approx(0.8)
    assert out.clipfrac.item() == 1.0


def test_policy_loss_never_clips_in_the_pessimistic_direction() -> None:
    # ratio = 2, A = -1: pg_loss1 = 2, pg_loss2 = 1.2; loss = max = 2 (the unclipped, worse objective): clipfrac = 0,
    # and the gradient flows through the ratio: d loss / d logratio = -A * ratio = 2.
    logratio = torch.tensor([[math.log(2.0)]], requires_grad=True)
    out = ppo_policy_loss(logratio, torch.zeros(1, 1), torch.tensor([[-1.0]]), torch.ones(1, 1, dtype=torch.bool), 0.2)
    out.loss.backward()
    assert out.loss.item() == pytest.approx(2.0)
    assert out.clipfrac.item() == 0.0
    assert logratio.grad.item() == pytest.approx(2.0)


def test_policy_loss_averages_only_valid_tokens() -> None:
    # Tokens: (ratio 1.1, A 2) -> -2.2 and (ratio e, A 1) -> -1.2; the third token is padding with a huge value.
    # loss = (-2.2 - 1.2) / 2 = -1.7; clipfrac = (0 + 1) / 2 = 0.5.
    logprobs = torch.tensor([[math.log(1.1), 1.0, 50.0]])
    out = ppo_policy_loss(logprobs, torch.zeros(1, 3), torch.tensor([[2.0, 1.0, 1e6]]), torch.tensor([[1, 1, 0]]), 0.2)
    assert out.loss.item() == pytest.approx(-1.7)
    assert out.clipfrac.item() == pytest.approx(0.5)


def test_clipped_value_loss_cases() -> None:
    # old value 0, return 1, cliprange 0.2:
    #   v = 0.5:  v_clipped = 0.2;  (0.5-1)^2 = 0.25, (0.2-1)^2 = 0.64 -> max 0.64 (clipped)
    #   v = 0.1:  v_clipped = 0.1;  (0.1-1)^2 = 0.81 both                -> 0.81 (not clipped)
    #   v = -0.5: v_clipped = -0.2; (-0.5-1)^2 = 2.25, (-0.2-1)^2 = 1.44 -> 2.25 (not clipped)
    # loss = 0.5 * mean(0.64, 0.81, 2.25) = 0.5 * 3.7 / 3 = 0.616667; clipfrac = 1/3.
    values = torch.tensor([[0.5, 0.1, -0.5]])
    out = clipped_value_loss(values, torch.zeros(1, 3), torch.ones(1, 3), torch.ones(1, 3, dtype=torch.bool), 0.2)
    assert out.loss.item() == pytest.approx(0.5 * 3.7 / 3)
    assert out.clipfrac.item() == pytest.approx(1 / 3)


def test_clipped_value_loss_ignores_padding() -> None:
    # Only the first token counts: v = 0.5 -> 0.5 * 0.64 = 0.32.
    values = torch.tensor([[0.5, 100.0]])
    out = clipped_value_loss(values, torch.zeros(1, 2), torch.ones(1, 2), torch.tensor([[True, False]]), 0.2)
    assert out.loss.item() == pytest.approx(0.32)


def test_entropy_from_logits_hand_values() -> None:
    # Uniform over 4 tokens: H = log 4 = 1.386294.
    assert entropy_from_logits(torch.zeros(4)).item() == pytest.approx(math.log(4))
    # logits [0, ln 3] -> p = [1/4, 3/4]; H = -(0.25 ln 0.25 + 0.75 ln 0.75) = 0.346574 + 0.215762 = 0.562335.
    assert entropy_from_logits(torch.tensor([0.0, math.log(3)])).item() == pytest.approx(0.562335, rel=1e-5)
    # Temperature divides first: logits [0, 2 ln 3] at T = 2 are the same distribution.
    assert entropy_from_logits(torch.tensor([0.0, 2 * math.log(3)]), temperature=2.0).item() == pytest.approx(
        0.562335, rel=1e-5
    )


@pytest.mark.parametrize("margin", [-3.0, -0.5, 0.0, 0.7, 4.0])
def test_bradley_terry_hard_labels_reduce_to_logsigmoid(margin: float) -> None:
    m = torch.tensor([margin])
    # p = 1: -[1 * log sigma(m) + 0] = -logsigmoid(m); p = 0: -logsigmoid(-m).
    assert bradley_terry_loss(m, torch.tensor([1.0])).item() == pytest.approx(-F.logsigmoid(m).item())
    assert bradley_terry_loss(m, torch.tensor([0.0])).item() == pytest.approx(-F.logsigmoid(-m).item())


def test_bradley_terry_soft_label_hand_example() -> None:
    # p = 0.7, margin = 1: log sigma(1) = -ln(1 + e^-1) = -0.313262, log sigma(-1) = -1.313262;
    # loss = -(0.7 * -0.313262 + 0.3 * -1.313262) = 0.219283 + 0.393979 = 0.613262.
    loss = bradley_terry_loss(torch.tensor([1.0]), torch.tensor([0.7]))
    assert loss.item() == pytest.approx(0.613262, rel=1e-5)


def test_bradley_terry_soft_label_is_minimised_at_the_label_logit() -> None:
    # d loss / d m = sigma(m) - p, which is 0 at m = logit(0.7) = ln(0.7 / 0.3) = 0.847298.
    margin = torch.tensor([math.log(0.7 / 0.3)], requires_grad=True)
    bradley_terry_loss(margin, torch.tensor([0.7])).backward()
    assert margin.grad.item() == pytest.approx(0.0, abs=1e-6)


def test_bradley_terry_means_over_pairs_and_checks_shapes() -> None:
    # Pairs: (m 1, p 0.7) -> 0.613262 and (m 0, p 1) -> ln 2 = 0.693147; mean = 0.653205.
    loss = bradley_terry_loss(torch.tensor([1.0, 0.0]), torch.tensor([0.7, 1.0]))
    assert loss.item() == pytest.approx((0.613262 + math.log(2)) / 2, rel=1e-5)
    with pytest.raises(ValueError, match="margin shape"):
        bradley_terry_loss(torch.zeros(3), torch.zeros(2))
