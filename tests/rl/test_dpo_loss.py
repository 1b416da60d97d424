"""The soft-label DPO / IPO loss against hand-computed values (style guide 13)."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from rlaif.rl.losses import dpo_loss


def _t(*values: float, grad: bool = False) -> torch.Tensor:
    return torch.tensor(values, dtype=torch.float64, requires_grad=grad)


def test_a_hard_label_is_standard_sigmoid_dpo() -> None:
    # log pi(c) = -10, log pi_ref(c) = -11: chosen log-ratio +1; log pi(r) = -12, log pi_ref(r) = -11: rejected -1.
    # Delta = 1 - (-1) = 2, beta = 0.1: beta Delta = 0.2.
    # p = 1: loss = -log sigma(0.2) = log(1 + e^-0.2) = log(1 + 0.818731) = 0.598139 (Rafailov et al. eq. 7).
    # Implicit rewards: chosen 0.1 x 1 = 0.1, rejected 0.1 x -1 = -0.1.
    out = dpo_loss(_t(-10.0), _t(-12.0), _t(-11.0), _t(-11.0), _t(1.0), beta=0.1)
    assert out.loss.item() == pytest.approx(0.598139, abs=1e-6)
    assert out.loss.item() == pytest.approx(-F.logsigmoid(torch.tensor(0.2, dtype=torch.float64)).item())
    assert (out.chosen_rewards.item(), out.rejected_rewards.item()) == pytest.approx((0.1, -0.1))
    # p = 0 is the same pair with the sides swapped: -log sigma(-0.2) = 0.2 + 0.598139 = 0.798139.
    swapped = dpo_loss(_t(-10.0), _t(-12.0), _t(-11.0), _t(-11.0), _t(0.0), beta=0.1)
    assert swapped.loss.item() == pytest.approx(0.798139, abs=1e-6)
    flipped = dpo_loss(_t(-12.0), _t(-10.0), _t(-11.0), _t(-11.0), _t(1.0), beta=0.1)
    assert flipped.loss.item() == pytest.approx(swapped.loss.item())


def test_a_tie_has_zero_gradient_at_delta_zero() -> None:
    # p = 0.5, Delta = 0: loss = -(0.5 log 1/2 + 0.5 log 1/2) = ln 2, and
    # d loss / d Delta = -beta [p sigma(-beta Delta) - (1 - p) sigma(beta Delta)] = -beta (0.25 - 0.25) = 0.
    chosen, rejected = _t(-5.0, grad=True), _t(-7.0, grad=True)
    out = dpo_loss(chosen, rejected, _t(-5.0), _t(-7.0), _t(0.5), beta=0.1)
    out.loss.backward()
    assert out.loss.item() == pytest.approx(math.log(2))
    assert chosen.grad.item() == 0.0 and rejected.grad.item() == 0.0


def test_a_soft_label_is_minimised_at_its_logit() -> None:
    # p = 0.75, beta = 0.5, Delta = 2 ln 3: beta Delta = ln 3, sigma(ln 3) = 3/4, so
    # loss = -(0.75 ln 0.75 + 0.25 ln 0.25) = 0.215762 + 0.346574 = 0.562335 (the label's entropy, the minimum):
    # d loss / d Delta = -0.5 (0.75 x 1/4 - 0.25 x 3/4) = 0.
    chosen = _t(2 * math.log(3), grad=True)
    out = dpo_loss(chosen, _t(0.0), _t(0.0), _t(0.0), _t(0.75), beta=0.5)
    out.loss.backward()
    assert out.loss.item() == pytest.approx(0.562335, abs=1e-6)
    assert chosen.grad.item() == pytest.approx(0.0, abs=1e-12)


def test_label_smoothing_clamps_the_label() -> None:
    # floor 0.1: p = 1 becomes 0.9. beta Delta = 0.2 as in the first test: log sigma(0.2) = -0.598139,
    # log sigma(-0.2) = -0.798139; loss = 0.9 x 0.598139 + 0.1 x 0.798139 = 0.538325 + 0.079814 = 0.618139.
    out = dpo_loss(_t(-10.0), _t(-12.0), _t(-11.0), _t(-11.0), _t(1.0), beta=0.1, label_smoothing=0.1)
    assert out.loss.item() == pytest.approx(0.618139, abs=1e-6)
    # A label already inside [0.1, 0.9] is untouched.
    inside = dpo_loss(_t(-10.0), _t(-12.0), _t(-11.0), _t(-11.0), _t(0.7), beta=0.1, label_smoothing=0.1)
    plain = dpo_loss(_t(-10.0), _t(-12.0), _t(-11.0), _t(-11.0), _t(0.7), beta=0.1)
    assert inside.loss.item() == plain.loss.item()


def test_ipo_regresses_delta_onto_its_target() -> None:
    # Delta = 2 (as above), beta = 0.1; target (2p - 1) / (2 beta):
    #   p = 1:    target 1 / 0.2 = 5     -> (2 - 5)^2   = 9     (the IPO paper's (h - 1/(2 tau))^2)
    #   p = 0.75: target 0.5 / 0.2 = 2.5 -> (2 - 2.5)^2 = 0.25
    #   p = 0.5:  target 0               -> (2 - 0)^2   = 4
    # mean = (9 + 0.25 + 4) / 3 = 4.416667.
    n = 3
    out = dpo_loss(
        _t(*[-10.0] * n), _t(*[-12.0] * n), _t(*[-11.0] * n), _t(*[-11.0] * n), _t(1.0, 0.75, 0.5), 0.1, "ipo"
    )
    assert out.loss.item() == pytest.approx((9 + 0.25 + 4) / 3)
    # d/d Delta of (Delta - 5)^2 at Delta = 2 is 2 x (2 - 5) = -6: IPO keeps pushing a p = 1 pair until Delta = 5.
    chosen = _t(-10.0, grad=True)
    dpo_loss(chosen, _t(-12.0), _t(-11.0), _t(-11.0), _t(1.0), 0.1, "ipo").loss.backward()
    assert chosen.grad.item() == pytest.approx(-6.0)


def test_length_normalisation_divides_each_side_by_its_tokens() -> None:
    # Chosen: 4 tokens, log pi = -8, log pi_ref = -10 -> per token -2 vs -2.5: log-ratio +0.5 (summed: +2).
    # Rejected: 2 tokens, log pi = -6, log pi_ref = -5 -> per token -3 vs -2.5: log-ratio -0.5 (summed: -1).
    # Normalised Delta = 0.5 - (-0.5) = 1; summed Delta = 2 - (-1) = 3. beta = 1, p = 1:
    #   normalised: -log sigma(1) = log(1 + e^-1) = 0.313262;  summed: -log sigma(3) = 0.048587.
    args = (_t(-8.0), _t(-6.0), _t(-10.0), _t(-5.0), _t(1.0), 1.0)
    normalised = dpo_loss(*args, chosen_tokens=_t(4.0), rejected_tokens=_t(2.0))
    assert normalised.loss.item() == pytest.approx(0.313262, abs=1e-6)
    assert (normalised.chosen_rewards.item(), normalised.rejected_rewards.item()) == pytest.approx((0.5, -0.5))
    assert dpo_loss(*args).loss.item() == pytest.approx(0.048587, abs=1e-6)
    # IPO, normalised: target 1 / (2 x 1) = 0.5 -> (1 - 0.5)^2 = 0.25.
    ipo = dpo_loss(*args, loss_type="ipo", chosen_tokens=_t(4.0), rejected_tokens=_t(2.0))
    assert ipo.loss.item() == pytest.approx(0.25)


def test_dpo_loss_means_over_pairs_and_checks_its_inputs() -> None:
    # Pair 1: beta Delta = 0.2, p = 1 -> 0.598139; pair 2: Delta = 0, any p -> ln 2 = 0.693147. Mean 0.645643.
    out = dpo_loss(_t(-10.0, -3.0), _t(-12.0, -4.0), _t(-11.0, -3.0), _t(-11.0, -4.0), _t(1.0, 0.9), beta=0.1)
    assert out.loss.item() == pytest.approx((0.598139 + math.log(2)) / 2, abs=1e-6)
    with pytest.raises(ValueError, match="one shape"):
        dpo_loss(_t(0.0, 0.0), _t(0.0), _t(0.0), _t(0.0), _t(1.0), beta=0.1)
    with pytest.raises(ValueError, match="unknown loss_type"):
        dpo_loss(_t(0.0), _t(0.0), _t(0.0), _t(0.0), _t(1.0), 0.1, "hinge")
    with pytest.raises(ValueError, match="token counts of both sides"):
        dpo_loss(_t(0.0), _t(0.0), _t(0.0), _t(0.0), _t(1.0), 0.1, chosen_tokens=_t(3.0))
